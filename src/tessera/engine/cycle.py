"""One scheduling cycle: snapshot -> policy -> validate -> decisions.

Every kind of decision (placement, preemption, elastic resize, migration) goes through
this one door, so nothing a policy proposes reaches the cluster unchecked.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from tessera.core import (
    ClusterSnapshot,
    Placement,
    Plan,
    Preemption,
    Rejection,
    Resize,
    Workload,
    explain_unfit,
    validate_plan,
)
from tessera.core.admission import OVER_QUOTA, Reservation, admit, reserved_usage
from tessera.core.reclaim import RECLAIM, reclaim_actions, reservations
from tessera.engine.ports import Actuator, Clock, ClusterSource, MetricsSink, NullMetrics
from tessera.engine.result import CycleResult
from tessera.policy import BackedByArtifact, Policy, PolicyContext, ReportsDecisionStats


class Engine:
    """Runs a policy safely.

    ``timer`` only measures decision latency; decisions themselves see time through the
    injected clock.  A policy that raises does not stop the loop.  When it raises on a
    queue of several pending workloads, the engine finds the ones it cannot decide (each
    alone) and decides the rest without them: one workload that breaks a policy (an
    extreme number, a shape it never met) waits with the error while the others are
    placed.  When it fails whatever the queue (the running state breaks it), the cycle
    returns an empty plan with the error and every pending workload waits with it.
    """

    def __init__(
        self,
        policy: Policy,
        clock: Clock,
        *,
        seed: int = 0,
        time_budget_seconds: float = 1.0,
        deterministic: bool = False,
        params: Mapping[str, Any] | None = None,
        metrics: MetricsSink | None = None,
        timer: Callable[[], float] = time.perf_counter,
        reclaim_min_runtime_seconds: float = 60.0,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.seed = seed
        self.time_budget_seconds = time_budget_seconds
        self.deterministic = deterministic
        self.params = MappingProxyType(dict(params or {}))
        self.metrics = metrics or NullMetrics()
        self._timer = timer
        self._cycles = 0
        #: with queues: a borrower runs at least this long before its queue's lenders reclaim
        self.reclaim_min_runtime_seconds = reclaim_min_runtime_seconds

    def context(self) -> PolicyContext:
        # a fresh, seeded generator per cycle: replaying cycle N gives the same draws
        return PolicyContext(
            now_seconds=self.clock.now(),
            rng=random.Random(self.seed * 1_000_003 + self._cycles),
            time_budget_seconds=self.time_budget_seconds,
            deterministic=self.deterministic,
            seed=self.seed,
            params=self.params,
        )

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload]) -> CycleResult:
        ctx = self.context()
        self._cycles += 1
        error = ""
        failed: dict[str, str] = {}
        started = self._timer()
        # queues: workloads waiting for their own queue's quota hold it (no borrower takes it
        # back); a workload its queue cannot admit on any type is not offered to the policy
        # (it would hold room others could use); the plan's placements are checked exactly
        reserved = reservations(snapshot, pending) if snapshot.quotas is not None else []
        everyone = pending
        held, pending = quota_admission(snapshot, pending, reserved)
        try:
            proposed = self.policy.decide(snapshot, pending, ctx)
        except Exception as err:  # a broken policy must not take the scheduler down
            proposed = Plan()
            error = f"policy {self.policy.name} failed: {type(err).__name__}: {err}"
            if len(pending) > 1:
                proposed, failed, error = self._without_culprits(snapshot, pending, ctx, error)
        elapsed = self._timer() - started
        # a policy may expose statistics of its last decision (solver status, objective,
        # gap, ...); they travel with the cycle to the metrics
        policy = self.policy
        stats = dict(policy.last_stats) if isinstance(policy, ReportsDecisionStats) and not error else {}
        decided = [w for w in pending if w.key not in failed]
        validated = validate_plan(snapshot, decided, proposed, reserved)
        reclaims = self._reclaim(snapshot, everyone, reserved, validated.accepted)
        if reclaims:
            validated = validate_plan(snapshot, decided, reclaims, reserved)
        waiting = self._waiting(decided, proposed, validated.accepted, validated.rejected, validated.ledger, error)
        waiting.update(failed)
        waiting.update(held)
        actions: list[Preemption | Resize] = [*validated.accepted.preemptions, *validated.accepted.resizes]
        for action in actions:
            if action.reason.startswith(RECLAIM):
                for r in reserved:
                    if r.workload in waiting and action.reason.endswith(f" for {r.workload}"):
                        verb = "shrinking" if isinstance(action, Resize) else "preempting"
                        waiting[r.workload] = f"{waiting[r.workload]}; reclaiming its queue's quota: {verb} " \
                                              f"{action.workload}"
        result = CycleResult(
            policy=self.policy.name,
            policy_version=self.policy.version,
            snapshot=snapshot,
            plan=validated.accepted,
            rejected=validated.rejected,
            waiting=MappingProxyType(waiting),
            decision_seconds=elapsed,
            cycle=self._cycles,
            error=error,
            stats=MappingProxyType({**stats, **self._artifact()}),
        )
        self.metrics.record_cycle(result)
        return result

    def _reclaim(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], reserved: Sequence[Reservation],
                 accepted: Plan) -> Plan | None:
        """``accepted`` plus the shrinks and preemptions that give waiting reservations their
        queue's quota back (tessera.core.reclaim); None when there is nothing to reclaim."""
        placed = {p.workload for p in accepted.placements}
        waiting = [r for r in reserved if r.workload not in placed]
        if not waiting:
            return None
        busy = {p.workload for p in accepted.preemptions} | {r.workload for r in accepted.resizes} | {
            m.workload for m in accepted.migrations}
        actions = reclaim_actions(snapshot, {w.key: w for w in pending}, waiting, self.reclaim_min_runtime_seconds,
                                  busy=busy)
        if not actions:
            return None
        return replace(accepted,
                       preemptions=(*accepted.preemptions, *(a for a in actions if isinstance(a, Preemption))),
                       resizes=(*accepted.resizes, *(a for a in actions if isinstance(a, Resize))))

    def _artifact(self) -> dict[str, str]:
        # a policy backed by a trained artifact (weights) names it, so status and metrics show
        # which model decided; policies without one report nothing extra
        policy = self.policy
        artifact = str(policy.artifact) if isinstance(policy, BackedByArtifact) else ""
        return {"policy_artifact": artifact} if artifact else {}

    def _without_culprits(
        self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext, error: str
    ) -> tuple[Plan, dict[str, str], str]:
        """After the policy raised on ``pending``: decide each alone to find the workloads it
        fails on, then the rest together.  Returns the plan, culprit -> reason, and the error
        left (empty when the rest was decided)."""
        failed: dict[str, str] = {}
        for workload in pending:
            try:
                self.policy.decide(snapshot, [workload], ctx)
            except Exception as err:  # this workload breaks the policy
                failed[workload.key] = (f"policy {self.policy.name} failed on this workload: "
                                        f"{type(err).__name__}: {err}")
        rest = [w for w in pending if w.key not in failed]
        if not failed or not rest:
            return Plan(), failed, error
        try:
            return self.policy.decide(snapshot, rest, ctx), failed, ""
        except Exception as err:
            return Plan(), failed, f"policy {self.policy.name} failed: {type(err).__name__}: {err}"

    def run_cycle(self, source: ClusterSource, actuator: Actuator) -> CycleResult:
        result = self.decide(source.snapshot(), source.pending())
        actuator.apply(result)
        return result

    @staticmethod
    def _waiting(
        pending: Sequence[Workload],
        proposed: Plan,
        accepted: Plan,
        rejected: Sequence[Rejection],
        ledger: Any,
        error: str,
    ) -> dict[str, str]:
        placed = {p.workload for p in accepted.placements}
        refused = {r.action.workload: r.reason for r in rejected if isinstance(r.action, Placement)}
        waiting: dict[str, str] = {}
        for workload in pending:
            if workload.key in placed:
                continue
            if error:
                waiting[workload.key] = error
            elif workload.key in refused and refused[workload.key].startswith(OVER_QUOTA):
                waiting[workload.key] = refused[workload.key]  # a wait for quota, not a policy bug
            elif workload.key in refused:
                waiting[workload.key] = f"policy proposed an invalid placement: {refused[workload.key]}"
            elif workload.key in proposed.unplaced:
                waiting[workload.key] = proposed.unplaced[workload.key]
            else:
                waiting[workload.key] = explain_unfit(ledger, workload)
        return waiting


def quota_admission(snapshot: ClusterSnapshot, pending: Sequence[Workload],
                    reserved: Sequence[Reservation] = ()) -> tuple[dict[str, str], list[Workload]]:
    """Pending workloads their queue cannot admit now on any type -> why, and the others as
    the policy is offered them: only the types their queue admits them on
    (tessera.core.admission.admit).  ``reserved`` room counts as used except by the
    workload that holds it.  No queues: nothing held, nothing changed."""
    if snapshot.quotas is None:
        return {}, list(pending)
    usage = reserved_usage(snapshot, reserved)
    holds = {r.workload: r for r in reserved}
    held: dict[str, str] = {}
    offered = []
    cache: dict[object, tuple[set[str], list[str]]] = {}  # answers for the unchanged usage
    for workload in pending:
        own = holds.get(workload.key)
        if own is not None:
            usage.add(own.queue, own.accelerator_type, -own.milli)
        admitted, why = admit(snapshot, usage, workload, None if own is not None else cache)
        if own is not None:
            usage.add(own.queue, own.accelerator_type, own.milli)
        if admitted is None:
            held[workload.key] = why
        else:
            offered.append(admitted)
    return held, offered
