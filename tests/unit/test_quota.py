"""Quotas per accelerator type in a tree of queues (tessera.core.quota) and their enforcement
on actual placements by plan validation and the engine (tessera.core.admission)."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core import (
    Allocation,
    ClusterSnapshot,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    ReplicaPlacement,
    Workload,
    validate_plan,
)
from tessera.core.admission import OVER_QUOTA, quota_usage
from tessera.core.quota import MILLI, Queue, QuotaTree, QuotaUsage, TypeQuota
from tessera.engine import Engine
from tessera.policy import load_policy
from tessera.testing.builders import gang, nodes


def tree(**teams: dict[str, TypeQuota]) -> QuotaTree:
    """org with the given teams under it (each team: type -> quota)."""
    return QuotaTree([Queue("org"), *(Queue(name, "org", quotas) for name, quotas in teams.items())])


def use(**per_queue: int) -> QuotaUsage:
    """H100 in use per queue, in accelerators."""
    usage = QuotaUsage()
    for queue, n in per_queue.items():
        usage.add(queue, "H100", n * MILLI)
    return usage


def test_a_queue_borrows_what_its_siblings_leave_idle_and_no_more():
    t = tree(a={"H100": TypeQuota(8)}, b={"H100": TypeQuota(8)})
    assert t.why_not(use(a=0), "a", "H100", 16 * MILLI) == ""  # b is idle: all of it
    assert "borrow under org" in t.why_not(use(a=16), "b", "H100", 1 * MILLI)  # all lent: a reclaim's work
    assert t.borrowed(use(a=12), "a", "H100") == 4 * MILLI and t.borrowed(use(a=12), "org", "H100") == 0


def test_a_lending_limit_keeps_a_guaranteed_part_for_its_queue():
    t = tree(a={"H100": TypeQuota(8)}, b={"H100": TypeQuota(8, lending_limit=4)})
    assert t.guaranteed("b", "H100") == 4 * MILLI
    assert t.why_not(use(), "a", "H100", 12 * MILLI) == ""
    assert t.why_not(use(), "a", "H100", 13 * MILLI) != ""  # b never lends more than 4
    assert t.why_not(use(a=12), "b", "H100", 4 * MILLI) == ""  # its guaranteed part is always there


def test_a_borrowing_limit_caps_what_a_queue_takes_beyond_its_quota():
    t = tree(a={"H100": TypeQuota(8, borrowing_limit=2)}, b={"H100": TypeQuota(8)})
    assert t.why_not(use(), "a", "H100", 10 * MILLI) == ""
    assert "borrowing limit" in t.why_not(use(), "a", "H100", 11 * MILLI)


def test_trees_share_nothing_and_a_type_without_quota_is_closed():
    t = QuotaTree([Queue("x", quotas={"H100": TypeQuota(4)}), Queue("y", quotas={"H100": TypeQuota(4)})])
    assert t.why_not(QuotaUsage(), "x", "H100", 4 * MILLI) == ""
    assert "over its quota" in t.why_not(QuotaUsage(), "x", "H100", 5 * MILLI)  # y's idle H100 is not x's
    assert t.why_not(QuotaUsage(), "x", "A100", 1 * MILLI) != ""


def test_nested_trees_borrow_through_their_parents():
    t = QuotaTree([Queue("org"), Queue("ml", "org"), Queue("infra", "org", {"H100": TypeQuota(8)}),
                   Queue("a", "ml", {"H100": TypeQuota(4)}), Queue("b", "ml", {"H100": TypeQuota(4)})])
    assert t.quota("ml", "H100") == 8 * MILLI and t.quota("org", "H100") == 16 * MILLI
    assert t.why_not(QuotaUsage(), "a", "H100", 16 * MILLI) == ""  # b's and infra's idle quota
    usage = QuotaUsage()
    usage.add("infra", "H100", 8 * MILLI)
    assert t.why_not(usage, "a", "H100", 8 * MILLI) == ""
    assert t.why_not(usage, "a", "H100", 9 * MILLI) != ""


def test_a_cycle_or_a_missing_parent_leaves_the_queues_out_with_a_reason():
    t = QuotaTree([Queue("p", "q"), Queue("q", "p"), Queue("orphan", "nobody"), Queue("ok")])
    assert set(t.queues) == {"ok"}
    assert "cycle" in t.problems["p"] and "does not exist" in t.problems["orphan"]


# --- on plans --------------------------------------------------------------------------------

CLUSTER = [*nodes("h", 2, "H100", 8), *nodes("a", 2, "A100", 8)]


def queued(workload: Workload, queue: str) -> Workload:
    return dataclasses.replace(workload, queue=queue)


def snap(quotas: QuotaTree, *allocations: Allocation) -> ClusterSnapshot:
    return ClusterSnapshot(CLUSTER, allocations, quotas=quotas)


def running(key: str, queue: str, node_names: list[str], accelerators: int = 8, priority: int = 0) -> Allocation:
    workload = queued(gang(key, len(node_names), accelerators, ["H100", "A100"], priority=priority), queue)
    return Allocation(workload, tuple(ReplicaPlacement(i, n, n[0].upper() + "100") for i, n in enumerate(node_names)))


def test_quota_is_checked_on_the_nodes_a_gang_is_placed_on_not_on_a_sum():
    quotas = QuotaTree([Queue("team", quotas={"H100": TypeQuota(8)})])
    job = queued(gang("ns/j", 2, 4, ["H100", "A100"]), "team")
    on_h100 = Placement("ns/j", (ReplicaAssignment("h-0"), ReplicaAssignment("h-1")))
    on_a100 = Placement("ns/j", (ReplicaAssignment("a-0"), ReplicaAssignment("a-1")))
    assert validate_plan(snap(quotas), [job], Plan(placements=(on_h100,))).ok
    refused = validate_plan(snap(quotas), [job], Plan(placements=(on_a100,)))
    assert not refused.accepted.placements and refused.rejected[0].reason.startswith(OVER_QUOTA)
    assert "A100" in refused.rejected[0].reason


def test_two_placements_of_one_queue_never_exceed_it_together():
    quotas = QuotaTree([Queue("team", quotas={"H100": TypeQuota(8)})])
    first, second = (queued(gang(f"ns/{k}", 1, 8, ["H100"]), "team") for k in "xy")
    plan = Plan(placements=(Placement("ns/x", (ReplicaAssignment("h-0"),)),
                            Placement("ns/y", (ReplicaAssignment("h-1"),))))
    result = validate_plan(snap(quotas), [first, second], plan)
    assert [p.workload for p in result.accepted.placements] == ["ns/x"]


def test_preemption_reclaims_only_what_another_queue_borrows():
    quotas = tree(a={"H100": TypeQuota(8)}, b={"H100": TypeQuota(8)})
    newcomer = queued(gang("ns/new", 1, 8, ["H100"], priority=10), "b")
    place = Placement("ns/new", (ReplicaAssignment("h-1"),))
    # a uses 16: 8 of them borrowed from b, so b may reclaim them
    borrowing = snap(quotas, running("ns/a1", "a", ["h-0"]), running("ns/a2", "a", ["h-1"]))
    plan = Plan(placements=(place,), preemptions=(Preemption("ns/a2", "reclaim", beneficiary="ns/new"),))
    assert validate_plan(borrowing, [newcomer], plan).ok
    # a uses only its own 8 (h-0) and c... a third queue's job runs on h-1 within its quota
    third = tree(a={"H100": TypeQuota(8)}, b={"H100": TypeQuota(0)}, c={"H100": TypeQuota(8)})
    within = snap(third, running("ns/c1", "c", ["h-1"]))
    result = validate_plan(within, [newcomer], Plan(placements=(place,),
                                                    preemptions=(Preemption("ns/c1", "x", beneficiary="ns/new"),)))
    assert not result.accepted.preemptions and "runs within queue c's quota" in result.rejected[0].reason


def test_the_engine_keeps_a_workload_its_queue_cannot_admit_away_from_the_policy():
    quotas = QuotaTree([Queue("small", quotas={"H100": TypeQuota(4)}), Queue("big", quotas={"H100": TypeQuota(16)})])
    too_big = queued(gang("ns/a-too-big", 1, 8, ["H100"], submitted=0), "small")  # first in line
    fits = [queued(gang(f"ns/b{i}", 1, 8, ["H100"], submitted=1 + i), "big") for i in range(2)]

    class Clock:
        def now(self) -> float:
            return 0.0

    result = Engine(load_policy("best-fit"), Clock()).decide(ClusterSnapshot(nodes("h", 2, "H100", 8), quotas=quotas),
                                                [too_big, *fits])
    assert sorted(p.workload for p in result.plan.placements) == ["ns/b0", "ns/b1"]
    assert result.waiting["ns/a-too-big"].startswith(OVER_QUOTA) and "queue small" in result.waiting["ns/a-too-big"]


# --- property: nothing accepted breaks a rule, checked by an independent oracle ------------------


def _oracle(queues: list[Queue], usage: dict[str, int]) -> list[str]:
    """Every rule of tessera.core.quota's docstring, computed from scratch (H100 only)."""
    by = {q.name: q for q in queues}
    kids = {q.name: [c.name for c in queues if c.parent == q.name] for q in queues}

    def quota(n: str) -> int:
        return by[n].quotas.get("H100", TypeQuota()).nominal + sum(quota(c) for c in kids[n])

    def used(n: str) -> int:
        return usage.get(n, 0) + sum(used(c) for c in kids[n])

    def lend(n: str) -> int:
        limit = by[n].quotas.get("H100", TypeQuota()).lending_limit
        return quota(n) if limit is None else min(quota(n), limit)

    broken = []
    for q in queues:
        limit = q.quotas.get("H100", TypeQuota()).borrowing_limit
        if not q.parent and used(q.name) > quota(q.name):
            broken.append(f"root {q.name}")
        if q.parent and limit is not None and used(q.name) > quota(q.name) + limit:
            broken.append(f"borrowing {q.name}")
        if kids[q.name]:
            pool = q.quotas.get("H100", TypeQuota()).nominal + sum(lend(c) for c in kids[q.name]) + max(
                0, used(q.name) - quota(q.name))
            if sum(max(0, used(c) - (quota(c) - lend(c))) for c in kids[q.name]) > pool:
                broken.append(f"pool {q.name}")
    return broken


@st.composite
def _queues_and_plan(draw: st.DrawFn) -> tuple[list[Queue], list[Workload], Plan]:
    def limit() -> int | None:
        return draw(st.one_of(st.none(), st.integers(0, 8)))

    leaves = [Queue(n, draw(st.sampled_from(["org", "org", "sub"])),
                    {"H100": TypeQuota(draw(st.integers(0, 12)), limit(), None)}) for n in ("l0", "l1", "l2")]
    leaves = [dataclasses.replace(q, quotas={"H100": dataclasses.replace(
        q.quotas["H100"], lending_limit=draw(st.one_of(st.none(), st.integers(0, q.quotas["H100"].nominal))))})
        for q in leaves]
    queues = [Queue("org"), Queue("sub", "org", {"H100": TypeQuota(draw(st.integers(0, 4)))}), *leaves]
    workloads, placements = [], []
    counter = itertools.count()
    for _ in range(draw(st.integers(1, 10))):
        key = f"ns/w{next(counter)}"
        size = draw(st.sampled_from([1, 2, 4, 8]))
        workloads.append(queued(gang(key, 1, size, ["H100"]), draw(st.sampled_from(["l0", "l1", "l2"]))))
        placements.append(Placement(key, (ReplicaAssignment(f"h-{draw(st.integers(0, 5))}"),)))
    return queues, workloads, Plan(placements=tuple(placements))


@settings(max_examples=200, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_queues_and_plan())
def test_no_accepted_plan_breaks_a_quota_rule(case: tuple[list[Queue], list[Workload], Plan]) -> None:
    queues, workloads, plan = case
    snapshot = ClusterSnapshot(nodes("h", 6, "H100", 8), quotas=QuotaTree(queues))
    result = validate_plan(snapshot, workloads, plan)
    by_key = {w.key: w for w in workloads}
    usage: dict[str, int] = {}
    for placement in result.accepted.placements:
        w = by_key[placement.workload]
        usage[w.queue] = usage.get(w.queue, 0) + w.demand.accelerators
    assert _oracle(queues, usage) == []
    assert quota_usage(snapshot).of("l0", "H100") == 0


def test_a_policy_is_offered_only_the_types_the_queue_admits_so_it_never_keeps_proposing_a_refused_one():
    quotas = QuotaTree([Queue("team", quotas={"A100": TypeQuota(8)})])  # no H100 quota
    job = queued(gang("ns/j", 1, 8, [("H100", 3.0), ("A100", 1.0)]), "team")  # H100 is 3x faster

    class Clock:
        def now(self) -> float:
            return 0.0

    snapshot = ClusterSnapshot([*nodes("h", 1, "H100", 8), *nodes("a", 1, "A100", 8)], quotas=quotas)
    for policy in ("cpsat", "best-fit"):
        result = Engine(load_policy(policy), Clock()).decide(snapshot, [job])
        assert [(p.workload, p.replicas[0].node) for p in result.plan.placements] == [("ns/j", "a-0")], policy


def test_kueue_like_takes_the_first_flavor_with_quota_and_room_not_the_fastest():
    quotas = QuotaTree([Queue("team", quotas={"A100": TypeQuota(8), "H100": TypeQuota(8)})])  # A100 listed first
    fast = queued(gang("ns/j", 1, 8, [("H100", 3.0), ("A100", 1.0)], submitted=0), "team")
    blocked = queued(gang("ns/big", 1, 16, [("H100", 1.0)], submitted=-1), "team")  # first in line, cannot run

    class Clock:
        def now(self) -> float:
            return 0.0

    snapshot = ClusterSnapshot([*nodes("h", 2, "H100", 8), *nodes("a", 1, "A100", 8)], quotas=quotas)
    result = Engine(load_policy("kueue-like"), Clock()).decide(snapshot, [blocked, fast])
    # BestEffortFIFO: the head that cannot be admitted (16 > its 8 H100) does not block ns/j,
    # which takes A100, its queue's first flavor, although H100 is three times faster
    assert [(p.workload, p.replicas[0].node) for p in result.plan.placements] == [("ns/j", "a-0")]
    best = Engine(load_policy("best-fit"), Clock()).decide(snapshot, [blocked, fast])
    assert [p.replicas[0].node for p in best.plan.placements] == ["h-0"]  # speed-aware


def test_a_queue_uses_its_own_quota_before_it_borrows():
    quotas = QuotaTree([Queue("org"), Queue("a", "org", {"H100": TypeQuota(0), "A100": TypeQuota(8)}),
                        Queue("b", "org", {"H100": TypeQuota(8)})])
    job = queued(gang("ns/j", 1, 8, [("H100", 3.0), ("A100", 1.0)]), "a")  # H100 faster, but only borrowable

    class Clock:
        def now(self) -> float:
            return 0.0

    snapshot = ClusterSnapshot([*nodes("h", 1, "H100", 8), *nodes("a", 1, "A100", 8)], quotas=quotas)
    result = Engine(load_policy("best-fit"), Clock()).decide(snapshot, [job])
    assert [p.replicas[0].node for p in result.plan.placements] == ["a-0"]
    # no room on its own A100 now (another pod holds the node): it borrows H100 instead of waiting
    blocker = Allocation(gang("pod:ns/other", 1, 8, ["A100"]), (ReplicaPlacement(0, "a-0", "A100"),))
    busy = ClusterSnapshot([*nodes("h", 1, "H100", 8), *nodes("a", 1, "A100", 8)], (blocker,), quotas=quotas)
    result = Engine(load_policy("best-fit"), Clock()).decide(busy, [job])
    assert [p.replicas[0].node for p in result.plan.placements] == ["h-0"]


def test_fair_share_weighs_each_accelerator_by_the_job_s_speed_there():
    from tessera.core.admission import fair_share, normalised_use

    quotas = QuotaTree([Queue("org"), Queue("a", "org", {"H100": TypeQuota(8), "A100": TypeQuota(8)}, weight=2.0),
                        Queue("b", "org", {"H100": TypeQuota(8)})])
    # a runs 8 A100 for a job 4x faster on H100 (worth 2 H100); b runs 8 H100 at full speed
    slow = Allocation(queued(gang("ns/a", 1, 8, [("H100", 4.0), ("A100", 1.0)]), "a"),
                      (ReplicaPlacement(0, "a-0", "A100"),))
    fast = Allocation(queued(gang("ns/b", 1, 8, [("H100", 1.0)]), "b"), (ReplicaPlacement(0, "h-0", "H100"),))
    use = normalised_use(snap(quotas, slow, fast))
    assert use == {"a": 2000, "b": 8000}
    assert fair_share(quotas, use, "a") == 2000 / (2.0 * 16000)  # weight 2, quota 16
    assert fair_share(quotas, use, "b") == 1.0 and fair_share(quotas, use, "org") == 10000 / 24000


def test_a_normalized_quota_counts_each_replica_by_its_speed_relative_to_the_reference_type():
    from tessera.core.admission import gang_problem
    from tessera.core.quota import equivalent

    quotas = QuotaTree([Queue("team", quotas={"H100": TypeQuota(16), "A100": TypeQuota(16),
                                              equivalent("H100"): TypeQuota(8)})])
    job = queued(gang("ns/j", 1, 8, [("H100", 4.0), ("A100", 1.0)]), "team")  # 4x faster on H100
    empty = snap(quotas)
    usage = quota_usage(empty)
    assert gang_problem(empty, usage, job, "A100", 1) == ""  # 8 A100 = 2 H100-equivalents
    on_h100 = running("ns/h", "team", ["h-0"])  # 8 H100 at full speed: 8 equivalents (its options say 1.0 each)
    full = snap(quotas, on_h100)
    why = gang_problem(full, quota_usage(full), job, "A100", 1)
    assert "H100-equivalent in use would be 10, over its quota (8" in why, why
    assert quota_usage(full).of("team", equivalent("H100")) == 8 * MILLI


def test_the_queue_api_s_normalized_quota_becomes_an_equivalents_key():
    from tessera.api.queue import Queue as QueueObject
    from tessera.api.queue import queue_core

    obj = QueueObject.model_validate({"metadata": {"name": "team"}, "spec": {
        "quotas": [{"acceleratorType": "V100", "nominal": 8}],
        "normalizedQuota": {"acceleratorType": "H100", "nominal": 4, "lendingLimit": 2}}})
    core = queue_core(obj)
    assert core.quotas["V100"] == TypeQuota(8)
    assert core.quotas["H100-equivalent"] == TypeQuota(4, lending_limit=2)
    tree = QuotaTree([core])
    assert tree.references == ("H100",) and tree.accelerator_types == ("V100",)
