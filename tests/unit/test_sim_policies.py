"""The JCT baselines (fifo, gavel) on tiny hand-checked instances."""

from __future__ import annotations

import random

from tessera.core import Allocation, ReplicaPlacement, validate_plan
from tessera.core.service import folded, normalised_throughput
from tessera.policies.jct import GavelLAS
from tessera.policy import PolicyContext, load_policy
from tessera.testing import gang, node, nodes, snapshot


def ctx(now: float = 0.0, seed: int = 0) -> PolicyContext:
    return PolicyContext(now_seconds=now, rng=random.Random(seed))


def running(workload, node_name, accelerator_type, count, started=0.0):
    return Allocation(
        workload, tuple(ReplicaPlacement(i, node_name, accelerator_type, (i,)) for i in range(count)), started
    )


def test_fifo_places_in_submission_order_and_backfills():
    cluster = [node("n", "A100", 4)]
    pending = [gang("big", 4, submitted=2.0), gang("first", 2, submitted=1.0), gang("small", 2, submitted=3.0)]
    plan = load_policy("fifo").decide(snapshot(cluster), pending, ctx())
    assert [p.workload for p in plan.placements] == ["first", "small"]
    assert "big" in plan.unplaced
    assert validate_plan(snapshot(cluster), pending, plan).ok


def test_strict_fifo_blocks_behind_the_head():
    cluster = [node("n", "A100", 4)]
    pending = [gang("first", 2, submitted=1.0), gang("big", 4, submitted=2.0), gang("small", 2, submitted=3.0)]
    plan = load_policy("fifo", strict=True).decide(snapshot(cluster), pending, ctx())
    assert [p.workload for p in plan.placements] == ["first"]
    assert "waiting behind big" in plan.unplaced["small"]


def test_fifo_is_heterogeneity_agnostic_but_seeded():
    cluster = nodes("fast", 1, "H100", 8) + nodes("slow", 1, "K80", 8)
    pending = [gang(f"j{i}", 1, types=[("H100", 10.0), ("K80", 1.0)], submitted=i) for i in range(8)]
    chosen = []
    for seed in range(6):
        plan = load_policy("fifo").decide(snapshot(cluster), pending, ctx(seed=seed))
        chosen.append(tuple(p.replicas[0].node for p in plan.placements))
        assert plan == load_policy("fifo").decide(snapshot(cluster), pending, ctx(seed=seed))
    used = {n for c in chosen for n in c}
    assert used == {"fast-0", "slow-0"}  # a throughput-aware policy would never use K80 here


def test_gavel_gives_the_fast_type_to_the_job_that_gains_most():
    cluster = nodes("v", 1, "V100", 1) + nodes("k", 1, "K80", 1)
    # a gains 4x on V100, b only 1.25x: a must get V100
    a = gang("a", 1, types=[("V100", 4.0), ("K80", 1.0)], submitted=1.0)
    b = gang("b", 1, types=[("V100", 1.25), ("K80", 1.0)], submitted=0.0)
    plan = GavelLAS().decide(snapshot(cluster), [b, a], ctx())
    where = {p.workload: p.replicas[0].node for p in plan.placements}
    assert where == {"a": "v-0", "b": "k-0"}
    assert normalised_throughput(b, "K80") == 0.8


def test_gavel_preempts_the_job_with_most_attained_service_at_a_round():
    cluster = nodes("v", 1, "V100", 1)
    old = gang("old", 1, types=[("V100", 1.0)], submitted=0.0)
    new = gang("new", 1, types=[("V100", 1.0)], submitted=100.0)
    policy = GavelLAS(round_seconds=360.0)
    snap0 = snapshot(cluster, now=0.0)
    plan0 = policy.decide(snap0, [old], ctx(0.0))
    assert [p.workload for p in plan0.placements] == ["old"]
    # 'old' has run one round; 'new' waits with no service: the next round swaps them
    ran = running(old, "v-0", "V100", 1)
    snap1 = snapshot(cluster, ran, now=360.0)
    plan1 = policy.decide(snap1, [new], ctx(360.0))
    assert [p.workload for p in plan1.preemptions] == ["old"]
    assert policy.attained_service("old") == 360.0
    # the room is free after the preemption: the follow-up (same instant, not a round) places 'new';
    # the stopped 'old' carries the service it attained (the operator keeps it in status)
    stopped = folded(ran, 360.0)
    assert stopped.attained_service_seconds == 360.0
    snap2 = snapshot(cluster, now=360.0)
    plan2 = policy.decide(snap2, [stopped, new], ctx(360.0))
    assert [p.workload for p in plan2.placements] == ["new"]


def test_gavel_between_rounds_only_fills_free_room():
    cluster = nodes("v", 1, "V100", 1)
    old = gang("old", 1, types=[("V100", 1.0)])
    policy = GavelLAS(round_seconds=360.0)
    policy.decide(snapshot(cluster), [old], ctx(0.0))
    plan = policy.decide(snapshot(cluster, running(old, "v-0", "V100", 1), now=100.0), [gang("new", 1)], ctx(100.0))
    assert not plan.preemptions and not plan.placements


def test_gavel_keeps_a_running_job_on_its_type_unless_the_gain_is_clear():
    cluster = nodes("v", 1, "V100", 1) + nodes("p", 1, "P100", 1)
    job = gang("j", 1, types=[("V100", 1.1), ("P100", 1.0)])
    policy = GavelLAS()
    plan = policy.decide(snapshot(cluster, running(job, "p-0", "P100", 1), now=0.0), [], ctx(0.0))
    assert not plan.preemptions  # a 10% gain does not pay a restart
    job2 = gang("k", 1, types=[("V100", 3.0), ("P100", 1.0)])
    plan = GavelLAS().decide(snapshot(cluster, running(job2, "p-0", "P100", 1), now=0.0), [], ctx(0.0))
    assert [p.reason for p in plan.preemptions] == ["LAS round: moves to V100"]


def test_gavel_round_leaves_cpu_only_work_alone():
    # a running pod without accelerators has no type to win or lose; it once raised KeyError('')
    from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement
    from tessera.policy import PolicyContext, load_policy
    from tessera.testing import gang, node

    cpu_pod = gang("ns/cpu", 1, 0, cpu_milli=1000)
    snap = ClusterSnapshot(
        [node("h1", "H100", 8), node("c1", None, 0)],
        [Allocation(cpu_pod, (ReplicaPlacement(0, "c1", None),))],
    )
    plan = load_policy("gavel").decide(snap, [gang("ns/j", 1, 8, ["H100"])], PolicyContext())
    assert not plan.preemptions
    assert [p.workload for p in plan.placements] == ["ns/j"]
