"""Reclaim (tessera.core.reclaim) through the engine: a queue waiting for its own quota gets
it back from borrowers, fewest lost work first, elastic jobs shrunk before any job stops,
never before a minimum runtime, and never in circles."""

from __future__ import annotations

import dataclasses

from tessera.core import Allocation, ClusterSnapshot, Placement, ReplicaAssignment, ReplicaPlacement, Workload
from tessera.core.quota import Queue, QuotaTree, TypeQuota
from tessera.engine import Engine
from tessera.policy import load_policy
from tessera.testing.builders import gang, nodes

NOW = 10_000.0
QUOTAS = QuotaTree([Queue("org"), Queue("a", "org", {"H100": TypeQuota(8)}), Queue("b", "org", {"H100": TypeQuota(8)})])


class Clock:
    def now(self) -> float:
        return NOW


def engine(min_runtime: float = 0.0) -> Engine:
    return Engine(load_policy("best-fit"), Clock(), reclaim_min_runtime_seconds=min_runtime)


def queued(w: Workload, queue: str) -> Workload:
    return dataclasses.replace(w, queue=queue)


def running(key: str, queue: str, node_names: list[str], *, per_replica: int = 8, started: float = 0.0,
            replicas: tuple[int, int] | None = None, priority: int = 0, restart_cost: float = 60.0) -> Allocation:
    lo, hi = replicas or (len(node_names), len(node_names))
    w = dataclasses.replace(queued(gang(key, (lo, hi), per_replica, ["H100"], priority=priority), queue),
                            restart_cost_seconds=restart_cost)
    return Allocation(w, tuple(ReplicaPlacement(i, n, "H100") for i, n in enumerate(node_names)),
                      started_at_seconds=started)


def snap(*allocations: Allocation) -> ClusterSnapshot:
    return ClusterSnapshot(nodes("h", 4, "H100", 8), allocations, NOW, quotas=QUOTAS)


def b_job(key: str = "ns/b1", gpus: int = 8) -> Workload:
    return queued(gang(key, 1, gpus, ["H100"], submitted=NOW - 1), "b")


def test_a_borrower_is_preempted_for_the_queue_it_borrows_from_the_one_that_lost_least_work():
    # team a runs 16 (8 of them b's); the younger job has lost less since it started
    result = engine().decide(snap(running("ns/a-old", "a", ["h-0"], started=1000.0),
                                  running("ns/a-young", "a", ["h-1"], started=9000.0)), [b_job()])
    assert [(p.workload, p.beneficiary) for p in result.plan.preemptions] == [("ns/a-young", "ns/b1")]
    assert result.plan.preemptions[0].reason.startswith("reclaim: queue b")
    assert "reclaiming its queue's quota: preempting ns/a-young" in result.waiting["ns/b1"]
    assert not result.plan.placements  # placed once the victim's pods are gone


def test_an_elastic_borrower_is_shrunk_before_any_job_is_stopped():
    # a runs 16 (8 borrowed): an elastic 2 x 4 (min 1) and a younger rigid 1 x 8; b wants 4
    elastic = running("ns/a-elastic", "a", ["h-0", "h-1"], per_replica=4, replicas=(1, 2), started=9500.0)
    rigid = running("ns/a-rigid", "a", ["h-2"], per_replica=8, started=9900.0)
    result = engine().decide(snap(elastic, rigid), [b_job(gpus=4)])
    assert not result.plan.preemptions
    [resize] = result.plan.resizes
    assert resize.workload == "ns/a-elastic" and resize.remove == (1,) and not resize.add
    assert "shrinking ns/a-elastic" in result.waiting["ns/b1"]


def test_no_reclaim_before_the_minimum_runtime():
    young = snap(running("ns/a1", "a", ["h-0"], started=NOW - 30), running("ns/a2", "a", ["h-1"], started=NOW - 30))
    assert not engine(min_runtime=60).decide(young, [b_job()]).plan.preemptions
    assert engine(min_runtime=20).decide(young, [b_job()]).plan.preemptions


def test_a_queue_asking_beyond_its_own_quota_reclaims_nothing():
    result = engine().decide(snap(running("ns/a1", "a", ["h-0"]), running("ns/a2", "a", ["h-1"])),
                             [queued(gang("ns/b-big", 2, 8, ["H100"]), "b")])  # 16 > b's 8
    assert not result.plan.preemptions and not result.plan.resizes


def test_a_waiting_reclaimer_keeps_borrowers_off_its_quota():
    # a victim is already gone (a runs 8, its own); a3 would borrow the 8 b waits for
    state = snap(running("ns/a1", "a", ["h-0"]))
    a3 = queued(gang("ns/a3", 1, 8, ["H100"], priority=100, submitted=0.0), "a")  # first in line for best-fit
    result = engine().decide(state, [a3, b_job()])
    assert [p.workload for p in result.plan.placements] == ["ns/b1"]
    assert result.waiting["ns/a3"].startswith("over quota")


def test_reclaim_never_goes_round_in_circles():
    # after the reclaim: a runs its own 8, b its own 8; a's next job would borrow: it waits,
    # and a, being within its quota, takes nothing back from b
    after = snap(running("ns/a1", "a", ["h-0"]), running("ns/b1", "b", ["h-1"]))
    result = engine().decide(after, [queued(gang("ns/a3", 1, 8, ["H100"]), "a")])
    assert not result.plan.preemptions and not result.plan.resizes and not result.plan.placements


def test_nothing_is_reclaimed_from_a_queue_within_its_quota_even_if_another_borrows():
    # c borrows 8 (runs 16 of its 8); a runs only its own 8: b reclaims from c, not from a
    quotas = QuotaTree([Queue("org"), Queue("a", "org", {"H100": TypeQuota(8)}), Queue("b", "org", {"H100": TypeQuota(8)}),
                        Queue("c", "org", {"H100": TypeQuota(8)})])
    state = ClusterSnapshot(nodes("h", 4, "H100", 8), (
        running("ns/a1", "a", ["h-0"], started=9999.0),  # youngest: would be first by lost work alone
        running("ns/c1", "c", ["h-1"]), running("ns/c2", "c", ["h-2"])),
        NOW, quotas=quotas)
    result = engine().decide(state, [b_job()])
    assert [p.workload for p in result.plan.preemptions] in (["ns/c1"], ["ns/c2"])


def test_without_queues_the_engine_reclaims_nothing():
    plain = ClusterSnapshot(nodes("h", 1, "H100", 8), (running("ns/x", "", ["h-0"]),), NOW)
    result = engine().decide(plain, [gang("ns/y", 1, 8, ["H100"])])
    assert not result.plan.preemptions
    placement = Placement("ns/y", (ReplicaAssignment("h-0"),))
    assert placement not in result.plan.placements


def with_rules(reclaim: str = "Any", within: str = "LowerPriority") -> QuotaTree:
    return QuotaTree([Queue("org"), Queue("a", "org", {"H100": TypeQuota(8)}),
                      Queue("b", "org", {"H100": TypeQuota(8)}, reclaim_within_tree=reclaim, within_queue=within)])


def test_a_queue_s_preemption_policy_limits_whom_it_reclaims_from():
    borrowers = (running("ns/a-high", "a", ["h-0"], priority=5), running("ns/a-low", "a", ["h-1"], priority=-5))

    def victims(rule: str) -> list[str]:
        state = ClusterSnapshot(nodes("h", 4, "H100", 8), borrowers, NOW, quotas=with_rules(reclaim=rule))
        return [p.workload for p in engine().decide(state, [b_job()]).plan.preemptions]

    assert victims("Never") == []
    assert victims("LowerPriority") == ["ns/a-low"]  # b1 has priority 0
    assert victims("Any") == ["ns/a-low"]  # lowest priority first anyway


def test_within_queue_never_refuses_a_policy_s_preemption_inside_the_queue():
    from tessera.core import Plan, Preemption, validate_plan

    mine = running("ns/b-low", "b", ["h-0"], priority=-5)
    newcomer = queued(gang("ns/b-high", 1, 8, ["H100"], priority=5), "b")
    plan = Plan(placements=(Placement("ns/b-high", (ReplicaAssignment("h-0"),)),),
                preemptions=(Preemption("ns/b-low", "room", beneficiary="ns/b-high"),))
    for rule, ok in (("Never", False), ("LowerPriority", True)):
        state = ClusterSnapshot(nodes("h", 1, "H100", 8), (mine,), NOW, quotas=with_rules(within=rule))
        result = validate_plan(state, [newcomer], plan)
        assert bool(result.accepted.preemptions) is ok, result.rejected
        if not ok:
            assert "withinQueue Never" in result.rejected[0].reason
