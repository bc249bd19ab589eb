"""The simulator's models on tiny hand-checked runs: progress, penalties, failures, resizes, SLOs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pytest

from tessera.core import (
    AcceleratorOption,
    ClusterSnapshot,
    Migration,
    Plan,
    ReplicaAssignment,
    ReplicaDemand,
    Resize,
    Spread,
    Workload,
    WorkloadKind,
)
from tessera.policy import Decision, PolicyContext, load_policy
from tessera.sim.generators import inference_service
from tessera.sim.models import LoadSeries, NodeEvent, ScalingModel, SimWorkload, ThroughputModel
from tessera.sim.report import summarize
from tessera.sim.simulator import FailureProcess, SimConfig, SimJob, Simulator
from tessera.testing import node, nodes


def job(key: str, work: float, replicas: int | tuple[int, int] = 1, rates: dict | None = None, *,
        at: float = 0.0, restart: float = 0.0, scaling: float = 0.0) -> SimWorkload:
    lo, hi = (replicas, replicas) if isinstance(replicas, int) else replicas
    rates = rates or {"A100": 1.0}
    w = Workload(
        key=key, kind=WorkloadKind.TRAINING, demand=ReplicaDemand(accelerators=1),
        min_replicas=lo, max_replicas=hi,
        options=tuple(AcceleratorOption(t, r) for t, r in rates.items()),
        submitted_at_seconds=at, restart_cost_seconds=restart,
    )
    return SimWorkload(w, ThroughputModel(rates, ScalingModel(scaling)), work=work)


def run(cluster, workloads, policy="fifo", **kw) -> Simulator:
    config = kw.pop("config", SimConfig())
    return Simulator(cluster, workloads, load_policy(policy) if isinstance(policy, str) else policy, config, **kw).run()


def test_one_job_finishes_after_work_over_rate():
    sim = run([node("n", "A100", 4)], [job("j", 100.0, 2, {"A100": 5.0})])
    j = sim.jobs["j"]
    assert j.finish == pytest.approx(10.0)  # 2 replicas x 5/s, 100 units
    record = summarize(sim)
    assert record["avg_jct_seconds"] == pytest.approx(10.0)
    # 2 of 4 devices busy for the whole run
    assert record["utilization"]["A100"] == pytest.approx(0.5)


def test_queueing_when_the_cluster_is_full():
    sim = run([node("n", "A100", 2)], [job("a", 10.0, 2), job("b", 10.0, 2, at=1.0)])
    assert sim.jobs["a"].finish == pytest.approx(5.0)
    assert sim.jobs["b"].first_start == pytest.approx(5.0)
    assert sim.jobs["b"].finish == pytest.approx(10.0)
    assert summarize(sim)["avg_queueing_delay_seconds"] == pytest.approx(2.0)  # (0 + 4) / 2


def test_scaling_efficiency_slows_big_gangs():
    sim = run([node("n", "A100", 8)], [job("j", 100.0, 4, {"A100": 1.0}, scaling=0.1)])
    speedup = 4 / (1 + 0.1 * 3)
    assert sim.jobs["j"].finish == pytest.approx(100.0 / speedup)


def test_node_failure_restarts_job_from_last_checkpoint_with_penalty():
    # rate 1/s; checkpoints every 30 s; fails at t=50 (20 s since the checkpoint at 30 lost);
    # the node is back at t=60; restart costs 5 s; 100 - 30 = 70 units left -> 60 + 5 + 70
    cluster = [node("n", "A100", 1)]
    sim = run(cluster, [job("j", 100.0, 1, restart=5.0)],
              config=SimConfig(checkpoint_interval_seconds=30.0),
              node_events=[NodeEvent(50.0, "n", False), NodeEvent(60.0, "n", True)])
    j = sim.jobs["j"]
    assert j.failures == 1 and j.restarts == 1
    assert j.lost_work == pytest.approx(20.0) and j.lost_seconds == pytest.approx(20.0)
    assert j.finish == pytest.approx(135.0)
    assert sim.node_failures == 1


def test_failure_moves_job_to_another_node_at_once():
    cluster = nodes("n", 2, "A100", 1)
    sim = run(cluster, [job("j", 100.0, 1, restart=5.0)], config=SimConfig(checkpoint_interval_seconds=1000.0),
              node_events=[NodeEvent(40.0, "n-0", False)])
    j = sim.jobs["j"]
    assert j.finish == pytest.approx(40.0 + 5.0 + 100.0)  # all 40 units lost: no checkpoint yet


def test_failure_process_is_seeded():
    def once(seed: int) -> tuple[int, float]:
        sim = run(nodes("n", 4, "A100", 2), [job(f"j{i}", 5000.0, 1, at=i * 100.0) for i in range(6)],
                  config=SimConfig(seed=seed), failure_process=FailureProcess(2000.0, 300.0))
        return sim.node_failures, max(j.finish or 0 for j in sim.jobs.values())
    assert once(1) == once(1)
    assert once(1)[0] > 0


class _Scripted:
    """A test policy: places pending gangs like fifo, and at given times proposes given actions."""

    name: ClassVar[str] = "scripted"
    version: ClassVar[str] = "0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.RESIZING, Decision.REBALANCING})

    def __init__(self, actions: dict[float, Plan]) -> None:
        self.actions = actions
        self.fifo = load_policy("fifo")

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        if ctx.now_seconds in self.actions:
            return self.actions.pop(ctx.now_seconds)
        return self.fifo.decide(snapshot, pending, ctx)


def test_resize_shrink_then_grow_hand_checked():
    shrink = Plan(resizes=(Resize("j", remove=(2, 3)),))
    grow = Plan(resizes=(Resize("j", add=(ReplicaAssignment("n"), ReplicaAssignment("n"))),))
    sim = run([node("n", "A100", 4)], [job("j", 200.0, (1, 4), restart=10.0)],
              policy=_Scripted({20.0: shrink, 40.0: grow}), config=SimConfig(round_seconds=10.0))
    j = sim.jobs["j"]
    # 0-20: 4/s -> 80; pause 20-30; 30-40: 2/s -> 100; pause 40-50; then 4/s: 100 left -> 25 s
    assert j.reshards == 2
    assert j.finish == pytest.approx(75.0)
    assert sim.reshards == 2


def test_migration_moves_a_replica_and_pays_its_cost():
    move = Plan(migrations=(Migration("j", 0, ReplicaAssignment("b-0"), estimated_cost_seconds=5.0),))
    sim = run(nodes("a", 1, "A100", 1) + nodes("b", 1, "A100", 1), [job("j", 100.0, 1)],
              policy=_Scripted({10.0: move}), config=SimConfig(round_seconds=10.0))
    j = sim.jobs["j"]
    assert j.migrations == 1 and sim.migrations == 1
    assert j.finish == pytest.approx(105.0)


def test_migration_to_a_faster_type_speeds_up():
    move = Plan(migrations=(Migration("j", 0, ReplicaAssignment("h-0"), estimated_cost_seconds=0.0),))
    w = job("j", 100.0, 1, {"A100": 1.0, "H100": 2.0})
    # both types present; fifo might choose either: force A100 by making H100 busy at first
    sim = run(nodes("a", 1, "A100", 1) + nodes("h", 1, "H100", 1), [job("blocker", 10.0, 1, {"H100": 1.0}), w],
              policy=_Scripted({10.0: move}), config=SimConfig(round_seconds=10.0))
    j = sim.jobs["j"]
    assert j.migrations == 1
    # 10 s on A100 -> 10 done; then 90 at 2/s (migration cost 0 means the workload's restart cost: 0)
    assert j.finish == pytest.approx(55.0)


def test_inference_slo_attainment_is_served_over_offered():
    # 1 replica serves 10 req/s; load 5 req/s for 100 s then 20 req/s for 100 s; cold start 0
    load = LoadSeries((0.0, 100.0), (5.0, 20.0))
    svc = inference_service("svc", throughput={"A100": 10.0}, load=load, min_replicas=1, max_replicas=1,
                            cold_start_seconds=0.0)
    sim = run([node("n", "A100", 2)], [svc], config=SimConfig(horizon_seconds=200.0))
    record = summarize(sim)
    assert record["slo_attainment"] == pytest.approx((500 + 1000) / (500 + 2000))
    assert record["slo_time_fraction"] == pytest.approx(0.5)
    assert sim.jobs["svc"].workload.attributes["request_rate"] == "20"


def test_inference_survives_losing_one_replica():
    load = LoadSeries.constant(10.0)
    svc = inference_service("svc", throughput={"A100": 10.0}, load=load, min_replicas=1, max_replicas=2,
                            cold_start_seconds=0.0, spread=Spread.NODE)
    sim = run(nodes("n", 2, "A100", 1), [svc], config=SimConfig(horizon_seconds=100.0),
              node_events=[NodeEvent(50.0, "n-1", False)])
    # two replicas (20 req/s) until 50, one (10 req/s) after: load always met
    assert summarize(sim)["slo_attainment"] == pytest.approx(1.0)
    assert sim.jobs["svc"].replicas == 1


def test_incremental_snapshot_matches_a_from_scratch_snapshot():
    sim = Simulator(nodes("a", 2, "A100", 4), [job(f"j{i}", 1000.0, 3) for i in range(3)], load_policy("fifo"))
    sim.queue.push(0.0, 4)  # arrivals
    for _ in range(4):
        t, _, _, kind, payload = sim.queue.pop()
        sim.now_seconds = t
        sim._handlers[kind](payload)
    sim._cycle()
    fast = sim.snapshot()
    slow = ClusterSnapshot(fast.nodes.values(), fast.allocations.values(), fast.now_seconds)
    assert len(fast.allocations) == 2
    for name in fast.nodes:
        assert fast.free(name) == slow.free(name)


def test_bounded_pending_list_shows_the_oldest():
    sim = Simulator([node("n", "A100", 1)], [job(f"j{i}", 10.0, 2, at=float(i)) for i in range(5)],
                    load_policy("fifo"), SimConfig(max_pending=2))
    for spec in sim._specs:
        sim.pending_jobs[spec.key] = SimJob(spec)
    assert [w.key for w in sim.pending()] == ["j0", "j1"]


class _Flapping:
    """Stops whatever runs and starts whatever waits, at once: the same work for ever."""

    name: ClassVar[str] = "flapping"
    version: ClassVar[str] = "0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.PREEMPTION})

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        from tessera.core import Placement, Preemption

        return Plan(placements=tuple(Placement(w.key, (ReplicaAssignment("a-0"),)) for w in pending[:1]),
                    preemptions=tuple(Preemption(k, reason="flap") for k in snapshot.allocations))


def test_a_policy_that_stops_and_restarts_work_at_one_instant_for_ever_is_an_error_not_a_hang():
    # x starts at 0; from y's arrival at 10 every cycle stops one and restarts the other
    with pytest.raises(RuntimeError, match="cycles at t=10 s without the clock moving on"):
        run(nodes("a", 1, "A100", 2), [job("x", 100.0), job("y", 100.0, at=10.0)], _Flapping())
