"""Facts about elastic training workloads that every layer reads the same way.

The workload attributes an elastic job declares, what one resize costs it, and the
sharding plan it would follow on a replica set.  The elastic policy
(:mod:`tessera.policies.elastic`) decides with them; the operator and the simulator
read them too, so they live here rather than in the policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.core.model import Workload
from tessera.core.sharding import ShardingPlan, largest_feasible_plan

REMAINING_SECONDS_ATTRIBUTE = "tessera.dev/remaining-seconds"
ALLOW_UNEVEN_ATTRIBUTE = "tessera.dev/allow-uneven-split"
#: set on a workload whose data-parallel replicas each hold the complete model and optimizer
#: state (no ZeRO/FSDP sharding across DP): it reshards without a checkpoint reload, pausing
#: for this many seconds (rebuild the process group; new replicas receive state from a peer)
RESHARD_COST_ATTRIBUTE = "tessera.dev/reshard-cost-seconds"
#: "sharded" when data-parallel replicas split the training state (ZeRO, FSDP, a distributed
#: optimizer): losing one loses state only the checkpoint has, so the job cannot reshard in
#: memory.  Anything else (the default) means every DP replica holds all of it.
DP_STATE_ATTRIBUTE = "tessera.dev/dp-state"


def in_memory_reshard_seconds(workload: Workload) -> float | None:
    """The pause of an in-memory reshard of ``workload``, or None when it reshards through its checkpoint."""
    raw = workload.attributes.get(RESHARD_COST_ATTRIBUTE)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None  # a malformed value: fall back to the safe (checkpoint) assumption
    return value if value >= 0 else None


def resize_cost_seconds(workload: Workload) -> float:
    """What one resize costs ``workload`` in paused time: the in-memory reshard pause when it
    declares one (``tessera.dev/reshard-cost-seconds``), else its restart cost (checkpoint reload)."""
    pause = in_memory_reshard_seconds(workload)
    return workload.restart_cost_seconds if pause is None else pause


def sharding_for(
    workload: Workload, replicas: Sequence[tuple[int, str | None]]
) -> ShardingPlan | str | None:
    """The largest feasible sharding plan of ``workload`` on ``replicas`` (index, type).

    Returns None for workloads without a global batch size (any replica count works and
    no plan is needed), or the refusal reason as a string.
    """
    if workload.global_batch_size is None:
        return None
    throughput = {o.accelerator_type: o.throughput for o in workload.options}
    result = largest_feasible_plan(
        [t for _, t in replicas],
        replica_indices=[i for i, _ in replicas],
        global_batch_size=workload.global_batch_size,
        max_micro_batch=workload.micro_batch_size or workload.global_batch_size,
        tensor_parallel=workload.tensor_parallel,
        pipeline_parallel=workload.pipeline_parallel,
        devices_per_replica=max(1, workload.demand.accelerators),
        throughput=throughput,
        allow_uneven=workload.attributes.get(ALLOW_UNEVEN_ATTRIBUTE, "").lower() == "true",
        min_replicas=workload.gang_min,
    )
    return result if isinstance(result, ShardingPlan) else str(result)
