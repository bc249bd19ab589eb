"""Replica moves on the operator core (fake cluster behind the Kube port).

A move is a desired placement like any other decision: one status write adds a surge
replica (``surgeFor``) beside the replica it replaces, its pod is created bound, and every
later cycle either lets it take over (one write; the old pod is then stale) or undoes it
(one write; the surge pod is then stale).  A crash at either crash point is finished by the
next operator from what status records.  tests/operator/test_rebalance_moves.py checks the
same against a real kube-apiserver.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from fake_kube import FakeKube, gpu_node, inferenceservice
from test_operator_core import Clock, Crash, CrashAt, bound_gpus

from tessera.core import ClusterSnapshot, Migration, Plan, ReplicaAssignment, Workload
from tessera.engine import Engine
from tessera.operator.elastic import ElasticSettings
from tessera.operator.faults import NO_FAULTS, CrashPoint
from tessera.operator.lease import LeaderElector
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.rebalance import Rebalancer
from tessera.operator.scheduler import Scheduler
from tessera.policy import Decision, PolicyContext, load_policy, with_failure_handling

IDENTITIES = itertools.count()


class MoveReplicaZero:
    """Proposes moving replica 0 of ns/s to ``target`` while replica 0 exists."""

    name: ClassVar[str] = "move-replica-zero"
    version: ClassVar[str] = "1"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.REBALANCING})

    def __init__(self, target: str) -> None:
        self.target = target

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        allocation = snapshot.allocations.get("ns/s")
        if allocation is None or not any(r.replica == 0 for r in allocation.replicas):
            return Plan()
        return Plan(migrations=(Migration("ns/s", 0, ReplicaAssignment(self.target), reason="test move"),))


def operator(kube: FakeKube, clock: Clock, hooks: Any = NO_FAULTS) -> Scheduler:
    elector = LeaderElector(kube, "default", "tessera-scheduler", f"operator-{next(IDENTITIES)}", 15, clock=clock)
    metrics = OperatorMetrics()
    rebalancer = Rebalancer(kube, metrics, elector, engine=Engine(MoveReplicaZero("h2"), clock, time_budget_seconds=1.0),
                            period_seconds=10.0, clock=clock, monotonic=clock)
    engine = Engine(with_failure_handling(load_policy("best-fit")), clock, time_budget_seconds=1.0)
    return Scheduler(kube, engine, elector, metrics, clock=clock, rebalancer=rebalancer, hooks=hooks, workers=1,
                     elastic=ElasticSettings(failure_grace_seconds=0))


def status(kube: FakeKube) -> dict[str, Any]:
    return kube.workload("s", kind="InferenceService").get("status") or {}


def where(kube: FakeKube) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in kube.pods_of("s")}


def placed(kube: FakeKube) -> list[tuple[int, str, int | None]]:
    return [(r["replica"], r["node"], r.get("surgeFor")) for r in status(kube).get("placement") or []]


def never_over(kube: FakeKube) -> None:
    assert all(gpus <= 8 for gpus in bound_gpus(kube).values()), bound_gpus(kube)
    assert all(n == 1 for n in kube.binds.values()), kube.binds  # no pod bound twice


def running_service(clock: Clock) -> tuple[FakeKube, Scheduler]:
    kube = FakeKube([gpu_node("h0"), gpu_node("h1"), gpu_node("h2")])
    kube.add(inferenceservice("s"))
    op = operator(kube, clock)
    for _ in range(3):
        op.run_cycle()
    assert where(kube) == {"s-0": "h0", "s-1": "h1"}
    return kube, op


def test_a_move_is_a_surge_replica_that_takes_over_once_ready() -> None:
    clock = Clock()
    kube, op = running_service(clock)
    clock.t += 11  # a round is due
    op.run_cycle()
    # one write recorded the move as the desired placement; the surge pod is bound beside the old one
    assert placed(kube) == [(0, "h0", None), (1, "h1", None), (2, "h2", 0)]
    assert status(kube)["replicas"] == 2 and [m["newReplica"] for m in status(kube)["migrations"]] == [2]
    assert where(kube) == {"s-0": "h0", "s-1": "h1", "s-2": "h2"}
    never_over(kube)
    op.run_cycle()  # Ready: it takes over, the old pod goes
    assert placed(kube) == [(1, "h1", None), (2, "h2", None)]
    assert where(kube) == {"s-1": "h1", "s-2": "h2"}
    assert status(kube)["replicas"] == 2 and status(kube)["migrations"] == []
    assert [(h["replica"], h["newReplica"], h["outcome"]) for h in status(kube)["migrationHistory"]] == [
        (0, 2, "Completed")]
    assert any(reason == "Migrated" for _n, _t, reason, _m in kube.events)
    never_over(kube)


@pytest.mark.parametrize(("point", "outcome", "pods"), [
    (CrashPoint.MIGRATION_RECORDED, "Aborted", {"s-0": "h0", "s-1": "h1"}),
    (CrashPoint.MIGRATION_BOUND, "Completed", {"s-1": "h1", "s-2": "h2"}),
])
def test_a_crash_in_a_move_is_finished_or_undone_by_the_next_operator(point: CrashPoint, outcome: str,
                                                                      pods: dict[str, str]) -> None:
    clock = Clock()
    kube, _ = running_service(clock)
    crashing = operator(kube, clock, hooks=CrashAt(point, 1))
    clock.t += 16  # the first operator's Lease expires (it stopped); a round is due
    with pytest.raises(Crash):
        crashing.run_cycle()
    assert placed(kube)[-1] == (2, "h2", 0)  # the move was recorded before anything else
    clock.t += 16  # the dead operator's Lease expires
    successor = operator(kube, clock)
    successor.run_cycle()
    assert [h["outcome"] for h in status(kube)["migrationHistory"]] == [outcome]
    assert where(kube) == pods and status(kube)["migrations"] == []
    assert all(r.get("surgeFor") is None for r in status(kube)["placement"])
    assert status(kube)["replicas"] == 2
    never_over(kube)


def test_a_surge_replica_that_never_gets_ready_is_undone_and_the_old_one_keeps_serving() -> None:
    clock = Clock()
    kube, op = running_service(clock)
    clock.t += 11
    op.run_cycle()
    kube.pods[("ns", "s-2")]["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
    op.run_cycle()
    assert placed(kube)[-1] == (2, "h2", 0)  # waiting
    clock.t += 301  # past ready_timeout_seconds
    op.run_cycle()
    assert placed(kube) == [(0, "h0", None), (1, "h1", None)] and where(kube) == {"s-0": "h0", "s-1": "h1"}
    history = status(kube)["migrationHistory"]
    assert [h["outcome"] for h in history] == ["Aborted"] and "not Ready" in history[0]["reason"]


def test_a_scale_up_during_a_move_keeps_the_surge_replica() -> None:
    clock = Clock()
    kube = FakeKube([gpu_node(f"h{i}") for i in range(4)])
    kube.add(inferenceservice("s"))
    op = operator(kube, clock)
    for _ in range(3):
        op.run_cycle()
    clock.t += 11
    op.run_cycle()
    kube.pods[("ns", "s-2")]["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
    raw = kube.workload("s", kind="InferenceService")
    raw["spec"]["replicas"] = 3
    raw["metadata"]["generation"] = 2
    op.run_cycle()  # the third replica is placed (h3: the surge holds h2) and the move goes on
    assert (2, "h2", 0) in placed(kube) and status(kube)["replicas"] == 3
    assert sorted(where(kube).values()) == ["h0", "h1", "h2", "h3"]
    kube.pods[("ns", "s-2")]["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    op.run_cycle()
    assert sorted((r, n) for r, n, _s in placed(kube)) == [(1, "h1"), (2, "h2"), (3, "h3")]
    assert status(kube)["replicas"] == 3 and status(kube)["migrationHistory"][-1]["outcome"] == "Completed"
    never_over(kube)
