"""From listed Kubernetes objects (plain JSON dicts) to what one scheduling cycle needs.

Pure: no API calls, so the crash-recovery rules are unit-tested without a cluster.
Everything is derived from what is stored in the cluster -- the workloads' spec and
``status.placement`` and the pods' labels and ``spec.nodeName`` -- so an operator that
restarts (or a second replica that takes over the Lease) rebuilds the same view.

Per workload (not being deleted), with ``placement = status.placement``:

* no placement                 -> pending: the policy may place it; leftover pods are stale.
* phase Binding (in flight)    -> the decision was recorded but pods may be missing or
  unbound: it is *completed* (create/bind the rest on the recorded nodes) when those
  nodes still have room, else *rolled back* (all its pods deleted, placement cleared).
* phase Running                -> an allocation made of the bound pods.  Lost replicas
  (pod deleted, node gone) are dropped while the gang keeps at least ``min``; below
  ``min`` the whole gang is rolled back and placed again.
* InferenceService             -> scaled down by deleting the highest replica indices,
  scaled up by asking the policy for the missing replicas as a separate pending unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tessera.api.convert import inferenceservice_workload
from tessera.api.dra import DraObjects
from tessera.api.kueue import KueueObjects
from tessera.api.models import ElasticJob, InferenceService, ReplicaStatus
from tessera.core import (
    Allocation,
    CapacityError,
    CapacityLedger,
    ClusterSnapshot,
    ReplicaPlacement,
    Workload,
    WorkloadKind,
)
from tessera.operator import labels as L
from tessera.operator.devices import DraState, claim_holds, conflicts, counted_pods, dra_state, stale_claims
from tessera.operator.kueue import KueueIndex, kueue_index
from tessera.operator.kueue import gate as kueue_gate
from tessera.operator.memo import Derive, StateMemo
from tessera.operator.overcommit import step_back
from tessera.operator.queues import Queues, resolve_queue
from tessera.operator.views import (  # noqa: F401  (re-exported: the state's vocabulary)
    CONDITION_TAINT_KEYS,
    KINDS,
    TOLERATED_TAINT_KEYS,
    NodeView,
    PodView,
    WorkloadView,
    excess_demand,
    external_demand,
    node_fingerprint,
    node_view,
    parse_timestamp,
    parse_workload,
    pod_view,
    with_priority_class,
    workload_view,
)

SCALE_UP_SUFFIX = "+scale-up"
#: node name given to an ElasticJob's lost replicas in the snapshot (no node has it)
LOST_NODE_PREFIX = "(lost) "

@dataclass
class ClusterState:
    """The input of one cycle: the snapshot, what is pending, and repairs to carry out."""

    snapshot: ClusterSnapshot
    pending: list[Workload]
    workloads: dict[str, WorkloadView]
    nodes: dict[str, NodeView]
    #: pending key -> workload key (scale-up units map to their service)
    pending_owner: dict[str, str]
    #: pods whose workload no longer exists (the garbage collector may not run)
    orphans: list[PodView]
    node_warnings: dict[str, tuple[str, ...]]
    #: Tessera pods on usable nodes that are on their way out (terminating, or deleted by
    #: this cycle's repairs): their room is not free yet, so no new eviction is started
    #: while they go (a preemption's room would otherwise look still taken and the policy
    #: would evict more work for the same beneficiary)
    leaving: list[PodView] = field(default_factory=list)
    #: DRA pools, the devices claims hold, Tessera's stale claims (tessera.operator.devices)
    dra: DraState = field(default_factory=DraState)
    #: Kueue's Workloads and flavors (tessera.operator.kueue)
    kueue: KueueIndex = field(default_factory=KueueIndex)


def build_state(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    workloads: Iterable[tuple[str, Mapping[str, Any]]],
    now_seconds: float,
    keep_lost: bool = False,
    namespaces: frozenset[str] = frozenset(),
    queues: Queues | None = None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    default_queue: str = "",
    classes: Mapping[str, tuple[int, bool]] | None = None,
    memo: StateMemo | None = None,
    previous: ClusterSnapshot | None = None,
    dra: DraObjects | None = None,
    kueue: KueueObjects | None = None,
) -> ClusterState:
    """Reconcile listed objects into a :class:`ClusterState` (see the module docstring).

    ``namespaces`` (empty: all): the namespaces this operator manages; workloads elsewhere
    are not its own, and their pods only hold capacity (never orphans it deletes).

    ``queues`` (tessera.operator.queues): the quota tree goes into the snapshot (the engine
    enforces it) and each workload gets its queue (``spec.queueName``, a namespace selector,
    ``default_queue``); ``namespace_labels`` feed the selectors.

    ``keep_lost`` (an elastic policy runs): an ElasticJob's lost replicas stay in its
    allocation on a node that does not exist (:data:`LOST_NODE_PREFIX`), so the policy
    sees them lost and reshards, instead of being dropped or rolling the gang back here.

    ``memo`` and ``previous`` (the operator's loop passes its last cycle's): what is
    derived from objects that did not change, and the free capacity of nodes whose
    allocations did not change, are reused (:mod:`tessera.operator.memo`); the result is
    the same as without them.

    ``dra``: ResourceSlices, ResourceClaims and DeviceClasses (tessera.operator.devices):
    nodes that publish their accelerators as slices count those devices, and claims hold
    theirs.

    ``kueue``: Kueue's Workloads and ResourceFlavors (None: Kueue not installed); workloads
    labelled kueue.x-k8s.io/queue-name run only as Kueue admits them (tessera.operator.kueue).
    """
    memo = memo or StateMemo()
    derive = Derive(memo)
    devices = dra_state(dra)
    admitted = kueue_index(kueue)
    node_views = {v.node.name: v for v in (derive.node(n, devices.pools) for n in nodes)}
    views: dict[str, WorkloadView] = {}
    by_uid: dict[str, WorkloadView] = {}
    live = [(kind, raw) for kind, raw in workloads if not raw.get("metadata", {}).get("deletionTimestamp")
            and (not namespaces or raw.get("metadata", {}).get("namespace", "default") in namespaces)]
    # the delete handler removes a deleted workload's pods; they still hold capacity until gone
    for kind, raw in sorted(live, key=_age):
        view = derive.workload(kind, raw)
        if classes:
            with_priority_class(view, classes)  # the template's PriorityClass sets its priority
        if view.workload is not None and queues is not None and queues.tree is not None:
            view.workload = replace(view.workload, queue=resolve_queue(
                view.workload, view.namespace, queues, namespace_labels or {}, default_queue))
        if view.key in views:
            # pods are named <name>-<replica> and workloads are keyed by namespace/name: a
            # second kind with the same name would share both.  The older one keeps the
            # name; the younger is refused (its pods, if any, still count on their nodes)
            first = views[view.key]
            view.error = (f"an {first.kind} named {view.name} already exists in namespace {view.namespace}; "
                          f"an {view.kind} cannot share its name (their pods and keys would collide): rename one")
            view.workload = None
            views[f"{view.kind}:{view.key}"] = view
        else:
            views[view.key] = view
        by_uid[view.uid] = view

    pod_views = [derive.pod(p) for p in pods]
    external: list[PodView] = []
    orphans: list[PodView] = []
    leaving: list[PodView] = []
    for pod in pod_views:
        if pod.finished:
            continue
        owner = by_uid.get(pod.workload_uid) if pod.workload_uid else None
        if owner is not None and owner.workload is None:
            if pod.node_name:
                external.append(pod)  # a workload refused as invalid: its pods still run
            continue
        if owner is not None and not pod.terminating:
            owner.pods.append(pod)
        elif pod.node_name:
            external.append(pod)  # not ours, terminating, or orphaned: holds capacity while bound
            if pod.workload_uid:
                leaving.append(pod)
        if pod.workload_uid and owner is None and not pod.terminating \
                and (not namespaces or pod.namespace in namespaces):
            orphans.append(pod)  # its workload is gone (or being deleted)

    pending: list[Workload] = []
    pending_owner: dict[str, str] = {}
    in_flight: list[WorkloadView] = []
    allocations: list[Allocation] = []
    for view in views.values():
        if view.workload is None:
            continue
        try:
            _reconcile(view, keep_lost)
            kueue_gate(view, admitted, node_views)
            _gate(view)
        except Exception as err:
            view.error = f"cannot reconcile its status: {type(err).__name__}: {err}"
            view.workload = None
            external.extend(p for p in view.pods if p.node_name)
            view.pods = []
    # a node over its allocatable (another scheduler bound to the same devices): the latest
    # Tessera workloads there are rolled back and placed again
    overcommitted = step_back(views.values(), [p for p in pod_views if p.node_name and not p.terminating],
                              node_views, derive.demand)
    # a device allocated in two claims: the later Tessera workload is rolled back the same way
    devices.warnings = conflicts(devices, views.values())
    for view in views.values():
        if view.workload is None:
            continue
        # the new pods of moves in flight hold their target nodes (make-before-break)
        external.extend(pod for pod in view.incoming.values() if pod.node_name)
        # pods this cycle deletes (stale, scaled down, evicted, rolled back) still hold
        # their room until they are gone: nothing is bound beside them meanwhile
        going = view.pods if view.rollback_reason else view.to_delete
        for pod in going:
            if pod.node_name:
                external.append(pod)
                leaving.append(pod)
        if view.rollback_reason:
            continue
        if view.in_flight:
            in_flight.append(view)
            continue
        if view.placement or view.lost:
            allocations.append(_allocation(view, node_views, now_seconds))
            allocations.extend(_drift(view, node_views, derive))
            extra = _scale_up(view)
            if extra is not None:
                pending.append(extra)
                pending_owner[extra.key] = view.key
        elif view.workload is not None and _wants_replicas(view) and not view.gate:
            pending.append(view.workload)
            pending_owner[view.workload.key] = view.key

    # capacity held by pods Tessera does not manage (or no longer manages)
    allocations.extend(derive.held(pod, node_views) for pod in external)
    # DRA devices held by claims beyond those Tessera's allocations count
    if devices.claims:
        allocations.extend(claim_holds(devices, counted_pods(views.values()), node_views))
        devices.stale = stale_claims(devices, {p.uid for p in pod_views})

    # in-flight decisions keep their nodes only if those still have room
    tree = queues.tree if queues is not None else None
    base = ClusterSnapshot([v.node for v in node_views.values()], allocations, now_seconds, tree, previous=previous)
    ledger = base.ledger()
    for view in sorted(in_flight, key=lambda v: v.key):
        reason = _reserve(ledger, view, node_views)
        if reason:
            view.rollback_reason = reason
            view.to_bind = []
            for pod in view.pods:  # deleted by the rollback; bound ones hold room until gone
                if pod.node_name and pod not in view.to_delete:
                    allocations.append(derive.held(pod, node_views))
                    leaving.append(pod)
        else:
            allocations.append(_allocation(view, node_views, now_seconds))

    snapshot = ClusterSnapshot([v.node for v in node_views.values()], allocations, now_seconds, tree,
                               previous=base) if in_flight else base
    warnings = {name: v.discovery.warnings for name, v in node_views.items() if v.discovery.warnings}
    for name, warning in (*overcommitted.items(), *devices.warnings.items()):
        warnings[name] = (*warnings.get(name, ()), warning)
    usable = {name for name, v in node_views.items() if v.node.usable}
    leaving = [p for p in leaving if p.node_name in usable]  # a dead node's pods may never go
    return ClusterState(snapshot, pending, views, node_views, pending_owner, orphans, warnings, leaving, devices,
                        admitted)


def _age(item: tuple[str, Mapping[str, Any]]) -> tuple[str, str, str]:
    kind, raw = item
    meta = raw.get("metadata", {})
    return (str(meta.get("creationTimestamp") or ""), kind, str(meta.get("uid") or ""))


def _drift(view: WorkloadView, nodes: Mapping[str, NodeView], derive: Derive) -> list[Allocation]:
    """Count what runs, not what the spec says: a running pod that requests more than the
    workload's spec accounts for (the spec was edited while it runs, a second container or
    an init container asks for accelerators too) holds the excess on its node.  The view
    records the difference so its status can say the change waits for a restart."""
    assert view.workload is not None
    out: list[Allocation] = []
    placed = {r.replica for r in view.placement.values()}
    for pod in view.pods:
        if not pod.node_name or pod.replica not in placed:
            continue
        nv = nodes.get(pod.node_name)
        actual = derive.demand(pod, nv)
        if actual.accelerators != view.workload.demand.accelerators and not view.drift:
            view.drift = (f"its pods run with {actual.accelerators} accelerator(s) each while the spec now asks for "
                          f"{view.workload.demand.accelerators}: the change applies when the workload is placed "
                          "again; the cluster is accounted by what runs")
        extra = excess_demand(actual, view.workload.demand)
        if extra is not None:
            workload = Workload(key=f"pod:{pod.namespace}/{pod.name}#excess", kind=WorkloadKind.POD, demand=extra,
                                preemptible=False)
            out.append(Allocation(workload, (ReplicaPlacement(0, pod.node_name,
                                                              nv.node.accelerator_type if nv else None),)))
    return out


def _wants_replicas(view: WorkloadView) -> bool:
    if isinstance(view.model, InferenceService):
        return view.model.spec.replicas > 0
    return True


def _reconcile(view: WorkloadView, keep_lost: bool = False) -> None:
    """Compare the recorded placement with the pods; fill in the view's repair lists."""
    recorded = [ReplicaStatus.model_validate(r) for r in view.status.get("placement") or []]
    generation = view.placement_generation
    phase = view.status.get("phase", "Pending")
    pods_by_replica: dict[int, PodView] = {}
    # surge replicas (make-before-break moves) run beside the replica they replace and are
    # no part of the allocation until they take over (tessera.operator.rebalance)
    view.surges = {r.replica: r for r in recorded if r.surgeFor is not None}
    recorded = [r for r in recorded if r.surgeFor is None]
    decided = {r.replica: (r.generation or generation) for r in recorded}
    ahead = generation + 1  # a single-pod decision not recorded yet (see _adopt)
    for pod in view.pods:
        if not recorded and pod.generation == ahead and pod.node_name and pod.replica not in pods_by_replica:
            pods_by_replica[pod.replica] = pod
            continue
        surge = view.surges.get(pod.replica)
        if surge is not None and (surge.generation or generation) == pod.generation \
                and pod.replica not in view.incoming:
            view.incoming[pod.replica] = pod  # the pod of a surge replica
        elif decided.get(pod.replica) != pod.generation or pod.replica in pods_by_replica:
            view.to_delete.append(pod)  # stale: from an older decision or a rolled-back gang
        else:
            pods_by_replica[pod.replica] = pod
    if not recorded:
        _adopt(view, pods_by_replica)
        return
    workload = view.workload
    assert workload is not None
    if phase == "Binding":
        view.in_flight = True
        for r in recorded:
            found = pods_by_replica.get(r.replica)
            if found is not None and found.node_name and found.node_name != r.node:
                view.rollback_reason = f"pod {found.name} is bound to {found.node_name}, not {r.node} as decided"
                return
            view.placement[r.replica] = r
            if found is None or not found.node_name:
                view.to_bind.append(r)
        return
    # Running: the allocation is what is actually bound
    lost = []
    for r in recorded:
        current = pods_by_replica.get(r.replica)
        if current is not None and current.node_name:
            view.placement[r.replica] = r.model_copy(update={"node": current.node_name})
        else:
            lost.append(r)
            if current is not None:
                view.to_delete.append(current)  # unbound pod of a running gang: not ours to bind now
    if lost:
        names = ", ".join(f"{r.pod} on {r.node}" for r in lost)
        if keep_lost and isinstance(view.model, ElasticJob):
            view.lost = {r.replica: r for r in lost}
            view.notes.append(f"lost replica(s) {names}; {len(view.placement)} still running")
            return
        if len(view.placement) < workload.gang_min:
            view.rollback_reason = (
                f"lost replica(s) {names}: {len(view.placement)} left, below the minimum of {workload.gang_min}"
            )
            return
        view.notes.append(f"lost replica(s) {names}; {len(view.placement)} still running")
    if isinstance(view.model, InferenceService):
        desired = view.model.spec.replicas
        extra = sorted(view.placement)[desired:] if len(view.placement) > desired else []
        for replica in extra:
            placed = view.placement.pop(replica)
            view.to_delete.extend(p for p in view.pods if p.replica == replica)
            view.notes.append(f"scaled down: removed {placed.pod} from {placed.node}")


def _gate(view: WorkloadView) -> None:
    """A workload that may not run now (``spec.suspend``, or a gate Kueue's admission set):
    never pending, and what runs of it is stopped (its pods deleted, status saying why)."""
    if view.model is not None and view.model.spec.suspend and not view.gate:
        view.gate, view.gate_code = "spec.suspend is true: no pods run until it is false", "Suspended"
    if view.gate and not view.rollback_reason and (view.placement or view.in_flight or view.lost or view.pods):
        view.rollback_reason, view.rollback_code = view.gate, view.gate_code


def _adopt(view: WorkloadView, pods: Mapping[int, PodView]) -> None:
    """A single bound pod one placement generation ahead of status: the decision of a
    single-pod placement, which is created bound and then recorded together with Running in
    one write (tessera.operator.actuator); an operator that stopped in between left it.  It
    is adopted as that decision in flight, so this cycle writes the record and nothing is
    deleted or bound again.  Anything else ahead of status is stale."""
    if len(pods) != 1:
        view.to_delete.extend(pods.values())
        return
    pod = next(iter(pods.values()))
    annotations = (pod.raw.get("metadata") or {}).get("annotations") or {}
    view.placement[pod.replica] = ReplicaStatus(replica=pod.replica, pod=pod.name, node=pod.node_name,
                                                acceleratorType=str(annotations.get(L.ACCELERATOR_TYPE) or ""),
                                                generation=pod.generation)
    view.in_flight = True
    view.adopted = True


def _scale_up(view: WorkloadView) -> Workload | None:
    """The missing replicas of a running InferenceService, as one pending unit."""
    if not isinstance(view.model, InferenceService) or view.workload is None:
        return None
    missing = view.model.spec.replicas - len(view.placement)
    if missing <= 0:
        return None
    unit = inferenceservice_workload(
        view.key + SCALE_UP_SUFFIX, view.model.spec, view.workload.submitted_at_seconds,
        replicas=missing, min_replicas=1,
    )
    # the service's queue and priority, however they were resolved
    return replace(unit, queue=view.workload.queue, priority=view.workload.priority, preempts=view.workload.preempts)


def _allocation(view: WorkloadView, nodes: Mapping[str, NodeView], now_seconds: float) -> Allocation:
    assert view.workload is not None
    replicas = tuple(
        ReplicaPlacement(r.replica, r.node, nodes[r.node].node.accelerator_type if r.node in nodes else None)
        for r in sorted(view.placement.values(), key=lambda r: r.replica)
    ) + tuple(  # on no node: the policy sees them lost
        ReplicaPlacement(r.replica, LOST_NODE_PREFIX + r.node, r.acceleratorType or None)
        for r in sorted(view.lost.values(), key=lambda r: r.replica)
    )
    # policies that account attained service (Gavel) read when the gang started; the
    # elastic policy's growth hysteresis reads the last resize (kept in status)
    resized = parse_timestamp(view.status.get("lastResizeTime"))
    started = parse_timestamp(view.status.get("startTime"))
    # attained service (tessera.core.service): the status tally plus this run since its start
    # or last resize; a run whose start is not recorded is credited nothing
    return Allocation(view.workload, tuple(sorted(replicas, key=lambda r: r.replica)),
                      started_at_seconds=started, resized_at_seconds=resized or None,
                      service_since_seconds=None if started or resized else now_seconds)


def _reserve(ledger: CapacityLedger, view: WorkloadView, nodes: Mapping[str, NodeView]) -> str:
    """Take room for an in-flight decision's replicas; all or nothing."""
    assert view.workload is not None
    taken: list[tuple[str, tuple[int, ...]]] = []
    for r in sorted(view.placement.values(), key=lambda r: r.replica):
        node = nodes.get(r.node)
        reason = ""
        if node is None:
            reason = f"node {r.node} no longer exists"
        elif not node.node.usable:
            reason = f"node {r.node} is no longer ready or schedulable"
        else:
            try:
                taken.append((r.node, ledger.take(r.node, view.workload.demand)))
            except CapacityError as err:
                reason = f"no room left for {r.pod}: {err}"
        if reason:
            for name, devices in taken:
                ledger.give_back(name, view.workload.demand, devices)
            return reason
    return ""


def free_replica_indices(used: Sequence[int], count: int) -> list[int]:
    """The ``count`` lowest replica indices not in ``used``."""
    taken = set(used)
    out: list[int] = []
    i = 0
    while len(out) < count:
        if i not in taken:
            out.append(i)
        i += 1
    return out
