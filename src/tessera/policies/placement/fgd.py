"""Fragmentation gradient descent (FGD; Weng et al., USENIX ATC'23), reimplemented.

A node's fragmentation is measured against the *target workload* (the distribution of
pod shapes expected): for each shape, the node's free GPU milli that this shape could not
use — all of it when the shape cannot run there (CPU, model or too few devices with room),
otherwise the milli on devices too small for it.  The node fragmentation is the
expectation of that amount over the target workload.  FGD places a pod where the
placement increases this expectation the least (the steepest descent of cluster
fragmentation), and puts a GPU share on the device that does so.

Scoring matches the authors' simulator: ``int(100 * sigmoid((F_before - F_after) / 1000))``,
so nodes whose changes differ by less than about 40 milli-GPU tie and the scheduler
picks among them at random.
"""

from __future__ import annotations

import random
from typing import ClassVar

import numpy as np

from tessera.core import MILLI_PER_DEVICE
from tessera.policies.placement.arrays import (
    FloatArray,
    IntArray,
    PlacementArrays,
    PodShape,
    TargetArrays,
    TargetWorkload,
)
from tessera.policies.placement.base import PlacementPolicy

MAX_SCORE = 100
#: the sigmoid's scale: differences are taken in GPUs (1000 milli)
SIGMOID_SCALE_MILLI = 1000.0


class FragmentationMeter:
    """Each node's expected fragmented GPU milli, recomputed only for nodes that changed."""

    def __init__(self, arrays: PlacementArrays, target: TargetWorkload) -> None:
        self.arrays = arrays
        #: the target workload measured against
        self.source = target
        self.target = TargetArrays(target, arrays)
        self._values: FloatArray = np.zeros(arrays.n_nodes)
        self._stamp: IntArray = np.full(arrays.n_nodes, -1, dtype=np.int64)

    def node_fragmentation(self, nodes: IntArray) -> FloatArray:
        stale = nodes[self._stamp[nodes] != self.arrays.version[nodes]]
        if stale.size:
            a = self.arrays
            self._values[stale] = self.target.fragmentation(a.gpu_free[stale], a.cpu_free[stale], a.type_idx[stale])
            self._stamp[stale] = a.version[stale]
        return self._values[nodes]

    def cluster_fragmentation(self) -> float:
        """Expected fragmented GPU milli summed over all nodes."""
        return float(self.node_fragmentation(np.arange(self.arrays.n_nodes)).sum())


def fgd_scores(delta_milli: FloatArray) -> IntArray:
    """``int(100 * sigmoid(delta / 1000))``: higher when fragmentation grows less."""
    return np.trunc(MAX_SCORE * (1.0 / (1.0 + np.exp(-delta_milli / SIGMOID_SCALE_MILLI)))).astype(np.int64)


class FgdPolicy(PlacementPolicy):
    """Fragmentation gradient descent (FGD, ATC'23): place where expected GPU fragmentation grows least."""

    name: ClassVar[str] = "fgd"

    def __init__(self) -> None:
        self._meter: FragmentationMeter | None = None

    def prepare(self, arrays: PlacementArrays, target: TargetWorkload | None) -> None:
        if target is None:
            raise ValueError("FGD needs a target workload (the distribution of pod shapes)")
        if self._meter is None or self._meter.arrays is not arrays or self._meter.source is not target:
            self._meter = FragmentationMeter(arrays, target)  # same arrays and target: its stamps stay valid

    def score(
        self, arrays: PlacementArrays, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        meter = self._meter
        if meter is None or meter.arrays is not arrays:
            raise RuntimeError("FgdPolicy.prepare(arrays, target) must be called for these arrays first")
        before = meter.node_fragmentation(nodes)
        free = arrays.gpu_free[nodes]
        cpu_after = arrays.cpu_free[nodes] - shape.cpu_milli
        types = arrays.type_idx[nodes]
        no_gpu = np.full(nodes.size, -1, dtype=np.int64)
        if shape.shares_gpu:
            # every device with room is a candidate: score each, keep the best (lowest index on ties)
            n, g = free.shape
            options = np.repeat(free[:, None, :], g, axis=1) - shape.gpu_milli * np.eye(g, dtype=np.int64)[None]
            after = meter.target.fragmentation(
                options.reshape(n * g, g), np.repeat(cpu_after, g), np.repeat(types, g)
            ).reshape(n, g)
            per_device = fgd_scores(before[:, None] - after)
            per_device = np.where(free >= shape.gpu_milli, per_device, -1)
            best = np.argmax(per_device, axis=1)
            return per_device[np.arange(n), best], best.astype(np.int64)
        if shape.gpu_count:
            whole = free == MILLI_PER_DEVICE
            take = whole & (np.cumsum(whole, axis=1) <= shape.gpu_count)
            free = free - MILLI_PER_DEVICE * take
        after = meter.target.fragmentation(free, cpu_after, types)
        return fgd_scores(before - after), no_gpu
