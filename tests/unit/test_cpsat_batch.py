"""CP-SAT's fragmentation-aware batch step (FGD protocol): the per-device model and the policy path."""

from __future__ import annotations

import random
from dataclasses import replace

from tessera.core import ClusterSnapshot, Workload, validate_plan
from tessera.policies.cpsat import CpSat
from tessera.policies.cpsat_fgd import FragmentationBatch, batch_target
from tessera.policies.placement import TARGET_WORKLOAD_PARAM, FgdPolicy, PodShape, TargetWorkload
from tessera.policy import PolicyContext
from tessera.sim.fgd import run_protocol
from tessera.sim.loaders.openb import OpenbNode, OpenbPod
from tessera.solver import BatchNode, BatchPackingModel, BatchPod, PodOption, SolverLimits

LIMITS = SolverLimits(time_limit_seconds=1.0, deterministic=True, seed=1)


def test_shares_pack_per_device_not_per_node() -> None:
    # two devices with 600 milli free each: 500 + 500 need both devices; a node-level sum (1200)
    # would also admit a third 500-pod, the per-device capacity must not
    pods = [BatchPod(100, 10, 1, 500) for _ in range(3)]
    nodes = [BatchNode(10_000, 1_000, (600, 600))]
    options = [PodOption(p, 0, d, 0) for p in range(3) for d in range(2)]
    solution = BatchPackingModel(pods, nodes, options).solve(LIMITS)
    assert solution.outcome.status == "OPTIMAL"
    assert len(solution.chosen) == 2
    assert sorted(devices for _, devices in solution.chosen.values()) == [(0,), (1,)]


def test_whole_gpu_pods_take_only_fully_free_devices() -> None:
    # device 0 is partly used: a 2-GPU pod fits only on devices 1 and 2, and then the share must go to 0
    pods = [BatchPod(100, 10, 2, 1000), BatchPod(100, 10, 1, 300)]
    nodes = [BatchNode(10_000, 1_000, (400, 1000, 1000))]
    options = [PodOption(0, 0, -1, 0)] + [PodOption(1, 0, d, 0) for d in range(3)]
    solution = BatchPackingModel(pods, nodes, options).solve(LIMITS)
    assert solution.chosen[0] == (0, (1, 2))
    assert solution.chosen[1] == (0, (0,))


def test_gpu_milli_first_then_less_fragmentation() -> None:
    # CPU admits one pod: the whole GPU beats the share; between two nodes the lower penalty wins
    pods = [BatchPod(8_000, 10, 1, 1000), BatchPod(8_000, 10, 1, 200)]
    nodes = [BatchNode(8_000, 1_000, (1000,)), BatchNode(8_000, 1_000, (1000,))]
    options = [PodOption(0, 0, -1, 900), PodOption(0, 1, -1, 100), PodOption(1, 0, 0, 0), PodOption(1, 1, 0, 0)]
    solution = BatchPackingModel(pods, nodes, options).solve(LIMITS)
    assert solution.chosen[0] == (1, (0,))
    assert solution.chosen[1] == (0, (0,))


def snapshot_and_pods() -> tuple[ClusterSnapshot, list[Workload], TargetWorkload]:
    """4 nodes of 4 T4 and 16 pods (shares and whole GPUs) asking for more than the 16 GPUs."""
    nodes = [OpenbNode(f"n{i}", 32_000, 65_536, 4, "T4").to_node() for i in range(4)]
    rng = random.Random(3)
    pending = []
    for i in range(16):
        milli = rng.choice([250, 500, 700, 1000, 1000])
        pending.append(OpenbPod(f"p{i:02d}", 2000, 1024, 1, milli, ()).to_workload(float(i)))
    target = TargetWorkload.from_shapes([PodShape.of(w) for w in pending])
    return ClusterSnapshot(nodes, [], now_seconds=20.0), pending, target


def test_the_batch_step_applies_only_to_single_pods_with_a_target() -> None:
    _snapshot, pending, target = snapshot_and_pods()
    ctx = PolicyContext(params={TARGET_WORKLOAD_PARAM: target})
    assert batch_target(pending, ctx) is target
    assert batch_target(pending, PolicyContext()) is None
    gang = replace(pending[0], key="gang", min_replicas=2, max_replicas=2)
    assert batch_target([*pending, gang], ctx) is None


def test_cpsat_batch_plan_is_valid_and_never_below_fgd() -> None:
    snapshot, pending, target = snapshot_and_pods()
    ctx = PolicyContext(now_seconds=20.0, rng=random.Random(5), deterministic=True, seed=5,
                        params={TARGET_WORKLOAD_PARAM: target})
    policy = CpSat()
    plan = policy.decide(snapshot, pending, ctx)
    validated = validate_plan(snapshot, pending, plan)
    assert not validated.rejected
    stats = policy.last_stats
    assert stats["mode"] == "fragmentation-batch" and stats["chosen"] in ("cpsat", "fgd")
    assert stats["score"] >= stats["seed_score"]
    # 16 pods asking for more than the 16 GPUs: whatever waits has a reason
    assert len(plan.placements) + len(plan.unplaced) == len(pending)
    by_key = {w.key: w for w in pending}
    for placement in plan.placements:  # every GPU pod names its device(s)
        assert len(placement.replicas[0].devices) == PodShape.of(by_key[placement.workload]).gpu_count
    # FGD's plan inside the batch step is FGD's own decision on the same state
    same = dict(ctx.params)
    batch = FragmentationBatch(snapshot, pending, PolicyContext(rng=random.Random(5), params=same), target)
    fgd = FgdPolicy().decide(snapshot, pending, PolicyContext(rng=random.Random(5), params=same))
    mine = {pending[i].key: batch.arrays.names[node] for i, (node, _) in batch.fgd_plan().items()}
    assert mine == {p.workload: p.replicas[0].node for p in fgd.placements}


def test_cpsat_batch_runs_are_deterministic() -> None:
    from tests.unit.test_fgd_protocol import tiny_trace

    nodes, pods = tiny_trace(seed=4, n_nodes=10, n_pods=50)
    first = run_protocol(nodes, pods, CpSat(), seed=7, batch=8)
    second = run_protocol(nodes, pods, CpSat(), seed=7, batch=8)
    assert first.pods_placed > 0
    assert first.placements == second.placements
    assert first.allocated_milli == second.allocated_milli


def test_the_carried_state_equals_a_rebuild_from_the_snapshot() -> None:
    import numpy as np

    from tessera.core import Allocation, ReplicaPlacement
    from tessera.policies.cpsat_fgd import BatchState
    from tessera.policies.placement import PlacementArrays

    snapshot, pending, target = snapshot_and_pods()
    ctx = PolicyContext(rng=random.Random(5), deterministic=True, seed=5, params={TARGET_WORKLOAD_PARAM: target})
    state = BatchState()
    plan = CpSat().decide(snapshot, pending[:8], ctx)
    state.sync(snapshot, target)
    nodes = list(snapshot.nodes.values())
    allocations = [
        Allocation(w, tuple(ReplicaPlacement(i, r.node, "T4", r.devices) for i, r in enumerate(p.replicas)))
        for p in plan.placements for w in pending if w.key == p.workload
    ]
    later = ClusterSnapshot(nodes, allocations, now_seconds=21.0)
    carried = state.sync(later, target)
    assert state.reused == 1
    fresh = PlacementArrays.from_snapshot(later)
    assert np.array_equal(carried.gpu_free, fresh.gpu_free)
    assert np.array_equal(carried.cpu_free, fresh.cpu_free)
    assert np.array_equal(carried.memory_free, fresh.memory_free)
    # an allocation gone (e.g. a pod deleted) forces a rebuild
    state.sync(ClusterSnapshot(nodes, allocations[1:], now_seconds=22.0), target)
    assert state.reused == 1
    assert np.array_equal(state.arrays.gpu_free if state.arrays is not None else None,
                          PlacementArrays.from_snapshot(ClusterSnapshot(nodes, allocations[1:])).gpu_free)


def test_unfed_gpu_milli_counts_gpus_the_free_cpu_cannot_feed() -> None:
    import numpy as np

    from tessera.policies.cpsat_fgd import unfed_gpu_milli

    # at 0.25 GPU milli per milli-CPU: 12 cores feed 3 GPUs of 4, 64 cores feed all 4
    gpu_free = np.array([[1000, 1000, 1000, 1000], [1000, 1000, 1000, 1000], [500, 0, 0, 0]])
    cpu_free = np.array([12_000, 64_000, 0])
    assert unfed_gpu_milli(gpu_free, cpu_free, 0.25).tolist() == [1000.0, 0.0, 500.0]


def balance_case() -> tuple[ClusterSnapshot, list[Workload], TargetWorkload]:
    """Two nodes of 4 T4, one with 64 cores free, one with 12; a light (1 core) and a heavy
    (8 cores) one-GPU pod; the target workload is one-GPU pods with 4 cores.  FGD's
    measure ties every choice (the target shape runs on both nodes either way); 12 cores
    feed only 3 of node "short"'s GPUs at the target's 4 cores per GPU."""
    nodes = [OpenbNode("rich", 64_000, 262_144, 4, "T4").to_node(), OpenbNode("short", 12_000, 262_144, 4, "T4").to_node()]
    pending = [OpenbPod("heavy", 8_000, 1024, 1, 1000, ()).to_workload(0.0),
               OpenbPod("light", 1_000, 1024, 1, 1000, ()).to_workload(1.0)]
    target = TargetWorkload.from_shapes([PodShape(4_000, 0, 1, 1000)])
    return ClusterSnapshot(nodes, [], now_seconds=2.0), pending, target


def test_the_batch_measure_sends_cpu_heavy_pods_to_cpu_rich_nodes() -> None:
    import numpy as np

    snapshot, pending, target = balance_case()
    ctx = PolicyContext(now_seconds=2.0, rng=random.Random(1), deterministic=True, seed=1,
                        params={TARGET_WORKLOAD_PARAM: target})
    batch = FragmentationBatch(snapshot, pending, ctx, target)
    assert batch.gpu_per_cpu == 0.25  # 1000 milli-GPU per 4000 milli-CPU
    rich, short = batch.arrays.index["rich"], batch.arrays.index["short"]
    # FGD's measure: 0 everywhere, before and after either pod; the batch step's: "short"
    # has 1000 milli unfed, +1000 with the heavy pod (3 GPUs, 4 cores), -750 with the light one
    assert batch.meter.node_fragmentation(np.array([rich, short])).tolist() == [0.0, 0.0]
    assert batch.waste(np.array([rich])) == 0.0 and batch.waste(np.array([short])) == 1000.0
    batch.shape_options()
    heavy, light = (dict((node, growth) for node, _, growth in batch._per_shape[s]) for s in batch.shapes)
    assert heavy == {rich: 0, short: 1000}
    assert light == {rich: 0, short: -750}
    plan = CpSat().decide(snapshot, pending, ctx)
    assert {p.workload: p.replicas[0].node for p in plan.placements} == {pending[0].key: "rich", pending[1].key: "short"}
