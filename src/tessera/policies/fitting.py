"""How many replicas fit, counted over numpy node arrays: what ``explain_unfit`` counts node by
node in Python (``NodeFree.replicas_fitting``), vectorised, so a policy that holds the cluster
as arrays explains an unplaced workload in microseconds, in the same words
(:func:`tessera.core.describe_unfit`)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tessera.core import MILLI_PER_DEVICE, Spread, Workload


def replicas_fitting(
    rows: npt.NDArray[np.bool_],
    gpu_free: npt.NDArray[np.int64],
    cpu_free: npt.NDArray[np.int64],
    mem_free: npt.NDArray[np.int64],
    workload: Workload,
) -> int:
    """Replicas of ``workload`` that fit on the nodes selected by ``rows`` (usable, of the type
    asked about), summed; ``gpu_free`` pads missing device slots with 0."""
    demand = workload.demand
    counts = []
    if demand.accelerators:
        counts.append((gpu_free[rows] == MILLI_PER_DEVICE).sum(axis=1) // demand.accelerators)
    elif demand.shared_milli:
        counts.append((gpu_free[rows] // demand.shared_milli).sum(axis=1))
    if demand.cpu_milli:
        counts.append(cpu_free[rows] // demand.cpu_milli)
    if demand.memory_mib:
        counts.append(mem_free[rows] // demand.memory_mib)
    n = np.maximum(0, np.min(counts, axis=0)) if counts else np.full(int(rows.sum()), 1_000_000)
    if workload.spread is Spread.NODE:
        n = np.minimum(n, 1)
    return int(n.sum())
