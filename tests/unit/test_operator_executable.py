"""What the operator carries out of a plan: placements into room free now, evictions that
are enough for their beneficiary, and nothing that relies on resizes or migrations."""

from tessera.core import (
    Allocation,
    ClusterSnapshot,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    ReplicaPlacement,
    Resize,
)
from tessera.engine import CycleResult
from tessera.operator.executable import executable_placements
from tessera.testing import gang, node


def result_for(snapshot: ClusterSnapshot, plan: Plan) -> CycleResult:
    return CycleResult("cpsat", "1", snapshot, plan, (), {}, 0.0, 1)


LOW = gang("ns/low", 1, 8, ["H100"])
HIGH = gang("ns/high", 1, 8, ["H100"], priority=9)
OTHER = gang("ns/other", 1, 8, ["H100"])


def full_h1() -> ClusterSnapshot:
    return ClusterSnapshot(
        [node("h1", "H100", 8), node("h2", "H100", 8)],
        [Allocation(LOW, (ReplicaPlacement(0, "h1", "H100"),))],
    )


def preempting_plan() -> Plan:
    return Plan(
        preemptions=(Preemption("ns/low", "preempted by ns/high (priority 9)", "ns/high"),),
        placements=(Placement("ns/high", (ReplicaAssignment("h1"),)), Placement("ns/other", (ReplicaAssignment("h2"),))),
    )


def test_the_victim_is_evicted_now_and_its_beneficiary_waits_for_the_room():
    run = executable_placements(result_for(full_h1(), preempting_plan()), [HIGH, OTHER])
    assert [p.workload for p in run.placements] == ["ns/other"]  # free room is used at once
    assert [p.workload for p in run.preemptions] == ["ns/low"]
    assert "preempting ns/low" in run.waiting["ns/high"] and "pods are gone" in run.waiting["ns/high"]


def test_no_new_eviction_while_pods_are_still_leaving():
    run = executable_placements(result_for(full_h1(), preempting_plan()), [HIGH, OTHER], leaving_pods=2)
    assert not run.preemptions and [p.workload for p in run.placements] == ["ns/other"]
    assert "2 pod(s) being deleted" in run.waiting["ns/high"]


def test_scale_up_decisions_never_evict():
    run = executable_placements(result_for(full_h1(), preempting_plan()), [HIGH, OTHER], evict=False)
    assert not run.preemptions and "ns/high" in run.waiting


def test_nothing_is_evicted_for_a_beneficiary_that_also_needs_a_resize():
    elastic = gang("ns/elastic", (1, 2), 8, ["H100"])
    big = gang("ns/big", 2, 8, ["H100"], priority=9)
    snap = ClusterSnapshot([node("h1", "H100", 8), node("h2", "H100", 8), node("h3", "H100", 8)],
                           [Allocation(LOW, (ReplicaPlacement(0, "h1", "H100"),)),
                            Allocation(elastic, (ReplicaPlacement(0, "h2", "H100"),
                                                 ReplicaPlacement(1, "h3", "H100")))])
    plan = Plan(
        preemptions=(Preemption("ns/low", "for big", "ns/big"),),
        resizes=(Resize("ns/elastic", remove=(1,), reason="for big"),),
        placements=(Placement("ns/big", (ReplicaAssignment("h1"), ReplicaAssignment("h3"))),),
    )
    run = executable_placements(result_for(snap, plan), [big])
    assert not run.preemptions and not run.placements  # evicting ns/low alone would not make room
    assert "resizing or moving" in run.waiting["ns/big"]


def test_preemptions_without_a_beneficiary_are_carried_out():
    plan = Plan(preemptions=(Preemption("ns/low", "moving from A100 to faster H100: restarts there next"),))
    run = executable_placements(result_for(full_h1(), plan), [])
    assert [p.workload for p in run.preemptions] == ["ns/low"] and not run.waiting


def test_plans_without_evictions_pass_through():
    snap = ClusterSnapshot([node("h1", "H100", 8)])
    plan = Plan(placements=(Placement("ns/a", (ReplicaAssignment("h1"),)),))
    run = executable_placements(result_for(snap, plan), [gang("ns/a", 1, 8)])
    assert run.placements == plan.placements and not run.preemptions and run.waiting == {}
