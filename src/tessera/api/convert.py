"""From API objects to the core domain model the engine and policies understand."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.api.models import ElasticJobSpec, InferenceServiceSpec, PodTemplate, rfc3339_seconds
from tessera.api.quantity import to_mib, to_milli
from tessera.core import AcceleratorOption, ReplicaDemand, Spread, Workload, WorkloadKind


def template_requests(template: PodTemplate | Mapping[str, Any]) -> tuple[int, int]:
    """(cpu_milli, memory_mib) one pod of ``template`` requests.

    Containers add up; init containers run one at a time, so only the largest counts
    (the same rule the kube-scheduler uses).  Limits stand in for missing requests.
    """
    spec = template.spec if isinstance(template, PodTemplate) else template.get("spec", {})
    return pod_spec_requests(spec)


def pod_spec_requests(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(cpu_milli, memory_mib) requested by a PodSpec (as a dict)."""

    def one(container: Mapping[str, Any]) -> tuple[int, int]:
        resources = container.get("resources") or {}
        requests = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        cpu = to_milli(requests["cpu"]) if "cpu" in requests else 0
        mem = to_mib(requests["memory"]) if "memory" in requests else 0
        return cpu, mem

    cpu = mem = 0
    for container in spec.get("containers") or []:
        c, m = one(container)
        cpu, mem = cpu + c, mem + m
    for container in spec.get("initContainers") or []:
        c, m = one(container)
        cpu, mem = max(cpu, c), max(mem, m)
    return cpu, mem


def elasticjob_workload(
    key: str, spec: ElasticJobSpec, submitted_at_seconds: float = 0.0
) -> Workload:
    """The core workload of an ElasticJob (a training gang)."""
    cpu, mem = template_requests(spec.template)
    return Workload(
        key=key,
        kind=WorkloadKind.TRAINING,
        demand=ReplicaDemand(accelerators=spec.acceleratorsPerReplica, cpu_milli=cpu, memory_mib=mem),
        min_replicas=spec.replicas.min,
        max_replicas=spec.replicas.max,
        options=tuple(
            AcceleratorOption(t.name, t.relativeThroughput if t.relativeThroughput is not None else 1.0)
            for t in spec.acceleratorTypes
        ),
        allow_mixed_types=spec.allowMixedTypes,
        priority=spec.priority,
        tensor_parallel=spec.parallelism.tensor,
        pipeline_parallel=spec.parallelism.pipeline,
        global_batch_size=spec.globalBatchSize,
        micro_batch_size=spec.microBatchSize,
        submitted_at_seconds=submitted_at_seconds,
        # epoch seconds, the operator's clock (submitted_at_seconds is creationTimestamp the same way)
        deadline_seconds=rfc3339_seconds(spec.deadline) if spec.deadline is not None else None,
        queue=spec.queueName,
    )


def inference_bounds(spec: InferenceServiceSpec) -> tuple[int, int]:
    """(min, max) replicas; without a range the desired count is both."""
    if spec.replicaRange is not None:
        return spec.replicaRange.min, spec.replicaRange.max
    return min(1, spec.replicas), max(1, spec.replicas)


def inferenceservice_workload(
    key: str,
    spec: InferenceServiceSpec,
    submitted_at_seconds: float = 0.0,
    *,
    replicas: int | None = None,
    min_replicas: int | None = None,
) -> Workload:
    """The core workload of an InferenceService.

    ``replicas``/``min_replicas`` override the spec when the operator asks the policy
    for only the replicas still missing (scale-up of a running service).
    """
    cpu, mem = template_requests(spec.template)
    low, high = inference_bounds(spec)
    want = spec.replicas if replicas is None else replicas
    low = low if min_replicas is None else min_replicas
    want = max(1, want)
    return Workload(
        key=key,
        kind=WorkloadKind.INFERENCE,
        demand=ReplicaDemand(accelerators=spec.acceleratorsPerReplica, cpu_milli=cpu, memory_mib=mem),
        # inference replicas are independent: the gang is only `min` (at least one)
        min_replicas=min(max(low, 1), want),
        max_replicas=max(want, 1) if replicas is not None else max(high, want),
        desired_replicas=want,
        options=tuple(
            AcceleratorOption(t.name, t.capacityPerReplica if t.capacityPerReplica is not None else 1.0)
            for t in spec.acceleratorTypes
        ),
        # replicas of a service may sit on different types; capacity per type differs
        allow_mixed_types=True,
        priority=spec.priority,
        submitted_at_seconds=submitted_at_seconds,
        spread=Spread.NODE if spec.spread == "Node" else Spread.NONE,
        queue=spec.queueName,
    )
