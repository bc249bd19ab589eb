"""Kubernetes objects (plain JSON dicts) as the operator reads them: pods, nodes, workloads.

Pure: parsing and counting only, no API calls.  :mod:`tessera.operator.state` reconciles
these views into what one scheduling cycle needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from pydantic import ValidationError

from tessera.api.convert import elasticjob_workload, inferenceservice_workload, pod_spec_requests
from tessera.api.discovery import VENDOR_RESOURCES, Discovery, discover
from tessera.api.dra import DraPool, discover_dra
from tessera.api.models import ElasticJob, InferenceService, ReplicaStatus, WorkloadStatus
from tessera.api.quantity import to_int, to_mib, to_milli
from tessera.core import Allocation, Node, ReplicaDemand, ReplicaPlacement, RestartIntent, Topology, Workload
from tessera.core.service import attained_service
from tessera.operator import labels as L

TOLERATED_TAINT_KEYS = frozenset(VENDOR_RESOURCES) | {"kwok.x-k8s.io/node"}
#: taints that mirror the Ready condition / spec.unschedulable, which are read directly
#: (a control plane without the node lifecycle controller never removes them)
CONDITION_TAINT_KEYS = frozenset({
    "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "node.kubernetes.io/unschedulable",
})

KINDS = {"ElasticJob": ElasticJob, "InferenceService": InferenceService}


@dataclass(frozen=True, slots=True)
class PodView:
    name: str
    namespace: str
    uid: str
    node_name: str
    workload_uid: str
    replica: int
    generation: int
    terminating: bool
    phase: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def pod_view(raw: Mapping[str, Any]) -> PodView:
    meta = raw.get("metadata", {})
    labels = meta.get("labels") or {}

    def as_int(value: Any) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            return -1

    return PodView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        node_name=(raw.get("spec") or {}).get("nodeName") or "",
        workload_uid=labels.get(L.WORKLOAD_UID, ""),
        replica=as_int(labels.get(L.REPLICA)),
        generation=as_int(labels.get(L.PLACEMENT_GENERATION)),
        terminating=bool(meta.get("deletionTimestamp")),
        phase=(raw.get("status") or {}).get("phase", ""),
        raw=raw,
    )


@dataclass(frozen=True, slots=True)
class NodeView:
    node: Node
    discovery: Discovery
    #: allocatable of the node's accelerator resource as the kubelet enforces it (None: not
    #: advertised, e.g. a count given by label only)
    allocatable_devices: int | None = None
    #: the node's DRA pool when its accelerators are published as ResourceSlices and not as
    #: an extended resource (pods then get them through a ResourceClaim)
    dra: DraPool | None = None


def node_view(raw: Mapping[str, Any], dra: DraPool | None = None) -> NodeView:
    """A core Node from a v1 Node, with the discovery result (type, count, warnings).

    ``dra``: the node's pool of ResourceSlice devices (tessera.api.dra); used when the node
    advertises no accelerator as an extended resource."""
    meta = raw.get("metadata", {})
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    labels = meta.get("labels") or {}
    allocatable = status.get("allocatable") or {}
    found = discover(labels, allocatable, status.get("capacity") or {})
    if dra is not None and not (found.accelerator_type and found.count):
        found = discover_dra(labels, dra)
    else:
        dra = None
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    blocking = [
        t for t in spec.get("taints") or []
        if t.get("effect") in ("NoSchedule", "NoExecute") and t.get("key") not in TOLERATED_TAINT_KEYS | CONDITION_TAINT_KEYS
    ]

    def quantity(name: str, convert: Any) -> int:
        try:
            return int(convert(allocatable[name])) if name in allocatable else 0
        except ValueError:
            return 0

    node = Node(
        name=meta.get("name", ""),
        accelerator_type=found.accelerator_type if found.count else None,
        accelerator_count=found.count if found.accelerator_type else 0,
        cpu_milli=quantity("cpu", to_milli),
        memory_mib=quantity("memory", to_mib),
        topology=Topology(
            zone=labels.get("topology.kubernetes.io/zone", ""),
            domain=labels.get("tessera.dev/domain", ""),
            nic=labels.get("tessera.dev/nic", ""),
        ),
        labels=dict(labels),
        ready=ready,
        schedulable=not spec.get("unschedulable") and not blocking,
    )
    devices: int | None = None
    if found.resource_name and found.resource_name in allocatable:
        with contextlib.suppress(TypeError, ValueError):
            devices = max(0, to_int(allocatable[found.resource_name]))
    return NodeView(node, found, devices, dra)


def node_fingerprint(raw: Mapping[str, Any]) -> tuple[object, ...]:
    """What :func:`node_view` reads of a node, heartbeat timestamps left out: two versions of
    a node with the same fingerprint have the same view."""
    meta = raw.get("metadata") or {}
    status = raw.get("status") or {}
    return (meta.get("name"), meta.get("labels"), raw.get("spec"), status.get("allocatable"), status.get("capacity"),
            tuple((c.get("type"), c.get("status")) for c in status.get("conditions") or ()))


@dataclass
class WorkloadView:
    """One ElasticJob or InferenceService and what the cluster says about it."""

    kind: str
    raw: Mapping[str, Any]
    model: ElasticJob | InferenceService | None
    error: str
    workload: Workload | None
    pods: list[PodView] = field(default_factory=list)
    #: replica -> where it runs after this view's reconciliation
    placement: dict[int, ReplicaStatus] = field(default_factory=dict)
    #: True when the recorded placement is still being bound (phase Binding)
    in_flight: bool = False
    rollback_reason: str = ""
    #: the Scheduled=False reason the rollback is recorded with
    rollback_code: str = "PlacementRolledBack"
    #: why it may not run now ("" = it may): spec.suspend, or Kueue has not admitted it
    #: (tessera.operator.kueue); ``gate_code`` is the Scheduled=False reason saying so
    gate: str = ""
    gate_code: str = ""
    #: labelled kueue.x-k8s.io/queue-name (tessera.operator.kueue), and its Kueue Workload
    kueue_managed: bool = False
    kueue_workload: Mapping[str, Any] | None = None
    #: replicas to create and/or bind this cycle (in-flight completion)
    to_bind: list[ReplicaStatus] = field(default_factory=list)
    #: pods of this workload to delete (stale generation, scaled down, ...)
    to_delete: list[PodView] = field(default_factory=list)
    #: human-readable notes for Events (replica lost, scaled down)
    notes: list[str] = field(default_factory=list)
    #: surge replicas of the recorded placement (``surgeFor`` set: make-before-break moves),
    #: by their own index; kept out of ``placement`` until they take over
    surges: dict[int, ReplicaStatus] = field(default_factory=dict)
    #: surge replica -> its pod: kept (not stale), holding its node while the replica it
    #: replaces still serves; tessera.operator.rebalance drives the move
    incoming: dict[int, PodView] = field(default_factory=dict)
    #: replicas whose pod failed or vanished, kept (``keep_lost``) for the elastic policy to
    #: reshard around instead of being dropped here (see tessera.operator.elastic)
    lost: dict[int, ReplicaStatus] = field(default_factory=dict)
    #: how the running pods differ from the current spec (a spec edited while running)
    drift: str = ""
    #: the in-flight placement is a single bound pod not recorded yet (tessera.operator.state):
    #: completing it writes its placement generation with the Running status
    adopted: bool = False

    @property
    def name(self) -> str:
        return str(self.raw["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.raw["metadata"].get("namespace", "default"))

    @property
    def uid(self) -> str:
        return str(self.raw["metadata"]["uid"])

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def generation(self) -> int:
        return int(self.raw["metadata"].get("generation", 0))

    @property
    def status(self) -> Mapping[str, Any]:
        return self.raw.get("status") or {}

    @property
    def placement_generation(self) -> int:
        return int(self.status.get("placementGeneration", 0) or 0)

    @property
    def bound_replicas(self) -> int:
        bound = {p.replica for p in self.pods if p.node_name and not p.terminating}
        return len([r for r in self.placement if r in bound])


def with_surges(view: WorkloadView, replicas: Iterable[ReplicaStatus]) -> list[ReplicaStatus]:
    """``replicas`` plus the view's surge replicas whose replaced replica is among them, by
    index: the desired placement a status write keeps (a write that drops a replica drops
    its surge too, and the move is undone)."""
    full = list(replicas)
    kept = {r.replica for r in full}
    full += [s for s in view.surges.values() if s.surgeFor in kept and s.replica not in kept]
    return sorted(full, key=lambda r: r.replica)


def priority_classes(objects: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, bool]]:
    """PriorityClass name -> (value, may preempt): ``preemptionPolicy: Never`` may not."""
    out: dict[str, tuple[int, bool]] = {}
    for obj in objects:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out[str(obj["metadata"]["name"])] = (int(obj.get("value") or 0), obj.get("preemptionPolicy") != "Never")
    return out


def with_priority_class(view: WorkloadView, classes: Mapping[str, tuple[int, bool]]) -> None:
    """The workload's priority from the PriorityClass its pod template names (if it exists:
    a missing class is reported by the pod dry run)."""
    if view.workload is None or view.model is None:
        return
    name = (view.model.spec.template.spec or {}).get("priorityClassName")
    found = classes.get(name) if isinstance(name, str) else None
    if found is not None:
        view.workload = dataclasses.replace(view.workload, priority=found[0], preempts=found[1])


def parse_timestamp(value: str | None) -> float:
    """Seconds since the epoch of an RFC 3339 time from the API (0.0 when absent or malformed)."""
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


#: a workload's parsed spec: (model, error, workload); ``error`` set and ``workload`` None
#: when the spec is refused
ParsedWorkload = tuple[ElasticJob | InferenceService | None, str, Workload | None]


def parse_workload(kind: str, raw: Mapping[str, Any]) -> ParsedWorkload:
    """Parse one object; a spec the models refuse is reported, not raised."""
    meta = raw.get("metadata", {})
    key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
    submitted = parse_timestamp(meta.get("creationTimestamp"))
    try:
        model = cast(ElasticJob | InferenceService, KINDS[kind].model_validate(raw))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return None, f"invalid {kind} ({where}): {first.get('msg')}", None
    try:
        if isinstance(model, ElasticJob):
            workload = elasticjob_workload(key, model.spec, submitted)
        else:
            workload = inferenceservice_workload(key, model.spec, submitted)
    except Exception as err:
        return model, f"invalid {kind}: {err}", None
    problem = accelerator_requests_problem(dict(model.spec.template.spec), model.spec.acceleratorsPerReplica)
    if problem:
        return model, f"invalid {kind}: {problem}", None
    return model, "", with_decision_state(workload, model.status)


def workload_view(kind: str, raw: Mapping[str, Any], parsed: ParsedWorkload | None = None) -> WorkloadView:
    """The view of one object (``parsed``: its :func:`parse_workload`, when already known)."""
    model, error, workload = parsed if parsed is not None else parse_workload(kind, raw)
    return WorkloadView(kind, raw, model, error, workload)


def with_decision_state(workload: Workload, status: WorkloadStatus) -> Workload:
    """The workload with the decision state its status keeps (attained service, restart intent)."""
    intent = status.restartIntent
    attained = status.attainedService if math.isfinite(status.attainedService) else 0.0
    return dataclasses.replace(
        workload, attained_service_seconds=max(0.0, attained),
        restart_intent=RestartIntent(intent.acceleratorType, intent.replicas, intent.decidedAt) if intent else None,
    )


def attained_service_now(view: WorkloadView, now_seconds: float) -> float:
    """The workload's attained service at ``now_seconds``, its current run included: the value
    a status write that ends the run or changes its shape keeps (tessera.core.service)."""
    if view.workload is None:
        return float(view.status.get("attainedService") or 0.0)
    started = parse_timestamp(view.status.get("startTime"))
    resized = parse_timestamp(view.status.get("lastResizeTime"))
    if not (started or resized):
        return view.workload.attained_service_seconds  # no run recorded: nothing to add
    replicas = tuple(ReplicaPlacement(r.replica, r.node, r.acceleratorType or None)
                     for r in sorted(view.placement.values(), key=lambda r: r.replica))
    run = Allocation(view.workload, replicas, started_at_seconds=started, resized_at_seconds=resized or None)
    return attained_service(view.workload, run, now_seconds)


def accelerator_requests_problem(spec: Mapping[str, Any], devices: int) -> str:
    """Why a pod template's own accelerator requests would make its pods hold more than
    ``acceleratorsPerReplica`` ("" when they do not).

    Tessera gives each replica ``devices`` accelerators on its first container.  Kubernetes
    counts a pod's extended resources as the sum over its containers, or the largest init
    container when that is more: a second container asking for accelerators, or an init
    container asking for more than ``devices``, would hold devices Tessera never counted.
    """
    for field_name, containers, limit in (("containers", (spec.get("containers") or [])[1:], 0),
                                          ("initContainers", spec.get("initContainers") or [], devices)):
        offset = 1 if field_name == "containers" else 0
        for i, container in enumerate(containers):
            resources = container.get("resources") if isinstance(container, Mapping) else None
            for part in ("limits", "requests"):
                asked = (resources or {}).get(part) if isinstance(resources, Mapping) else None
                for name in VENDOR_RESOURCES:
                    value = (asked or {}).get(name) if isinstance(asked, Mapping) else None
                    if value is None:
                        continue
                    try:
                        count = to_int(value)
                    except (TypeError, ValueError):
                        count = limit + 1
                    if count > limit:
                        where = f"spec.template.spec.{field_name}[{i + offset}].resources.{part}[{name}]"
                        return (f"{where} asks for {value}; Tessera gives each replica acceleratorsPerReplica "
                                f"({devices}) on its first container, init containers may use at most that "
                                "many and other containers none (or the pod would hold devices no one counted)")
    return ""


def pod_accelerators(pod: Mapping[str, Any], resource_name: str | None) -> int:
    """Whole accelerators a pod holds, counted as the kubelet counts them: containers add up,
    init containers run one at a time (the largest counts); the node's extended resource
    ``resource_name`` (limits, else requests)."""
    if not resource_name:
        return 0
    spec = pod.get("spec") or {}

    def devices_of(container: Mapping[str, Any]) -> int:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(resource_name) or (resources.get("requests") or {}).get(
            resource_name
        )
        if value is None:
            return 0
        try:
            return max(0, to_int(value))
        except (TypeError, ValueError):
            return 0

    devices = sum(devices_of(c) for c in spec.get("containers") or [])
    return max([devices, *(devices_of(c) for c in spec.get("initContainers") or [])])


def external_demand(pod: Mapping[str, Any], resource_name: str | None) -> ReplicaDemand:
    """What a bound pod takes from its node, counted as Kubernetes counts it: containers add
    up, init containers run one at a time (the largest counts), pod overhead on top.
    Accelerators are the node's extended resource ``resource_name`` (limits, else requests)."""
    spec = pod.get("spec") or {}
    cpu, mem = pod_spec_requests(spec)
    devices = pod_accelerators(pod, resource_name)
    overhead = spec.get("overhead") or {}
    with contextlib.suppress(TypeError, ValueError):
        cpu += to_milli(overhead["cpu"]) if "cpu" in overhead else 0
        mem += to_mib(overhead["memory"]) if "memory" in overhead else 0
    return ReplicaDemand(accelerators=devices, cpu_milli=cpu, memory_mib=mem)


def excess_demand(actual: ReplicaDemand, accounted: ReplicaDemand) -> ReplicaDemand | None:
    """What a pod takes beyond what its workload's spec accounts for (None: nothing)."""
    extra = ReplicaDemand(accelerators=max(0, actual.accelerators - accounted.accelerators),
                          cpu_milli=max(0, actual.cpu_milli - accounted.cpu_milli),
                          memory_mib=max(0, actual.memory_mib - accounted.memory_mib))
    return extra if (extra.accelerators or extra.cpu_milli or extra.memory_mib) else None
