"""Rebalancing in the operator: decide moves every period, carry them out make-before-break.

A move is a desired placement like any other decision (docs/operator.md).  Starting one is
**one status write**: the service's ``placement`` gains a *surge replica* (a fresh replica
index on the target node, a new placementGeneration, ``surgeFor``: the replica it
replaces) and ``status.migrations`` records why and at what estimated cost.  Then its pod
is created bound to the target through the actuator's pod primitives.  Every cycle after
that, :meth:`Rebalancer.advance` compares the recorded surge replicas with their pods:

* surge pod bound where recorded and Ready -> **take over**: one write drops the old
  replica from ``placement`` (the surge replica becomes a plain one), the record moves to
  ``migrationHistory``; the old pod, now in no placement, is deleted (gracefully) by the
  same rule that deletes any stale pod, this cycle or the next after a crash;
* not Ready yet -> wait, up to ``ready_timeout_seconds``;
* missing or unbound (a crash or a failed bind between the write and the bind), bound
  elsewhere, over time, or the replica it replaces gone -> **undo**: one write drops the
  surge replica (its pod is then stale and deleted), the record goes to the history.

So an operator that restarts, or a successor holding the Lease, finishes or undoes every
move from what status records: there is no separate stage machine to recover.  A surge
replica holds its node's room (tessera.operator.state) and is never counted in
``status.replicas``.

:meth:`Rebalancer.round`, every ``period_seconds``: the rebalancing policy decides on the
cycle's snapshot with the observed load (a :class:`~tessera.engine.LoadSource`, e.g.
Prometheus) and each replica's landing time read from status (so the cooldown survives
restarts); :func:`tessera.operator.moves.select_moves` picks which moves start now.
Training (ElasticJob) moves go through the elastic path (one Resize: a plan change with
restart).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from tessera.api.models import ElasticJob, InferenceService, MigrationStatus, ReplicaStatus
from tessera.core import Migration, Resize, Workload
from tessera.engine import CycleResult, Engine, LoadSource
from tessera.operator import labels as L
from tessera.operator.actuator import Actuator, CycleReport
from tessera.operator.faults import NO_FAULTS, CrashPoint, FaultHooks
from tessera.operator.kube import KubeError
from tessera.operator.lease import LeaderElector
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.moves import (
    HISTORY_LIMIT,
    MIGRATED,
    MIGRATION_ABORTED,
    REASON_DEFRAG,
    REASON_REBALANCE,
    MoveStart,
    history,
    in_flight,
    next_replica_index,
    pod_ready,
    rebalance_snapshot,
    record_of,
    recorded_placement,
    select_moves,
    surge_record,
)
from tessera.operator.ports import KubePort
from tessera.operator.state import ClusterState, WorkloadView, parse_timestamp
from tessera.operator.status import StatusWriter
from tessera.operator.views import with_surges

log = logging.getLogger("tessera.operator.rebalance")

# --- the executor ----------------------------------------------------------------------


class Rebalancer:
    """Carries out moves (every cycle) and, when configured, runs rebalancing rounds.

    Without an ``engine`` no round runs, but moves recorded by an earlier operator are
    still finished or undone.
    """

    def __init__(
        self,
        kube: KubePort,
        metrics: OperatorMetrics,
        elector: LeaderElector,
        *,
        engine: Engine | None = None,
        load_source: LoadSource | None = None,
        period_seconds: float = 0.0,
        ready_timeout_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.elector = elector
        self.engine = engine
        self.load_source = load_source
        self.period_seconds = period_seconds
        self.ready_timeout_seconds = ready_timeout_seconds
        self.clock = clock
        self.monotonic = monotonic
        #: first round one period after start: the cluster settles, load windows fill
        self._next_round = monotonic() + period_seconds
        self.status = StatusWriter(kube, clock, leader=elector.require_leader)
        self.hooks: FaultHooks = NO_FAULTS
        #: the pod primitives (create, bind, delete) every decision shares
        self.actuator = Actuator(kube, self.status, elector, metrics)
        #: the last advance() wrote something: the cycle's snapshot is stale, no round on it
        self._acted = False

    def attach(self, actuator: Actuator, hooks: FaultHooks) -> None:
        """Share the scheduler's actuator (its status writer, one Event de-dup) and hooks."""
        self.actuator = actuator
        self.status = actuator.status
        self.hooks = hooks

    @property
    def enabled(self) -> bool:
        return self.engine is not None and self.period_seconds > 0

    # --- moves in flight ---------------------------------------------------------------

    def advance(self, state: ClusterState, report: CycleReport,
                guard: Callable[[WorkloadView, str], AbstractContextManager[None]] | None = None) -> None:
        """Take every move in flight one step further (see the module docstring); ``guard``
        (the scheduler's bulkhead) contains whatever one service's moves raise."""
        self._acted = False
        for view in state.workloads.values():
            if not (view.surges or view.status.get("migrations")) or not isinstance(view.model, InferenceService):
                continue
            with guard(view, "advancing its moves") if guard is not None else nullcontext():
                for surge in sorted(view.surges.values(), key=lambda r: r.replica):
                    try:
                        self._advance_one(view, surge, report)
                    except KubeError as err:
                        report.errors.append(f"{view.key}: move of replica {surge.surgeFor} to {surge.node}: {err}")
                self._forget_legacy(view)

    def _advance_one(self, view: WorkloadView, surge: ReplicaStatus, report: CycleReport) -> None:
        move = surge_record(view, surge)
        problem = ""
        if view.error or view.rollback_reason or view.in_flight or surge.surgeFor not in view.placement:
            problem = "the service's placement changed under the move (rolled back, rebound or scaled down)"
        pod = view.incoming.get(surge.replica)
        if not problem:
            if pod is None or not pod.node_name:
                problem = ("the new pod was not bound when the operator last looked (a restart or a failed bind "
                           "between recording the move and binding)")
            elif pod.node_name != surge.node:
                problem = f"the new pod is bound to {pod.node_name}, not {surge.node}"
        now = self.clock()
        if problem:
            self._abort(view, move, problem, now, report)
            return
        assert pod is not None
        if not pod_ready(pod):
            if now - parse_timestamp(move.startTime) > self.ready_timeout_seconds:
                self._abort(view, move, f"the new pod was not Ready within {self.ready_timeout_seconds:.0f}s", now,
                            report)
            return
        self._take_over(view, move, surge, now, report)

    def _take_over(self, view: WorkloadView, move: MigrationStatus, surge: ReplicaStatus, now: float,
                   report: CycleReport) -> None:
        """The surge replica is Ready: one write makes it the replica it replaces; the old pod,
        now in no placement, goes (gracefully)."""
        observed = max(0.0, now - parse_timestamp(move.startTime))
        completion = self.status.now()
        landed = surge.model_copy(update={"surgeFor": None})
        desired = [r for r in recorded_placement(view) if r.replica not in (surge.replica, surge.surgeFor)]
        desired = sorted([*desired, landed], key=lambda r: r.replica)
        serving = [r for r in desired if r.surgeFor is None]
        self._record(view, move, record_of(move, "Completed", completion, observed, move.reason or REASON_REBALANCE),
                     desired, extra={
                         "replicas": len(serving),
                         "lastMigrationTime": completion,
                         "message": f"moved {move.pod} from {move.fromNode} to {move.toNode}: {surge.pod} is Ready, "
                                    f"removing {move.pod}",
                     })
        old = view.placement.pop(surge.surgeFor if surge.surgeFor is not None else -1, None)
        view.placement[landed.replica] = landed
        view.incoming.pop(surge.replica, None)
        for pod in [p for p in view.pods if old is not None and p.replica == old.replica]:
            self.actuator.delete(pod, report)
            view.pods.remove(pod)
        message = (f"moved replica {move.replica} ({move.pod}) from {move.fromNode} to {move.toNode} as "
                   f"{move.newPod} in {observed:.1f}s (estimated cost {move.estimatedCostSeconds:.1f} "
                   f"replica-seconds; {move.message or move.policy})")
        log.info("%s: %s", view.key, message)
        self.status.event(view, "Normal", MIGRATED, message)
        self.metrics.migrations.labels(policy=move.policy or "unknown", reason=move.reason or REASON_REBALANCE).inc()
        self.metrics.migration_estimated_cost.observe(move.estimatedCostSeconds)
        self.metrics.migration_observed.observe(observed)

    def _abort(self, view: WorkloadView, move: MigrationStatus, why: str, now: float, report: CycleReport) -> None:
        """Undo a move that has not taken over: one write drops its surge replica (the old
        replica never stopped); its pod, now in no placement, is deleted."""
        log.warning("%s: undoing the move of %s to %s: %s", view.key, move.pod, move.toNode, why)
        desired = [r for r in recorded_placement(view) if r.replica != move.newReplica]
        observed = max(0.0, now - parse_timestamp(move.startTime))
        self._record(view, move, record_of(move, "Aborted", self.status.now(), observed, why), desired)
        pod = view.incoming.pop(move.newReplica, None)
        if pod is not None:
            self.actuator.delete(pod, report, grace_period_seconds=0)
        # not listed (created after the cycle's list): stale from now on, deleted next cycle
        self.status.event(view, "Warning", MIGRATION_ABORTED, f"move of {move.pod} to {move.toNode} undone: {why}")
        self.metrics.migrations_aborted.inc()

    def _record(self, view: WorkloadView, move: MigrationStatus, record: Any, desired: list[ReplicaStatus],
                extra: Mapping[str, Any] | None = None) -> None:
        """One write: the new desired placement, the move out of ``migrations``, into the history."""
        moves = [m for m in in_flight(view) if m.newReplica != move.newReplica]
        past = [*history(view), record][-HISTORY_LIMIT:]
        self._patch(view, {
            "placement": [r.model_dump() for r in desired],
            "migrations": [m.model_dump() for m in moves],
            "migrationHistory": [r.model_dump() for r in past],
            **(extra or {}),
        })
        view.surges.pop(move.newReplica, None)

    def _forget_legacy(self, view: WorkloadView) -> None:
        """Records without a surge replica (written by an operator before surge replicas, or
        left by an edit): a move whose new replica serves already is done, any other undone;
        their pods follow the placement like any stale pod."""
        stale = [m for m in in_flight(view) if m.newReplica not in view.surges]
        if not stale:
            return
        completion = self.status.now()
        past = [*history(view), *(
            record_of(m, "Completed" if m.newReplica in view.placement else "Aborted", completion, 0.0,
                      m.reason if m.newReplica in view.placement else "recorded without a surge replica")
            for m in stale)][-HISTORY_LIMIT:]
        self._patch(view, {
            "migrations": [m.model_dump() for m in in_flight(view) if m.newReplica in view.surges],
            "migrationHistory": [r.model_dump() for r in past],
        })

    # --- rounds -------------------------------------------------------------------------

    def due(self) -> bool:
        return self.enabled and self.monotonic() >= self._next_round

    def round(
        self,
        state: ClusterState,
        pending: Sequence[Workload],
        report: CycleReport,
        reshard: Callable[[Resize, CycleResult], bool] | None = None,
    ) -> list[str]:
        """Decide and start moves if a round is due; returns the keys of the workloads moved.

        ``reshard`` carries out an ElasticJob's moves through the elastic path: one
        ``Resize`` that removes the moving replicas and adds them on their targets (a plan
        change with restart, as the job's pods learn from the plan ConfigMap).  Without it
        training moves are only reported.
        """
        if not self.due() or self._acted:
            return []
        assert self.engine is not None
        self._next_round = self.monotonic() + self.period_seconds
        load: Mapping[str, float] | None = None
        if self.load_source is not None:
            try:
                load = self.load_source.load()
            except Exception as err:  # Prometheus down or a bad query: no round, say why
                report.errors.append(f"rebalancing round skipped: no load: {err}")
                return []
        snapshot = rebalance_snapshot(state, load, self.clock())
        result = self.engine.decide(snapshot, pending)
        if result.error:
            report.errors.append(f"rebalancing round: {result.error}")
            return []
        selection = select_moves(state, snapshot, result)
        moved: list[str] = []
        if reshard is not None:
            trained = self._move_training(state, result, reshard, report.errors)
            moved.extend(trained)
            selection.waiting = [w for w in selection.waiting if w[0] not in trained]
        for key, replica, why in selection.waiting:
            log.info("rebalancing: the move of %s replica %d waits: %s", key, replica, why)
            view = state.workloads.get(key)
            if view is not None and not isinstance(view.model, InferenceService):
                self._post(view, "Normal", "MigrationNotCarriedOut",
                           f"{result.policy} proposed moving replica {replica}: {why}")
        for move in selection.start:
            if not self.elector.ensure_leader():
                report.errors.append("lost the scheduler lease during a rebalancing round")
                break
            view = state.workloads[move.migration.workload]
            try:
                self._start(state, view, move, result.policy, report)
                moved.append(view.key)
            except KubeError as err:
                report.errors.append(f"{view.key}: could not start the move of replica {move.migration.replica}: {err}")
        return moved

    def _move_training(
        self, state: ClusterState, result: CycleResult, reshard: Callable[[Resize, CycleResult], bool],
        errors: list[str],
    ) -> list[str]:
        """One Resize per ElasticJob the plan moves; returns the jobs resharded."""
        by_job: dict[str, list[Migration]] = {}
        for migration in result.plan.migrations:
            view = state.workloads.get(migration.workload)
            if view is not None and isinstance(view.model, ElasticJob) and migration.replica in view.placement:
                by_job.setdefault(migration.workload, []).append(migration)
        done: list[str] = []
        for key, moves in by_job.items():
            if not self.elector.ensure_leader():
                errors.append("lost the scheduler lease during a rebalancing round")
                break
            view = state.workloads[key]
            if view.in_flight or view.rollback_reason or view.error or view.lost:
                continue
            why = "; ".join(sorted({m.reason for m in moves if m.reason})) or "rebalance"
            resize = Resize(key, remove=tuple(m.replica for m in moves), add=tuple(m.to for m in moves),
                            reason=f"moved by {result.policy}: {why}"[:512])
            if reshard(resize, result):
                done.append(key)
                reason = REASON_DEFRAG if result.plan.placements else REASON_REBALANCE
                self.metrics.migrations.labels(policy=result.policy or "unknown", reason=reason).inc(len(moves))
                self.metrics.migration_estimated_cost.observe(sum(m.estimated_cost_seconds for m in moves))
        return done

    def _start(self, state: ClusterState, view: WorkloadView, start: MoveStart, policy: str,
               report: CycleReport) -> None:
        """One write records the move as a surge replica in the desired placement; then its
        pod is created bound to the target (make-before-break)."""
        migration = start.migration
        old = view.placement[migration.replica]
        index = next_replica_index(view, state)
        generation = view.placement_generation + 1
        node = state.nodes[migration.to.node]
        surge = ReplicaStatus(replica=index, pod=L.pod_name(view.name, index), node=migration.to.node,
                              acceleratorType=node.node.accelerator_type or "", generation=generation,
                              surgeFor=migration.replica)
        move = MigrationStatus(
            replica=migration.replica, pod=old.pod, fromNode=start.source_node, toNode=migration.to.node,
            newReplica=index, newPod=surge.pod, generation=generation,
            startTime=self.status.now(), estimatedCostSeconds=round(migration.estimated_cost_seconds, 3),
            policy=policy, reason=start.reason, message=migration.reason[:512],
        )
        # every replica keeps its own generation explicitly, so the new placementGeneration
        # never makes a running pod look stale
        placement = [r.model_copy(update={"generation": r.generation or view.placement_generation})
                     for r in sorted(view.placement.values(), key=lambda r: r.replica)]
        log.info("%s: moving %s from %s to %s as %s (%s)", view.key, old.pod, start.source_node,
                 migration.to.node, surge.pod, migration.reason)
        view.surges[index] = surge
        self._patch(view, {
            "placementGeneration": generation,
            "placement": [r.model_dump() for r in with_surges(view, placement)],
            "migrations": [*(m.model_dump() for m in in_flight(view)), move.model_dump()],
        })
        view.placement = {r.replica: r for r in placement}
        self.hooks.reached(CrashPoint.MIGRATION_RECORDED)
        try:
            self.actuator.bind_created(view, surge, self.actuator.create(state, view, surge, bound=True))
        except KubeError as err:
            self._abort(view, move, f"could not create or bind the new pod: {err}", self.clock(), report)
            raise
        self.hooks.reached(CrashPoint.MIGRATION_BOUND)

    # --- writes --------------------------------------------------------------------------

    def _patch(self, view: WorkloadView, status: dict[str, Any]) -> None:
        """Merge-patch status and keep the view's copy in step (later steps of the cycle read it)."""
        self.status.write(view, status, force=True)
        self._acted = True

    def _post(self, view: WorkloadView, event_type: str, reason: str, message: str) -> None:
        self.status.event(view, event_type, reason, message)

