"""The FGD paper's baseline placement policies (ATC'23, section 6.1), reimplemented.

Scores follow the descriptions in the paper and the authors' public simulator: integers
0-100, higher is better, computed with the same arithmetic (float64 then truncation, or
integer division) so that ties, which the scheduler breaks at random, fall the same way.
"""

from __future__ import annotations

import random
from typing import ClassVar

import numpy as np

from tessera.core import MILLI_PER_DEVICE
from tessera.policies.placement.arrays import IntArray, PlacementArrays, PodShape
from tessera.policies.placement.base import PlacementPolicy

#: normalisers of the authors' simulator: the largest node has 128 CPUs and 8 GPUs
MAX_SPEC_CPU_MILLI = 128_000
MAX_SPEC_GPU_MILLI = 8_000
MAX_SCORE = 100


def _no_gpu_choice(nodes: IntArray) -> IntArray:
    return np.full(nodes.size, -1, dtype=np.int64)


def _trunc_div(numerator: IntArray, denominator: int) -> IntArray:
    """Integer division rounding toward zero (Go's ``/`` on ints)."""
    quotient: IntArray = np.abs(numerator) // denominator
    return np.where(numerator < 0, -quotient, quotient)


class RandomFitPolicy(PlacementPolicy):
    """FGD-paper baseline Random: a uniformly random feasible node (and device for a GPU share).

    Randomness comes from ``ctx.rng`` only.
    """

    name: ClassVar[str] = "random"
    #: the score is drawn anew for every pod
    cacheable = False

    def score(
        self, arrays: PlacementArrays, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        # as the authors' RandomScore: one uniformly drawn feasible node scores 100, the rest 0
        scores = np.zeros(nodes.size, dtype=np.int64)
        scores[rng.randrange(nodes.size)] = MAX_SCORE
        return scores, _no_gpu_choice(nodes)

    def select_gpu(self, arrays: PlacementArrays, node: int, shape: PodShape, rng: random.Random) -> int:
        room = np.flatnonzero(arrays.gpu_free[node] >= shape.gpu_milli)
        return int(room[rng.randrange(room.size)])


class DotProductPolicy(PlacementPolicy):
    """FGD-paper baseline DotProd: smallest dot product of free (CPU, GPU) and the request.

    Both vectors are scaled by the largest node (128 CPUs, 8 GPUs), as in the authors' code.
    """

    name: ClassVar[str] = "dot-product"

    def score(
        self, arrays: PlacementArrays, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        cpu_free = arrays.cpu_free[nodes].astype(np.float64)
        gpu_free = arrays.gpu_free_total[nodes].astype(np.float64)
        dot = (cpu_free / MAX_SPEC_CPU_MILLI) * (shape.cpu_milli / MAX_SPEC_CPU_MILLI) + (
            gpu_free / MAX_SPEC_GPU_MILLI
        ) * (shape.total_gpu_milli / MAX_SPEC_GPU_MILLI)
        value = 1.0 - dot / 2.0
        scores = np.trunc(MAX_SCORE * value).astype(np.int64)
        scores = np.where(arrays.cpu_free[nodes] < shape.cpu_milli, 0, scores)
        return scores, _no_gpu_choice(nodes)


class ResourceBestFitPolicy(PlacementPolicy):
    """FGD-paper baseline BestFit: the node left with the least free CPU and GPU after placing.

    Free CPU and GPU are each scaled by the largest node and weighted one half.  Not to be
    confused with Tessera's ``best-fit`` (type-aware gang best fit on accelerators).
    """

    name: ClassVar[str] = "resource-best-fit"

    def score(
        self, arrays: PlacementArrays, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        cpu_left = (arrays.cpu_free[nodes] - shape.cpu_milli).astype(np.float64)
        gpu_left = (arrays.gpu_free_total[nodes] - shape.total_gpu_milli).astype(np.float64)
        waste = cpu_left / MAX_SPEC_CPU_MILLI * 0.5
        waste = waste + gpu_left / MAX_SPEC_GPU_MILLI * 0.5
        scores = np.trunc((1.0 - waste) * MAX_SCORE).astype(np.int64)
        return scores, _no_gpu_choice(nodes)


class GpuPackingPolicy(PlacementPolicy):
    """FGD-paper baseline GpuPacking: shared GPUs first, then used nodes, idle nodes last.

    CPU-only pods score the same everywhere (ties settle the node).
    """

    name: ClassVar[str] = "gpu-packing"

    def score(
        self, arrays: PlacementArrays, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        if shape.gpu_milli <= 0:
            return np.zeros(nodes.size, dtype=np.int64), _no_gpu_choice(nodes)
        free = np.sort(arrays.gpu_free[nodes], axis=1, kind="stable")  # least free first
        whole_free = arrays.gpu_whole_free[nodes]
        idle_node = whole_free == arrays.gpu_count[nodes]
        eligible = free >= shape.gpu_milli
        chosen = eligible & (np.cumsum(eligible, axis=1) <= shape.gpu_count)
        enough = chosen.sum(axis=1) == shape.gpu_count
        whole_used = (chosen & (free == MILLI_PER_DEVICE)).sum(axis=1)
        free_pct_used = (np.where(chosen, free * 100 // MILLI_PER_DEVICE, 0)).sum(axis=1)
        third, half = MAX_SCORE // 3, MAX_SCORE // 2
        scores = np.where(
            idle_node,
            np.maximum(third - whole_free, whole_free),  # (sic) the authors cap with the free-GPU count
            np.where(
                ~enough,
                0,
                np.where(
                    whole_used > 0,
                    np.maximum(half - whole_used, third),
                    np.maximum(MAX_SCORE - free_pct_used // 10, half),
                ),
            ),
        )
        return scores.astype(np.int64), _no_gpu_choice(nodes)


class GpuClusteringPolicy(PlacementPolicy):
    """FGD-paper baseline GpuClustering: keep pods of one GPU shape together on the same nodes.

    Shapes are a GPU share or k whole GPUs; nodes running only that shape come first, then
    nodes running it among others, then idle nodes, fuller nodes first within each group.
    """

    name: ClassVar[str] = "gpu-clustering"

    def score(
        self, arrays: PlacementArrays, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        slot = shape.affinity_slot
        if slot < 0:
            return np.zeros(nodes.size, dtype=np.int64), _no_gpu_choice(nodes)
        quarter = MAX_SCORE // 4
        fullness = _trunc_div(quarter * (MAX_SPEC_GPU_MILLI - arrays.gpu_free_total[nodes]), MAX_SPEC_GPU_MILLI)
        affinity = arrays.affinity[nodes]
        same = affinity[:, slot] > 0
        kinds = (affinity > 0).sum(axis=1)
        bonus = np.where(
            same,
            np.where(kinds == 1, 3 * MAX_SCORE // 4, 2 * MAX_SCORE // 4),
            np.where(kinds == 0, MAX_SCORE // 4, 0),
        )
        return (fullness + bonus).astype(np.int64), _no_gpu_choice(nodes)
