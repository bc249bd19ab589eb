"""Priority and preemption: whole gangs only, least lost work, elastic shrink before eviction."""

from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement, Workload
from tessera.engine import Engine
from tessera.policies.cpsat import CpSat
from tessera.testing import gang, node


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def running(workload: Workload, *where: tuple[str, tuple[int, ...]], started: float = 0.0) -> Allocation:
    return Allocation(workload, tuple(ReplicaPlacement(i, n, "A100", d) for i, (n, d) in enumerate(where)),
                      started_at_seconds=started)


def with_restart(workload: Workload, seconds: float) -> Workload:
    fields = {f: getattr(workload, f) for f in workload.__dataclass_fields__}
    return Workload(**{**fields, "restart_cost_seconds": seconds})


ALL = tuple(range(8))


def decide(snap, pending, now=0.0):
    result = Engine(CpSat(), Clock(now), time_budget_seconds=5.0, deterministic=True).decide(snap, pending)
    assert not result.rejected and not result.error, (result.rejected, result.error)
    return result


def test_high_priority_gang_evicts_a_whole_lower_priority_gang_with_a_reason():
    low = gang("ns/low", 2, 8, priority=0)
    snap = ClusterSnapshot([node("a1"), node("a2")], [running(low, ("a1", ALL), ("a2", ALL))])
    result = decide(snap, [gang("ns/high", 1, 8, priority=10)])
    (pre,) = result.plan.preemptions
    assert pre.workload == "ns/low" and pre.beneficiary == "ns/high"
    assert pre.reason.startswith("preempted by ns/high (priority 10)")
    assert [p.workload for p in result.plan.placements] == ["ns/high"]


def test_never_preempts_equal_priority_or_non_preemptible_work():
    same = gang("ns/same", 1, 8, priority=5)
    pinned = gang("ns/pinned", 1, 8, priority=0, preemptible=False)
    snap = ClusterSnapshot([node("a1"), node("a2")], [running(same, ("a1", ALL)), running(pinned, ("a2", ALL))])
    result = decide(snap, [gang("ns/high", 1, 8, priority=5)])
    assert not result.plan.preemptions and not result.plan.placements
    assert "no lower-priority preemptible work" in result.waiting["ns/high"]


def test_chooses_the_victim_that_loses_least_work():
    old = with_restart(gang("ns/old", 1, 8), 600.0)
    fresh = with_restart(gang("ns/fresh", 1, 8), 30.0)
    snap = ClusterSnapshot([node("a1"), node("a2")],
                           [running(old, ("a1", ALL), started=0.0), running(fresh, ("a2", ALL), started=3_500.0)],
                           now_seconds=3_600.0)
    result = decide(snap, [gang("ns/high", 1, 8, priority=1)], now=3_600.0)
    assert [p.workload for p in result.plan.preemptions] == ["ns/fresh"]
    assert result.plan.placements[0].replicas[0].node == "a2"


def test_elastic_jobs_shrink_toward_min_before_anything_is_evicted():
    elastic = gang("ns/elastic", (1, 2), 8, priority=0)
    cheap = with_restart(gang("ns/cheap", 1, 8, priority=0), 1.0)  # evicting it would lose almost nothing
    snap = ClusterSnapshot([node("a1"), node("a2"), node("a3")],
                           [running(elastic, ("a1", ALL), ("a2", ALL)), running(cheap, ("a3", ALL))])
    result = decide(snap, [gang("ns/high", 1, 8, priority=3)])
    assert not result.plan.preemptions
    (resize,) = result.plan.resizes
    assert resize.workload == "ns/elastic" and len(resize.remove) == 1
    assert "shrunk toward its minimum for ns/high" in resize.reason
    assert len(result.plan.placements) == 1


def test_no_preemption_when_even_every_victim_would_not_make_room():
    low = gang("ns/low", 1, 8, priority=0)
    snap = ClusterSnapshot([node("a1")], [running(low, ("a1", ALL))])
    result = decide(snap, [gang("ns/huge", 2, 8, priority=9)])
    assert not result.plan.preemptions
    assert "preempting every lower-priority workload would still not make room" in result.waiting["ns/huge"]


def test_free_room_is_used_before_preempting():
    low = gang("ns/low", 1, 8, priority=0)
    snap = ClusterSnapshot([node("a1"), node("a2")], [running(low, ("a1", ALL))])
    result = decide(snap, [gang("ns/high", 1, 8, priority=9)])
    assert not result.plan.preemptions
    assert result.plan.placements[0].replicas[0].node == "a2"


def test_least_attained_service_preempts_long_running_equal_priority_work_when_enabled():
    long_job = gang("ns/long", 1, 8)
    snap = ClusterSnapshot([node("a1")], [running(long_job, ("a1", ALL), started=0.0)], now_seconds=0.0)
    later = snap.with_changes(now_seconds=7_200.0)
    newcomer = gang("ns/new", 1, 8, submitted=7_000.0)
    for las, expected in ((None, []), (600.0, ["ns/long"])):
        engine = Engine(CpSat(las_after_seconds=las), Clock(0.0), time_budget_seconds=5.0, deterministic=True)
        engine.decide(snap, [])  # the policy starts accounting service here
        engine.clock.t = 7_200.0
        result = engine.decide(later, [newcomer])
        assert [p.workload for p in result.plan.preemptions] == expected
        if las:
            assert "least attained service first" in result.plan.preemptions[0].reason
            assert [p.workload for p in result.plan.placements] == ["ns/new"]
