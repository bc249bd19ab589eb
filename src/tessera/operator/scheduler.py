"""The single scheduling loop: list -> snapshot -> engine -> pods + Bindings -> status.

One cycle (:meth:`Scheduler.run_cycle`) is plain blocking code; :meth:`Scheduler.loop`
runs it in a worker thread, so neither the Kubernetes client nor a slow policy ever
blocks kopf's event loop.  A cycle runs every ``interval_seconds``, as soon as a
handler signals a change, and when a round-based policy's next round comes due
(:func:`round_wait_seconds`).

Order of writes for one placement (see docs/operator.md, "Crash points"):

1. status: ``phase: Binding``, the placement (pod -> node) and a new placementGeneration;
2. create every pod of the gang, unbound (deterministic names, so a replay gets
   AlreadyExists instead of a second pod);
3. bind each pod through the Binding subresource, skipping pods already bound there;
4. status: ``phase: Running`` + Scheduled=True, and an Event.

A failure in 2-3 deletes the gang's new pods and records BindFailed; a crash anywhere
leaves enough in the cluster for :mod:`tessera.operator.state` to finish or undo it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from tessera.api.models import InferenceService, ReplicaStatus
from tessera.core import (
    Allocation,
    Placement,
    Plan,
    Preemption,
    ReplicaPlacement,
    Spread,
    Workload,
    validate_plan,
)
from tessera.engine import CycleResult, Engine
from tessera.operator import labels as L
from tessera.operator.elastic import INSUFFICIENT, REQUEUED, ElasticActuator, ElasticSettings
from tessera.operator.kube import Kube, KubeError, now_rfc3339
from tessera.operator.lease import LeaderElector
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.pods import build_pod
from tessera.operator.rebalance import Rebalancer
from tessera.operator.state import (
    SCALE_UP_SUFFIX,
    ClusterState,
    PodView,
    WorkloadView,
    build_state,
    free_replica_indices,
    pod_view,
)

log = logging.getLogger("tessera.operator.scheduler")

SCHEDULED = "Scheduled"
#: condition type and reason of a workload evicted by a preemption; the condition stays
#: True while it waits to be placed again (then False, reason Rescheduled)
PREEMPTED = "Preempted"


class WallClock:
    """The operator's Clock port: real time."""

    def now(self) -> float:
        return time.time()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for the block (if it was on), and turn it
    back on afterwards, also when the block raises.

    A scheduling cycle builds millions of small objects at once (the JSON of every pod and
    node, then the state).  The collector's passes keep re-walking them while they are
    alive, which makes the cycle grow faster than the cluster: at 2,000 nodes / 8,000 pods
    parsing and build_state took 4.1 s and 1.9 s with it and 0.6 s each with it paused
    (``bench operator_scale``).  These objects are freed by reference counting; the
    collector runs again as soon as it is back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: how far past a round boundary the loop wakes, so the decision's clock reads the round due
ROUND_WAKE_SLACK_SECONDS = 0.05


def round_wait_seconds(policy: object, now_seconds: float, default: float) -> float:
    """How long the loop may sleep before a round-based policy's next round is due.

    A policy deciding in rounds (CP-SAT with ``round_seconds`` > 0) says when its next round
    is due through ``next_round_seconds()`` (None: no rounds).  A round re-decides running
    work although nothing changed, so no watch event would wake the loop for it.  A round
    already due (or none decided yet: the next cycle decides one) leaves ``default``.
    """
    next_round = getattr(policy, "next_round_seconds", None)
    due = next_round() if callable(next_round) else None
    if not isinstance(due, int | float) or not math.isfinite(due) or due <= now_seconds:
        return default
    return max(ROUND_WAKE_SLACK_SECONDS, min(default, due - now_seconds + ROUND_WAKE_SLACK_SECONDS))


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
) -> list[dict[str, Any]]:
    """Conditions with ``type_`` set; lastTransitionTime changes only when status flips."""
    out: list[dict[str, Any]] = []
    previous = None
    for c in conditions:
        if c.get("type") == type_:
            previous = c
        else:
            out.append(dict(c))
    transition = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    out.append({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition or now_rfc3339(),
        "observedGeneration": generation,
    })
    return sorted(out, key=lambda c: c["type"])


def released_status(view: WorkloadView, reason: str, condition: str, condition_reason: str) -> dict[str, Any]:
    """Status of a workload whose whole placement is given up (evicted, or requeued after a
    failure): Pending without placement, Scheduled=False and ``condition``=True, both with
    ``condition_reason`` and ``reason``."""
    conditions = set_condition(view.status.get("conditions") or [], SCHEDULED, "False", condition_reason, reason,
                               view.generation)
    conditions = set_condition(conditions, condition, "True", condition_reason, reason, view.generation)
    return {
        "phase": "Pending",
        "startTime": None,
        "placement": [],
        "replicas": 0,
        "acceleratorType": "",
        "observedGeneration": view.generation,
        "message": reason,
        "conditions": conditions,
    }


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    """The condition of ``type_`` in a status, or an empty mapping."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a status patch would change anything (ignoring condition timestamps)."""
    for key, value in wanted.items():
        have = current.get(key)
        if key == "conditions":
            strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in value]
            have_strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in have or []]
            if strip != have_strip:
                return False
        elif have != value:
            return False
    return True


@dataclass(frozen=True)
class Executable:
    """What the operator carries out of one decision, and why the rest waits."""

    #: placements that fit in room that is free now
    placements: tuple[Placement, ...]
    #: evictions to carry out this cycle (their beneficiaries are placed in a later cycle)
    preemptions: tuple[Preemption, ...] = ()
    #: pending key -> why it waits although the plan placed it
    waiting: dict[str, str] = field(default_factory=dict)


def executable_placements(
    result: CycleResult, pending: Sequence[Workload], *, leaving_pods: int = 0, evict: bool = True
) -> Executable:
    """Split a validated plan into what this operator does now and what waits.

    Placements are bound only into room that is free *now*: a placement that fits only
    because the same plan evicts, resizes or moves running work waits, since the victims'
    pods still hold their nodes until they are gone.  Preemptions are carried out when
    they are enough to make room for their beneficiary (resizes and migrations are not
    carried out yet, so a beneficiary that also needs those keeps waiting and nothing is
    evicted for it); the beneficiary is placed by a later cycle once the snapshot shows
    the victims' pods gone.  Preemptions without a beneficiary (a gang stopped to move to
    a faster type, a release after a failure) are carried out as they are.  While
    ``leaving_pods`` of earlier evictions or repairs are still going, no new eviction
    starts: their room does not look free yet, so the policy would evict more work for
    the same beneficiary.  ``evict=False`` (scale-up decisions) never evicts.
    """
    plan = result.plan
    if not (plan.preemptions or plan.resizes or plan.migrations):
        return Executable(plan.placements)
    alone = validate_plan(result.snapshot, pending, Plan(placements=plan.placements))
    fit_now = {p.workload for p in alone.accepted.placements}
    with_evictions = validate_plan(result.snapshot, pending,
                                   Plan(placements=plan.placements, preemptions=plan.preemptions))
    freed_by_evictions = {p.workload for p in with_evictions.accepted.placements} - fit_now
    preemptions: list[Preemption] = []
    if evict and not leaving_pods:
        for pre in with_evictions.accepted.preemptions:
            if not pre.beneficiary or pre.beneficiary in freed_by_evictions:
                preemptions.append(pre)
    evicting_for = {p.beneficiary for p in preemptions if p.beneficiary}
    waiting: dict[str, str] = {}
    for rejection in alone.rejected:
        key = rejection.action.workload
        if key in evicting_for:
            victims = ", ".join(p.workload for p in preemptions if p.beneficiary == key)
            waiting[key] = f"preempting {victims} to make room; placed once their pods are gone"
        elif key in freed_by_evictions and evict:
            waiting[key] = (f"needs room that {result.policy} would free by preempting running work; waiting for "
                            f"{leaving_pods} pod(s) being deleted to go before evicting more")
        else:
            waiting[key] = (f"needs room that {result.policy} would free by resizing or moving running work; "
                            "resizes are carried out first and it is placed once their room is free "
                            "(moves of single replicas are not carried out yet)")
    return Executable(alone.accepted.placements, tuple(preemptions), waiting)


def _old_pods_going(state: ClusterState, key: str) -> str:
    """Why a workload's new placement waits for its own terminating pods, or "".

    A workload placed again soon after it was stopped (a round restarting it on another
    type, a re-queued victim finding room) would create pods under the names its old pods,
    still terminating, hold: the create would meet the old pod and fail the bind.  Its
    placement waits until they are gone instead (their pod events wake the loop).
    """
    view = state.workloads.get(state.pending_owner.get(key, ""))
    if view is None or key.endswith(SCALE_UP_SUFFIX):
        return ""
    going = sorted(p.name for p in state.leaving if p.workload_uid == view.uid)
    if not going:
        return ""
    return f"placed once its previous pods are gone ({', '.join(going)} still terminating)"


@dataclass
class CycleReport:
    """What one cycle did (for logs and tests)."""

    leader: bool = False
    result: CycleResult | None = None
    bound: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    deleted_pods: int = 0
    errors: list[str] = field(default_factory=list)


class Scheduler:
    """Owns one engine and applies its decisions to the cluster."""

    def __init__(
        self,
        kube: Kube,
        engine: Engine,
        elector: LeaderElector,
        metrics: OperatorMetrics,
        *,
        interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        rebalancer: Rebalancer | None = None,
        elastic: ElasticSettings | None = None,
    ) -> None:
        self.kube = kube
        self.engine = engine
        self.elector = elector
        self.metrics = metrics
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._warned_nodes: dict[str, tuple[str, ...]] = {}
        self._binds = 0
        #: fault injection for the crash tests: die (like SIGKILL) right after the N-th bind,
        #: i.e. in the middle of a gang. 0 (the default) disables it.
        self.crash_after_binds = int(os.environ.get("TESSERA_FAULT_EXIT_AFTER_BINDS", "0") or 0)
        #: same, right after recording the N-th eviction and before deleting any of its pods
        self.crash_after_evictions = int(os.environ.get("TESSERA_FAULT_EXIT_AFTER_EVICTION_RECORDS", "0") or 0)
        self._evictions = 0
        self._last_event: dict[tuple[str, str], str] = {}
        #: carries out replica moves (always: moves recorded before a restart must finish)
        #: and runs rebalancing rounds when configured (tessera.operator.rebalance)
        self.rebalancer = rebalancer or Rebalancer(kube, metrics, elector, clock=clock)
        #: carries out the elastic policy's resizes and releases (see tessera.operator.elastic)
        self.elastic = ElasticActuator(self, elastic or ElasticSettings.from_env())

    # --- the loop ------------------------------------------------------------------

    async def loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Run cycles until ``stop`` is set. Errors are logged and retried next cycle."""
        while not stop.is_set():
            wake.clear()
            try:
                report = await asyncio.to_thread(self.run_cycle)
                for error in report.errors:
                    log.warning("%s", error)
            except KubeError as err:  # API trouble (missing CRDs, RBAC, a restarting server): retry
                log.warning("scheduling cycle failed: %s", err)
            except Exception:  # the loop must survive any one bad cycle
                log.exception("scheduling cycle failed; retrying")
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            try:
                # a node leaving its failure grace and a policy's round coming due are
                # changes no watch reports: wake for them
                now = self.clock()
                timeout = round_wait_seconds(self.engine.policy, now,
                                             self.elastic.wait_seconds(now, self.interval_seconds))
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        await asyncio.to_thread(self.elector.release)

    def run_cycle(self) -> CycleReport:
        """One scheduling cycle, with the cyclic GC paused throughout (:func:`gc_paused`): the
        cycle's objects are freed by reference counting when it returns, so the collector,
        back on between cycles, has little left to walk."""
        with gc_paused():
            return self._run_cycle()

    def _run_cycle(self) -> CycleReport:
        report = CycleReport()
        started = time.perf_counter()
        try:
            report.leader = self.elector.acquire_or_renew()
        except KubeError as err:
            report.errors.append(f"lease: {err}")
            report.leader = False
        self.metrics.leader.set(1 if report.leader else 0)
        if not report.leader:
            return report
        workloads = self.kube.list_workloads()
        pods = self.kube.list_pods()
        nodes = self.kube.list_nodes()
        now = self.clock()
        state = build_state(nodes, pods, workloads, now, keep_lost=self.elastic.enabled)
        self.elastic.observe(state, nodes, now)
        self._warn_nodes(state)
        self._repair(state, report)
        self.rebalancer.advance(state, report.errors)
        scale_ups = [w for w in state.pending if w.key.endswith(SCALE_UP_SUFFIX)]
        pending = [w for w in state.pending if w not in scale_ups]
        result = self.engine.decide(state.snapshot, pending)
        report.result = result
        executable = executable_placements(result, pending, leaving_pods=len(state.leaving))
        if result.error:
            report.errors.append(result.error)
        if not self.elector.ensure_leader():
            report.errors.append("lost the scheduler lease during the decision; not applying it")
            return report
        evicted = {key for pre in executable.preemptions if (key := self._preempt(state, pre, result, report))}
        self.elastic.resize_all(state, result, report, skip=evicted)
        for view in state.workloads.values():
            # an in-flight decision with nothing left to bind still needs its Running status
            if view.in_flight and not view.rollback_reason and view.key not in evicted:
                self._bind(state, view, list(view.placement.values()), view.to_bind, previous=None, report=report)
        held: dict[str, str] = {}
        for placement in executable.placements:
            if reason := _old_pods_going(state, placement.workload):
                held[placement.workload] = reason
                continue
            self._place(state, placement, result, report)
        waiting = {**result.waiting, **executable.waiting, **held}
        scale_ups = [u for u in scale_ups if state.pending_owner[u.key] not in evicted]
        waiting.update(self._scale_up(state, scale_ups, result, report))
        if not (report.bound or report.preempted or report.rolled_back or report.deleted_pods or state.leaving):
            # only on a settled cycle: the snapshot still describes the cluster
            self.rebalancer.round(state, pending, report.errors,
                                  reshard=lambda resize, result: self.elastic.resize(
                                      state, resize, result, report, label="move"))
        # waiting count, demand and capacity gauges once per cycle, from the snapshot the
        # cycle started with (scale-up decisions see modified snapshots)
        self.metrics.record_cluster(state.snapshot, state.pending, waiting)
        blocked = self._write_waiting(state, waiting)
        self._write_steady(state, blocked)
        self.elastic.settle(state)
        self.metrics.cycle_duration.observe(time.perf_counter() - started)
        return report

    def _scale_up(
        self, state: ClusterState, units: list[Workload], first: CycleResult, report: CycleReport
    ) -> dict[str, str]:
        """Grow running InferenceServices, one engine decision per service.

        Each decision sees the capacity left after this cycle's placements, with the nodes
        that already host a replica of that service closed when it spreads by node, so the
        new replicas keep the one-per-node rule together with the old ones.
        """
        if not units:
            return {}
        pending_by_key = {w.key: w for w in state.pending}
        allocations = list(state.snapshot.allocations.values())
        for placement in executable_placements(first, list(pending_by_key.values()), evict=False).placements:
            workload = pending_by_key[placement.workload]
            allocations.append(Allocation(workload, tuple(
                ReplicaPlacement(i, a.node, state.nodes[a.node].node.accelerator_type, a.devices)
                for i, a in enumerate(placement.replicas))))
        waiting: dict[str, str] = {}
        for unit in sorted(units, key=lambda w: (-w.priority, w.submitted_at_seconds, w.key)):
            view = state.workloads[state.pending_owner[unit.key]]
            # the targets of moves in flight count: their replicas land there
            hosting = {r.node for r in view.placement.values()} | {p.node_name for p in view.incoming.values()} \
                if unit.spread is Spread.NODE else set()
            nodes = [replace(v.node, schedulable=False) if v.node.name in hosting else v.node
                     for v in state.nodes.values()]
            snapshot = state.snapshot.with_changes(nodes=nodes, allocations=allocations)
            result = self.engine.decide(snapshot, [unit])
            executable = executable_placements(result, [unit], evict=False)
            waiting.update({**result.waiting, **executable.waiting})
            if not self.elector.ensure_leader():
                break
            for placement in executable.placements:
                self._place(state, placement, result, report)
                allocations.append(Allocation(unit, tuple(
                    ReplicaPlacement(i, a.node, state.nodes[a.node].node.accelerator_type, a.devices)
                    for i, a in enumerate(placement.replicas))))
        return waiting

    # --- repairs before deciding -----------------------------------------------------

    def _warn_nodes(self, state: ClusterState) -> None:
        for name, warnings in state.node_warnings.items():
            if self._warned_nodes.get(name) != warnings:
                for w in warnings:
                    log.warning("node %s: %s", name, w)
        self._warned_nodes = dict(state.node_warnings)

    def _repair(self, state: ClusterState, report: CycleReport) -> None:
        for pod in state.orphans:
            log.info("deleting orphaned pod %s/%s (its workload is gone)", pod.namespace, pod.name)
            self._delete(pod, report)
        for view in state.workloads.values():
            if view.error:
                self._write_status(view, {
                    "phase": "Failed",
                    "observedGeneration": view.generation,
                    "message": view.error,
                    "conditions": set_condition(view.status.get("conditions") or [], SCHEDULED, "False",
                                                "InvalidSpec", view.error, view.generation),
                }, event=("Warning", "InvalidSpec", view.error))
                continue
            for pod in view.to_delete:
                self._delete(pod, report)
            for note in view.notes:
                self._event(view, "Normal" if note.startswith("scaled") else "Warning",
                            "ScaledDown" if note.startswith("scaled") else "ReplicaLost", note)
            if view.rollback_reason:
                self._rollback(view, view.rollback_reason, report)

    def _delete(self, pod: PodView, report: CycleReport, grace_period_seconds: int | None = None) -> None:
        try:
            self.kube.delete_pod(pod.namespace, pod.name, pod.uid, grace_period_seconds)
            report.deleted_pods += 1
        except KubeError as err:
            report.errors.append(str(err))

    def _rollback(self, view: WorkloadView, reason: str, report: CycleReport) -> None:
        """Undo a whole placement: delete every pod of the workload, back to Pending."""
        log.warning("%s %s: rolling back its placement: %s", view.kind, view.key, reason)
        for pod in view.pods:
            self._delete(pod, report, grace_period_seconds=0)
        view.placement.clear()
        report.rolled_back.append(view.key)
        self._write_status(view, {
            "phase": "Pending",
            "startTime": None,
            "placement": [],
            "replicas": 0,
            "acceleratorType": "",
            "message": reason,
            "conditions": set_condition(view.status.get("conditions") or [], SCHEDULED, "False",
                                        "PlacementRolledBack", reason, view.generation),
        }, event=("Warning", "PlacementRolledBack", reason))

    # --- applying decisions -----------------------------------------------------------

    def _preempt(self, state: ClusterState, preemption: Preemption, result: CycleResult, report: CycleReport) -> str:
        """Evict a running workload whole; returns its key, or "" when nothing was done.

        The decision is recorded first (status: no placement, phase Pending, Scheduled=False
        and Preempted=True with the policy's reason), then every pod is deleted.  A crash
        after the status write leaves pods that are no longer in the placement: the next
        cycle sees them as stale, counts their room as taken and deletes them, so a
        half-evicted gang never keeps running and nothing is bound beside it meanwhile.
        """
        if preemption.after_failure:
            return self.elastic.requeue(state, preemption, result, report)
        view = state.workloads.get(preemption.workload)
        if view is None or view.workload is None or not view.placement:
            report.errors.append(f"preemption of {preemption.workload}: not a running Tessera workload")
            return ""
        reason = preemption.reason or f"preempted by {result.policy}"
        log.info("%s %s: preempting (%s)", view.kind, view.key, reason)
        try:
            self._write_status(view, released_status(view, reason, PREEMPTED, PREEMPTED), force=True)
        except KubeError as err:  # nothing recorded: nothing deleted; the next cycle decides again
            report.errors.append(f"{view.key}: could not record the preemption, not evicting: {err}")
            return ""
        self._evictions += 1
        if self.crash_after_evictions and self._evictions >= self.crash_after_evictions:
            log.error("fault injection: exiting after recording %d evictions "
                      "(TESSERA_FAULT_EXIT_AFTER_EVICTION_RECORDS)", self._evictions)
            os._exit(137)
        view.placement.clear()
        view.in_flight = False
        view.to_bind = []
        for pod in view.pods:
            # graceful: the pod object goes once its containers stopped, and only then does
            # the next cycle see the room free for the beneficiary
            self._delete(pod, report)
        self.metrics.preemptions.labels(policy=result.policy).inc()
        report.preempted.append(view.key)
        self._event(view, "Warning", PREEMPTED, reason)
        return view.key

    def _place(self, state: ClusterState, placement: Placement, result: CycleResult, report: CycleReport) -> None:
        owner = state.pending_owner.get(placement.workload)
        view = state.workloads.get(owner or "")
        if view is None or view.model is None:
            report.errors.append(f"placement for unknown workload {placement.workload}")
            return
        scale_up = placement.workload.endswith(SCALE_UP_SUFFIX)
        previous = list(view.placement.values()) if scale_up else []
        generation = view.placement_generation + 1
        # indices of moves in flight are taken too (their pods exist, outside the placement)
        indices = free_replica_indices([r.replica for r in previous] + list(view.incoming), len(placement.replicas))
        new = [
            ReplicaStatus(
                replica=index,
                pod=L.pod_name(view.name, index),
                node=assignment.node,
                acceleratorType=state.nodes[assignment.node].node.accelerator_type or "",
                generation=generation,
            )
            for index, assignment in zip(indices, placement.replicas, strict=True)
        ]
        full = sorted(previous + new, key=lambda r: r.replica)
        message = f"binding {len(new)} replica(s): " + ", ".join(f"{r.pod} -> {r.node}" for r in new)
        try:
            self._write_status(view, {
                "phase": "Binding",
                "placementGeneration": generation,
                "placement": [r.model_dump() for r in full],
                "observedGeneration": view.generation,
                "message": message,
            }, force=True)
        except KubeError as err:
            report.errors.append(f"{view.key}: could not record the placement, not binding: {err}")
            return
        view.raw = {**view.raw, "status": {**view.status, "placementGeneration": generation, "phase": "Binding"}}
        self._bind(state, view, full, new, previous=previous, report=report,
                   why=f"policy {result.policy}")

    def _bind(
        self,
        state: ClusterState,
        view: WorkloadView,
        full: list[ReplicaStatus],
        replicas: list[ReplicaStatus],
        *,
        previous: list[ReplicaStatus] | None,
        report: CycleReport,
        why: str = "completing a placement recorded before a restart",
    ) -> None:
        """Create then bind ``replicas`` (all or nothing); ``full`` is the placement once done."""
        created: list[tuple[ReplicaStatus, dict[str, Any]]] = []
        try:
            plan = self.elastic.prepare(view, full)  # ElasticJobs: plan ConfigMap + Service first
            for r in replicas:
                node = state.nodes.get(r.node)
                if node is None:
                    raise KubeError(f"node {r.node} no longer exists")
                body = build_pod(view, r.replica, r.node, node.node.accelerator_type, node.discovery.resource_name,
                                 r.generation or view.placement_generation, plan=plan)
                pod, _fresh = self.kube.create_pod(body)
                labels = pod["metadata"].get("labels") or {}
                if labels.get(L.WORKLOAD_UID) != view.uid or labels.get(L.PLACEMENT_GENERATION) != str(
                    r.generation or view.placement_generation
                ):
                    # a pod of that name from another decision (or workload) is still there
                    stale = pod_view(pod)
                    if stale.workload_uid == view.uid:
                        self.kube.delete_pod(stale.namespace, stale.name, stale.uid, 0)
                        raise KubeError(f"pod {r.pod} from an earlier placement still exists; retrying next cycle")
                    raise KubeError(f"a pod named {r.pod} that does not belong to this {view.kind} exists in "
                                    f"namespace {view.namespace}; delete or rename it")
                created.append((r, pod))
            for r, pod in created:
                bound_to = (pod.get("spec") or {}).get("nodeName")
                if bound_to == r.node:
                    continue  # bound before a restart: never bind twice
                if bound_to:
                    raise KubeError(f"pod {r.pod} is bound to {bound_to}, not {r.node}")
                if not self.elector.ensure_leader():
                    raise KubeError("lost the scheduler lease while binding")
                self.kube.bind_pod(view.namespace, r.pod, r.node, pod["metadata"]["uid"])
                self.metrics.bound_pods.inc()
                self._binds += 1
                if self.crash_after_binds and self._binds >= self.crash_after_binds:
                    log.error("fault injection: exiting after %d binds (TESSERA_FAULT_EXIT_AFTER_BINDS)", self._binds)
                    os._exit(137)
        except KubeError as err:
            self._undo(view, replicas, previous, str(err), report)
            return
        report.bound.extend(f"{view.namespace}/{r.pod}" for r in replicas)
        view.placement = {r.replica: r for r in full}
        self.metrics.placements.labels(kind=view.kind, outcome="bound").inc()
        types = sorted({r.acceleratorType for r in full if r.acceleratorType})
        message = f"{len(replicas)} replica(s) bound ({why}): " + ", ".join(f"{r.pod} -> {r.node}" for r in replicas)
        self._write_status(view, self._running_status(view, full, types, message),
                           event=("Normal", "Scheduled", message), force=True)

    def _undo(
        self,
        view: WorkloadView,
        replicas: list[ReplicaStatus],
        previous: list[ReplicaStatus] | None,
        reason: str,
        report: CycleReport,
    ) -> None:
        """A bind failed partway: delete what this decision created so nothing is half-bound."""
        log.warning("%s %s: bind failed, undoing: %s", view.kind, view.key, reason)
        self.metrics.placements.labels(kind=view.kind, outcome="failed").inc()
        # a new decision removes only its own pods; an interrupted one (previous=None) all of them
        names = {r.pod for r in replicas} if previous is not None else {p.name for p in view.pods} | {
            r.pod for r in view.placement.values()}
        for pod in list(view.pods):
            if pod.name in names:
                self._delete(pod, report, grace_period_seconds=0)
        for pod_name in sorted(names):
            try:
                current = self.kube.read_pod(view.namespace, pod_name)
                if current is not None and (current["metadata"].get("labels") or {}).get(L.WORKLOAD_UID) == view.uid:
                    self.kube.delete_pod(view.namespace, pod_name, current["metadata"]["uid"], 0)
            except KubeError as err:
                report.errors.append(str(err))
        report.rolled_back.append(view.key)
        kept = previous or []
        view.placement = {r.replica: r for r in kept}
        status: dict[str, Any] = {
            "phase": "Running" if kept else "Pending",
            "startTime": view.status.get("startTime") if kept else None,
            "placement": [r.model_dump() for r in kept],
            "replicas": len(kept),
            "message": f"bind failed, will retry: {reason}",
            "conditions": set_condition(view.status.get("conditions") or [], SCHEDULED, "True" if kept else "False",
                                        "BindFailed", f"bind failed, will retry: {reason}", view.generation),
        }
        try:
            self._write_status(view, status, event=("Warning", "BindFailed", reason), force=True)
        except KubeError as err:
            report.errors.append(str(err))

    # --- status ---------------------------------------------------------------------

    def _running_status(
        self, view: WorkloadView, full: list[ReplicaStatus], types: list[str], message: str
    ) -> dict[str, Any]:
        status: dict[str, Any] = {
            "phase": "Running",
            "startTime": view.status.get("startTime") or now_rfc3339(),
            "replicas": len(full),
            "placement": [r.model_dump() for r in sorted(full, key=lambda r: r.replica)],
            "acceleratorType": ",".join(types),
            "observedGeneration": view.generation,
            "message": message,
            "conditions": set_condition(view.status.get("conditions") or [], SCHEDULED, "True", "Placed",
                                        message, view.generation),
        }
        for released_type in (PREEMPTED, REQUEUED):  # evicted, or released below min after a failure
            released = _condition(view.status, released_type)
            if released.get("status") == "True":
                status["conditions"] = set_condition(status["conditions"], released_type, "False", "Rescheduled",
                                                     str(released.get("message", "")), view.generation)
        if isinstance(view.model, InferenceService):
            status["selector"] = L.selector(view.uid)
        return status

    def _write_waiting(self, state: ClusterState, waiting: Mapping[str, str]) -> set[str]:
        """Status of what keeps waiting; returns the running services that cannot grow."""
        blocked: set[str] = set()
        present = state.snapshot.accelerator_types()
        for key, reason in waiting.items():
            view = state.workloads.get(state.pending_owner.get(key, ""))
            if view is None or view.workload is None:
                continue
            if key.endswith(SCALE_UP_SUFFIX):
                # a running service that cannot grow: keep it Running, say why in a condition
                conditions = set_condition(view.status.get("conditions") or [], "FullyScaled", "False",
                                           "Unschedulable", reason, view.generation)
                self._write_status(view, {"conditions": conditions, "message": reason},
                                   event=("Warning", "ScaleUpBlocked", reason))
                blocked.add(view.key)
                continue
            allowed = set(view.workload.allowed_types)
            no_type = bool(allowed) and not (allowed & present)
            condition_reason = "NoMatchingAccelerator" if no_type else "Unschedulable"
            preempted = _condition(view.status, PREEMPTED)
            requeued = _condition(view.status, REQUEUED)
            if not no_type and preempted.get("status") == "True":
                # evicted and re-queued: say so until it runs again, with why it still waits
                condition_reason = PREEMPTED
                reason = f"{preempted.get('message', '')}; waiting to be placed again: {reason}"
            elif not no_type and requeued.get("status") == "True":
                condition_reason = INSUFFICIENT  # released below min after a failure
                reason = f"{requeued.get('message', '')}; waiting to be placed again: {reason}"
            status: dict[str, Any] = {
                "phase": "Pending",
                "replicas": 0,
                "observedGeneration": view.generation,
                "message": reason,
                "conditions": set_condition(view.status.get("conditions") or [], SCHEDULED, "False",
                                            condition_reason, reason, view.generation),
            }
            if isinstance(view.model, InferenceService):
                status["selector"] = L.selector(view.uid)
            self._write_status(view, status, event=("Warning", condition_reason, reason))
        return blocked

    def _write_steady(self, state: ClusterState, blocked: set[str]) -> None:
        """Running workloads not touched this cycle: keep status in line with the pods."""
        for view in state.workloads.values():
            # lost replicas await the elastic policy's reshard: keep them in status until then
            if view.error or view.rollback_reason or view.in_flight or not view.placement or view.lost:
                if view.model is not None and isinstance(view.model, InferenceService) \
                        and view.model.spec.replicas == 0 and not view.placement and not view.error:
                    self._write_status(view, {
                        "phase": "Pending", "replicas": 0, "placement": [], "selector": L.selector(view.uid),
                        "observedGeneration": view.generation, "message": "scaled to zero",
                        "conditions": set_condition(view.status.get("conditions") or [], SCHEDULED, "False",
                                                    "ScaledToZero", "spec.replicas is 0", view.generation),
                    })
                continue
            if view.status.get("phase") == "Binding":
                continue  # being bound this cycle; _bind writes the outcome
            full = sorted(view.placement.values(), key=lambda r: r.replica)
            types = sorted({r.acceleratorType for r in full if r.acceleratorType})
            scheduled = next((c for c in view.status.get("conditions") or [] if c.get("type") == SCHEDULED), None)
            if view.status.get("phase") == "Running" and scheduled and scheduled.get("status") == "True":
                message = str(scheduled.get("message", ""))
            else:
                message = f"{len(full)} replica(s) running"
            status = self._running_status(view, full, types, message)
            if view.key in blocked:  # keep the scale-up explanation _write_waiting just wrote
                status["message"] = view.status.get("message", message)
            if isinstance(view.model, InferenceService) and len(full) >= view.model.spec.replicas:
                status["conditions"] = [c for c in status["conditions"] if c["type"] != "FullyScaled"]
            self._write_status(view, status)

    def _write_status(
        self,
        view: WorkloadView,
        status: dict[str, Any],
        *,
        event: tuple[str, str, str] | None = None,
        force: bool = False,
    ) -> None:
        if not force and _same(view.status, status):
            return
        self.kube.patch_status(view.kind, view.namespace, view.name, status)
        merged = {**view.status, **status}  # a JSON merge patch: null removes the field
        view.raw = {**view.raw, "status": {k: v for k, v in merged.items() if v is not None}}
        if event:
            self._event(view, *event)

    def _event(self, view: WorkloadView, event_type: str, reason: str, message: str) -> None:
        """Post an Event unless the same reason+message was the last one posted for it."""
        key = (view.uid, reason)
        if self._last_event.get(key) == message:
            return
        self._last_event[key] = message
        self.kube.post_event(view.kind, dict(view.raw), event_type, reason, message)
