"""How many replicas fit, counted over numpy node arrays: what ``explain_unfit`` counts node by
node in Python (``NodeFree.replicas_fitting``), vectorised, so a policy that holds the cluster
as arrays explains an unplaced workload in microseconds, in the same words
(:func:`tessera.core.describe_unfit`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tessera.core import MILLI_PER_DEVICE, Spread, Workload


def fitting_by_type(
    usable: npt.NDArray[np.bool_],
    type_index: npt.NDArray[np.int64],
    type_names: list[str],
    gpu_free: npt.NDArray[np.int64],
    cpu_free: npt.NDArray[np.int64],
    mem_free: npt.NDArray[np.int64],
    workload: Workload,
) -> dict[str, int]:
    """Replicas of ``workload`` fitting, per type (one pass over the nodes): type name ->
    replicas fitting on its usable nodes, plus ``"(cpu)"`` -> on all usable nodes.
    ``type_index`` indexes ``type_names``; any other value marks a node of no listed type."""
    per_node = np.zeros(len(usable), dtype=np.int64)
    per_node[usable] = _per_node(gpu_free[usable], cpu_free[usable], mem_free[usable], workload)
    known = (type_index >= 0) & (type_index < len(type_names))
    sums = np.bincount(type_index[known], weights=per_node[known], minlength=len(type_names))
    out = {name: int(sums[i]) for i, name in enumerate(type_names)}
    out["(cpu)"] = int(per_node.sum())
    return out


def _per_node(gpu_free: npt.NDArray[np.int64], cpu_free: npt.NDArray[np.int64], mem_free: npt.NDArray[np.int64],
              workload: Workload) -> npt.NDArray[np.int64]:
    demand = workload.demand
    counts = []
    if demand.accelerators:
        counts.append((gpu_free == MILLI_PER_DEVICE).sum(axis=1) // demand.accelerators)
    elif demand.shared_milli:
        counts.append((gpu_free // demand.shared_milli).sum(axis=1))
    if demand.cpu_milli:
        counts.append(cpu_free // demand.cpu_milli)
    if demand.memory_mib:
        counts.append(mem_free // demand.memory_mib)
    n = np.maximum(0, np.min(counts, axis=0)) if counts else np.full(len(cpu_free), 1_000_000, dtype=np.int64)
    if workload.spread is Spread.NODE:
        n = np.minimum(n, 1)
    return np.asarray(n, dtype=np.int64)


def lookup(counts: dict[str, int]) -> Callable[[str], int]:
    """``counts`` as the ``fitting`` callback of :func:`tessera.core.describe_unfit` (absent types: 0)."""
    return lambda accelerator_type: counts.get(accelerator_type, 0)
