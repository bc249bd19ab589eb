"""Pydantic models of Tessera's custom resources: the single source of their schemas.

The CRDs in ``crds/`` are generated from these classes (:mod:`tessera.api.crdgen`), and
the operator parses every object it watches into them, so what the API server accepts
and what the operator understands cannot drift apart.

Field names are the camelCase names users write in YAML; Python code uses the same
names (``spec.acceleratorsPerReplica``) to keep the mapping obvious.  Cross-field rules
are CEL expressions (``x-kubernetes-validations``) that the API server enforces; the
same rules are checked again in :meth:`model_post_init`-style validators so the
operator never acts on an object the server would have refused.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from tessera.api.names import MAX_QUEUE_NAME_LENGTH, QUEUE_REFERENCE
from tessera.api.template import POD_SPEC_SCHEMA

GROUP = "tessera.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Upper bounds on numbers (issue #15): generous for any real workload, far from where the
# solver's integer arithmetic or a pod count could misbehave.
#: most replicas (pods) of one workload
MAX_REPLICAS = 10_000
#: most accelerators one replica (one pod, on one node) may ask for
MAX_ACCELERATORS_PER_REPLICA = 256
#: most pipeline stages
MAX_PIPELINE_DEGREE = 1_024
#: largest relativeThroughput (a ratio between accelerator types)
MAX_RELATIVE_THROUGHPUT = 1e6
#: largest capacityPerReplica (requests/s of one replica)
MAX_CAPACITY_PER_REPLICA = 1e9
#: largest global / micro batch size (samples)
MAX_BATCH_SIZE = 100_000_000
#: priorities span the same range as a PriorityClass' value
MAX_PRIORITY = 1_000_000_000
#: most accelerator types one workload may list
MAX_ACCELERATOR_TYPES = 64
#: accelerator type names come from node label values (<= 63 characters)
MAX_TYPE_NAME_LENGTH = 63

# x-kubernetes-* keys are copied verbatim into the OpenAPI schema by the generator.
_PRESERVE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def rfc3339_seconds(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 time; ``ValueError`` naming ``spec.deadline`` otherwise.

    RFC 3339 needs a time zone (``Z`` or ``+02:00``): a bare local time would mean a
    different instant on every machine.
    """
    if not _RFC3339.fullmatch(value):
        raise ValueError(f"spec.deadline must be an RFC 3339 time such as 2026-11-23T18:00:00Z (got {value!r})")
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).timestamp()
    except ValueError as err:  # e.g. month 13
        raise ValueError(f"spec.deadline must be an RFC 3339 time ({err}; got {value!r})") from err


def _cel(rule: str, message: str, field_path: str | None = None) -> Any:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _no_schema_default(schema: dict[str, Any]) -> None:
    # a field added to a stored kind: a server-side default would change the spec of every
    # existing workload (and wake its update handlers) on the CRD upgrade; unset means ""
    schema.pop("default", None)


def _queue_name_field() -> Any:
    """``spec.queueName`` of both workload kinds (tessera.api.queue defines the Queue kind)."""
    return Field(
        "", max_length=MAX_QUEUE_NAME_LENGTH, pattern=QUEUE_REFERENCE, json_schema_extra=_no_schema_default,
        description="Queue (tessera.dev/v1alpha1 Queue, cluster-scoped) this workload is admitted through; "
        "unset or empty: the queue whose namespaceSelector matches its namespace, else the operator's default queue "
        "(--default-queue, \"default\"), else no queue (not limited by quota).",
    )


def _suspend_field() -> Any:
    """``spec.suspend`` of both workload kinds (as a batch Job's)."""
    return Field(
        False, json_schema_extra=_no_schema_default,
        description="true: run no pods. A running workload's pods are deleted (its status says Suspended) and it "
        "is placed again once this is false. A workload labelled kueue.x-k8s.io/queue-name also waits for "
        "Kueue to admit it (docs/kueue.md).",
    )


def _one_priority(priority: int, template: Any) -> None:
    """A workload's priority comes from spec.priority or from the PriorityClass its pod
    template names (the class's value), not both."""
    if priority and (template.spec or {}).get("priorityClassName"):
        raise ValueError("set spec.priority or spec.template.spec.priorityClassName (a PriorityClass's value), "
                         "not both")


class _Model(BaseModel):
    # Unknown fields are an error in the operator too (the API server prunes or, with
    # fieldValidation=Strict, rejects them before they get here).
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Lenient(BaseModel):
    """Status and metadata: tolerate fields a newer operator may have written."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# --- shared pieces -------------------------------------------------------------------


class ReplicaRange(_Model):
    """Bounds on the number of replicas (pods)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.min <= self.max", "spec.replicas.min must be <= spec.replicas.max", ".min"),
            ]
        },
    )

    min: int = Field(1, ge=1, le=MAX_REPLICAS, description="Fewest replicas the workload can run with (its gang size).")
    max: int = Field(..., ge=1, le=MAX_REPLICAS, description="Most replicas the workload can use.")

    @model_validator(mode="after")
    def _min_le_max(self) -> ReplicaRange:
        if self.min > self.max:
            raise ValueError("spec.replicas.min must be <= spec.replicas.max")
        return self


class InferenceReplicaRange(_Model):
    """Bounds for an inference service's replica count (like an HPA's min/max)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.min <= self.max", "spec.replicaRange.min must be <= spec.replicaRange.max", ".min"),
            ]
        },
    )

    min: int = Field(1, ge=0, le=MAX_REPLICAS,
                     description="Fewest replicas that must run together for the service to start.")
    max: int = Field(..., ge=1, le=MAX_REPLICAS, description="Most replicas the service may scale to.")

    @model_validator(mode="after")
    def _min_le_max(self) -> InferenceReplicaRange:
        if self.min > self.max:
            raise ValueError("spec.replicaRange.min must be <= spec.replicaRange.max")
        return self


class TemplateMetadata(_Model):
    """Labels and annotations copied onto every pod."""

    labels: dict[str, str] = Field(default_factory=dict, description="Labels added to each pod.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations added to each pod.")


class PodTemplate(_Model):
    """The pod each replica runs, as in a Deployment's ``spec.template``.

    Tessera adds the accelerator's extended resource (e.g. ``nvidia.com/gpu``) to the
    first container's limits, sets ``schedulerName`` and binds the pod itself; any
    ``nodeName``/``nodeSelector`` here is overridden by the placement.
    """

    metadata: TemplateMetadata = Field(
        default_factory=TemplateMetadata,
        description="Pod labels and annotations.",
        json_schema_extra={"default": {}},
    )
    spec: dict[str, Any] = Field(
        ...,
        description="A core/v1 PodSpec (containers, volumes, ...). Container names, command, args, env values "
        "and resource quantities are checked here; the rest by the API server when pods are created.",
        json_schema_extra=POD_SPEC_SCHEMA,
    )


class Condition(_Lenient):
    """A Kubernetes API convention condition."""

    type: str = Field(..., description="Condition type, e.g. Scheduled.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason, e.g. Unschedulable.")
    message: str = Field("", description="Human-readable detail a user can act on.")
    lastTransitionTime: str = Field("", description="RFC 3339 time the status last changed.")
    observedGeneration: int = Field(0, description="metadata.generation this condition was computed for.")


class ReplicaStatus(_Lenient):
    """Where one replica runs."""

    replica: int = Field(..., description="Replica index (0-based).")
    pod: str = Field(..., description="Pod name.")
    node: str = Field(..., description="Node the pod is bound to (or is being bound to).")
    acceleratorType: str = Field("", description="Accelerator type of that node.")
    generation: int = Field(0, description="placementGeneration of the decision that placed this replica.")
    surgeFor: int | None = Field(
        None, ge=0,
        description="Set on a surge replica (make-before-break): it replaces this replica index once its pod is "
                    "Ready; until then both run and the surge replica is not counted in status.replicas.",
    )

    @model_serializer(mode="wrap")
    def _without_unset_surge(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("surgeFor") is None:
            data.pop("surgeFor", None)  # a plain replica: no null in the stored placement
        return data


Phase = Literal["Pending", "Binding", "Running", "Failed"]


class RestartIntent(_Lenient):
    """A scheduling round's decision for a job it stopped to move: restart it on this type."""

    acceleratorType: str = Field(..., description="Accelerator type to restart on.")
    replicas: int | None = Field(None, description="Replica count to restart with (unset: the job's target).")
    decidedAt: float = Field(0.0, description="Unix seconds of the round that decided it; it holds until the next round.")


class WorkloadStatus(_Lenient):
    """Observed state written by the operator."""

    phase: Phase = Field("Pending", description="Pending, Binding, Running or Failed.")
    observedGeneration: int = Field(0, description="metadata.generation the operator last acted on.")
    placementGeneration: int = Field(
        0, description="Increments each time the operator decides a new placement; pods carry it as a label."
    )
    replicas: int = Field(0, description="Replicas whose pods are bound to nodes.")
    acceleratorType: str = Field("", description="Accelerator type(s) the replicas run on.")
    startTime: str | None = Field(
        None, description="RFC 3339 time the current placement started running (cleared when it is undone)."
    )
    placement: list[ReplicaStatus] = Field(default_factory=list, description="Pod -> node per replica.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Scheduled, NoMatchingAccelerator, ...",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    message: str = Field("", description="Last scheduling message.")
    attainedService: float = Field(
        0.0, description="Service earned by earlier runs, in accelerator-seconds on the workload's best type "
        "(the current run adds its time since startTime or lastResizeTime). Least-attained-service "
        "policies rank by it; kept here so a restarted or newly elected operator ranks the same.",
    )
    restartIntent: RestartIntent | None = Field(
        None, description="Where the last scheduling round wants this stopped workload to restart.",
    )


# --- ElasticJob ----------------------------------------------------------------------


class TrainingAcceleratorType(_Model):
    """An accelerator type a training job may run on."""

    name: str = Field(..., min_length=1, max_length=MAX_TYPE_NAME_LENGTH,
                      description="Accelerator type, e.g. H100, A100, Ascend910B.")
    relativeThroughput: float | None = Field(
        None, gt=0, le=MAX_RELATIVE_THROUGHPUT,
        description="Per-replica throughput on this type relative to the others (default 1).",
    )


class Parallelism(_Model):
    """Model-parallel degrees. The data-parallel degree follows from the replica count."""

    tensor: int = Field(1, ge=1, le=MAX_ACCELERATORS_PER_REPLICA, description="Tensor-parallel degree (within one replica).")
    pipeline: int = Field(1, ge=1, le=MAX_PIPELINE_DEGREE, description="Pipeline-parallel degree (stages).")


class ElasticJobSpec(_Model):
    """A training job: a gang of identical replicas that may grow and shrink in [min, max]."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.acceleratorsPerReplica % self.parallelism.tensor == 0",
                    "spec.parallelism.tensor must divide spec.acceleratorsPerReplica "
                    "(tensor parallelism stays inside one replica)",
                    ".parallelism.tensor",
                ),
                _cel(
                    "!has(self.globalBatchSize) || !has(self.microBatchSize)"
                    " || self.globalBatchSize % self.microBatchSize == 0",
                    "spec.globalBatchSize must be a multiple of spec.microBatchSize",
                    ".globalBatchSize",
                ),
            ]
        },
    )

    replicas: ReplicaRange = Field(..., description="Replica bounds; min replicas start together (gang).")
    acceleratorsPerReplica: int = Field(
        1, ge=1, le=MAX_ACCELERATORS_PER_REPLICA, description="Whole accelerators each replica (pod) needs."
    )
    acceleratorTypes: list[TrainingAcceleratorType] = Field(
        ...,
        min_length=1,
        max_length=MAX_ACCELERATOR_TYPES,
        description="Allowed accelerator types; the job runs on one of them.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    allowMixedTypes: bool = Field(False, description="Allow replicas of one job on different accelerator types.")
    parallelism: Parallelism = Field(
        default_factory=lambda: Parallelism(),
        description="Tensor and pipeline degrees.",
        json_schema_extra={"default": {}},
    )
    globalBatchSize: int | None = Field(
        None, ge=1, le=MAX_BATCH_SIZE, description="Global batch size (samples per optimizer step)."
    )
    microBatchSize: int | None = Field(
        None, ge=1, le=MAX_BATCH_SIZE, description="Micro-batch size (samples per forward pass)."
    )
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="Higher runs first.")
    queueName: str = _queue_name_field()
    suspend: bool = _suspend_field()
    deadline: str | None = Field(
        None,
        max_length=64,
        description="Optional RFC 3339 time (e.g. 2026-11-23T18:00:00Z) by which the job should finish. "
        "Deadline-aware policies (edd, mdd, learned) order waiting jobs by it; a missed deadline "
        "does not stop the job.",
        json_schema_extra={"format": "date-time"},
    )
    template: PodTemplate = Field(..., description="Pod template of one replica.")

    @field_validator("deadline")
    @classmethod
    def _deadline_is_rfc3339(cls, value: str | None) -> str | None:
        # the API server checks `format: date-time`; this is the same check for the operator
        if value is not None:
            rfc3339_seconds(value)
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ElasticJobSpec:
        if self.acceleratorsPerReplica % self.parallelism.tensor:
            raise ValueError("spec.parallelism.tensor must divide spec.acceleratorsPerReplica")
        if self.globalBatchSize and self.microBatchSize and self.globalBatchSize % self.microBatchSize:
            raise ValueError("spec.globalBatchSize must be a multiple of spec.microBatchSize")
        names = [t.name for t in self.acceleratorTypes]
        if len(set(names)) != len(names):
            raise ValueError("spec.acceleratorTypes lists a type twice")
        _one_priority(self.priority, self.template)
        return self


class PlanStatus(_Lenient):
    """The sharding plan the job's replicas follow (also in the ``<job>-tessera-plan`` ConfigMap)."""

    generation: int = Field(0, description="Plan generation; bumped on every reshard, pods read it to notice one.")
    dp: int = Field(0, description="Data-parallel degree.")
    tp: int = Field(1, description="Tensor-parallel degree.")
    pp: int = Field(1, description="Pipeline-parallel degree.")
    microBatch: int = Field(0, description="Samples per micro-batch.")
    gradAccumSteps: int = Field(0, description="Micro-batches per optimiser step (largest over data-parallel ranks).")
    globalBatchSize: int = Field(0, description="Samples per optimiser step (preserved across reshards).")
    replicas: list[int] = Field(default_factory=list, description="Replica indices the plan runs on, in rank order.")
    worldSize: int = Field(0, description="Processes of the plan (replicas x accelerators per replica).")
    document: dict[str, Any] = Field(
        default_factory=dict,
        description="The full plan document (per-rank micro-batches, as in the ConfigMap's plan.json).",
        json_schema_extra=_PRESERVE,
    )


class ReshardRecord(_Lenient):
    """One reshard of an elastic job: why, from/to replica counts and how long recovery took."""

    reason: str = Field("", description="Why (lost replicas, growth, requeue below the minimum).")
    fromReplicas: int = Field(0, description="Replicas before.")
    toReplicas: int = Field(0, description="Replicas after (0: released and requeued).")
    generation: int = Field(0, description="Plan generation after the reshard.")
    detectedAt: float = Field(0.0, description="Unix seconds when the failure began (or the growth was decided).")
    runningAt: float | None = Field(None, description="Unix seconds when every replica of the new plan was bound.")
    recoverySeconds: float | None = Field(None, description="runningAt - detectedAt.")


class ElasticJobStatus(WorkloadStatus):
    """Status of an ElasticJob: the placement plus its current sharding plan and reshard history."""

    plan: PlanStatus | None = Field(None, description="Current sharding plan (dp/tp/pp, micro-batch, accumulation).")
    reshardHistory: list[ReshardRecord] = Field(
        default_factory=list, description="Newest reshard events (bounded; oldest dropped first)."
    )
    lastResizeTime: str | None = Field(
        None, description="RFC 3339 time of the last resize; growth waits the hysteresis after it."
    )


class ElasticJob(_Lenient):
    """``elasticjobs.tessera.dev``: an elastic, gang-scheduled training job."""

    kind: ClassVar[str] = "ElasticJob"
    plural: ClassVar[str] = "elasticjobs"
    singular: ClassVar[str] = "elasticjob"
    short_names: ClassVar[tuple[str, ...]] = ("ej", "ejob")

    apiVersion: str = API_VERSION
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ElasticJobSpec
    status: ElasticJobStatus = Field(default_factory=lambda: ElasticJobStatus())


# --- InferenceService ----------------------------------------------------------------


class InferenceAcceleratorType(_Model):
    """An accelerator type an inference service may run on."""

    name: str = Field(..., min_length=1, max_length=MAX_TYPE_NAME_LENGTH,
                      description="Accelerator type, e.g. A100, L4, Ascend910B.")
    capacityPerReplica: float | None = Field(
        None, gt=0, le=MAX_CAPACITY_PER_REPLICA,
        description="Requests/s one replica sustains on this type (relative; default 1).",
    )


class InferenceServiceSpec(_Model):
    """A service of independent replicas; ``replicas`` is driven by ``kubectl scale`` or an HPA."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.replicaRange) || (self.replicas >= self.replicaRange.min"
                    " && self.replicas <= self.replicaRange.max)",
                    "spec.replicas must lie within [spec.replicaRange.min, spec.replicaRange.max]",
                    ".replicas",
                ),
            ]
        },
    )

    replicas: int = Field(1, ge=0, le=MAX_REPLICAS, description="Desired replica count (the scale subresource).")
    replicaRange: InferenceReplicaRange | None = Field(
        None, description="Bounds on spec.replicas; min replicas must fit together before the service starts."
    )
    acceleratorsPerReplica: int = Field(
        1, ge=1, le=MAX_ACCELERATORS_PER_REPLICA, description="Whole accelerators each replica (pod) needs."
    )
    acceleratorTypes: list[InferenceAcceleratorType] = Field(
        ...,
        min_length=1,
        max_length=MAX_ACCELERATOR_TYPES,
        description="Allowed accelerator types with per-replica capacity.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    spread: Literal["Node", "None"] = Field("Node", description="Node: at most one replica per node.")
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="Higher runs first.")
    queueName: str = _queue_name_field()
    suspend: bool = _suspend_field()
    template: PodTemplate = Field(..., description="Pod template of one replica.")

    @model_validator(mode="after")
    def _cross_checks(self) -> InferenceServiceSpec:
        r = self.replicaRange
        if r is not None and not r.min <= self.replicas <= r.max:
            raise ValueError("spec.replicas must lie within [spec.replicaRange.min, spec.replicaRange.max]")
        names = [t.name for t in self.acceleratorTypes]
        if len(set(names)) != len(names):
            raise ValueError("spec.acceleratorTypes lists a type twice")
        _one_priority(self.priority, self.template)
        return self


class MigrationStatus(_Lenient):
    """Why and at what cost one replica moves; recorded with the move's surge replica.

    The move itself is the desired placement: ``placement`` holds the surge replica
    (``newReplica`` on ``toNode``, ``surgeFor: replica``) beside the one it replaces, the
    pods are made to match it, and once the surge pod is Ready one write drops the old
    replica (its pod is then stale and deleted) and moves this entry to the history.
    """

    replica: int = Field(..., description="Replica index that moves (its pod is deleted once the new one is Ready).")
    pod: str = Field(..., description="Pod of the moving replica.")
    fromNode: str = Field(..., description="Node the replica leaves.")
    toNode: str = Field(..., description="Node the replica moves to.")
    newReplica: int = Field(..., description="Fresh replica index of the new pod on toNode.")
    newPod: str = Field(..., description="Pod of the new replica.")
    generation: int = Field(0, description="placementGeneration label of the new pod.")
    startTime: str = Field("", description="RFC 3339 time the move was recorded.")
    estimatedCostSeconds: float = Field(0.0, description="The policy's estimate, in replica-seconds of lost service.")
    policy: str = Field("", description="Policy that decided the move.")
    reason: str = Field("", description="Why: rebalance (load) or defrag (room for a waiting gang).")
    message: str = Field("", description="The policy's explanation.")


class MigrationRecord(_Lenient):
    """A finished (or abandoned) move, kept in a short history."""

    replica: int = Field(..., description="Replica index that moved away.")
    newReplica: int = Field(..., description="Replica index that replaced it.")
    fromNode: str = Field(..., description="Node left.")
    toNode: str = Field(..., description="Node moved to.")
    startTime: str = Field("", description="RFC 3339 time the move was recorded.")
    completionTime: str = Field("", description="RFC 3339 time the new replica took over (or the move was undone).")
    outcome: Literal["Completed", "Aborted"] = Field("Completed", description="Completed or Aborted (undone).")
    estimatedCostSeconds: float = Field(0.0, description="The policy's estimate, in replica-seconds of lost service.")
    observedSeconds: float = Field(0.0, description="From recording the move to the new replica taking over.")
    reason: str = Field("", description="rebalance or defrag; for Aborted moves, why they were undone.")


class InferenceServiceStatus(WorkloadStatus):
    """Status with the fields the scale subresource reads."""

    selector: str = Field("", description="Label selector of the service's pods (for the scale subresource).")
    migrations: list[MigrationStatus] = Field(
        default_factory=list, description="Replica moves in flight (rebalancing), in the order they started."
    )
    migrationHistory: list[MigrationRecord] = Field(
        default_factory=list, description="The last finished or undone moves, oldest first (bounded)."
    )
    lastMigrationTime: str | None = Field(
        None, description="RFC 3339 time the last move finished; with the history it drives the rebalancing cooldown."
    )


class InferenceService(_Lenient):
    """``inferenceservices.tessera.dev`` (not KServe's ``inferenceservices.serving.kserve.io``)."""

    kind: ClassVar[str] = "InferenceService"
    plural: ClassVar[str] = "inferenceservices"
    singular: ClassVar[str] = "inferenceservice"
    short_names: ClassVar[tuple[str, ...]] = ("tisvc", "tis")

    apiVersion: str = API_VERSION
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: InferenceServiceSpec
    status: InferenceServiceStatus = Field(default_factory=lambda: InferenceServiceStatus())


WorkloadResource = ElasticJob | InferenceService
RESOURCES: tuple[type[ElasticJob] | type[InferenceService], ...] = (ElasticJob, InferenceService)
