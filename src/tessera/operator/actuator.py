"""Carrying decisions out: record the desired placement, then create, bind and delete pods.

Every decision follows one rule: **record first, then act**.  The workload's status gets
the desired placement (phase Binding, replica -> node, a new placementGeneration) or its
release (phase Pending, no placement) in one write; then pods are created, bound or
deleted until the cluster matches it.  A crash anywhere leaves a recorded decision that
:mod:`tessera.operator.state` recognises next cycle: an in-flight placement is completed
on its recorded nodes (or rolled back when they lost their room), pods that are in no
recorded placement are stale and deleted.  That is the single recovery path for
placements, reshards, preemptions, requeues and round moves (docs/operator.md).

Used by the scheduler and by :mod:`tessera.operator.elastic`; it never imports them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tessera.api import elastic_contract as contract
from tessera.api.dra import claim_name
from tessera.api.models import ElasticJob, ReplicaStatus
from tessera.core import Placement, RestartIntent
from tessera.core.sharding import ShardingPlan
from tessera.operator import labels as L
from tessera.operator.devices import allocate, pod_is_dra
from tessera.operator.faults import NO_FAULTS, CrashPoint, FaultHooks
from tessera.operator.kube import KubeError
from tessera.operator.lease import LeaderElector
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.pods import build_pod, owner_reference, single_replica
from tessera.operator.ports import KubePort
from tessera.operator.state import ClusterState, PodView, WorkloadView, free_replica_indices, pod_view
from tessera.operator.status import PREEMPTED, SCHEDULED, Phase, StatusWriter
from tessera.operator.views import with_surges

log = logging.getLogger("tessera.operator.actuator")


@dataclass
class CycleReport:
    """What one cycle did (for logs and tests)."""

    leader: bool = False
    result: Any = None
    bound: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    deleted_pods: int = 0
    errors: list[str] = field(default_factory=list)
    #: workload key -> why acting on it failed this cycle (a bulkhead caught it)
    failed: dict[str, str] = field(default_factory=dict)
    #: pending workloads left for the next cycle (beyond the batch): run it at once
    deferred: int = 0


class Actuator:
    """Writes decisions and makes pods match them (the operator's only pod writer)."""

    def __init__(
        self,
        kube: KubePort,
        status: StatusWriter,
        elector: LeaderElector,
        metrics: OperatorMetrics,
        *,
        hooks: FaultHooks = NO_FAULTS,
        plan_for: Callable[[WorkloadView, list[ReplicaStatus]], ShardingPlan | None] | None = None,
        plan_status: Callable[[ShardingPlan], dict[str, Any]] | None = None,
    ) -> None:
        self.kube = kube
        self.status = status
        self.elector = elector
        self.metrics = metrics
        self.hooks = hooks
        self._plan_for = plan_for
        self._plan_status = plan_status

    # --- deleting -----------------------------------------------------------------------

    def delete(self, pod: PodView, report: CycleReport, grace_period_seconds: int | None = None) -> None:
        """Delete one listed pod (uid precondition: never a newer pod of that name)."""
        try:
            self.kube.delete_pod(pod.namespace, pod.name, pod.uid, grace_period_seconds)
            report.deleted_pods += 1
        except KubeError as err:
            report.errors.append(str(err))

    def delete_if_ours(self, view: WorkloadView, name: str, report: CycleReport,
                       generation: int | None = None) -> None:
        """Delete the pod ``name`` when it belongs to ``view`` (and to ``generation`` when
        given): for pods the cycle did not list (created after the list, or Failed)."""
        try:
            current = self.kube.read_pod(view.namespace, name)
            labels = (current or {}).get("metadata", {}).get("labels") or {}
            if current is None or labels.get(L.WORKLOAD_UID) != view.uid:
                return
            if generation is not None and labels.get(L.PLACEMENT_GENERATION) != str(generation):
                return
            self.kube.delete_pod(view.namespace, name, current["metadata"]["uid"], 0)
            report.deleted_pods += 1
        except KubeError as err:
            report.errors.append(str(err))

    # --- placing ------------------------------------------------------------------------

    def place(self, state: ClusterState, placement: Placement, why: str, report: CycleReport) -> None:
        """Record a new placement of a pending workload (or a scale-up), then bind it."""
        owner = state.pending_owner.get(placement.workload)
        view = state.workloads.get(owner or "")
        if view is None or view.model is None:
            report.errors.append(f"placement for unknown workload {placement.workload}")
            return
        scale_up = owner != placement.workload
        previous = list(view.placement.values()) if scale_up else []
        generation = view.placement_generation + 1
        # indices of surge replicas are taken too (moves in flight, outside the allocation)
        indices = free_replica_indices([r.replica for r in previous] + list(view.surges) + list(view.incoming),
                                       len(placement.replicas))
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
        record: dict[str, Any] = {
            "phase": Phase.BINDING.value,
            "placementGeneration": generation,
            "placement": [r.model_dump() for r in with_surges(view, full)],
            "observedGeneration": view.generation,
            "message": message,
        }
        if isinstance(view.model, ElasticJob) and self._plan_for is not None and self._plan_status is not None:
            # the sharding plan of this placement goes with its record: one status write, not two
            # (deliver_plan finds it recorded); no plan here means deliver_plan refuses the bind
            plan = self._plan_for(view, full)
            if plan is not None:
                record["plan"] = self._plan_status(plan)
        if not previous and len(new) == 1 and not view.surges and not view.incoming:
            # one pod, nothing else of the workload placed: created bound, then ONE status write
            # (placement and Running together).  A crash between the two leaves a bound pod one
            # placement generation ahead of status, which the next cycle adopts as this
            # decision (tessera.operator.state) and finishes with that write
            self.bind(state, view, full, new, previous=previous, report=report, why=why,
                      record={k: v for k, v in record.items() if k not in ("phase", "message")})
            return
        try:
            self.status.write(view, record, force=True)
        except KubeError as err:
            report.errors.append(f"{view.key}: could not record the placement, not binding: {err}")
            return
        self.hooks.reached(CrashPoint.PLACEMENT_RECORDED)
        self.bind(state, view, full, new, previous=previous, report=report, why=why)

    def bind(
        self,
        state: ClusterState,
        view: WorkloadView,
        full: list[ReplicaStatus],
        replicas: list[ReplicaStatus],
        *,
        previous: list[ReplicaStatus] | None,
        report: CycleReport,
        why: str = "completing a placement recorded before a restart",
        record: dict[str, Any] | None = None,
    ) -> bool:
        """Create then bind ``replicas`` (all or nothing); ``full`` is the placement once done.

        ``previous`` is what stays when this fails (None: an interrupted decision, undone
        whole).  ``record``: the decision's fields when it was not recorded first (a single
        pod): written with the Running status, in the same write.  Returns whether every
        replica is bound.
        """
        created: list[tuple[ReplicaStatus, dict[str, Any]]] = []
        # one pod: nothing must happen between its create and its bind (no gang to complete
        # first), so it is created bound (spec.nodeName), one API call instead of two
        bound_at_create = len(replicas) == 1
        try:
            # ElasticJobs: plan ConfigMap + Service first (the plan's status goes with ``record``)
            plan = self.deliver_plan(view, full, record_plan=record is None)
            if record is not None and plan is not None and "plan" not in record and self._plan_status is not None:
                record = {**record, "plan": self._plan_status(plan)}
            for r in replicas:
                created.append((r, self.create(state, view, r, plan=plan, bound=bound_at_create)))
                self.hooks.reached(CrashPoint.POD_CREATED)
            for r, pod in created:
                if self.bind_created(view, r, pod):
                    self.hooks.reached(CrashPoint.BIND)
        except KubeError as err:
            self.undo(view, replicas, previous, str(err), report)
            return False
        report.bound.extend(f"{view.namespace}/{r.pod}" for r in replicas)
        view.placement = {r.replica: r for r in full}
        self.metrics.placements.labels(kind=view.kind, outcome="bound").inc()
        message = f"{len(replicas)} replica(s) bound ({why}): " + ", ".join(f"{r.pod} -> {r.node}" for r in replicas)
        self.status.write(view, {**(record or {}), **self.status.running(view, full, message)},
                          event=("Normal", "Scheduled", message), force=True)
        return True

    def create(self, state: ClusterState, view: WorkloadView, r: ReplicaStatus, *,
               plan: ShardingPlan | None = None, bound: bool = False) -> dict[str, Any]:
        """Create the pod of replica ``r`` (on its node already when ``bound``); the pod of
        that name is returned when it exists, and must be this decision's (KubeError if not)."""
        node = state.nodes.get(r.node)
        if node is None:
            raise KubeError(f"node {r.node} no longer exists")
        # DRA devices: the pod is created unbound, its claim allocated, then it is bound
        claimed = pod_is_dra(node) and bool(view.workload and view.workload.demand.accelerators)
        body = build_pod(view, r.replica, r.node, node.node.accelerator_type, node.discovery.resource_name,
                         r.generation or view.placement_generation, plan=plan,
                         claim=claim_name(r.pod) if claimed else "")
        bound = bound and not claimed
        if bound:
            body["spec"]["nodeName"] = r.node
            self.elector.require_leader("creating a bound pod")
        pod, fresh = self.kube.create_pod(body)
        if bound and fresh:
            self.metrics.bound_pods.inc()
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
        if claimed and view.workload is not None and not (pod.get("spec") or {}).get("nodeName"):
            allocate(self.kube.dra, state.dra, view, pod, node, view.workload.demand.accelerators)
        return pod

    def bind_created(self, view: WorkloadView, r: ReplicaStatus, pod: dict[str, Any]) -> bool:
        """Bind a created pod of replica ``r`` to its node unless it is already (never twice);
        returns whether this call bound it."""
        bound_to = (pod.get("spec") or {}).get("nodeName")
        if bound_to == r.node:
            return False  # bound at create, or before a restart
        if bound_to:
            raise KubeError(f"pod {r.pod} is bound to {bound_to}, not {r.node}")
        self.elector.require_leader("binding")  # LeaseLost: never undo a successor's work
        self.kube.bind_pod(view.namespace, r.pod, r.node, pod["metadata"]["uid"])
        self.metrics.bound_pods.inc()
        return True

    def undo(
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
                self.delete(pod, report, grace_period_seconds=0)
        for pod_name in sorted(names):
            self.delete_if_ours(view, pod_name, report)
        report.rolled_back.append(view.key)
        kept = previous or []
        view.placement = {r.replica: r for r in kept}
        message = f"bind failed, will retry: {reason}"
        status: dict[str, Any] = {
            "phase": (Phase.RUNNING if kept else Phase.PENDING).value,
            "startTime": view.status.get("startTime") if kept else None,
            "placement": [r.model_dump() for r in with_surges(view, kept)],
            "replicas": len(kept),
            "message": message,
            "conditions": self.status.conditions(view, SCHEDULED, "True" if kept else "False", "BindFailed", message),
        }
        try:
            self.status.write(view, status, event=("Warning", "BindFailed", reason), force=True)
        except KubeError as err:
            report.errors.append(str(err))

    def rollback(self, view: WorkloadView, reason: str, report: CycleReport, *,
                 code: str = "PlacementRolledBack") -> None:
        """Undo a whole placement: delete every pod of the workload, back to Pending
        (Scheduled=False with ``code``: a Warning, except for a suspension asked for)."""
        log.warning("%s %s: rolling back its placement: %s", view.kind, view.key, reason)
        for pod in view.pods:
            self.delete(pod, report, grace_period_seconds=0)
        view.placement.clear()
        report.rolled_back.append(view.key)
        self.status.write(view, self.status.not_scheduled(view, code, reason, phase=Phase.PENDING,
                                                          extra={"startTime": None, "placement": [], "replicas": 0,
                                                                 "acceleratorType": ""}),
                          event=("Normal" if code == "Suspended" else "Warning", code, reason))

    # --- releasing ----------------------------------------------------------------------

    def release(self, view: WorkloadView, status: dict[str, Any], report: CycleReport, *,
                crash_point: CrashPoint, delete: Callable[[], None]) -> bool:
        """Record a release (``status``: no placement), then delete the pods with ``delete``.

        A crash after the record leaves pods in no placement: the next cycle sees them stale,
        counts their room as taken and deletes them, so a half-released gang never keeps
        running and nothing is bound beside it meanwhile.
        """
        try:
            self.status.write(view, status, force=True)
        except KubeError as err:  # nothing recorded: nothing deleted; the next cycle decides again
            report.errors.append(f"{view.key}: could not record the release, not deleting its pods: {err}")
            return False
        self.hooks.reached(crash_point)
        view.in_flight = False
        view.to_bind = []
        delete()
        view.placement.clear()
        view.lost = {}
        return True

    def preempt(self, view: WorkloadView, reason: str, report: CycleReport, *,
                restart_on: RestartIntent | None = None) -> bool:
        """Evict a running workload whole (graceful: the pods' own grace period); ``restart_on``
        (where the policy wants it to restart) is recorded with the release, in status."""
        log.info("%s %s: preempting (%s)", view.kind, view.key, reason)

        def delete() -> None:
            for pod in view.pods:
                # graceful: the pod object goes once its containers stopped, and only then
                # does the next cycle see the room free for the beneficiary
                self.delete(pod, report)

        status = self.status.released(view, reason, PREEMPTED, PREEMPTED)
        if restart_on is not None:
            status["restartIntent"] = {"acceleratorType": restart_on.accelerator_type,
                                       "replicas": restart_on.replicas, "decidedAt": restart_on.decided_at_seconds}
        if not self.release(view, status, report,
                            crash_point=CrashPoint.EVICTION_RECORDED, delete=delete):
            return False
        report.preempted.append(view.key)
        self.status.event(view, "Warning", PREEMPTED, reason)
        return True

    # --- plan delivery (ElasticJobs) ----------------------------------------------------

    def deliver_plan(self, view: WorkloadView, full: list[ReplicaStatus], *,
                     record_plan: bool = True) -> ShardingPlan | None:
        """The plan of ``full`` recorded in status (unless ``record_plan`` is False: the caller
        writes it), ConfigMap and headless Service in place; before pods.

        Raises KubeError (the bind is undone) when they cannot be written, or when a
        ConfigMap or Service of that name exists that this job does not own: the operator
        never adopts or overwrites another's object.
        """
        if not isinstance(view.model, ElasticJob) or self._plan_for is None or self._plan_status is None:
            return None
        plan = self._plan_for(view, full)
        if plan is None:
            if view.workload is not None and view.workload.global_batch_size is not None:
                # never run without a plan: the pods could not agree on who does what
                raise KubeError(f"no sharding plan splits globalBatchSize {view.workload.global_batch_size} over "
                                f"{len(full)} replica(s); not starting it without one")
            return None
        if single_replica(view):
            return plan  # nothing to rendezvous with, nothing to reshard: the pod's env has the plan
        owner = owner_reference(view.kind, view.raw)
        self.kube.ensure_service({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": contract.headless_service_name(view.name), "namespace": view.namespace,
                         "labels": {L.WORKLOAD: view.name}, "ownerReferences": [owner]},
            "spec": {"clusterIP": "None", "selector": {L.WORKLOAD_UID: view.uid},
                     "publishNotReadyAddresses": True,
                     "ports": [{"name": "rendezvous", "port": contract.DEFAULT_MASTER_PORT}]},
        })
        self.kube.apply_configmap({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": contract.configmap_name(view.name), "namespace": view.namespace,
                         "labels": {L.WORKLOAD: view.name}, "ownerReferences": [owner]},
            "data": contract.configmap_data(view.name, view.namespace, plan),
        })
        recorded = (view.status.get("plan") or {}).get("document")
        if record_plan and recorded != plan.to_dict():
            self.status.write(view, {"plan": self._plan_status(plan)}, force=True)
        return plan
