"""Workloads left to Kueue's admission: Tessera as Kueue's job reconciler for its two kinds.

A Tessera workload labelled ``kueue.x-k8s.io/queue-name`` runs only while Kueue admits it
(docs/kueue.md).  Per cycle, from the Kueue Workloads and ResourceFlavors the cycle read:

* no Kueue Workload yet: the operator creates it (:func:`tessera.api.kueue.workload_body`);
  meanwhile the workload waits (``Scheduled=False``, reason ``WaitingForKueue``);
* not admitted: it waits, with Kueue's own message (e.g. insufficient quota);
* admitted: it is pending like any workload, placed only on the accelerator types of the
  nodes its admitted ResourceFlavors select (their ``nodeLabels``) and with at most the pod
  count Kueue admitted (partial admission);
* evicted (preempted by Kueue, deactivated): its pods are deleted (``EvictedByKueue``) and,
  once they are gone, the Workload's reservation is cleared and it is requeued, as Kueue's
  own job reconciler does.

Tessera's own queues (tessera.dev Queue) remain the default; this is for clusters that
already run Kueue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tessera.api import kueue as K
from tessera.core import AcceleratorOption, accelerator_info
from tessera.operator.kube_base import KubeError
from tessera.operator.views import NodeView, WorkloadView

if TYPE_CHECKING:
    from tessera.operator.kube_kueue import KueueApi

WAITING = "WaitingForKueue"
EVICTED = "EvictedByKueue"


@dataclass
class KueueIndex:
    """The cycle's Kueue objects: is Kueue there, each Tessera workload's Workload, flavors."""

    installed: bool = False
    #: Tessera workload uid -> its Kueue Workload
    by_owner: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ResourceFlavor -> the node labels that select its nodes
    flavors: dict[str, dict[str, str]] = field(default_factory=dict)


def kueue_index(objects: K.KueueObjects | None) -> KueueIndex:
    if objects is None:
        return KueueIndex()
    index = KueueIndex(True, flavors=K.flavor_labels(objects.flavors))
    for workload in objects.workloads:
        meta = workload.get("metadata") or {}
        uid = (meta.get("labels") or {}).get(K.OWNER_UID_LABEL)
        owners = [o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("uid") == uid]
        if uid and owners and not meta.get("deletionTimestamp"):
            index.by_owner[str(uid)] = workload
    return index


def gate(view: WorkloadView, index: KueueIndex, nodes: Mapping[str, NodeView]) -> None:
    """Set ``view``'s gate from Kueue's decision, or fit its workload into the admission."""
    queue = K.queue_name(view.raw)
    if not queue or view.workload is None:
        return
    view.kueue_managed = True
    name = K.workload_name(view.kind, view.name)
    if not index.installed:
        view.gate, view.gate_code = (f"labelled {K.QUEUE_LABEL}={queue}, but Kueue is not installed "
                                     f"(no workloads.{K.GROUP} could be read)"), WAITING
        return
    found = index.by_owner.get(view.uid)
    view.kueue_workload = found
    if found is None:
        view.gate, view.gate_code = f"waiting for Kueue: its Workload {name} is being created", WAITING
        return
    decision = K.admission(found)
    if decision.state == "evicted":
        view.gate, view.gate_code = f"evicted by Kueue ({decision.reason}): {decision.message}", EVICTED
        return
    if decision.state != "admitted":
        view.gate, view.gate_code = (f"waiting for Kueue to admit Workload {name} in LocalQueue {queue}"
                                     + (f": {decision.message}" if decision.message else "")), WAITING
        return
    types = _flavor_types(decision.flavors, index, nodes)
    workload = view.workload
    options = workload.options
    if types is not None:
        options = tuple(o for o in options if o.accelerator_type in types) if options else tuple(
            AcceleratorOption(t) for t in sorted(types))
        if not options:
            view.gate, view.gate_code = (
                f"Kueue admitted it to flavor(s) {', '.join(decision.flavors)}, whose nodes have none of the "
                f"accelerator types it accepts ({', '.join(workload.allowed_types) or 'none'})"), "NoMatchingAccelerator"
            return
    count = decision.count if decision.count is not None else workload.max_replicas
    desired = workload.desired_replicas
    view.workload = replace(workload, options=options, max_replicas=min(workload.max_replicas, count),
                            min_replicas=min(workload.min_replicas, count),
                            desired_replicas=min(desired, count) if desired is not None else None)


def _flavor_types(flavors: tuple[str, ...], index: KueueIndex, nodes: Mapping[str, NodeView]) -> set[str] | None:
    """Accelerator types of the nodes the admitted flavors select (None: no flavor names
    node labels, so no restriction)."""
    selectors = [index.flavors.get(f, {}) for f in flavors]
    selectors = [s for s in selectors if s]
    if not selectors:
        return None
    return {v.node.accelerator_type for v in nodes.values() if v.node.accelerator_type
            and any(all(v.node.labels.get(k) == value for k, value in s.items()) for s in selectors)}


def workload_for(view: WorkloadView) -> dict[str, Any]:
    """The Kueue Workload to create for ``view`` (a Kueue-managed workload)."""
    assert view.workload is not None
    workload = view.workload
    count = workload.desired_replicas if workload.desired_replicas is not None else workload.max_replicas
    resources = []
    for kind in workload.allowed_types:
        info = accelerator_info(kind)
        if info is not None and info.resource_name and info.resource_name not in resources:
            resources.append(info.resource_name)
    template = (view.raw.get("spec") or {}).get("template") or {}
    return K.workload_body(view.kind, view.raw, template, count=max(1, count), min_count=workload.min_replicas,
                           accelerators=workload.demand.accelerators, resources=resources, priority=workload.priority)


def check_owned(view: WorkloadView, found: Mapping[str, Any]) -> None:
    """Raise when ``found`` (the Workload of ``view``'s name, just created or already there)
    is not the one Tessera made for it: it is never adopted."""
    meta = found.get("metadata") or {}
    if view.uid not in [o.get("uid") for o in meta.get("ownerReferences") or []]:
        raise KubeError(f"a Kueue Workload named {meta.get('name')} that Tessera did not create for this "
                        f"{view.kind} exists in namespace {view.namespace}; delete or rename it", 409)


def write_kueue(views: Iterable[WorkloadView], api: KueueApi, *, waiting: Callable[[WorkloadView], str],
                bulkhead: Callable[[WorkloadView, str], AbstractContextManager[None]]) -> None:
    """The cycle's Kueue writes: each Kueue-managed workload's Workload created; an evicted
    one's reservation cleared once its pods are gone.  ``waiting``: why a workload backs off
    after a failure ("" when it may be tried); ``bulkhead`` contains a failure to it."""
    for view in views:
        if not view.kueue_managed or view.error:
            continue
        if waiting(view):
            view.gate = ""  # its ActionFailed condition says why it waits; not overwritten
            continue
        with bulkhead(view, "writing its Kueue Workload"):
            if view.kueue_workload is None:
                check_owned(view, api.create_workload(workload_for(view)))
            elif (cleared := released(view)) is not None:
                meta = view.kueue_workload["metadata"]
                api.patch_workload_status(meta["namespace"], meta["name"], cleared)


def released(view: WorkloadView) -> dict[str, Any] | None:
    """The status clearing an evicted Workload's reservation, once the view's pods are gone
    (None: nothing to clear yet)."""
    found = view.kueue_workload
    if found is None or view.pods or view.placement:
        return None
    decision = K.admission(found)
    if decision.state != "evicted":
        return None
    return K.release_status(found, decision.message, decision.reason)
