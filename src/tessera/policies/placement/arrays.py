"""Cluster state as numpy arrays, pod shapes, and the node choice every placement policy shares.

The FGD (ATC'23) baselines score one pod against every node.  To run 10,000-pod traces on
1,500 nodes quickly, the state lives in flat arrays (free CPU and memory per node, free
milli-GPU per device as an ``[n_nodes, max_gpus]`` matrix, GPU type index) and every
policy scores a vector of nodes at once.  :meth:`PlacementPolicy.decide` and the FGD
protocol runner both go through :func:`choose_node`, so the two paths pick the same nodes.

Conventions taken from the authors' simulator (hkust-adsl/kubernetes-scheduler-simulator):
scores are integers 0-100, the highest wins, ties go to a uniformly random node (the
Kubernetes scheduler's ``selectHost``); a whole-GPU pod takes the lowest-index fully free
GPUs; a GPU-sharing pod takes the device its policy names, by default the fullest device
that still has room (lowest index on ties).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tessera.core import MILLI_PER_DEVICE, ClusterSnapshot, Workload

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

#: affinity slots for GPU clustering: 0 = shares a GPU, k = k whole GPUs (k = 1..8), 9 = more
SHARE_AFFINITY = 0
MAX_AFFINITY_SLOTS = 10


@dataclass(frozen=True, slots=True)
class PodShape:
    """What one pod asks for, in the units the placement policies score."""

    cpu_milli: int
    memory_mib: int
    #: devices used: 0 (CPU-only), 1 (a whole GPU or a share of one), k whole GPUs
    gpu_count: int
    #: milli per device: 0, 1-999 (shared), 1000 (whole)
    gpu_milli: int
    #: allowed GPU models, sorted; empty = any
    allowed_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.gpu_count < 0 or not 0 <= self.gpu_milli <= MILLI_PER_DEVICE:
            raise ValueError(f"bad pod shape {self}")
        if (self.gpu_count == 0) != (self.gpu_milli == 0):
            raise ValueError(f"pod shape {self}: gpu_count and gpu_milli must both be zero or both positive")
        if self.gpu_count > 1 and self.gpu_milli != MILLI_PER_DEVICE:
            raise ValueError(f"pod shape {self}: several GPUs must be whole GPUs")

    @property
    def shares_gpu(self) -> bool:
        return self.gpu_count == 1 and self.gpu_milli < MILLI_PER_DEVICE

    @property
    def total_gpu_milli(self) -> int:
        return self.gpu_count * self.gpu_milli

    @property
    def affinity_slot(self) -> int:
        """GPU clustering's tag: -1 for CPU-only pods."""
        if self.gpu_count == 0:
            return -1
        if self.shares_gpu:
            return SHARE_AFFINITY
        return min(self.gpu_count, MAX_AFFINITY_SLOTS - 1)

    @property
    def score_key(self) -> tuple[int, int, int, tuple[str, ...]]:
        """Everything a policy's score may depend on (memory only gates feasibility)."""
        return (self.cpu_milli, self.gpu_count, self.gpu_milli, self.allowed_types)

    @classmethod
    def of(cls, workload: Workload) -> PodShape:
        demand = workload.demand
        if demand.shared_milli:
            count, milli = 1, demand.shared_milli
        elif demand.accelerators:
            count, milli = demand.accelerators, MILLI_PER_DEVICE
        else:
            count, milli = 0, 0
        types = tuple(sorted(workload.allowed_types)) if count else ()
        return cls(demand.cpu_milli, demand.memory_mib, count, milli, types)


class PlacementArrays:
    """Mutable per-node state in numpy arrays (one row per node, in a fixed order)."""

    def __init__(
        self,
        names: Sequence[str],
        gpu_types: Sequence[str | None],
        gpu_counts: Sequence[int],
        cpu_milli: Sequence[int],
        memory_mib: Sequence[int],
        *,
        usable: Sequence[bool] | None = None,
    ) -> None:
        n = len(names)
        if not (len(gpu_types) == len(gpu_counts) == len(cpu_milli) == len(memory_mib) == n):
            raise ValueError("node arrays must have one entry per node")
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.type_names: list[str] = sorted({t for t, c in zip(gpu_types, gpu_counts, strict=True) if t and c})
        type_pos = {t: i for i, t in enumerate(self.type_names)}
        #: type index per node; len(type_names) marks a node without GPUs
        self.no_type = len(self.type_names)
        self.type_idx: IntArray = np.array(
            [type_pos[t] if (t and c) else self.no_type for t, c in zip(gpu_types, gpu_counts, strict=True)],
            dtype=np.int64,
        )
        self.gpu_count: IntArray = np.asarray(gpu_counts, dtype=np.int64)
        self.max_gpus = int(self.gpu_count.max()) if n else 0
        self.max_gpus = max(self.max_gpus, 1)
        self.cpu_capacity: IntArray = np.asarray(cpu_milli, dtype=np.int64)
        self.memory_capacity: IntArray = np.asarray(memory_mib, dtype=np.int64)
        self.cpu_free: IntArray = self.cpu_capacity.copy()
        self.memory_free: IntArray = self.memory_capacity.copy()
        # padded device slots hold 0 free milli: they never fit anything and add nothing to sums
        slots = np.arange(self.max_gpus)[None, :]
        self.gpu_free: IntArray = np.where(slots < self.gpu_count[:, None], MILLI_PER_DEVICE, 0).astype(np.int64)
        self.usable: BoolArray = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
        #: pods per GPU-clustering affinity tag on each node
        self.affinity: IntArray = np.zeros((n, MAX_AFFINITY_SLOTS), dtype=np.int64)
        #: bumped whenever a node's state changes (score caches compare against it)
        self.version: IntArray = np.zeros(n, dtype=np.int64)
        self._type_masks: dict[tuple[str, ...], BoolArray] = {}
        self._refresh_derived(np.arange(n))

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_snapshot(cls, snapshot: ClusterSnapshot) -> PlacementArrays:
        """Arrays for the free capacity of ``snapshot`` (running pods included)."""
        nodes = list(snapshot.nodes.values())
        arrays = cls(
            [n.name for n in nodes],
            [n.accelerator_type for n in nodes],
            [n.accelerator_count for n in nodes],
            [n.cpu_milli for n in nodes],
            [n.memory_mib for n in nodes],
            usable=[n.usable for n in nodes],
        )
        for i, node in enumerate(nodes):
            free = snapshot.free(node.name)
            arrays.cpu_free[i] = free.cpu_milli
            arrays.memory_free[i] = free.memory_mib
            arrays.gpu_free[i, : len(free.devices_milli)] = free.devices_milli
        for allocation in snapshot.allocations.values():
            slot = PodShape.of(allocation.workload).affinity_slot
            if slot < 0:
                continue
            for replica in allocation.replicas:
                if replica.node in arrays.index:
                    arrays.affinity[arrays.index[replica.node], slot] += 1
        arrays._refresh_derived(np.arange(len(nodes)))
        return arrays

    def _refresh_derived(self, rows: IntArray) -> None:
        free = self.gpu_free[rows]
        if not hasattr(self, "gpu_free_total"):
            n = len(self.names)
            self.gpu_free_total: IntArray = np.zeros(n, dtype=np.int64)
            self.gpu_free_max: IntArray = np.zeros(n, dtype=np.int64)
            self.gpu_whole_free: IntArray = np.zeros(n, dtype=np.int64)
        self.gpu_free_total[rows] = free.sum(axis=1)
        self.gpu_free_max[rows] = free.max(axis=1) if free.shape[1] else 0
        self.gpu_whole_free[rows] = (free == MILLI_PER_DEVICE).sum(axis=1)

    # -- queries ----------------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    @property
    def total_gpu_milli(self) -> int:
        return int(self.gpu_count.sum()) * MILLI_PER_DEVICE

    def type_mask(self, allowed_types: tuple[str, ...]) -> BoolArray:
        """Per type index (plus the trailing no-GPU index): may a pod with these allowed types use it?"""
        mask = self._type_masks.get(allowed_types)
        if mask is None:
            mask = np.zeros(len(self.type_names) + 1, dtype=bool)
            if allowed_types:
                for t in allowed_types:
                    if t in self.type_names:
                        mask[self.type_names.index(t)] = True
            else:
                mask[: len(self.type_names)] = True
            self._type_masks[allowed_types] = mask
        return mask

    def feasible(self, shape: PodShape) -> BoolArray:
        """Nodes where ``shape`` fits now (CPU, memory, GPU model, and the GPUs themselves)."""
        ok = self.usable & (self.cpu_free >= shape.cpu_milli) & (self.memory_free >= shape.memory_mib)
        if shape.gpu_count == 0:
            return ok
        ok &= self.type_mask(shape.allowed_types)[self.type_idx]
        if shape.shares_gpu:
            return ok & (self.gpu_free_max >= shape.gpu_milli)
        return ok & (self.gpu_whole_free >= shape.gpu_count)

    def best_fit_gpu(self, node: int, shape: PodShape) -> int:
        """The fullest device on ``node`` that still has room for a share (lowest index on ties)."""
        free = self.gpu_free[node]
        room = np.where(free >= shape.gpu_milli, free, MILLI_PER_DEVICE + 1)
        return int(np.argmin(room))

    def devices_for(self, node: int, shape: PodShape, gpu: int) -> tuple[int, ...]:
        if shape.gpu_count == 0:
            return ()
        if shape.shares_gpu:
            return (gpu,)
        whole = np.flatnonzero(self.gpu_free[node] == MILLI_PER_DEVICE)
        return tuple(int(i) for i in whole[: shape.gpu_count])

    # -- changes ----------------------------------------------------------------------

    def place(self, node: int, shape: PodShape, devices: Iterable[int]) -> None:
        """Take ``shape``'s resources on ``node`` (the devices given)."""
        devices = tuple(devices)
        per_device = shape.gpu_milli
        for d in devices:
            if self.gpu_free[node, d] < per_device:
                raise ValueError(f"{self.names[node]}: device {d} has {self.gpu_free[node, d]} milli free, needs {per_device}")
            self.gpu_free[node, d] -= per_device
        self.cpu_free[node] -= shape.cpu_milli
        self.memory_free[node] -= shape.memory_mib
        slot = shape.affinity_slot
        if slot >= 0:
            self.affinity[node, slot] += 1
        self.version[node] += 1
        self._refresh_derived(np.array([node]))

    def release(self, node: int, shape: PodShape, devices: Iterable[int]) -> None:
        """Give back what :meth:`place` took."""
        for d in devices:
            self.gpu_free[node, d] += shape.gpu_milli
        self.cpu_free[node] += shape.cpu_milli
        self.memory_free[node] += shape.memory_mib
        slot = shape.affinity_slot
        if slot >= 0:
            self.affinity[node, slot] -= 1
        self.version[node] += 1
        self._refresh_derived(np.array([node]))


class NodeScorer(Protocol):
    """The vectorised scoring every built-in placement policy exposes."""

    #: True when a node's score depends only on that node's state and the pod shape (it may be cached)
    cacheable: bool

    def prepare(self, arrays: PlacementArrays, target: TargetWorkload | None) -> None:
        """Called once per cluster before scoring (e.g. FGD precomputes its target workload)."""

    def score(
        self, arrays: PlacementArrays, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        """Integer scores (higher is better) for ``nodes``, and the device each would use for a
        GPU share (-1 = let :meth:`select_gpu` decide).  Only non-cacheable scorers may use ``rng``."""
        ...

    def select_gpu(self, arrays: PlacementArrays, node: int, shape: PodShape, rng: random.Random) -> int:
        """The device a GPU-sharing pod takes on the chosen node when :meth:`score` named none."""
        ...


class ScoreCache:
    """Scores per (pod shape, node), recomputed only for nodes changed since they were scored.

    Valid for scorers whose ``cacheable`` is True: one placement changes one node, so a
    10,000-pod run rescoring only stale nodes does a small fraction of the work.
    """

    def __init__(self, arrays: PlacementArrays) -> None:
        self.arrays = arrays
        self._entries: dict[tuple[int, int, int, tuple[str, ...]], tuple[IntArray, IntArray, IntArray]] = {}

    def scores(
        self, scorer: NodeScorer, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        entry = self._entries.get(shape.score_key)
        n = self.arrays.n_nodes
        if entry is None:
            entry = (np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64))
            self._entries[shape.score_key] = entry
        values, gpus, stamp = entry
        version = self.arrays.version
        stale = nodes[stamp[nodes] != version[nodes]]
        if stale.size:
            s, g = scorer.score(self.arrays, stale, shape, rng)
            values[stale] = s
            gpus[stale] = g
            stamp[stale] = version[stale]
        return values[nodes], gpus[nodes]


@dataclass(frozen=True, slots=True)
class Choice:
    node: int
    devices: tuple[int, ...]
    score: int


def choose_node(
    arrays: PlacementArrays,
    shape: PodShape,
    scorer: NodeScorer,
    rng: random.Random,
    cache: ScoreCache | None = None,
    node_rank: IntArray | None = None,
    excluded: np.ndarray | None = None,
) -> Choice | None:
    """Score the feasible nodes and keep the best; None if nothing fits.

    Ties go to the node with the lowest ``node_rank`` when one is given (a fixed order of the
    nodes, see :func:`node_order`), else to a uniformly random node.  ``excluded`` (a boolean
    mask over nodes) rules nodes out, e.g. those a spread-out workload already uses.
    """
    feasible = arrays.feasible(shape)
    if excluded is not None:
        feasible = feasible & ~excluded
    candidates = np.flatnonzero(feasible)
    if candidates.size == 0:
        return None
    if cache is not None and scorer.cacheable:
        scores, gpus = cache.scores(scorer, candidates, shape, rng)
    else:
        scores, gpus = scorer.score(arrays, candidates, shape, rng)
    best = scores.max()
    ties = np.flatnonzero(scores == best)
    if ties.size == 1:
        pick = int(ties[0])
    elif node_rank is not None:
        pick = int(ties[np.argmin(node_rank[candidates[ties]])])
    else:
        pick = int(ties[rng.randrange(ties.size)])
    node = int(candidates[pick])
    gpu = int(gpus[pick])
    if shape.shares_gpu and gpu < 0:
        gpu = scorer.select_gpu(arrays, node, shape, rng)
    return Choice(node, arrays.devices_for(node, shape, gpu), int(best))


def node_order(n_nodes: int, rng: random.Random) -> IntArray:
    """A random rank per node for breaking score ties: the node with the lowest rank wins.

    The authors' simulator prefixes every node name with its position in a seeded random
    permutation; settling ties by that order (our inference about their patched scheduler)
    reproduces their published results, uniform random tie-breaking does not (see
    docs/simulator-fgd.md).
    """
    permutation = list(range(n_nodes))
    rng.shuffle(permutation)
    return np.asarray(permutation, dtype=np.int64)


# -- the target workload (FGD's expectation is taken over it; the frag metric uses it too) ----


@dataclass(frozen=True, slots=True)
class TargetWorkload:
    """The distribution of pod shapes a policy expects to see: shapes and their frequencies."""

    shapes: tuple[PodShape, ...]
    #: frequencies, summing to 1
    weights: tuple[float, ...]
    #: pod counts behind the weights, when known (lets fragmentation be summed exactly in integers)
    counts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.weights) or (self.counts is not None and len(self.counts) != len(self.shapes)):
            raise ValueError("one weight (and count) per shape")

    @classmethod
    def from_counts(cls, counts: Mapping[PodShape, float], popularity: float = 0.95) -> TargetWorkload:
        """The most frequent shapes covering ``popularity`` of all pods, renormalised.

        As in the authors' simulator: shapes ignore memory; they are sorted by count (then by
        CPU, GPU milli, GPU count and model, largest first) and taken one by one until their
        cumulative count reaches ``popularity`` of the total.
        """
        merged: dict[PodShape, float] = {}
        for shape, count in counts.items():
            key = PodShape(shape.cpu_milli, 0, shape.gpu_count, shape.gpu_milli, shape.allowed_types)
            merged[key] = merged.get(key, 0.0) + count
        total = sum(merged.values())
        if total <= 0:
            return cls((), ())
        order = sorted(
            merged.items(),
            key=lambda kv: (kv[1], kv[0].cpu_milli, kv[0].gpu_milli, kv[0].gpu_count, "|".join(kv[0].allowed_types)),
            reverse=True,
        )
        chosen: list[tuple[PodShape, float]] = []
        cumulative = 0.0
        for shape, count in order:
            if cumulative >= popularity * total:
                break
            chosen.append((shape, count))
            cumulative += count
        integral = all(float(c).is_integer() for _, c in chosen)
        return cls(
            tuple(s for s, _ in chosen),
            tuple(c / cumulative for _, c in chosen),
            tuple(int(c) for _, c in chosen) if integral else None,
        )

    @classmethod
    def from_shapes(cls, shapes: Iterable[PodShape], popularity: float = 0.95) -> TargetWorkload:
        counts: dict[PodShape, float] = {}
        for shape in shapes:
            counts[shape] = counts.get(shape, 0.0) + 1.0
        return cls.from_counts(counts, popularity)


class TargetArrays:
    """A target workload laid out for vectorised fragmentation measurement on one cluster."""

    def __init__(self, target: TargetWorkload, arrays: PlacementArrays) -> None:
        shapes = target.shapes
        self.weights: FloatArray = np.asarray(target.weights, dtype=np.float64)
        self.cpu: IntArray = np.array([s.cpu_milli for s in shapes], dtype=np.int64)
        self.milli: IntArray = np.array([s.gpu_milli for s in shapes], dtype=np.int64)
        self.count: IntArray = np.array([s.gpu_count for s in shapes], dtype=np.int64)
        self.needs_gpu: BoolArray = self.count > 0
        # access[type index, shape]: may the shape use a GPU of that type (no-GPU index: never)
        access = np.zeros((len(arrays.type_names) + 1, len(shapes)), dtype=bool)
        for j, shape in enumerate(shapes):
            access[:, j] = arrays.type_mask(shape.allowed_types)
        access[arrays.no_type, :] = False
        self.access: BoolArray = access
        self.weight_sum = float(self.weights.sum())
        # integer counts make the expectation an exact integer sum divided once, so the same
        # node state always gets the same value however many rows are computed together
        self.counts: IntArray | None = None if target.counts is None else np.asarray(target.counts, dtype=np.int64)
        self.count_total = int(self.counts.sum()) if self.counts is not None else 0

    def fragmentation(self, gpu_free: IntArray, cpu_free: IntArray, type_idx: IntArray) -> FloatArray:
        """Expected fragmented milli-GPU of each state row (FGD's F_n(M)).

        For each target shape: if it could run on the node (CPU, model, enough devices with
        room), the free milli on devices too small for it is fragmented; otherwise all the
        node's free GPU milli is.  CPU-only shapes count all free GPU milli (they never use it).
        """
        total = gpu_free.sum(axis=1)
        if self.weights.size == 0:
            return np.zeros(gpu_free.shape[0])
        fits_device = gpu_free[:, :, None] >= self.milli[None, None, :]
        count_fit = fits_device.sum(axis=1)
        usable_milli = np.einsum("mg,mgt->mt", gpu_free, fits_device.astype(np.int64))
        runs = (
            self.needs_gpu[None, :]
            & self.access[type_idx]
            & (count_fit >= self.count[None, :])
            & (cpu_free[:, None] >= self.cpu[None, :])
        )
        # fragmented = total - (milli on devices that fit) when the shape runs, else total
        usable_when_runs = np.where(runs, usable_milli, 0)
        if self.counts is not None:
            exact = total * self.count_total - usable_when_runs @ self.counts
            return exact / float(self.count_total)
        return (total[:, None] * self.weights[None, :] - usable_when_runs * self.weights[None, :]).sum(axis=1)
