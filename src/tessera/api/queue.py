"""The ``Queue`` kind (``queues.tessera.dev``, cluster-scoped): accelerator quotas per team.

Queues form a tree through ``spec.parent``; only leaves hold workloads, which name theirs
in ``spec.queueName`` (or get one through a queue's ``spec.namespaceSelector``).  Each
queue has, per accelerator type, a ``nominal`` quota and optional borrowing and lending
limits; the semantics are those of :mod:`tessera.core.quota`, which :func:`queue_core`
converts to.  The operator enforces them through the engine's plan validation; this
module only defines the API (the CRD comes from :mod:`tessera.api.crdgen`).

As in :mod:`tessera.api.models`, every CEL rule (``x-kubernetes-validations``) is checked
again by a pydantic validator, so the operator never acts on an object the API server
would have refused.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from tessera.api.models import API_VERSION, MAX_TYPE_NAME_LENGTH, Condition, _cel, _Lenient, _Model
from tessera.api.names import MAX_QUEUE_NAME_LENGTH, QUEUE_REFERENCE
from tessera.core.quota import EQUIVALENT, TypeQuota, equivalent
from tessera.core.quota import Queue as CoreQueue

#: most accelerator types one queue may set a quota for
MAX_QUEUE_QUOTAS = 32
#: largest quota or limit, in accelerators (far above any cluster, far below overflow)
MAX_QUOTA_ACCELERATORS = 1_000_000
#: largest fair-share weight
MAX_QUEUE_WEIGHT = 1e6


class AcceleratorQuota(_Model):
    """A queue's quota of one accelerator type, in whole accelerators."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("!has(self.lendingLimit) || self.lendingLimit <= self.nominal",
                     "lendingLimit may not exceed nominal", ".lendingLimit"),
            ]
        },
    )

    acceleratorType: str = Field(
        ..., min_length=1, max_length=MAX_TYPE_NAME_LENGTH,
        description="Accelerator type, as a workload names it in spec.acceleratorTypes[].name (e.g. H100).",
    )
    nominal: int = Field(
        0, ge=0, le=MAX_QUOTA_ACCELERATORS,
        description="Accelerators of this type the queue is guaranteed (less what it lends, see lendingLimit).",
    )
    borrowingLimit: int | None = Field(
        None, ge=0, le=MAX_QUOTA_ACCELERATORS,
        description="At most this many accelerators beyond its quota may be borrowed from unused quota "
        "of other queues under the same parent (unset: no limit; a root queue never borrows).",
    )
    lendingLimit: int | None = Field(
        None, ge=0, le=MAX_QUOTA_ACCELERATORS,
        description="At most this much of the quota may be used by other queues while this one does not "
        "(unset: all of it); the rest is guaranteed to this queue. At most nominal.",
    )

    @model_validator(mode="after")
    def _lending_within_nominal(self) -> AcceleratorQuota:
        if self.lendingLimit is not None and self.lendingLimit > self.nominal:
            raise ValueError("lendingLimit may not exceed nominal")
        return self


class QueuePreemption(_Model):
    """Whom a workload of this queue may preempt to get its quota."""

    reclaimWithinTree: Literal["Never", "LowerPriority", "Any"] = Field(
        "Any",
        description="To get back quota lent to other queues of the tree: preempt their workloads never, "
        "only those of lower priority, or any of them.",
    )
    withinQueue: Literal["Never", "LowerPriority"] = Field(
        "LowerPriority", description="Within this queue: preempt never, or workloads of lower priority.",
    )


class QueueSpec(_Model):
    """A node of the queue tree: quotas per accelerator type, a parent and a fair-share weight."""

    parent: str = Field(
        "", max_length=MAX_QUEUE_NAME_LENGTH, pattern=QUEUE_REFERENCE,
        description="Parent Queue (empty: a root). Queues form a tree; only leaves (queues that are no "
        "queue's parent) admit workloads. Unused quota is shared only under a common ancestor.",
    )
    quotas: list[AcceleratorQuota] = Field(
        default_factory=list,
        max_length=MAX_QUEUE_QUOTAS,
        description="Quota per accelerator type. A type no queue of the tree names has quota 0 there.",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.all(q, self.exists_one(r, r.acceleratorType == q.acceleratorType))",
                     "spec.quotas lists an acceleratorType twice"),
                _cel("self.all(q, !q.acceleratorType.endsWith('-equivalent'))",
                     "spec.quotas: an acceleratorType may not end in -equivalent (a quota in normalized units "
                     "is spec.normalizedQuota)"),
            ]
        },
    )
    normalizedQuota: AcceleratorQuota | None = Field(
        None,
        description="A quota in acceleratorType-equivalents, beside the per-type quotas and with the same "
        "rules (nominal, borrowingLimit, lendingLimit): a replica on any type counts its accelerators x its "
        "workload's throughput there over its throughput on acceleratorType (spec.acceleratorTypes[]."
        "throughput), so 8 V100 of a job 3x faster on H100 use 2.67 H100-equivalents. Unset: none.",
    )
    weight: float = Field(
        1.0, gt=0, le=MAX_QUEUE_WEIGHT, description="Fair-share weight among the queue's siblings.",
    )
    namespaceSelector: dict[str, str] = Field(
        default_factory=dict,
        description="Labels (matchLabels) of namespaces whose workloads without spec.queueName default to "
        "this queue. Empty: none.",
    )
    preemption: QueuePreemption = Field(
        default_factory=lambda: QueuePreemption(),
        description="Preemption to get the queue's quota.",
        json_schema_extra={"default": {}},
    )

    @model_validator(mode="after")
    def _unique_types(self) -> QueueSpec:
        types = [q.acceleratorType for q in self.quotas]
        if len(set(types)) != len(types):
            raise ValueError("spec.quotas lists an acceleratorType twice")
        if any(t.endswith(EQUIVALENT) for t in types):
            raise ValueError("spec.quotas: an acceleratorType may not end in -equivalent (a quota in normalized "
                             "units is spec.normalizedQuota)")
        return self


class QueueTypeUsage(_Lenient):
    """Use of one accelerator type under a queue (its own and its descendants')."""

    acceleratorType: str = Field(..., description="Accelerator type.")
    used: float = Field(0.0, description="Accelerators in use (a shared replica counts its fraction).")
    borrowed: float = Field(0.0, description="Accelerators in use beyond the queue's quota.")
    nominal: int = Field(0, description="The queue's quota of this type: its nominal plus its descendants'.")


class QueueStatus(_Lenient):
    """Observed state of a queue, written by the operator."""

    observedGeneration: int = Field(0, description="metadata.generation the operator last acted on.")
    usage: list[QueueTypeUsage] = Field(
        default_factory=list,
        description="Use per accelerator type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["acceleratorType"]},
    )
    pending: int = Field(0, description="Workloads of this queue waiting to be admitted.")
    admitted: int = Field(0, description="Workloads of this queue admitted (placed).")
    fairShare: float = Field(
        0.0, description="The queue's use, each accelerator weighted by its workload's speed there relative to "
        "the workload's fastest type, over weight x its quota of all types: 1 = its whole quota at full speed. "
        "The CP-SAT policy raises the lowest share among queues with waiting work first.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Conditions the operator reports, e.g. why the queue admits nothing (a missing parent, "
        "a cycle of parents).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Queue(_Lenient):
    """``queues.tessera.dev``: a cluster-scoped queue with accelerator quotas."""

    kind: ClassVar[str] = "Queue"
    plural: ClassVar[str] = "queues"
    singular: ClassVar[str] = "queue"
    short_names: ClassVar[tuple[str, ...]] = ("tq",)

    apiVersion: str = API_VERSION
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: QueueSpec = Field(default_factory=lambda: QueueSpec())
    status: QueueStatus = Field(default_factory=lambda: QueueStatus())

    @model_validator(mode="after")
    def _not_its_own_parent(self) -> Queue:
        if self.spec.parent and self.spec.parent == self.metadata.get("name"):
            raise ValueError("spec.parent may not be the queue itself")
        return self


#: the CEL rule at the root of the Queue CRD mirroring :meth:`Queue._not_its_own_parent`
PARENT_RULE: dict[str, Any] = _cel(
    "!has(self.spec) || !has(self.spec.parent) || self.spec.parent != self.metadata.name",
    "spec.parent may not be the queue itself", ".spec.parent",
)


def queue_core(model: Queue) -> CoreQueue:
    """The core :class:`tessera.core.quota.Queue` of a Queue object (its name is ``metadata.name``)."""
    return CoreQueue(
        name=str(model.metadata.get("name", "")),
        parent=model.spec.parent,
        quotas={
            (q.acceleratorType if i < len(model.spec.quotas) else equivalent(q.acceleratorType)):
            TypeQuota(q.nominal, borrowing_limit=q.borrowingLimit, lending_limit=q.lendingLimit)
            for i, q in enumerate([*model.spec.quotas, *filter(None, [model.spec.normalizedQuota])])
        },
        weight=model.spec.weight,
        reclaim_within_tree=model.spec.preemption.reclaimWithinTree,
        within_queue=model.spec.preemption.withinQueue,
    )
