"""The operator carries out only placements that fit without the plan's evictions."""

from tessera.core import (
    Allocation,
    ClusterSnapshot,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    ReplicaPlacement,
)
from tessera.engine import CycleResult
from tessera.operator.scheduler import executable_placements
from tessera.testing import gang, node


def result_for(snapshot: ClusterSnapshot, plan: Plan) -> CycleResult:
    return CycleResult("cpsat", "1", snapshot, plan, (), {}, 0.0, 1)


def test_a_placement_that_needs_a_preemption_waits_with_a_reason():
    low = gang("ns/low", 1, 8, ["H100"])
    snap = ClusterSnapshot(
        [node("h1", "H100", 8), node("h2", "H100", 8)],
        [Allocation(low, (ReplicaPlacement(0, "h1", "H100"),))],
    )
    high = gang("ns/high", 1, 8, ["H100"], priority=9)
    other = gang("ns/other", 1, 8, ["H100"])
    plan = Plan(
        preemptions=(Preemption("ns/low", "priority", "ns/high"),),
        placements=(Placement("ns/high", (ReplicaAssignment("h1"),)), Placement("ns/other", (ReplicaAssignment("h2"),))),
    )
    placements, waiting = executable_placements(result_for(snap, plan), [high, other])
    assert [p.workload for p in placements] == ["ns/other"]
    assert "preempting" in waiting["ns/high"]


def test_plans_without_evictions_pass_through():
    snap = ClusterSnapshot([node("h1", "H100", 8)])
    plan = Plan(placements=(Placement("ns/a", (ReplicaAssignment("h1"),)),))
    placements, waiting = executable_placements(result_for(snap, plan), [gang("ns/a", 1, 8)])
    assert placements == plan.placements and waiting == {}
