"""Defragmentation on tiny fragmented clusters with known cheapest move sets."""

from __future__ import annotations

from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement, Workload, WorkloadKind, validate_plan
from tessera.policies.defrag import Defragment, fragmentation_blocked, greedy_smallest_first
from tessera.policy import PolicyContext
from tessera.solver.rebalance import DefragModel
from tessera.testing.builders import gang, node

NOW = 5_000.0


def pod(key: str, accelerators: int, priority: int = 0) -> Workload:
    return gang(key, 1, accelerators, ("A100",), kind=WorkloadKind.POD, priority=priority)


def on(w: Workload, node_name: str, devices: tuple[int, ...]) -> Allocation:
    return Allocation(w, (ReplicaPlacement(0, node_name, "A100", devices),))


def fragmented(x_priority: int = 0) -> ClusterSnapshot:
    """Three 4-GPU nodes with 2 free each: n1 holds a 2-GPU pod X, n2 and n3 two 1-GPU pods."""
    return ClusterSnapshot(
        [node("n1", "A100", 4), node("n2", "A100", 4), node("n3", "A100", 4)],
        [
            on(pod("x", 2, x_priority), "n1", (0, 1)),
            on(pod("b", 1), "n2", (0,)),
            on(pod("c", 1), "n2", (1,)),
            on(pod("d", 1), "n3", (0,)),
            on(pod("e", 1), "n3", (1,)),
        ],
        now_seconds=NOW,
    )


GANG = gang("big", 1, 4, ("A100",))


def test_blocked_only_by_fragmentation():
    snapshot = fragmented()
    assert fragmentation_blocked(snapshot, GANG)  # 6 free devices, no node with 4
    assert not fragmentation_blocked(snapshot, gang("small", 1, 2, ("A100",)))  # fits as is
    assert not fragmentation_blocked(snapshot, gang("huge", 2, 4, ("A100",)))  # 8 > 6 free


def test_cheapest_moves_admit_the_gang_with_one_move():
    result = DefragModel(fragmented(), GANG, now_seconds=NOW, deterministic=True).solve()
    assert result is not None
    # moving the one 2-GPU pod off n1 frees it whole; any pair of 1-GPU moves costs double
    assert [(m.workload, m.source) for m in result.moves] == [("x", "n1")]
    assert result.moves[0].target in {"n2", "n3"}
    assert result.gang_nodes == {"n1": 1}


def test_greedy_smallest_first_needs_more_moves():
    greedy = greedy_smallest_first(fragmented(), GANG)
    assert greedy.admitted
    assert [m.workload for m in greedy.moves] == ["b", "c"]  # the two smallest, one by one


def test_policy_plan_is_valid_and_places_the_gang():
    snapshot = fragmented()
    policy = Defragment()
    plan = policy.decide(snapshot, [GANG], PolicyContext(now_seconds=NOW, deterministic=True))
    assert len(plan.migrations) == 1 and plan.migrations[0].workload == "x"
    assert [p.workload for p in plan.placements] == ["big"]
    validated = validate_plan(snapshot, [GANG], plan)
    assert validated.ok, validated.rejected


def test_higher_priority_work_is_not_moved():
    # x outranks the gang: the cheapest allowed set is two 1-GPU pods off n2 (or n3)
    result = Defragment().decide(fragmented(x_priority=5), [GANG], PolicyContext(now_seconds=NOW, deterministic=True))
    moved = sorted(m.workload for m in result.migrations)
    assert moved in (["b", "c"], ["d", "e"])
    assert validate_plan(fragmented(x_priority=5), [GANG], result).ok


def test_not_worth_it_leaves_the_gang_waiting_with_a_reason():
    policy = Defragment(value_seconds_per_device=0.5)
    plan = policy.decide(fragmented(), [GANG], PolicyContext(now_seconds=NOW, deterministic=True))
    assert plan.empty
    assert "more than admitting it is worth" in plan.unplaced["big"]


def test_cooldown_protects_recently_moved_work():
    snapshot = fragmented()
    allocations = [
        Allocation(a.workload, tuple(ReplicaPlacement(rp.replica, rp.node, rp.accelerator_type, rp.devices, since_seconds=NOW - 10) for rp in a.replicas))
        for a in snapshot.allocations.values()
    ]
    plan = Defragment(cooldown_seconds=600).decide(
        snapshot.with_changes(allocations=allocations), [GANG], PolicyContext(now_seconds=NOW, deterministic=True)
    )
    assert plan.empty
    assert "no set of allowed moves" in plan.unplaced["big"]


def test_emptiest_node_greedy_on_the_small_instance():
    from tessera.policies.defrag import greedy_emptiest_nodes

    greedy = greedy_emptiest_nodes(fragmented(), GANG)
    # all nodes have 2 free; n1 is cleared first (name order) by moving x: as good as CP-SAT here
    assert greedy.admitted
    assert [m.workload for m in greedy.moves] == ["x"]
