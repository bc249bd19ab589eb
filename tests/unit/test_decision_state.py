"""Decision state lives in the cluster (issue 13, "decision state in the cluster"): attained
service and restart intents in workload status, the round clock on the Lease. A restarted or
newly elected operator decides exactly as the old leader would have.

On the in-memory cluster of tests/unit/fake_kube.py; the simulator keeps the same state on
its side (tests/unit/test_sim_decision_state.py checks the two executions agree).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from fake_kube import FakeKube, elasticjob, gpu_node
from test_operator_core import T0, Clock

from tessera.core import ClusterSnapshot, Plan, Preemption, RestartIntent, Workload
from tessera.engine import Engine
from tessera.operator.elastic import ElasticSettings
from tessera.operator.lease import LAST_ROUND, LeaderElector
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.scheduler import Scheduler
from tessera.policy import Decision, PolicyContext, load_policy, with_failure_handling

ROUND = 60.0
_ids = iter(range(1_000_000))


def operator(kube: FakeKube, clock: Clock, policy: Any) -> Scheduler:
    """A fresh operator process: its own identity, a fresh policy with no memory."""
    elector = LeaderElector(kube, "default", "tessera-scheduler", f"op-{next(_ids)}", 15, clock=clock)
    engine = Engine(with_failure_handling(policy), clock, time_budget_seconds=2.0)
    return Scheduler(kube, engine, elector, OperatorMetrics(), clock=clock,
                     elastic=ElasticSettings(failure_grace_seconds=0), workers=1)


def rounds_policy() -> Any:
    # service counts for much (scale 10 s) and restarts cost little: a round swaps the jobs
    return load_policy("cpsat", round_seconds=ROUND, service_scale_seconds=10.0, restart_horizon_seconds=1e6)


def phase(kube: FakeKube, name: str) -> str:
    return str((kube.workload(name, "ns").get("status") or {}).get("phase"))


def test_attained_service_and_the_round_clock_survive_a_leader_change() -> None:
    kube, clock = FakeKube([gpu_node("h0")]), Clock()
    kube.add(elasticjob("a", created="2026-01-01T00:00:00Z"))  # 2 x 4 GPUs: the whole node
    kube.add(elasticjob("b", created="2026-01-01T00:00:05Z"))
    old = operator(kube, clock, rounds_policy())
    old.run_cycle()
    # equal jobs: the round starts one of them (which one is the solver's choice)
    first, second = ("a", "b") if phase(kube, "a") == "Running" else ("b", "a")
    assert phase(kube, first) == "Running" and phase(kube, second) == "Pending"
    clock.t = T0 + ROUND
    old.run_cycle()  # a round: 'first' has 60 s of service, 'second' none: 'first' stops for it
    status = kube.workload(first, "ns")["status"]
    assert phase(kube, first) == "Pending", status
    # the run's service went into status: 60 s on 8 accelerators of its only (best) type
    assert status["attainedService"] == pytest.approx(ROUND * 8)
    lease = kube.read_lease("default", "tessera-scheduler")
    assert lease is not None and float(lease["metadata"]["annotations"][LAST_ROUND]) - T0 == pytest.approx(ROUND)

    # the old leader dies; after the Lease expires a new operator with a fresh policy leads
    clock.t = T0 + ROUND + 20
    new = operator(kube, clock, rounds_policy())
    new.run_cycle()
    assert phase(kube, second) == "Running"
    policy = new.engine.policy
    # it continues the old leader's round clock (a fresh clock would have run a round now
    # and put the next one at now + ROUND)
    assert policy.next_round_seconds() - T0 == pytest.approx(2 * ROUND)
    # and it ranks by the service the old leader saw: 'first' waits with 60 s at full size
    planner = policy.inner._rounds
    assert planner.attained_seconds("ns/" + first) == pytest.approx(ROUND)
    assert planner.attained_seconds("ns/" + second) == pytest.approx(0.0)  # started at T0 + 80, now


class MoveOnce:
    """Stops the running job once with an intent to restart it on H100 x1; then places
    pending work with best-fit and records the intents it was given."""

    name: ClassVar[str] = "move-once"
    version: ClassVar[str] = "1"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.PREEMPTION})

    def __init__(self) -> None:
        self.moved = False
        self.seen: list[RestartIntent | None] = []
        self.place = load_policy("best-fit")

    def decide(self, snapshot: ClusterSnapshot, pending: list[Workload], ctx: PolicyContext) -> Plan:
        self.seen.extend(w.restart_intent for w in pending)
        if snapshot.allocations and not self.moved:
            self.moved = True
            key = next(iter(snapshot.allocations))
            return Plan(preemptions=(Preemption(key, "moves to H100", restart_on=RestartIntent("H100", 1, ctx.now_seconds)),))
        return self.place.decide(snapshot, pending, ctx)


def test_a_restart_intent_is_kept_in_status_until_the_job_runs_again() -> None:
    kube, clock = FakeKube([gpu_node("h0")]), Clock()
    kube.add(elasticjob("a", replicas=2, min_replicas=1))
    first = MoveOnce()
    old = operator(kube, clock, first)
    old.run_cycle()
    assert phase(kube, "a") == "Running"
    old.run_cycle()  # stops it with the intent; then the old leader dies
    assert phase(kube, "a") == "Pending"
    status = kube.workload("a", "ns")["status"]
    assert status["restartIntent"] == {"acceleratorType": "H100", "replicas": 1, "decidedAt": T0}
    clock.t = T0 + 20
    successor = MoveOnce()
    successor.moved = True
    new = operator(kube, clock, successor)
    new.run_cycle()
    # the new leader's policy was handed the old leader's intent with the workload
    assert RestartIntent("H100", 1, T0) in successor.seen
    assert phase(kube, "a") == "Running"
    assert not kube.workload("a", "ns")["status"].get("restartIntent")  # carried out: cleared
