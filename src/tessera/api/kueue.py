"""Kueue (``kueue.x-k8s.io/v1beta2``): the Workload Tessera writes for a workload Kueue admits.

A Tessera workload labelled ``kueue.x-k8s.io/queue-name`` is left to Kueue's admission, as
any job Kueue manages: Tessera plays Kueue's job reconciler for its two kinds.  Pure
functions over plain JSON dicts, shared by the operator and the tests:

* :func:`workload_body` -- the Kueue Workload of an ElasticJob or InferenceService: one pod
  set ``replicas`` whose count is the replicas asked for (``minCount`` the ElasticJob's
  ``replicas.min``, so Kueue's partial admission may admit fewer), whose pod template asks
  for the accelerators per replica as the extended resource of its accelerator types (the
  resource a ClusterQueue's quota covers), owned by the Tessera workload.
* :func:`admission` -- what Kueue decided: waiting (and why), admitted (the pod count and
  the ResourceFlavor of each resource), or evicted (and why).
* :func:`release_status` -- once an evicted workload's pods are gone: the reservation
  cleared and the Workload requeued, as Kueue's job reconciler does
  (``UnsetQuotaReservationWithCondition``, ``SetRequeuedCondition``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WORKLOADS, FLAVORS = "workloads", "resourceflavors"
POD_SET = "replicas"
#: the label Tessera puts on its Workloads: the uid of the Tessera workload it stands for
OWNER_UID_LABEL = "tessera.dev/workload-uid"
DEFAULT_RESOURCE = "nvidia.com/gpu"
#: eviction reasons after which Kueue requeues the Workload (WorkloadEvictedByPreemption,
#: WorkloadEvictedDueToNodeFailures)
REQUEUE_REASONS = ("Preempted", "NodeFailures")


@dataclass
class KueueObjects:
    """Kueue Workloads and ResourceFlavors a cycle reads (empty: Kueue not installed)."""

    workloads: list[dict[str, Any]] = field(default_factory=list)
    flavors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Admission:
    """Kueue's decision on one Workload."""

    #: "waiting", "admitted" or "evicted"
    state: str
    message: str = ""
    #: admitted: the pod count (partial admission may give fewer than asked)
    count: int | None = None
    #: admitted: ResourceFlavor names of the pod set's resources
    flavors: tuple[str, ...] = ()
    #: evicted: Kueue's reason (Preempted, InactiveWorkload, ...)
    reason: str = ""


def queue_name(raw: Mapping[str, Any]) -> str:
    return str(((raw.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL) or "")


def workload_name(kind: str, name: str) -> str:
    """``elasticjob-<name>`` / ``inferenceservice-<name>`` (a DNS subdomain, at most 253)."""
    return re.sub(r"[^a-z0-9.-]", "-", f"{kind.lower()}-{name}")[:253]


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def admission(workload: Mapping[str, Any]) -> Admission:
    """Kueue's decision recorded in ``workload``'s status."""
    evicted = _condition(workload, "Evicted")
    status = workload.get("status") or {}
    granted = status.get("admission") or {}
    if evicted.get("status") == "True" and granted:
        # to be stopped; once its reservation is cleared it waits (Kueue resets Evicted when it
        # reserves quota again)
        return Admission("evicted", str(evicted.get("message") or ""), reason=str(evicted.get("reason") or ""))
    admitted = _condition(workload, "Admitted")
    if admitted.get("status") == "True" and granted:
        assignment = next((a for a in granted.get("podSetAssignments") or [] if a.get("name") == POD_SET), None)
        if assignment is not None:
            count = assignment.get("count")
            return Admission("admitted", f"admitted by ClusterQueue {granted.get('clusterQueue', '')}",
                             count=int(count) if count is not None else None,
                             flavors=tuple(sorted(set((assignment.get("flavors") or {}).values()))))
    reserved = _condition(workload, "QuotaReserved")
    why = str(reserved.get("message") or "")
    if evicted.get("status") == "True":
        why = f"evicted ({evicted.get('reason', '')}: {evicted.get('message', '')}), requeued" + (f"; {why}" if why else "")
    return Admission("waiting", why)


def workload_body(kind: str, raw: Mapping[str, Any], template: Mapping[str, Any], *, count: int, min_count: int,
                  accelerators: int, resources: Iterable[str], priority: int) -> dict[str, Any]:
    """The Kueue Workload standing for the Tessera workload ``raw`` (see the module docstring).

    ``template`` is the workload's pod template; ``resources`` the extended resources of its
    accelerator types (the first one is asked for: a ClusterQueue covers one per flavor)."""
    meta = raw["metadata"]
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    containers = spec.get("containers") or [{"name": "main", "image": "none"}]
    spec["containers"] = containers
    resource = next(iter(resources), DEFAULT_RESOURCE)
    if accelerators:
        requests = containers[0].setdefault("resources", {})
        requests.setdefault("requests", {})[resource] = str(accelerators)
        requests.setdefault("limits", {})[resource] = str(accelerators)
    pod_set: dict[str, Any] = {"name": POD_SET, "count": count,
                               "template": {"metadata": {"labels": dict((template.get("metadata") or {}).get("labels")
                                                                        or {})}, "spec": spec}}
    if 0 < min_count < count:
        pod_set["minCount"] = min_count
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(kind, meta["name"]),
            "namespace": meta.get("namespace", "default"),
            "labels": {OWNER_UID_LABEL: meta["uid"]},
            "ownerReferences": [{"apiVersion": str(raw.get("apiVersion") or "tessera.dev/v1alpha1"), "kind": kind,
                                 "name": meta["name"], "uid": meta["uid"], "controller": True}],
        },
        "spec": {"queueName": queue_name(raw), "podSets": [pod_set], "priority": priority},
    }


def release_status(workload: Mapping[str, Any], message: str, reason: str, now: datetime | None = None
                   ) -> dict[str, Any]:
    """``status`` clearing an evicted Workload's reservation once its pods are gone: no
    admission, QuotaReserved and Admitted False, Requeued True (after a preemption or a node
    failure: Kueue admits it again when quota frees)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    generation = int((workload.get("metadata") or {}).get("generation") or 0)
    conditions = [dict(c) for c in (workload.get("status") or {}).get("conditions") or []]

    def put(kind: str, status: str, why: str) -> None:
        for c in conditions:
            if c.get("type") == kind:
                if c.get("status") != status:
                    c["lastTransitionTime"] = stamp
                c.update(status=status, reason=why, message=message[:32768], observedGeneration=generation)
                return
        conditions.append({"type": kind, "status": status, "reason": why, "message": message[:32768],
                           "lastTransitionTime": stamp, "observedGeneration": generation})

    put("QuotaReserved", "False", "Pending")
    if _condition(workload, "Admitted"):
        put("Admitted", "False", "NoReservation")
    # as Kueue's job reconciler: requeued (admitted again when quota frees) after a
    # preemption or a node failure; otherwise (deactivated, ...) not
    put("Requeued", "True" if reason in REQUEUE_REASONS else "False", reason or "Evicted")
    return {"admission": None, "conditions": conditions}


def flavor_labels(flavors: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """ResourceFlavor name -> its ``spec.nodeLabels`` (the nodes of that flavor)."""
    return {str((f.get("metadata") or {}).get("name")): dict((f.get("spec") or {}).get("nodeLabels") or {})
            for f in flavors}
