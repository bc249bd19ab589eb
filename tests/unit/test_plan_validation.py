from tessera.core import (
    Allocation,
    ClusterSnapshot,
    Migration,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    ReplicaPlacement,
    Resize,
    Spread,
    explain_unfit,
    validate_plan,
)
from tessera.testing import gang, node

RA = ReplicaAssignment


def cluster():
    return ClusterSnapshot([node("h1", "H100", 8), node("h2", "H100", 8), node("a1", "A100", 8)])


def test_valid_gang_is_accepted():
    job = gang("ns/j", 2, 8, ["H100"])
    result = validate_plan(cluster(), [job], Plan(placements=(Placement("ns/j", (RA("h1"), RA("h2"))),)))
    assert result.ok and len(result.accepted.placements) == 1


def test_overcommit_rejects_the_whole_gang():
    job = gang("ns/j", 2, 8, ["H100"])
    plan = Plan(placements=(Placement("ns/j", (RA("h1"), RA("h1"))),))
    result = validate_plan(cluster(), [job], plan)
    assert not result.accepted.placements
    assert "not enough free accelerators" in result.rejected[0].reason
    assert result.ledger.whole_free("h1") == 8  # nothing of the gang stays reserved


def test_gang_size_outside_min_max_is_rejected():
    job = gang("ns/j", (2, 3), 1, ["H100"])
    result = validate_plan(cluster(), [job], Plan(placements=(Placement("ns/j", (RA("h1"),)),)))
    assert "outside [2, 3]" in result.rejected[0].reason


def test_disallowed_type_is_rejected():
    job = gang("ns/j", 1, 1, ["H100"])
    result = validate_plan(cluster(), [job], Plan(placements=(Placement("ns/j", (RA("a1"),)),)))
    assert "may not run on A100" in result.rejected[0].reason


def test_mixing_types_needs_permission():
    job = gang("ns/j", 2, 1, ["H100", "A100"])
    plan = Plan(placements=(Placement("ns/j", (RA("h1"), RA("a1"))),))
    assert "may not mix" in validate_plan(cluster(), [job], plan).rejected[0].reason
    mixed = gang("ns/j", 2, 1, ["H100", "A100"], mixed=True)
    assert validate_plan(cluster(), [mixed], plan).ok


def test_not_ready_node_is_rejected():
    snap = ClusterSnapshot([node("h1", "H100", 8, ready=False)])
    job = gang("ns/j", 1, 1)
    assert "not ready" in validate_plan(snap, [job], Plan(placements=(Placement("ns/j", (RA("h1"),)),))).rejected[0].reason


def test_spread_across_nodes():
    svc = gang("ns/s", 2, 1, spread=Spread.NODE)
    plan = Plan(placements=(Placement("ns/s", (RA("h1"), RA("h1"))),))
    assert "spread across nodes" in validate_plan(cluster(), [svc], plan).rejected[0].reason


def test_preemption_frees_room_for_a_placement():
    low = gang("ns/low", 1, 8, ["A100"], priority=0)
    snap = ClusterSnapshot(
        [node("a1", "A100", 8)], [Allocation(low, (ReplicaPlacement(0, "a1", "A100", tuple(range(8))),))]
    )
    high = gang("ns/high", 1, 8, ["A100"], priority=10)
    plan = Plan(
        preemptions=(Preemption("ns/low", "priority", "ns/high"),),
        placements=(Placement("ns/high", (RA("a1"),)),),
    )
    result = validate_plan(snap, [high], plan)
    assert result.ok


def test_non_preemptible_is_protected():
    low = gang("ns/low", 1, 8, ["A100"], preemptible=False)
    snap = ClusterSnapshot(
        [node("a1", "A100", 8)], [Allocation(low, (ReplicaPlacement(0, "a1", "A100", tuple(range(8))),))]
    )
    result = validate_plan(snap, [], Plan(preemptions=(Preemption("ns/low", "x"),)))
    assert "not preemptible" in result.rejected[0].reason


def test_resize_shrink_and_grow():
    job = gang("ns/j", (1, 3), 4, ["H100"])
    alloc = Allocation(job, (ReplicaPlacement(0, "h1", "H100", (0, 1, 2, 3)), ReplicaPlacement(1, "h2", "H100", (0, 1, 2, 3))))
    snap = ClusterSnapshot([node("h1", "H100", 8), node("h2", "H100", 8)], [alloc])
    grow = Resize("ns/j", add=(RA("h1"),))
    assert validate_plan(snap, [], Plan(resizes=(grow,))).ok
    too_big = Resize("ns/j", add=(RA("h1"), RA("h2")))
    assert "outside [1, 3]" in validate_plan(snap, [], Plan(resizes=(too_big,))).rejected[0].reason
    shrink = Resize("ns/j", remove=(1,))
    result = validate_plan(snap, [], Plan(resizes=(shrink,)))
    assert result.ok and result.ledger.whole_free("h2") == 8


def test_rejected_resize_restores_removed_capacity():
    job = gang("ns/j", (2, 2), 8, ["H100"])
    alloc = Allocation(job, (ReplicaPlacement(0, "h1", "H100", tuple(range(8))), ReplicaPlacement(1, "h2", "H100", tuple(range(8)))))
    snap = ClusterSnapshot([node("h1", "H100", 8), node("h2", "H100", 8)], [alloc])
    result = validate_plan(snap, [], Plan(resizes=(Resize("ns/j", remove=(1,)),)))
    assert "outside [2, 2]" in result.rejected[0].reason
    assert result.ledger.whole_free("h2") == 0


def test_migration_is_make_before_break():
    svc = gang("ns/s", 1, 8, ["H100"])
    alloc = Allocation(svc, (ReplicaPlacement(0, "h1", "H100", tuple(range(8))),))
    snap = ClusterSnapshot([node("h1", "H100", 8), node("h2", "H100", 8)], [alloc])
    ok = validate_plan(snap, [], Plan(migrations=(Migration("ns/s", 0, RA("h2")),)))
    assert ok.ok and ok.ledger.whole_free("h1") == 8 and ok.ledger.whole_free("h2") == 0
    # moving onto its own node needs room for both copies at once: refused
    same = validate_plan(snap, [], Plan(migrations=(Migration("ns/s", 0, RA("h1")),)))
    assert not same.ok


def test_explain_unfit_names_types_and_counts():
    snap = cluster()
    job = gang("ns/j", 4, 8, ["H100"])
    assert explain_unfit(snap.ledger(), job) == "needs 4 replicas (8 accelerators each); 2 fit on H100"
    missing = gang("ns/m", 1, 1, ["MI300X"])
    assert "no node has an allowed accelerator type (MI300X)" in explain_unfit(snap.ledger(), missing)


def test_rejected_resize_does_not_hand_its_room_to_a_placement():
    # issue #13: the resize's removal was freed before the placements and, when its add
    # was then refused, put back over the placement that had used the room (-4000 milli)
    job = gang("ns/j", (1, 2), 4, ["H100"])
    alloc = Allocation(job, (ReplicaPlacement(0, "h1", "H100", (0, 1, 2, 3)),
                             ReplicaPlacement(1, "h1", "H100", (4, 5, 6, 7))))
    snap = ClusterSnapshot([node("h1", "H100", 8)], [alloc])
    newcomer = gang("ns/new", 1, 4, ["H100"])
    plan = Plan(
        resizes=(Resize("ns/j", remove=(1,), add=(RA("nowhere"),)),),
        placements=(Placement("ns/new", (RA("h1"),)),),
    )
    result = validate_plan(snap, [newcomer], plan)
    assert not result.accepted.resizes and not result.accepted.placements
    assert [r.reason for r in result.rejected] == [
        "h1: not enough free accelerators for 4 accelerator(s)",
        "node nowhere does not exist",
    ]
    assert result.ledger.device_free("h1") == [0] * 8


def test_resize_refused_for_its_size_keeps_its_replica_from_a_placement():
    # a removal the resize's size check refuses later is not room for anyone meanwhile
    job = gang("ns/j", (2, 2), 4, ["H100"])
    alloc = Allocation(job, (ReplicaPlacement(0, "h1", "H100", (0, 1, 2, 3)),
                             ReplicaPlacement(1, "h1", "H100", (4, 5, 6, 7))))
    snap = ClusterSnapshot([node("h1", "H100", 8)], [alloc])
    plan = Plan(resizes=(Resize("ns/j", remove=(1,)),), placements=(Placement("ns/new", (RA("h1"),)),))
    result = validate_plan(snap, [gang("ns/new", 1, 4, ["H100"])], plan)
    assert [r.reason for r in result.rejected] == [
        "h1: not enough free accelerators for 4 accelerator(s)",
        "ns/j: resize to 1 replicas is outside [2, 2]",
    ]
    assert result.ledger.whole_free("h1") == 0


def test_valid_actions_around_a_refused_resize_are_checked_again():
    # the migration and the placement do not need the refused resize's room: they stay
    job = gang("ns/j", (1, 2), 4, ["H100"])
    svc = gang("ns/s", 1, 4, ["H100"])
    snap = ClusterSnapshot(
        [node("h1", "H100", 8), node("h2", "H100", 8)],
        [Allocation(job, (ReplicaPlacement(0, "h1", "H100", (0, 1, 2, 3)),
                          ReplicaPlacement(1, "h1", "H100", (4, 5, 6, 7)))),
         Allocation(svc, (ReplicaPlacement(0, "h2", "H100", (0, 1, 2, 3)),))],
    )
    plan = Plan(
        resizes=(Resize("ns/j", remove=(1,), add=(RA("nowhere"),)),),
        migrations=(Migration("ns/s", 0, RA("h2")),),
        placements=(Placement("ns/new", (RA("h2"),)),),
    )
    result = validate_plan(snap, [gang("ns/new", 1, 4, ["H100"])], plan)
    assert [type(r.action).__name__ for r in result.rejected] == ["Resize"]
    assert len(result.accepted.migrations) == 1 and len(result.accepted.placements) == 1
    assert result.ledger.whole_free("h1") == 0 and result.ledger.whole_free("h2") == 0


def test_preemption_stands_or_falls_with_its_beneficiary_placement():
    low = gang("ns/low", 1, 8, ["A100"])
    snap = ClusterSnapshot(
        [node("a1", "A100", 8)], [Allocation(low, (ReplicaPlacement(0, "a1", "A100", tuple(range(8))),))]
    )
    high = gang("ns/high", 1, 8, ["A100"], priority=10)
    plan = Plan(
        preemptions=(Preemption("ns/low", "priority", "ns/high"),),
        placements=(Placement("ns/high", (RA("h1"),)),),  # no such node
    )
    result = validate_plan(snap, [high], plan)
    assert not result.accepted.preemptions and not result.accepted.placements
    assert [r.reason for r in result.rejected] == [
        "preempted for ns/high, whose placement was rejected: node h1 does not exist",
        "node h1 does not exist",
    ]
    assert result.ledger.whole_free("a1") == 0
    # a beneficiary placed by a later decision (no placement here): the eviction stands alone
    alone = validate_plan(snap, [high], Plan(preemptions=(Preemption("ns/low", "priority", "ns/high"),)))
    assert alone.ok and alone.ledger.whole_free("a1") == 8


def test_two_resizes_removing_one_replica_are_refused_not_a_crash():
    job = gang("ns/j", (1, 3), 4, ["H100"])
    alloc = Allocation(job, (ReplicaPlacement(0, "h1", "H100", (0, 1, 2, 3)),
                             ReplicaPlacement(1, "h1", "H100", (4, 5, 6, 7))))
    snap = ClusterSnapshot([node("h1", "H100", 8)], [alloc])
    twice = Resize("ns/j", remove=(1,))
    result = validate_plan(snap, [], Plan(resizes=(twice, twice)))
    assert len(result.accepted.resizes) == 1
    assert [r.reason for r in result.rejected] == ["ns/j: resize removes unknown replicas [1]"]
    assert result.ledger.whole_free("h1") == 4
