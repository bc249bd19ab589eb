"""What replicas ask for and the mix a cluster expects, in the learned dispatcher's vocabulary:
:class:`Demand` (one replica) and :class:`TargetWorkload` (FGD's "target workload"), built from
demands or from counted groups that a caller keeps up to date (:func:`target_from_groups`)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.core import MILLI_PER_DEVICE, ReplicaDemand, Workload


@dataclass(frozen=True, slots=True)
class Demand:
    """What one replica needs, in the arrays' vocabulary."""

    cpu_milli: int
    memory_mib: int
    #: whole devices, or 1 for a shared replica, 0 for CPU-only
    num_gpu: int
    #: milli per device: 1000 for whole devices, < 1000 for a shared one, 0 for CPU-only
    gpu_milli: int
    #: allowed accelerator types (names); empty = any
    types: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        return 0 < self.gpu_milli < MILLI_PER_DEVICE

    @property
    def total_gpu_milli(self) -> int:
        return self.num_gpu * self.gpu_milli


def demand_of(workload: Workload) -> Demand:
    """The per-replica :class:`Demand` of a core workload."""
    return demand_from_replica(workload.demand, workload.allowed_types)


def demand_from_replica(demand: ReplicaDemand, types: Sequence[str] = ()) -> Demand:
    if demand.shared_milli:
        num_gpu, milli = 1, demand.shared_milli
    elif demand.accelerators:
        num_gpu, milli = demand.accelerators, MILLI_PER_DEVICE
    else:
        num_gpu, milli = 0, 0
    return Demand(demand.cpu_milli, demand.memory_mib, num_gpu, milli, tuple(sorted(types)))


@dataclass(frozen=True, slots=True)
class TargetWorkload:
    """The distribution of replica shapes the cluster expects (FGD's "target workload")."""

    cpu_milli: npt.NDArray[np.int64]  # (shapes,)
    memory_mib: npt.NDArray[np.int64]
    num_gpu: npt.NDArray[np.int64]
    gpu_milli: npt.NDArray[np.int64]
    #: (shapes, types) True where the shape may use the type
    type_ok: npt.NDArray[np.bool_]
    probability: npt.NDArray[np.float64]
    #: pods behind each shape (integers: expected fragmentation is summed exactly, then divided)
    count: npt.NDArray[np.int64]
    #: per node type: share of the workload's GPU-milli that may use it
    type_demand: npt.NDArray[np.float64]


def target_workload(demands: Iterable[Demand], type_names: Sequence[str], max_shapes: int = 32) -> TargetWorkload:
    """Group ``demands`` by GPU shape and allowed types; keep the ``max_shapes`` most common.

    CPU and memory of a group are the group's means (rounded), so a group stands for its pods.
    """
    groups: dict[ShapeKey, list[int]] = {}
    add_demands(groups, demands, 1)
    return target_from_groups(groups, type_names, max_shapes)


#: a target-workload group: (num_gpu, gpu_milli, allowed types)
ShapeKey = tuple[int, int, tuple[str, ...]]


def add_demands(groups: dict[ShapeKey, list[int]], demands: Iterable[Demand], sign: int) -> None:
    """Count ``demands`` into ``groups`` (key -> [pods, CPU sum, memory sum]), or out (``sign`` -1)."""
    for d in demands:
        key = (d.num_gpu, d.gpu_milli, d.types)
        group = groups.get(key)
        if group is None:
            group = groups[key] = [0, 0, 0]
        group[0] += sign
        group[1] += sign * d.cpu_milli
        group[2] += sign * d.memory_mib
        if not group[0]:
            del groups[key]


def target_from_groups(groups: Mapping[ShapeKey, Sequence[int]], type_names: Sequence[str],
                       max_shapes: int = 32) -> TargetWorkload:
    """:func:`target_workload` from counted groups (key -> [pods, CPU sum, memory sum]): the same
    result as from the demands themselves, so a caller may keep the counts up to date instead."""
    if not groups:
        groups = {(0, 0, ()): (1, 0, 0)}
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0]))[:max_shapes]
    keys = [k for k, _ in ranked]
    sums = np.array([v[:3] for _, v in ranked], dtype=np.int64).reshape(len(ranked), 3)
    count = sums[:, 0]
    num_gpu = np.array([k[0] for k in keys], dtype=np.int64)
    gpu_milli = np.array([k[1] for k in keys], dtype=np.int64)
    type_ok = np.array([_type_row(k[2], tuple(type_names)) for k in keys], dtype=bool).reshape(len(keys), len(type_names))
    gpu_weight = (count * num_gpu * gpu_milli).astype(np.float64)
    type_demand = (gpu_weight[:, None] * type_ok).sum(0) / max(gpu_weight.sum(), 1.0)
    return TargetWorkload(
        # means rounded half to even, as Python's round() of the same float quotient
        cpu_milli=np.rint(sums[:, 1] / count).astype(np.int64),
        memory_mib=np.rint(sums[:, 2] / count).astype(np.int64),
        num_gpu=num_gpu,
        gpu_milli=gpu_milli,
        type_ok=type_ok,
        probability=count / int(count.sum()),
        count=count,
        type_demand=type_demand,
    )


@functools.lru_cache(maxsize=4096)
def _type_row(types: tuple[str, ...], type_names: tuple[str, ...]) -> tuple[bool, ...]:
    """Which of ``type_names`` a shape allowing ``types`` may use (empty: all)."""
    return tuple(not types or t in types for t in type_names)
