"""Attained service: the one definition every policy, the operator and the simulator share.

A workload earns *service* while it runs: per second, each of its replicas earns its
accelerators (whole devices, or the share of one) times its throughput on the type it sits
on relative to the workload's best type. One second of a 4-GPU replica on its fastest type
is 4 service-seconds; on a type half as fast, 2.

Service is decision state that must survive a restart or a leader change, so it lives
with the workload, not in a policy's memory:

* ``Workload.attained_service_seconds``: what earlier runs (and the current run before its
  last change of shape) earned. The operator keeps it in ``status.attainedService`` and
  folds the current run into it whenever the run ends or changes shape; the simulator does
  the same on its side.
* the current run, from ``Allocation.service_since_seconds`` (default: the run's start or
  last resize) to now, at the rate of its current replicas.

Policies read it with :func:`attained_service`; none keep their own tally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tessera.core.model import MILLI_PER_DEVICE, Allocation, ReplicaPlacement, Workload


def normalised_throughput(workload: Workload, accelerator_type: str | None) -> float:
    """Per-replica throughput on the type relative to the workload's best type (1.0 without options)."""
    if not workload.options:
        return 1.0
    best = max(o.throughput for o in workload.options)
    return workload.throughput_on(accelerator_type) / best if best > 0 else 0.0


def service_rate(workload: Workload, replicas: Sequence[ReplicaPlacement]) -> float:
    """Service-seconds the replicas earn per second."""
    devices = workload.demand.accelerator_milli / MILLI_PER_DEVICE if workload.demand.needs_accelerator else 1.0
    return sum(devices * normalised_throughput(workload, rp.accelerator_type) for rp in replicas)


def service_since(allocation: Allocation) -> float:
    """Since when the current run's service is not yet in the workload's tally."""
    if allocation.service_since_seconds is not None:
        return allocation.service_since_seconds
    return allocation.stable_since_seconds


def attained_service(workload: Workload, allocation: Allocation | None, now_seconds: float) -> float:
    """Service ``workload`` has attained by ``now_seconds`` (its tally plus its current run).

    A source that does not know when a run started says so with ``service_since_seconds``
    = now (the operator does, for a run without ``status.startTime``): it adds nothing.
    """
    total = workload.attained_service_seconds
    if allocation is None or not allocation.replicas:
        return total
    since = service_since(allocation)
    if now_seconds <= since:
        return total
    return total + (now_seconds - since) * service_rate(allocation.workload, allocation.replicas)


def per_accelerator(workload: Workload, service: float, replicas: int | None = None) -> float:
    """``service`` divided by the accelerators of ``replicas`` replicas (default the smallest gang):
    seconds of running that gang on its best type."""
    devices = workload.demand.accelerator_milli / MILLI_PER_DEVICE if workload.demand.needs_accelerator else 1.0
    return service / max(1e-9, (replicas or workload.gang_min) * devices)


def folded(allocation: Allocation, now_seconds: float) -> Workload:
    """The allocation's workload with the current run's service up to ``now_seconds`` in its tally
    (for a run that ends or changes shape at ``now_seconds``)."""
    workload = allocation.workload
    return dataclasses.replace(workload, attained_service_seconds=attained_service(workload, allocation, now_seconds))
