"""The pod of one replica: the workload's template plus what Tessera adds."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tessera.api import dra
from tessera.api import elastic_contract as contract
from tessera.api.models import API_VERSION, ReplicaRange
from tessera.core.sharding import ShardingPlan
from tessera.operator import labels as L
from tessera.operator.state import WorkloadView


def build_pod(
    view: WorkloadView,
    replica: int,
    node: str,
    accelerator_type: str | None,
    resource_name: str | None,
    placement_generation: int,
    plan: ShardingPlan | None = None,
    claim: str = "",
) -> dict[str, Any]:
    """A v1 Pod for ``replica`` of ``view``, unbound, to be bound to ``node``.

    Adds: deterministic name, labels linking it to the workload (uid, replica, placement
    generation), an owner reference (so the garbage collector removes it with the
    workload where one runs), ``schedulerName: tessera`` (no other scheduler touches
    it), the accelerator's extended resource on the first container, and tolerations
    for the usual accelerator taints.  With an elastic ``plan`` (ElasticJobs): the
    torchrun/TESSERA_PLAN env of :func:`tessera.api.elastic_contract.pod_env`, hostname and
    subdomain for the headless Service, and the plan ConfigMap mounted read-only.

    ``claim`` (a node whose accelerators are DRA devices, tessera.operator.devices): the
    accelerators come from that ResourceClaim instead of an extended resource; the pod
    names it in ``spec.resourceClaims`` and its first container uses it.
    """
    assert view.model is not None and view.workload is not None
    template = view.model.spec.template
    spec: dict[str, Any] = copy.deepcopy(dict(template.spec))
    spec.pop("nodeName", None)
    spec["schedulerName"] = L.SCHEDULER_NAME
    devices = view.workload.demand.accelerators
    containers = spec.get("containers") or []
    if resource_name and devices and containers:
        resources = containers[0].setdefault("resources", {})
        # extended resources: requests must equal limits
        resources.setdefault("limits", {})[resource_name] = str(devices)
        resources.setdefault("requests", {})[resource_name] = str(devices)
    if claim and devices and containers:
        spec["resourceClaims"] = [c for c in spec.get("resourceClaims") or [] if c.get("name") != dra.POD_CLAIM] + [
            {"name": dra.POD_CLAIM, "resourceClaimName": claim}]
        resources = containers[0].setdefault("resources", {})
        resources["claims"] = [c for c in resources.get("claims") or [] if c.get("name") != dra.POD_CLAIM] + [
            {"name": dra.POD_CLAIM}]
    if resource_name:
        tolerations = spec.setdefault("tolerations", [])
        if not any(t.get("key") == resource_name for t in tolerations):
            tolerations.append({"key": resource_name, "operator": "Exists", "effect": "NoSchedule"})
    if plan is not None and replica in plan.replicas_used:
        bounds = view.model.spec.replicas
        _add_plan(spec, view.name, view.namespace, plan, replica, bounds if isinstance(bounds, ReplicaRange) else None)
    pod_labels = {
        **template.metadata.labels,
        L.WORKLOAD: view.name,
        L.WORKLOAD_KIND: view.kind,
        L.WORKLOAD_UID: view.uid,
        L.REPLICA: str(replica),
        L.PLACEMENT_GENERATION: str(placement_generation),
    }
    annotations = {**template.metadata.annotations, L.TARGET_NODE: node}
    if accelerator_type:
        annotations[L.ACCELERATOR_TYPE] = accelerator_type
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": L.pod_name(view.name, replica),
            "namespace": view.namespace,
            "labels": pod_labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(view.kind, view.raw)],
        },
        "spec": spec,
    }


def owner_reference(kind: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": raw["metadata"]["name"],
        "uid": raw["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def single_replica(view: WorkloadView) -> bool:
    """An ElasticJob that can never have more than one replica (``replicas.max`` 1): it has
    no peers to find (no headless Service) and never reshards (no plan ConfigMap); its pod's
    env carries the plan (tessera.api.elastic_contract, ``single``)."""
    bounds = view.model.spec.replicas if view.model is not None else None
    return isinstance(bounds, ReplicaRange) and bounds.max == 1


def _add_plan(spec: dict[str, Any], job: str, namespace: str, plan: ShardingPlan, replica: int,
              replicas: ReplicaRange | None) -> None:
    """Env, DNS identity and the mounted plan of one elastic replica (the pod contract)."""
    single = replicas is not None and replicas.max == 1
    spec["hostname"] = contract.pod_name(job, replica)
    # the job's [min, max] makes torchrun elastic (PET_NNODES=min:max)
    env = contract.pod_env(job, namespace, plan, replica, min_replicas=replicas.min if replicas else None,
                           max_replicas=replicas.max if replicas else None, single=single)
    if single:  # no Service, no ConfigMap (single_replica): the env is the whole contract
        for container in spec.get("containers") or []:
            kept = [e for e in container.get("env") or [] if e.get("name") not in env]
            container["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]
        return
    spec["subdomain"] = contract.headless_service_name(job)
    volume = "tessera-plan"
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") != volume]
    volumes.append({"name": volume, "configMap": {"name": contract.configmap_name(job)}})
    spec["volumes"] = volumes
    for container in spec.get("containers") or []:
        # Tessera's values win over same-named template env: the plan must be the truth
        kept = [e for e in container.get("env") or [] if e.get("name") not in env]
        container["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != volume]
        mounts.append({"name": volume, "mountPath": contract.PLAN_MOUNT_PATH, "readOnly": True})
        container["volumeMounts"] = mounts
