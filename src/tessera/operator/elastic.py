"""Elastic ElasticJobs in the operator: failure grace, resharding, requeue, plan delivery.

The elastic policy (:class:`tessera.policies.elastic.ElasticWrapper`) decides; this module
carries its decisions out against the API server, in the same crash-safe style as a
placement (see :mod:`tessera.operator.scheduler`):

* **Failure grace.**  A node that stopped being usable (Ready not True, NoExecute or
  NoSchedule taint, cordon) counts as failed only once it has been so for
  ``failure_grace_seconds``, measured from the node's own timestamps (the Ready
  condition's ``lastTransitionTime``, a taint's ``timeAdded``), never from an in-memory
  timer, so a restarted operator keeps the same clock.  During the grace the node is shown
  to the policy as usable but full (its free room held), so the running replicas are not
  resharded on a blip and nothing new lands on the sick node.  A cordon, a taint without
  ``timeAdded`` and a Failed or deleted pod are not blips: they count at once.
* **Resize.**  One write records the new placement (phase Binding, a new
  placementGeneration, new pods with that generation), the new sharding plan and a reshard
  record; then the removed replicas' pods are deleted and the new ones created and bound by
  the scheduler's own ``_bind`` (all or nothing).  A crash after the record leaves the
  workload in phase Binding: :mod:`tessera.operator.state` finishes it (stale pods of removed
  replicas deleted, missing pods created and bound on the recorded nodes) or, when those
  nodes lost their room, undoes it.
* **Requeue.**  ``Preemption(after_failure=True)``: record Pending with ``Requeued`` and
  ``Scheduled=False/InsufficientReplicas`` (survivors < min), then delete the pods.  The
  plan, its generation and the reshard history stay in status (the progress record), so
  the next placement numbers its plan after the last one.
* **Plan delivery.**  Before any pod of an ElasticJob is created, the ConfigMap
  ``<job>-tessera-plan`` (updated in place) and the headless Service ``<job>-headless`` exist,
  both owned by the job; pods get ``hostname``/``subdomain``, the plan env
  (:func:`tessera.api.elastic_contract.pod_env`) and the ConfigMap mounted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tessera.api import elastic_contract as contract
from tessera.api.models import ElasticJob, ReplicaStatus
from tessera.core import (
    Allocation,
    ClusterSnapshot,
    Preemption,
    ReplicaDemand,
    ReplicaPlacement,
    Resize,
    Workload,
    WorkloadKind,
)
from tessera.core.elastic import sharding_for
from tessera.core.sharding import ShardingPlan, plan_sharding
from tessera.engine import CycleResult
from tessera.operator import labels as L
from tessera.operator.kube import KubeError
from tessera.operator.state import (
    CONDITION_TAINT_KEYS,
    TOLERATED_TAINT_KEYS,
    ClusterState,
    WorkloadView,
    parse_timestamp,
)

if TYPE_CHECKING:
    from tessera.operator.scheduler import CycleReport, Scheduler

log = logging.getLogger("tessera.operator.elastic")

#: env var and default of the failure grace (the chart sets it from elastic.failureGraceSeconds)
GRACE_ENV = "TESSERA_FAILURE_GRACE_SECONDS"
DEFAULT_FAILURE_GRACE_SECONDS = 5.0
#: condition type of a job released below its minimum and waiting to be placed again
REQUEUED = "Requeued"
INSUFFICIENT = "InsufficientReplicas"
#: fault injection for the crash tests: exit (like SIGKILL) right after recording the N-th reshard
FAULT_ENV = "TESSERA_FAULT_EXIT_AFTER_RESHARD_RECORDS"


@dataclass(frozen=True, slots=True)
class ElasticSettings:
    """Operator-side elastic settings (the policy's own live in its params)."""

    #: how long a node must stay failed before its replicas count as lost
    failure_grace_seconds: float = DEFAULT_FAILURE_GRACE_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ElasticSettings:
        env = os.environ if environ is None else environ
        raw = env.get(GRACE_ENV, "")
        return cls(failure_grace_seconds=max(0.0, float(raw)) if raw else DEFAULT_FAILURE_GRACE_SECONDS)


# --- failure grace (pure) ----------------------------------------------------------------


def node_failed_since(raw: Mapping[str, Any]) -> float | None:
    """When ``raw`` (a v1 Node) stopped being usable, in Unix seconds; None while usable.

    0.0 means "at once": a cordon or a taint without ``timeAdded`` carries no time and is
    an administrator's decision, not a blip.  With several causes the earliest counts.
    """
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    since: list[float] = []
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        since.append(parse_timestamp((ready or {}).get("lastTransitionTime")))
    if spec.get("unschedulable"):
        since.append(0.0)
    for taint in spec.get("taints") or []:
        key = taint.get("key")
        if taint.get("effect") not in ("NoSchedule", "NoExecute") or key in TOLERATED_TAINT_KEYS | CONDITION_TAINT_KEYS:
            continue
        since.append(parse_timestamp(taint.get("timeAdded")))
    return min(since) if since else None


def precise_rfc3339(seconds: float) -> str:
    """RFC 3339 with milliseconds: the growth hysteresis is timed from it, whole seconds are too coarse."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def growth_deadlines(snapshot: ClusterSnapshot, hysteresis_seconds: float, now_seconds: float) -> list[float]:
    """When running training jobs below their target may next grow (future times only)."""
    out = []
    for allocation in snapshot.allocations.values():
        workload = allocation.workload
        if workload.kind is WorkloadKind.TRAINING and len(allocation.replicas) < workload.target_replicas:
            at = allocation.stable_since_seconds + hysteresis_seconds
            if at > now_seconds:
                out.append(at)
    return out


def grace_left(failed_since: float | None, now_seconds: float, grace_seconds: float) -> float:
    """Seconds until a failure that began at ``failed_since`` counts (0.0: it counts now).

    API timestamps have whole seconds (the failure began up to 1 s after the stamp), so a
    positive grace is counted from the end of that second: a blip is never cut short.
    """
    if failed_since is None or grace_seconds <= 0:
        return 0.0
    if failed_since == int(failed_since):
        failed_since += 1.0
    return max(0.0, failed_since + grace_seconds - now_seconds)


def apply_failure_grace(
    state: ClusterState, raw_nodes: Iterable[Mapping[str, Any]], now_seconds: float, grace_seconds: float
) -> tuple[frozenset[str], float | None]:
    """Show nodes still in their grace as usable but full; returns them and the next deadline.

    Replaces ``state.snapshot``.  The deadline (Unix seconds) is when the first of them
    turns into a counted failure, so the scheduler can run a cycle right then.
    """
    in_grace: dict[str, float] = {}
    for raw in raw_nodes:
        name = (raw.get("metadata") or {}).get("name", "")
        view = state.nodes.get(name)
        if view is None or view.node.usable:
            continue
        left = grace_left(node_failed_since(raw), now_seconds, grace_seconds)
        if left > 0:
            in_grace[name] = now_seconds + left
    if not in_grace:
        return frozenset(), None
    snapshot = state.snapshot
    nodes = [replace(n, ready=True, schedulable=True) if n.name in in_grace else n for n in snapshot.nodes.values()]
    holds = [_hold(snapshot, name) for name in sorted(in_grace)]
    state.snapshot = ClusterSnapshot(nodes, [*snapshot.allocations.values(), *holds], snapshot.now_seconds)
    return frozenset(in_grace), min(in_grace.values())


def _hold(snapshot: ClusterSnapshot, name: str) -> Allocation:
    """An allocation taking all the free room of ``name`` (nothing new lands on a sick node)."""
    free = snapshot.free(name)
    devices = tuple(i for i, d in enumerate(free.devices_milli) if d > 0)
    demand = ReplicaDemand(accelerators=len(devices), cpu_milli=max(0, free.cpu_milli),
                           memory_mib=max(0, free.memory_mib))
    workload = Workload(key=f"grace:{name}", kind=WorkloadKind.POD, demand=demand, preemptible=False)
    return Allocation(workload, (ReplicaPlacement(0, name, snapshot.nodes[name].accelerator_type, devices),))


# --- plans (pure) ------------------------------------------------------------------------


def plan_for(view: WorkloadView, replicas: Iterable[ReplicaStatus]) -> ShardingPlan | None:
    """The sharding plan of ``view`` on ``replicas``, numbered after the one in status.

    Jobs without a global batch size get the trivial data-parallel plan (one micro-batch
    per rank) so the torchrun variables are still defined.  None when no plan exists.
    """
    workload = view.workload
    if workload is None:
        return None
    members = [(r.replica, r.acceleratorType or None) for r in sorted(replicas, key=lambda r: r.replica)]
    if not members:
        return None
    proposed = sharding_for(workload, members)
    if proposed is None:
        devices = max(1, workload.demand.accelerators)
        ranks = len(members) * devices // max(1, workload.tensor_parallel * workload.pipeline_parallel)
        outcome = plan_sharding([t for _, t in members], replica_indices=[i for i, _ in members],
                                global_batch_size=max(1, ranks), max_micro_batch=1,
                                tensor_parallel=workload.tensor_parallel,
                                pipeline_parallel=workload.pipeline_parallel, devices_per_replica=devices)
        proposed = outcome if isinstance(outcome, ShardingPlan) else None
    if not isinstance(proposed, ShardingPlan):
        return None
    return contract.next_generation(previous_plan(view), proposed)


def previous_plan(view: WorkloadView) -> ShardingPlan | None:
    """The plan recorded in status (the ConfigMap's document is the full copy)."""
    doc = view.status.get("plan") or {}
    full = doc.get("document")
    try:
        return ShardingPlan.from_dict(full) if isinstance(full, Mapping) else None
    except (KeyError, TypeError, ValueError):
        return None


def plan_status(plan: ShardingPlan) -> dict[str, Any]:
    """``status.plan``: the summary users read, plus the full document for restarts."""
    return {
        "generation": plan.generation,
        "dp": plan.dp,
        "tp": plan.tp,
        "pp": plan.pp,
        "microBatch": plan.micro_batch,
        "gradAccumSteps": plan.grad_accum_steps,
        "globalBatchSize": plan.global_batch_size,
        "replicas": list(plan.replicas_used),
        "worldSize": plan.world_size,
        "document": plan.to_dict(),
    }


def new_replica_indices(taken: Iterable[int], count: int) -> list[int]:
    """``count`` lowest indices not in ``taken`` (kept, removed and still-present replicas)."""
    used = set(taken)
    out: list[int] = []
    i = 0
    while len(out) < count:
        if i not in used:
            out.append(i)
        i += 1
    return out


# --- carrying decisions out -----------------------------------------------------------------


class ElasticActuator:
    """Executes the elastic policy's Resize and after-failure Preemption decisions."""

    def __init__(self, scheduler: Scheduler, settings: ElasticSettings) -> None:
        self.scheduler = scheduler
        self.settings = settings
        #: Unix seconds when the next node leaves its grace (the loop wakes then)
        self.next_deadline: float | None = None
        self._reshard_records = 0
        self._raw_nodes: dict[str, Mapping[str, Any]] = {}
        self.crash_after_reshard_records = int(os.environ.get(FAULT_ENV, "0") or 0)

    @property
    def enabled(self) -> bool:
        """Whether the policy handles failures itself (``handles_failures``, the elastic policy).

        Then lost replicas stay in the snapshot for it and the failure grace applies; other
        policies keep the old rule (drop lost replicas, roll back below min).  Resizes are
        carried out for any policy that decides them.
        """
        return bool(getattr(self.scheduler.engine.policy, "handles_failures", False))

    def observe(self, state: ClusterState, raw_nodes: Iterable[Mapping[str, Any]], now_seconds: float) -> None:
        """Apply the failure grace to this cycle's snapshot."""
        raw_nodes = list(raw_nodes)
        self._raw_nodes = {(n.get("metadata") or {}).get("name", ""): n for n in raw_nodes}
        if not self.enabled:
            self.next_deadline = None
            return
        _, grace_deadline = apply_failure_grace(state, raw_nodes, now_seconds, self.settings.failure_grace_seconds)
        # a node leaving its grace and a job's growth hysteresis ending are changes no watch
        # reports: the loop wakes for the earliest of them
        deadlines = growth_deadlines(state.snapshot, self._hysteresis_seconds(), now_seconds)
        if grace_deadline is not None:
            deadlines.append(grace_deadline)
        self.next_deadline = min(deadlines) if deadlines else None

    def _hysteresis_seconds(self) -> float:
        engine = self.scheduler.engine
        default = getattr(getattr(engine.policy, "settings", None), "hysteresis_seconds", 300.0)
        return float(engine.params.get("elastic_hysteresis_seconds", default))

    def wait_seconds(self, now_seconds: float, default: float) -> float:
        """How long the loop may sleep: until the next grace deadline at most."""
        if self.next_deadline is None:
            return default
        return max(0.05, min(default, self.next_deadline - now_seconds + 0.05))

    # -- Resize ---------------------------------------------------------------------------

    def resize_all(self, state: ClusterState, result: CycleResult, report: CycleReport, skip: set[str]) -> set[str]:
        """Carry out the accepted releases after failures and Resizes; returns the workloads done.

        A release after a failure does not wait for other evictions' pods to go (the
        scheduler holds new evictions back while pods leave): the job's replicas are lost
        either way, and holding it would leave a gang below its minimum running.
        """
        done: set[str] = set()
        for pre in result.plan.preemptions:
            if pre.after_failure and pre.workload not in skip and self.requeue(state, pre, result, report):
                done.add(pre.workload)
                skip = skip | {pre.workload}
        for resize in result.plan.resizes:
            if resize.workload in skip:
                continue
            if state.leaving and not resize.add and not self._removes_lost(state, resize):
                # a shrink that makes room for other work waits while earlier evictions' pods
                # go, as evictions do: their room does not look free yet, so the policy would
                # shrink more for the same beneficiary
                continue
            if self.resize(state, resize, result, report):
                done.add(resize.workload)
        return done

    @staticmethod
    def _removes_lost(state: ClusterState, resize: Resize) -> bool:
        """Whether ``resize`` removes a replica that is lost (failed node or pod)."""
        view = state.workloads.get(resize.workload)
        if view is None:
            return False
        for index in resize.remove:
            if index in view.lost:
                return True
            r = view.placement.get(index)
            node = state.snapshot.nodes.get(r.node) if r is not None else None
            if r is not None and (node is None or not node.usable):
                return True
        return False

    def resize(
        self, state: ClusterState, resize: Resize, result: CycleResult, report: CycleReport, *, label: str = ""
    ) -> bool:
        """Carry out one Resize (record, delete removed pods, bind new ones); ``label`` names
        it in metrics and Events (default: failure, grow or shrink, from what it does)."""
        s = self.scheduler
        view = state.workloads.get(resize.workload)
        if view is None or not isinstance(view.model, ElasticJob) or view.in_flight or view.rollback_reason:
            return False
        now = s.clock()
        removed = set(resize.remove)
        current = {**view.lost, **view.placement}
        kept = [r for i, r in sorted(current.items()) if i not in removed]
        generation = view.placement_generation + 1
        taken = {*current, *(p.replica for p in view.pods)}
        indices = new_replica_indices(taken, len(resize.add))
        new = [
            ReplicaStatus(
                replica=index,
                pod=L.pod_name(view.name, index),
                node=assignment.node,
                acceleratorType=state.nodes[assignment.node].node.accelerator_type or ""
                if assignment.node in state.nodes else "",
                generation=generation,
            )
            for index, assignment in zip(indices, resize.add, strict=True)
        ]
        full = sorted(kept + new, key=lambda r: r.replica)
        plan = plan_for(view, full)
        before = len(current)
        label = label or ("failure" if self._removes_lost(state, resize) else ("grow" if resize.add else "shrink"))
        grow = label == "grow"
        detected = self._failure_time(state, view, removed, now) if label == "failure" else now
        record = contract.reshard_record(reason=resize.reason, from_replicas=before, to_replicas=len(full),
                                         generation=plan.generation if plan else 0, detected_at_seconds=detected)
        history = contract.append_history(list(view.status.get("reshardHistory") or []), record)
        message = f"resharding {before} -> {len(full)} replicas: {resize.reason}"
        status: dict[str, Any] = {
            "phase": "Binding",
            "placementGeneration": generation,
            "placement": [r.model_dump() for r in full],
            "replicas": len(kept),
            "observedGeneration": view.generation,
            "message": message,
            "lastResizeTime": precise_rfc3339(now),
            "reshardHistory": history,
        }
        if plan is not None:
            status["plan"] = plan_status(plan)
        try:
            s._write_status(view, status, force=True)
        except KubeError as err:
            report.errors.append(f"{view.key}: could not record the reshard, not resharding: {err}")
            return False
        self._reshard_records += 1
        if self.crash_after_reshard_records and self._reshard_records >= self.crash_after_reshard_records:
            log.error("fault injection: exiting after recording %d reshards (%s)", self._reshard_records, FAULT_ENV)
            os._exit(137)
        log.info("ElasticJob %s: %s", view.key, message)
        self._delete_removed(state, view, removed, report)
        view.lost = {}
        view.placement = {r.replica: r for r in kept}
        s._bind(state, view, full, new, previous=kept, report=report, why=resize.reason)
        if {r.replica for r in view.placement.values()} != {r.replica for r in full}:
            return True  # the bind failed and was undone; the next cycle decides again
        event_reason = "GrewBack" if grow else ("Migrated" if label == "move" else "Resharded")
        self.finish(view, now_seconds=s.clock(), event_reason=event_reason,
                    message=f"{before} -> {len(full)} replicas, plan generation "
                            f"{plan.generation if plan else '-'}: {resize.reason}", reason=label)
        s.metrics.reshards_done.labels(reason=label).inc()
        return True

    def _failure_time(self, state: ClusterState, view: WorkloadView, removed: set[int], now: float) -> float:
        """When the failure that removed replicas began (earliest node failure, else now)."""
        times = []
        for index in removed:
            r = view.placement.get(index) or view.lost.get(index)
            raw = self._raw_nodes.get(r.node) if r is not None else None
            if raw is not None:
                since = node_failed_since(raw)
                if since:
                    times.append(since)
        return min(times) if times else now

    def _delete_removed(self, state: ClusterState, view: WorkloadView, removed: set[int], report: CycleReport) -> None:
        s = self.scheduler
        for pod in view.pods:
            if pod.replica in removed:
                node = state.nodes.get(pod.node_name)
                # on a dead node no kubelet confirms a graceful delete: force it
                grace = None if node is not None and node.node.usable else 0
                s._delete(pod, report, grace_period_seconds=grace)
        listed = {p.replica for p in view.pods}
        for index in removed - listed:  # a Failed pod is not listed: delete it by name if it is ours
            name = L.pod_name(view.name, index)
            try:
                found = s.kube.read_pod(view.namespace, name)
                if found is not None and (found["metadata"].get("labels") or {}).get(L.WORKLOAD_UID) == view.uid:
                    s.kube.delete_pod(view.namespace, name, found["metadata"]["uid"], 0)
            except KubeError as err:
                report.errors.append(str(err))

    def finish(self, view: WorkloadView, *, now_seconds: float, event_reason: str = "", message: str = "",
               reason: str = "failure") -> None:
        """Close the newest reshard record (runningAt, recovery time) once every replica is bound."""
        history = [dict(h) for h in view.status.get("reshardHistory") or []]
        if not history or history[-1].get("runningAt") is not None:
            return
        last = history[-1]
        last["runningAt"] = now_seconds
        last["recoverySeconds"] = max(0.0, now_seconds - float(last.get("detectedAt") or now_seconds))
        try:
            self.scheduler._write_status(view, {"reshardHistory": history}, force=True)
        except KubeError as err:
            log.warning("%s: could not record the recovery time: %s", view.key, err)
            return
        self.scheduler.metrics.reshard_recovery.labels(reason=reason).observe(last["recoverySeconds"])
        if event_reason:
            self.scheduler._event(view, "Normal", event_reason,
                                  f"{message} (recovered in {last['recoverySeconds']:.2f}s)")

    def settle(self, state: ClusterState) -> None:
        """Running jobs whose reshard a restart completed: close the record, sync the plan."""
        if not self.enabled:
            return
        now = self.scheduler.clock()
        for view in state.workloads.values():
            if not isinstance(view.model, ElasticJob) or view.in_flight or view.rollback_reason or not view.placement:
                continue
            if view.status.get("phase") != "Running" or view.lost or view.bound_replicas < len(view.placement):
                continue
            recorded = (view.status.get("plan") or {}).get("replicas")
            if recorded is not None and sorted(recorded) != sorted(view.placement) and len(view.placement) > 0:
                # a reshard's bind was undone (or a replica dropped): the plan follows the pods
                try:
                    self.prepare(view, list(view.placement.values()))
                except KubeError as err:
                    log.warning("%s: could not update the plan: %s", view.key, err)
            history = view.status.get("reshardHistory") or []
            if history and history[-1].get("runningAt") is None and int(history[-1].get("toReplicas") or 0) > 0:
                self.finish(view, now_seconds=now, event_reason="Resharded",
                            message=f"reshard completed after a restart: {history[-1].get('reason', '')}")

    # -- requeue below the minimum ----------------------------------------------------------------

    def requeue(self, state: ClusterState, preemption: Preemption, result: CycleResult, report: CycleReport) -> str:
        """Release a job whose survivors are below its minimum; it waits to be placed again."""
        from tessera.operator.scheduler import released_status

        s = self.scheduler
        view = state.workloads.get(preemption.workload)
        if view is None or view.workload is None or not (view.placement or view.lost):
            return ""  # not running (or released already this cycle)
        now = s.clock()
        before = len(view.placement) + len(view.lost)
        reason = preemption.reason or "survivors below the minimum; released and requeued"
        record = contract.reshard_record(
            reason=reason, from_replicas=before, to_replicas=0,
            generation=int((view.status.get("plan") or {}).get("generation") or 0),
            detected_at_seconds=self._failure_time(state, view, set(view.placement) | set(view.lost), now),
            running_at_seconds=None)
        status: dict[str, Any] = {
            **released_status(view, reason, REQUEUED, INSUFFICIENT),
            "lastResizeTime": precise_rfc3339(now),
            "reshardHistory": contract.append_history(list(view.status.get("reshardHistory") or []), record),
        }
        try:
            s._write_status(view, status, force=True)
        except KubeError as err:
            report.errors.append(f"{view.key}: could not record the requeue, not releasing: {err}")
            return ""
        self._delete_removed(state, view, set(view.placement) | set(view.lost), report)
        view.placement.clear()
        view.lost = {}
        view.in_flight = False
        view.to_bind = []
        s.metrics.reshards_done.labels(reason="requeue").inc()
        report.preempted.append(view.key)
        s._event(view, "Warning", REQUEUED, reason)
        return view.key

    # -- plan delivery --------------------------------------------------------------------------

    def prepare(self, view: WorkloadView, full: list[ReplicaStatus]) -> ShardingPlan | None:
        """Plan of ``full`` recorded in status, ConfigMap and headless Service in place; before pods.

        Raises KubeError (the bind is undone) when they cannot be written.
        """
        if not isinstance(view.model, ElasticJob):
            return None
        plan = plan_for(view, full)
        if plan is None:
            return None
        from tessera.operator.pods import owner_reference

        owner = owner_reference(view.kind, view.raw)
        s = self.scheduler
        s.kube.ensure_service({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": contract.headless_service_name(view.name), "namespace": view.namespace,
                         "labels": {L.WORKLOAD: view.name}, "ownerReferences": [owner]},
            "spec": {"clusterIP": "None", "selector": {L.WORKLOAD_UID: view.uid},
                     "publishNotReadyAddresses": True,
                     "ports": [{"name": "rendezvous", "port": contract.DEFAULT_MASTER_PORT}]},
        })
        s.kube.apply_configmap({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": contract.configmap_name(view.name), "namespace": view.namespace,
                         "labels": {L.WORKLOAD: view.name}, "ownerReferences": [owner]},
            "data": contract.configmap_data(view.name, view.namespace, plan),
        })
        recorded = (view.status.get("plan") or {}).get("document")
        if recorded != plan.to_dict():
            s._write_status(view, {"plan": plan_status(plan)}, force=True)
        return plan
