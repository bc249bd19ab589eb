"""The generic path of the FGD protocol on incremental snapshots decides exactly as on
snapshots built from scratch (the previous implementation), policy caches included."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from test_fgd_protocol import tiny_trace

from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement, explain_unfit
from tessera.policies.learned.features import (
    Demand,
    ShapeKey,
    add_demands,
    arrays_from_snapshot,
    expected_fragmentation,
    target_from_groups,
    target_workload,
)
from tessera.policies.learned.incremental import SnapshotConversion
from tessera.policies.learned.policy import LearnedPolicy
from tessera.policies.placement import TARGET_WORKLOAD_PARAM, PodShape, TargetWorkload
from tessera.policy import PolicyContext, load_policy
from tessera.sim.fgd import run_protocol


def _same_run(a: object, b: object) -> None:
    for field in ("placements", "allocated_milli", "arrived_milli", "fragmented_milli", "pods_unscheduled"):
        assert getattr(a, field) == getattr(b, field), field


@pytest.mark.parametrize(("seed", "batch"), [(1, 1), (2, 1), (5, 3)])
def test_learned_on_incremental_snapshots_equals_from_scratch(seed: int, batch: int) -> None:
    nodes, pods = tiny_trace(seed=seed, n_nodes=10, n_pods=80)
    fresh = run_protocol(nodes, pods, LearnedPolicy(), seed=seed, batch=batch, incremental=False)
    cached = run_protocol(nodes, pods, LearnedPolicy(), seed=seed, batch=batch)
    assert fresh.pods_placed and fresh.pods_unscheduled  # the run reaches a full cluster
    _same_run(fresh, cached)


@pytest.mark.parametrize("name", ["fgd", "resource-best-fit"])
def test_a_builtin_through_decide_equals_its_fast_path(name: str) -> None:
    nodes, pods = tiny_trace(seed=9, n_nodes=10, n_pods=80)
    fast = run_protocol(nodes, pods, load_policy(name), seed=4)
    generic = run_protocol(nodes, pods, load_policy(name), seed=4, fast_path=False)
    assert fast.placements == generic.placements and fast.allocated_milli == generic.allocated_milli


def test_the_conversion_follows_a_lineage_and_equals_a_fresh_one() -> None:
    """Rows, demand groups and fragmentation kept along derive() equal a conversion from scratch;
    a snapshot off the lineage is converted afresh."""
    nodes, pods = tiny_trace(seed=3, n_nodes=10, n_pods=60)
    run = run_protocol(nodes, pods, LearnedPolicy(), seed=3, incremental=False)
    policy = LearnedPolicy()
    snapshot = ClusterSnapshot([n.to_node() for n in nodes])
    conversion = SnapshotConversion()
    by_name = {p.name: p for p in pods}
    allocations: list[Allocation] = []
    for step, (_, node) in enumerate(run.placements[:40]):
        pod = by_name[sorted(by_name)[step % len(pods)]]
        workload = pod.to_workload(float(step))
        allocation = Allocation(replace(workload, key=f"{pod.name}#{step}"),
                                (ReplicaPlacement(0, node, None),), started_at_seconds=float(step))
        allocations.append(allocation)
        snapshot = snapshot.derive([allocation], now_seconds=float(step))
        arrays = conversion.sync(snapshot)
        scratch = arrays_from_snapshot(snapshot)
        for field in ("gpu_free", "cpu_free", "mem_free", "type_index", "usable"):
            assert (getattr(arrays, field) == getattr(scratch, field)).all(), field
        target = policy.target_for(ClusterSnapshot([n.to_node() for n in nodes], allocations), [], scratch.type_names)
        expected = expected_fragmentation(scratch.gpu_free, scratch.cpu_free, scratch.mem_free, scratch.type_index,
                                          target)
        assert (conversion.fragmentation(target) == expected).all()
    rebuilt = ClusterSnapshot([n.to_node() for n in nodes], allocations)
    assert rebuilt.delta is None
    assert (conversion.sync(rebuilt).gpu_free == arrays_from_snapshot(rebuilt).gpu_free).all()


@pytest.mark.parametrize("name", ["learned", "fgd", "gpu-packing"])
def test_unplaced_workloads_are_explained_as_explain_unfit_does(name: str) -> None:
    """The vectorised count behind a policy's unplaced reasons words them exactly as
    explain_unfit on the snapshot's ledger (whole, shared, multi-GPU, typed and CPU pods)."""
    nodes, pods = tiny_trace(seed=6, n_nodes=10, n_pods=120)
    run = run_protocol(nodes, pods, load_policy("fgd"), seed=6)
    by_name = {p.name: p for p in pods}
    order = sorted(by_name)
    node_objects = [n.to_node() for n in nodes]
    allocations = [Allocation(replace(by_name[order[step % len(order)]].to_workload(0.0), key=f"a#{step}"),
                              (ReplicaPlacement(0, node, None),)) for step, node in run.placements]
    snapshot = ClusterSnapshot(node_objects, allocations)
    pending = [replace(p.to_workload(1.0), key=f"{p.name}#late") for p in pods]
    policy = load_policy(name)
    explained = 0
    for workload in pending:
        plan = policy.decide(snapshot, [workload], _ctx())
        if workload.key in plan.unplaced:
            assert plan.unplaced[workload.key] == explain_unfit(snapshot.ledger(), workload)
            explained += 1
    assert explained > 5


def _ctx() -> PolicyContext:
    target = TargetWorkload.from_shapes([PodShape(1000, 0, 1, 1000)])
    return PolicyContext(now_seconds=1.0, rng=random.Random(0), deterministic=True, seed=0,
                         params={TARGET_WORKLOAD_PARAM: target})


def test_target_from_counted_groups_equals_target_from_demands() -> None:
    """Counting demands in and out (as the conversion does along a lineage) gives the very
    target workload that grouping the remaining demands from scratch gives."""
    rng = random.Random(5)
    names = ["A100", "T4", "V100"]
    shapes = [(1, 500), (1, 1000), (2, 1000), (0, 0), (1, 250), (8, 1000)]
    live: list[Demand] = []
    groups: dict[ShapeKey, list[int]] = {}
    for _ in range(300):
        if live and rng.random() < 0.3:
            gone = live.pop(rng.randrange(len(live)))
            add_demands(groups, [gone], -1)
        else:
            new = Demand(rng.choice([500, 1500, 3001]), rng.choice([100, 333]), *rng.choice(shapes),
                         tuple(sorted(rng.sample(["A100", "T4", "X"], rng.randrange(3)))))
            live.append(new)
            add_demands(groups, [new], 1)
        a, b = target_from_groups(groups, names), target_workload(live, names)
        for field in ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "type_ok", "probability", "count",
                      "type_demand"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
