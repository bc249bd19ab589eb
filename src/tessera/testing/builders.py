"""Small builders for tests and plugin authors: nodes, workloads and snapshots in one line."""

from __future__ import annotations

from collections.abc import Iterable

from tessera.core import (
    AcceleratorOption,
    ClusterSnapshot,
    Node,
    ReplicaDemand,
    Spread,
    Topology,
    Workload,
    WorkloadKind,
)


def node(
    name: str,
    accelerator_type: str | None = "A100",
    count: int = 8,
    *,
    cpu_milli: int = 96_000,
    memory_mib: int = 1_024_000,
    zone: str = "z1",
    domain: str = "",
    ready: bool = True,
    schedulable: bool = True,
) -> Node:
    return Node(
        name=name,
        accelerator_type=accelerator_type if count else None,
        accelerator_count=count,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        topology=Topology(zone=zone, domain=domain),
        ready=ready,
        schedulable=schedulable,
    )


def nodes(prefix: str, n: int, accelerator_type: str | None = "A100", count: int = 8, **kw: object) -> list[Node]:
    return [node(f"{prefix}-{i}", accelerator_type, count, **kw) for i in range(n)]  # type: ignore[arg-type]


def gang(
    key: str,
    replicas: int | tuple[int, int] = 1,
    accelerators: int = 1,
    types: Iterable[str | tuple[str, float]] = (),
    *,
    kind: WorkloadKind = WorkloadKind.TRAINING,
    shared_milli: int = 0,
    cpu_milli: int = 0,
    memory_mib: int = 0,
    priority: int = 0,
    submitted: float = 0.0,
    mixed: bool = False,
    spread: Spread = Spread.NONE,
    desired: int | None = None,
    preemptible: bool = True,
    deadline: float | None = None,
    estimated_seconds: float | None = None,
) -> Workload:
    """A workload in one line; ``estimated_seconds`` lands in ``attributes`` (used by MDD)."""
    lo, hi = (replicas, replicas) if isinstance(replicas, int) else replicas
    options = tuple(
        AcceleratorOption(t) if isinstance(t, str) else AcceleratorOption(t[0], t[1]) for t in types
    )
    return Workload(
        key=key,
        kind=kind,
        demand=ReplicaDemand(
            accelerators=0 if shared_milli else accelerators,
            shared_milli=shared_milli,
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
        ),
        min_replicas=lo,
        max_replicas=hi,
        desired_replicas=desired,
        options=options,
        allow_mixed_types=mixed,
        priority=priority,
        submitted_at_seconds=submitted,
        spread=spread,
        preemptible=preemptible,
        deadline_seconds=deadline,
        attributes={"estimated_seconds": str(estimated_seconds)} if estimated_seconds is not None else {},
    )


def snapshot(nodes: Iterable[Node], *allocations: object, now: float = 0.0) -> ClusterSnapshot:
    return ClusterSnapshot(nodes, allocations, now_seconds=now)  # type: ignore[arg-type]
