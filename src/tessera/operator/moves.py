"""What the rebalancer reads and decides without API calls: moves in flight, landing times,
which proposed moves start now (tessera.operator.rebalance carries them out).

A move in flight is a **surge replica** in the workload's desired placement
(``status.placement[]`` with ``surgeFor``: the replica it replaces) plus its record in
``status.migrations`` (why, when, at what cost); finished and undone moves are kept in
``status.migrationHistory``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from pydantic import BaseModel

from tessera.api.models import ElasticJob, InferenceService, MigrationRecord, MigrationStatus, ReplicaStatus
from tessera.core import Allocation, CapacityError, CapacityLedger, ClusterSnapshot, Migration, Spread
from tessera.core.migration import max_unavailable
from tessera.engine import CycleResult, with_load
from tessera.operator import labels as L
from tessera.operator.state import ClusterState, PodView, WorkloadView, free_replica_indices, parse_timestamp

log = logging.getLogger("tessera.operator.rebalance")

M = TypeVar("M", bound=BaseModel)

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


def _entries(view: WorkloadView, field_name: str, model: type[M]) -> list[M]:
    """The entries of a status list that parse as ``model`` (a malformed one is logged, skipped)."""
    out = []
    for raw in view.status.get(field_name) or []:
        try:
            out.append(model.model_validate(raw))
        except ValueError:
            log.warning("%s: ignoring a malformed status.%s entry %r", view.key, field_name, raw)
    return out


def in_flight(view: WorkloadView) -> list[MigrationStatus]:
    """The moves recorded in a workload's status, in the order they started."""
    return _entries(view, "migrations", MigrationStatus)


def history(view: WorkloadView) -> list[MigrationRecord]:
    return _entries(view, "migrationHistory", MigrationRecord)


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
    surges = view.surges.values()  # the moves in flight, as the desired placement records them
    mine = started.get(view.key, [])
    if any(s.surgeFor == migration.replica or s.replica == migration.replica for s in surges) or any(
        s.migration.replica == migration.replica for s in mine
    ):
        return "the replica is already moving"
    allocation = snapshot.allocations.get(view.key)
    limit = max_unavailable(allocation.workload if allocation else view.workload)
    if len(surges) + len(mine) >= limit:
        return f"{len(surges) + len(mine)} move(s) of the service in flight (maxUnavailable {limit})"
    target = migration.to.node
    if view.workload.spread is Spread.NODE:
        hosting = {r.node for r in view.placement.values()} | {s.node for s in surges} | {
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
    used = set(view.placement) | set(view.surges) | set(view.incoming) | {p.replica for p in view.pods}
    used |= {m.newReplica for m in in_flight(view)} | {m.replica for m in in_flight(view)}
    used |= {p.replica for p in state.leaving if p.workload_uid == view.uid}
    return free_replica_indices(sorted(used), 1)[0]


def pod_ready(pod: PodView) -> bool:
    conditions = (pod.raw.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def record_of(move: MigrationStatus, outcome: Literal["Completed", "Aborted"], completion: str,
              observed_seconds: float, why: str) -> MigrationRecord:
    return MigrationRecord(
        replica=move.replica, newReplica=move.newReplica, fromNode=move.fromNode, toNode=move.toNode,
        startTime=move.startTime, completionTime=completion, outcome=outcome,
        estimatedCostSeconds=move.estimatedCostSeconds, observedSeconds=round(observed_seconds, 3), reason=why,
    )




def recorded_placement(view: WorkloadView) -> list[ReplicaStatus]:
    """The desired placement as status records it, surge replicas included."""
    return _entries(view, "placement", ReplicaStatus)


def surge_record(view: WorkloadView, surge: ReplicaStatus) -> MigrationStatus:
    """The move a surge replica belongs to: its status.migrations entry, or (none recorded:
    the entry was edited away) one made from the surge replica itself."""
    for move in in_flight(view):
        if move.newReplica == surge.replica:
            return move
    old = view.placement.get(surge.surgeFor if surge.surgeFor is not None else -1)
    return MigrationStatus(replica=surge.surgeFor if surge.surgeFor is not None else -1, pod=old.pod if old else "",
                           fromNode=old.node if old else "", toNode=surge.node, newReplica=surge.replica,
                           newPod=surge.pod, generation=surge.generation)
