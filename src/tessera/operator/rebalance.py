"""Rebalancing in the operator: decide moves every period, carry them out make-before-break.

Two parts, both driven from the scheduling cycle (:class:`Rebalancer`):

* :meth:`Rebalancer.advance`, every cycle: moves in flight (``status.migrations`` of an
  InferenceService) go one step further. Each move is a small state machine recorded in
  the service's status *before* the cluster is touched, so an operator that restarts
  (or a successor holding the Lease) finishes or undoes it from what is stored:

  1. ``Binding``: the move is recorded (replica, from, to, a fresh replica index and a new
     placementGeneration); the new pod is created and bound on the target in the same
     cycle. Found again unbound in a later cycle (a crash or a failed bind), the move is
     **undone**: the new pod is deleted and the entry dropped; the old replica never stopped.
  2. ``WaitingReady``: the new pod is bound; the old replica keeps serving until the new
     pod is Ready (or the move is undone after ``ready_timeout_seconds``).
  3. ``Releasing``: one status write puts the new replica in ``placement`` in place of the
     old one; then the old pod is deleted. Once it is gone the move is recorded in
     ``migrationHistory``, as a ``Migrated`` Event and in the metrics.

  While a move is in flight, its new pod is not part of ``placement`` (so it is neither a
  scale-down candidate nor a lost replica); :func:`tessera.operator.state.build_state`
  keeps it and counts its room as taken.

* :meth:`Rebalancer.round`, every ``period_seconds``: the rebalancing policy decides on the
  cycle's snapshot with the observed load (a :class:`~tessera.engine.LoadSource`, e.g.
  Prometheus) and each replica's landing time read from status (so the cooldown survives
  restarts). Its validated migrations are started in the listed order when
  :func:`select_moves` allows: an InferenceService replica that is not already moving, at
  most ``maxUnavailable`` moves of one service in flight (across rounds), a target with
  room now. The rest waits for a later round, with the reason logged.

Training (ElasticJob) moves are not carried out here: a gang moves through the elastic
path (plan change with restart); they are reported as waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tessera.api.models import ElasticJob, InferenceService, MigrationRecord, MigrationStatus, ReplicaStatus
from tessera.core import (
    Allocation,
    CapacityError,
    CapacityLedger,
    ClusterSnapshot,
    Migration,
    Resize,
    Spread,
    Workload,
)
from tessera.core.migration import max_unavailable
from tessera.engine import CycleResult, Engine, LoadSource, with_load
from tessera.operator import labels as L
from tessera.operator.faults import NO_FAULTS, CrashPoint, FaultHooks
from tessera.operator.kube import KubeError
from tessera.operator.lease import LeaderElector
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.pods import build_pod
from tessera.operator.ports import KubePort
from tessera.operator.state import ClusterState, PodView, WorkloadView, free_replica_indices, parse_timestamp
from tessera.operator.status import StatusWriter

log = logging.getLogger("tessera.operator.rebalance")

#: finished or undone moves kept in status.migrationHistory per service
HISTORY_LIMIT = 10
#: annotations of an InferenceService copied into the workload's attributes: the migration
#: cost parameters and tessera.dev/max-unavailable (see docs/rebalancing.md)
ATTRIBUTE_PREFIX = f"{L.PREFIX}/"
#: Migrated Event reason, and the Event reason of moves that are undone
MIGRATED = "Migrated"
MIGRATION_ABORTED = "MigrationAborted"
REASON_REBALANCE = "rebalance"
REASON_DEFRAG = "defrag"


# --- pure parts ------------------------------------------------------------------------


def in_flight(view: WorkloadView) -> list[MigrationStatus]:
    """The moves recorded in a workload's status, in the order they started."""
    out = []
    for raw in view.status.get("migrations") or []:
        try:
            out.append(MigrationStatus.model_validate(raw))
        except ValueError:
            log.warning("%s: ignoring a malformed status.migrations entry %r", view.key, raw)
    return out


def history(view: WorkloadView) -> list[MigrationRecord]:
    out = []
    for raw in view.status.get("migrationHistory") or []:
        try:
            out.append(MigrationRecord.model_validate(raw))
        except ValueError:
            continue
    return out


def landing_times(view: WorkloadView) -> dict[int, float]:
    """Replica -> when it landed on its node through a completed move (from the history).

    Replicas that never moved are absent (the rebalancer then uses the placement's
    startTime); replicas moving now are pinned at the move's start.
    """
    landed: dict[int, float] = {}
    for record in history(view):
        if record.outcome == "Completed":
            when = parse_timestamp(record.completionTime) or parse_timestamp(record.startTime)
            landed[record.newReplica] = max(landed.get(record.newReplica, 0.0), when)
    for move in in_flight(view):
        landed[move.replica] = parse_timestamp(move.startTime)
    return landed


def annotated_attributes(view: WorkloadView) -> dict[str, str]:
    """``tessera.dev/*`` annotations of the workload object (migration cost parameters)."""
    annotations = (view.raw.get("metadata") or {}).get("annotations") or {}
    return {k: str(v) for k, v in annotations.items() if k.startswith(ATTRIBUTE_PREFIX)}


def rebalance_snapshot(
    state: ClusterState, load: Mapping[str, float] | None, now_seconds: float
) -> ClusterSnapshot:
    """The cycle's snapshot as the rebalancer needs it.

    Each InferenceService allocation gets its replicas' landing times (cooldown) and its
    ``tessera.dev/*`` annotations as attributes (cost parameters, maxUnavailable); the
    observed load goes in through :func:`~tessera.engine.with_load`.
    """
    allocations: list[Allocation] = []
    for key, allocation in state.snapshot.allocations.items():
        view = state.workloads.get(key)
        if view is not None and isinstance(view.model, InferenceService):
            landed = landing_times(view)
            replicas = tuple(
                replace(rp, since_seconds=landed[rp.replica]) if rp.replica in landed else rp
                for rp in allocation.replicas
            )
            attributes = {**allocation.workload.attributes, **annotated_attributes(view)}
            workload = replace(allocation.workload, attributes=attributes)
            allocation = replace(allocation, workload=workload, replicas=replicas)
        elif view is not None and isinstance(view.model, ElasticJob):
            # a reshard restarts every rank of the job: all its replicas "landed" then, so
            # the cooldown keeps a job that just moved (or resized) from moving again
            since = allocation.stable_since_seconds
            allocation = replace(allocation, replicas=tuple(replace(rp, since_seconds=since)
                                                            for rp in allocation.replicas))
        allocations.append(allocation)
    snapshot = state.snapshot.with_changes(allocations=allocations, now_seconds=now_seconds)
    return with_load(snapshot, load) if load else snapshot


@dataclass(frozen=True)
class MoveStart:
    """A migration the operator starts now."""

    migration: Migration
    source_node: str
    reason: str


@dataclass
class Selection:
    start: list[MoveStart] = field(default_factory=list)
    #: (workload key, replica, why its move does not start this round), in plan order
    waiting: list[tuple[str, int, str]] = field(default_factory=list)


def select_moves(state: ClusterState, snapshot: ClusterSnapshot, result: CycleResult) -> Selection:
    """Which of a validated plan's migrations start now, in the plan's order.

    Refused: moves of anything but a running InferenceService (training moves go through
    the elastic path); a replica already moving (as a source or a new replica); a service
    with ``maxUnavailable`` moves in flight already (earlier rounds count); a target that
    hosts a replica of a ``spread: Node`` service (moves in flight count); a target
    without room now (a later-stage move whose room an earlier move frees only once it
    completes: the next round decides again).
    """
    selection = Selection()
    reason = REASON_DEFRAG if result.plan.placements else REASON_REBALANCE
    ledger = snapshot.ledger()
    started: dict[str, list[MoveStart]] = {}
    for migration in result.plan.migrations:
        outcome = _try_start(state, snapshot, migration, started, ledger, reason)
        if isinstance(outcome, MoveStart):
            started.setdefault(migration.workload, []).append(outcome)
            selection.start.append(outcome)
        else:
            selection.waiting.append((migration.workload, migration.replica, outcome))
    return selection


def _try_start(
    state: ClusterState,
    snapshot: ClusterSnapshot,
    migration: Migration,
    started: Mapping[str, list[MoveStart]],
    ledger: CapacityLedger,
    reason: str,
) -> MoveStart | str:
    """The move to start, or why it waits (``ledger`` loses the target's room when it starts)."""
    view = state.workloads.get(migration.workload)
    if view is None or view.workload is None:
        return "not a Tessera workload"
    if not isinstance(view.model, InferenceService):
        return (f"{view.kind} replicas move through the elastic path (a plan change with restart), "
                "which the rebalancer does not carry out")
    if view.in_flight or view.rollback_reason or view.error:
        return "its placement is being bound or repaired"
    placed = view.placement.get(migration.replica)
    if placed is None:
        return "no such running replica"
    moves = in_flight(view)
    mine = started.get(view.key, [])
    if any(m.replica == migration.replica or m.newReplica == migration.replica for m in moves) or any(
        s.migration.replica == migration.replica for s in mine
    ):
        return "the replica is already moving"
    allocation = snapshot.allocations.get(view.key)
    limit = max_unavailable(allocation.workload if allocation else view.workload)
    if len(moves) + len(mine) >= limit:
        return f"{len(moves) + len(mine)} move(s) of the service in flight (maxUnavailable {limit})"
    target = migration.to.node
    if view.workload.spread is Spread.NODE:
        hosting = {r.node for r in view.placement.values()} | {m.toNode for m in moves} | {
            s.migration.to.node for s in mine}
        if target in hosting:
            return f"{target} already hosts a replica of the service (spread: Node)"
    try:
        ledger.take(target, view.workload.demand)
    except (CapacityError, KeyError) as err:
        return f"no room on {target} yet ({err}); decided again next round"
    return MoveStart(migration, placed.node, reason)


def next_replica_index(view: WorkloadView, state: ClusterState) -> int:
    """A replica index no placement, move or pod of the workload uses (pod names stay unique)."""
    used = set(view.placement) | set(view.incoming) | {p.replica for p in view.pods}
    used |= {m.newReplica for m in in_flight(view)} | {m.replica for m in in_flight(view)}
    used |= {p.replica for p in state.leaving if p.workload_uid == view.uid}
    return free_replica_indices(sorted(used), 1)[0]


def pod_ready(pod: PodView) -> bool:
    conditions = (pod.raw.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def record_of(move: MigrationStatus, outcome: Literal["Completed", "Aborted"], completion: str, observed_seconds: float, why: str) -> MigrationRecord:
    return MigrationRecord(
        replica=move.replica, newReplica=move.newReplica, fromNode=move.fromNode, toNode=move.toNode,
        startTime=move.startTime, completionTime=completion, outcome=outcome,
        estimatedCostSeconds=move.estimatedCostSeconds, observedSeconds=round(observed_seconds, 3), reason=why,
    )


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
        #: the last advance() wrote something: the cycle's snapshot is stale, no round on it
        self._acted = False

    def attach(self, status: StatusWriter, hooks: FaultHooks) -> None:
        """Share the scheduler's status writer (one Event de-dup) and crash-point hooks."""
        self.status = status
        self.hooks = hooks

    @property
    def enabled(self) -> bool:
        return self.engine is not None and self.period_seconds > 0

    # --- moves in flight ---------------------------------------------------------------

    def advance(self, state: ClusterState, errors: list[str],
                guard: Callable[[WorkloadView, str], AbstractContextManager[None]] | None = None) -> None:
        """Take every move in flight one step further (see the module docstring); ``guard``
        (the scheduler's bulkhead) contains whatever one service's moves raise."""
        self._acted = False
        for view in state.workloads.values():
            moves = in_flight(view)
            if not moves or not isinstance(view.model, InferenceService):
                continue
            with guard(view, "advancing its moves") if guard is not None else nullcontext():
                for move in moves:
                    try:
                        self._advance_one(state, view, move)
                    except KubeError as err:
                        errors.append(f"{view.key}: move of {move.pod} to {move.toNode}: {err}")

    def _advance_one(self, state: ClusterState, view: WorkloadView, move: MigrationStatus) -> None:
        now = self.clock()
        if move.stage == "Releasing":
            old = self.kube.read_pod(view.namespace, move.pod)
            old_labels = (old or {}).get("metadata", {}).get("labels") or {}
            if old is not None and old_labels.get(L.WORKLOAD_UID) == view.uid \
                    and old_labels.get(L.REPLICA) == str(move.replica):
                if not old["metadata"].get("deletionTimestamp"):  # a crash before the delete
                    self.kube.delete_pod(view.namespace, move.pod, old["metadata"]["uid"])
                source = state.nodes.get((old.get("spec") or {}).get("nodeName") or "")
                if source is not None and source.node.usable:
                    return  # still going
                # on a node that is gone or not ready the deletion may never be confirmed:
                # the replica serves elsewhere already, so the move is done
            self._finish(view, move, now)
            return
        # Binding / WaitingReady: the old replica must still be part of the service
        problem = ""
        if view.error or view.rollback_reason or view.in_flight or move.replica not in view.placement:
            problem = "the service's placement changed under the move (rolled back, rebound or scaled down)"
        pod = view.incoming.get(move.newReplica)
        if not problem:
            if pod is None or not pod.node_name:
                problem = ("the new pod was not bound when the operator last looked (a restart or a failed bind "
                           "between recording the move and binding)")
            elif pod.node_name != move.toNode:
                problem = f"the new pod is bound to {pod.node_name}, not {move.toNode}"
        if problem:
            self._abort(view, move, problem, now)
            return
        assert pod is not None
        if move.stage == "Binding":  # bound before a restart: carry on
            self._set_stage(view, move, "WaitingReady")
        if not pod_ready(pod):
            waited = now - parse_timestamp(move.startTime)
            if waited > self.ready_timeout_seconds:
                self._abort(view, move, f"the new pod was not Ready within {self.ready_timeout_seconds:.0f}s", now)
            return
        self._cut_over(state, view, move)

    def _cut_over(self, state: ClusterState, view: WorkloadView, move: MigrationStatus) -> None:
        """The new replica is Ready: it replaces the old one in placement, then the old pod goes."""
        old = view.placement[move.replica]
        node = state.nodes.get(move.toNode)
        new = ReplicaStatus(
            replica=move.newReplica, pod=move.newPod, node=move.toNode,
            acceleratorType=node.node.accelerator_type or "" if node else "", generation=move.generation,
        )
        placement = {r: p for r, p in view.placement.items() if r != move.replica}
        placement[move.newReplica] = new
        full = sorted(placement.values(), key=lambda r: r.replica)
        moves = [m.model_copy(update={"stage": "Releasing"}) if m.newReplica == move.newReplica else m
                 for m in in_flight(view)]
        self._patch(view, {
            "placement": [r.model_dump() for r in full],
            "replicas": len(full),
            "migrations": [m.model_dump() for m in moves],
            "message": f"moving {move.pod} from {move.fromNode} to {move.toNode}: {move.newPod} is Ready, "
                       f"removing {move.pod}",
        })
        view.placement = placement
        view.incoming.pop(move.newReplica, None)
        old_pod = next((p for p in view.pods if p.replica == move.replica and p.name == old.pod), None)
        if old_pod is not None:
            self.kube.delete_pod(view.namespace, old_pod.name, old_pod.uid)
            view.pods = [p for p in view.pods if p is not old_pod]

    def _finish(self, view: WorkloadView, move: MigrationStatus, now: float) -> None:
        observed = max(0.0, now - parse_timestamp(move.startTime))
        completion = self.status.now()
        record = record_of(move, "Completed", completion, observed, move.reason or REASON_REBALANCE)
        self._drop(view, move, record, extra={"lastMigrationTime": completion})
        message = (f"moved replica {move.replica} ({move.pod}) from {move.fromNode} to {move.toNode} as "
                   f"{move.newPod} in {observed:.1f}s (estimated cost {move.estimatedCostSeconds:.1f} "
                   f"replica-seconds; {move.message or move.policy})")
        log.info("%s: %s", view.key, message)
        self._post(view, "Normal", MIGRATED, message)
        self.metrics.migrations.labels(policy=move.policy or "unknown", reason=move.reason or REASON_REBALANCE).inc()
        self.metrics.migration_estimated_cost.observe(move.estimatedCostSeconds)
        self.metrics.migration_observed.observe(observed)

    def _abort(self, view: WorkloadView, move: MigrationStatus, why: str, now: float) -> None:
        """Undo a move that has not cut over: delete its new pod, keep the old replica."""
        log.warning("%s: undoing the move of %s to %s: %s", view.key, move.pod, move.toNode, why)
        pod = view.incoming.pop(move.newReplica, None)
        if pod is not None:
            self.kube.delete_pod(view.namespace, pod.name, pod.uid, 0)
        else:  # maybe created after the list (or not listed): delete by name, only if it is ours
            current = self.kube.read_pod(view.namespace, move.newPod)
            labels = (current or {}).get("metadata", {}).get("labels") or {}
            if current is not None and labels.get(L.WORKLOAD_UID) == view.uid \
                    and labels.get(L.PLACEMENT_GENERATION) == str(move.generation):
                self.kube.delete_pod(view.namespace, move.newPod, current["metadata"]["uid"], 0)
        observed = max(0.0, now - parse_timestamp(move.startTime))
        self._drop(view, move, record_of(move, "Aborted", self.status.now(), observed, why))
        self._post(view, "Warning", MIGRATION_ABORTED, f"move of {move.pod} to {move.toNode} undone: {why}")
        self.metrics.migrations_aborted.inc()

    def _drop(self, view: WorkloadView, move: MigrationStatus, record: MigrationRecord,
              extra: Mapping[str, Any] | None = None) -> None:
        moves = [m for m in in_flight(view) if m.newReplica != move.newReplica]
        past = [*history(view), record][-HISTORY_LIMIT:]
        self._patch(view, {
            "migrations": [m.model_dump() for m in moves],
            "migrationHistory": [r.model_dump() for r in past],
            **(extra or {}),
        })

    def _set_stage(self, view: WorkloadView, move: MigrationStatus, stage: str) -> None:
        moves = [m.model_copy(update={"stage": stage}) if m.newReplica == move.newReplica else m
                 for m in in_flight(view)]
        self._patch(view, {"migrations": [m.model_dump() for m in moves]})

    # --- rounds -------------------------------------------------------------------------

    def due(self) -> bool:
        return self.enabled and self.monotonic() >= self._next_round

    def round(
        self,
        state: ClusterState,
        pending: Sequence[Workload],
        errors: list[str],
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
                errors.append(f"rebalancing round skipped: no load: {err}")
                return []
        snapshot = rebalance_snapshot(state, load, self.clock())
        result = self.engine.decide(snapshot, pending)
        if result.error:
            errors.append(f"rebalancing round: {result.error}")
            return []
        selection = select_moves(state, snapshot, result)
        moved: list[str] = []
        if reshard is not None:
            trained = self._move_training(state, result, reshard, errors)
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
                errors.append("lost the scheduler lease during a rebalancing round")
                break
            view = state.workloads[move.migration.workload]
            try:
                self._start(state, view, move, result.policy)
                moved.append(view.key)
            except KubeError as err:
                errors.append(f"{view.key}: could not start the move of replica {move.migration.replica}: {err}")
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

    def _start(self, state: ClusterState, view: WorkloadView, start: MoveStart, policy: str) -> None:
        """Record the move, then create and bind the new pod (make-before-break)."""
        migration = start.migration
        old = view.placement[migration.replica]
        index = next_replica_index(view, state)
        generation = view.placement_generation + 1
        node = state.nodes[migration.to.node]
        move = MigrationStatus(
            replica=migration.replica, pod=old.pod, fromNode=start.source_node, toNode=migration.to.node,
            newReplica=index, newPod=L.pod_name(view.name, index), generation=generation, stage="Binding",
            startTime=self.status.now(), estimatedCostSeconds=round(migration.estimated_cost_seconds, 3),
            policy=policy, reason=start.reason, message=migration.reason[:512],
        )
        # every replica keeps its own generation explicitly, so the new placementGeneration
        # never makes a running pod look stale
        placement = [r.model_copy(update={"generation": r.generation or view.placement_generation})
                     for r in sorted(view.placement.values(), key=lambda r: r.replica)]
        log.info("%s: moving %s from %s to %s as %s (%s)", view.key, old.pod, start.source_node,
                 migration.to.node, move.newPod, migration.reason)
        self._patch(view, {
            "placementGeneration": generation,
            "placement": [r.model_dump() for r in placement],
            "migrations": [*(m.model_dump() for m in in_flight(view)), move.model_dump()],
        })
        view.placement = {r.replica: r for r in placement}
        self.hooks.reached(CrashPoint.MIGRATION_RECORDED)
        try:
            body = build_pod(view, index, migration.to.node, node.node.accelerator_type,
                             node.discovery.resource_name, generation)
            pod, _fresh = self.kube.create_pod(body)
            labels = pod["metadata"].get("labels") or {}
            if labels.get(L.WORKLOAD_UID) != view.uid or labels.get(L.PLACEMENT_GENERATION) != str(generation):
                raise KubeError(f"a pod named {move.newPod} from another decision exists")
            bound_to = (pod.get("spec") or {}).get("nodeName")
            if bound_to and bound_to != migration.to.node:
                raise KubeError(f"pod {move.newPod} is bound to {bound_to}")
            if not bound_to:
                self.elector.require_leader("binding a moved replica")  # never undone
                self.kube.bind_pod(view.namespace, move.newPod, migration.to.node, pod["metadata"]["uid"])
                self.metrics.bound_pods.inc()
        except KubeError as err:
            self._abort(view, move, f"could not create or bind the new pod: {err}", self.clock())
            raise
        self.hooks.reached(CrashPoint.MIGRATION_BOUND)
        self._set_stage(view, move, "WaitingReady")

    # --- writes --------------------------------------------------------------------------

    def _patch(self, view: WorkloadView, status: dict[str, Any]) -> None:
        """Merge-patch status and keep the view's copy in step (later steps of the cycle read it)."""
        self.status.write(view, status, force=True)
        self._acted = True

    def _post(self, view: WorkloadView, event_type: str, reason: str, message: str) -> None:
        self.status.event(view, event_type, reason, message)

