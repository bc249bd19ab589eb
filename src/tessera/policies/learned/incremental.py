"""The learned policy's conversion of a snapshot, kept up to date along the snapshot's lineage.

Serving needs, per decision, the cluster as :class:`NodeArrays`, the demand mix the target
workload is estimated from, and every node's expected fragmentation under that target.
Converting a 1,500-node snapshot with 10,000 allocations from scratch costs ~10 ms; a
decision changes one node.  :class:`SnapshotConversion` converts a snapshot once and then
follows its descendants through :attr:`ClusterSnapshot.delta` (the nodes touched, the
allocations added and removed): only the touched rows are rewritten, the demand groups
are counted up and down, and the GPU half of the fragmentation of a (node, target shape)
pair (which depends on the shape's GPUs and types, not on its drifting CPU and memory
means) is cached per shape and recomputed for touched rows only.  Any snapshot that is not the next one of
the lineage (built from scratch, or from another parent, or with different nodes) is
converted afresh, so the result never depends on the cache: it equals the conversion
from scratch to the last digit (a unit test compares the two).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tessera.core import ClusterSnapshot
from tessera.policies.learned.features import (
    NodeArrays,
    ShapeKey,
    TargetWorkload,
    add_demands,
    arrays_from_snapshot,
    combine_fragmentation,
    demand_of,
    gpu_fragmentation,
)

#: what the GPU half of a fragmentation column depends on: a shape's GPUs, milli and allowed types
GpuShape = tuple[int, int, bytes]
#: a target's GPU shapes, as bytes of its (num_gpu, gpu_milli, type_ok) arrays
ShapesKey = tuple[bytes, bytes, bytes]


class SnapshotConversion:
    """NodeArrays, demand groups and per-shape fragmentation of the last snapshot seen."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.arrays: NodeArrays | None = None
        self.row: dict[str, int] = {}
        self.zones: dict[str, str] = {}
        #: every node's accelerator type (None or "" for none), as explain_unfit sees them
        self.types: frozenset[str | None] = frozenset()
        #: running replicas' demands: (num_gpu, gpu_milli, types) -> [replicas, CPU sum, memory sum]
        self.groups: dict[ShapeKey, list[int]] = {}
        # the GPU half of the fragmentation for the last target's GPU shapes, one column each
        self._key: ShapesKey | None = None
        self._shapes: list[GpuShape] = []
        self._shape_arrays: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]] | None = None
        self._frag_if_fit = np.zeros((0, 0), dtype=np.float32)
        self._gpu_ok = np.zeros((0, 0), dtype=bool)
        self._total = np.zeros(0, dtype=np.float32)

    def sync(self, snapshot: ClusterSnapshot) -> NodeArrays:
        """Bring the conversion to ``snapshot``; returns its arrays (do not mutate them)."""
        if snapshot.version == self.version and self.arrays is not None:
            return self.arrays
        delta = snapshot.delta
        if self.arrays is None or delta is None or delta.parent != self.version or not delta.nodes_same:
            self._rebuild(snapshot)
        else:
            arrays = self.arrays
            rows = np.array(sorted(self.row[name] for name in delta.nodes), dtype=np.int64)
            for row in rows.tolist():
                free = snapshot.free(arrays.names[row])
                devices = free.devices_milli
                if len(devices) == arrays.gpu_free.shape[1]:
                    arrays.gpu_free[row] = devices
                else:
                    arrays.gpu_free[row, :] = 0
                    arrays.gpu_free[row, : len(devices)] = devices
                arrays.cpu_free[row] = free.cpu_milli
                arrays.mem_free[row] = free.memory_mib
            for allocation in delta.removed:
                add_demands(self.groups, [demand_of(allocation.workload)] * len(allocation.replicas), -1)
            for key in delta.added:
                allocation = snapshot.allocations[key]
                add_demands(self.groups, [demand_of(allocation.workload)] * len(allocation.replicas), 1)
            if len(rows):
                self._total[rows] = arrays.gpu_free[rows].astype(np.float32).sum(axis=1)
                if self._shape_arrays is not None:
                    self._frag_if_fit[rows], self._gpu_ok[rows], _ = gpu_fragmentation(
                        arrays.gpu_free[rows], arrays.type_index[rows], *self._shape_arrays)
        self.version = snapshot.version
        assert self.arrays is not None
        return self.arrays

    def _rebuild(self, snapshot: ClusterSnapshot) -> None:
        self.arrays = arrays_from_snapshot(snapshot)
        self.row = {name: i for i, name in enumerate(self.arrays.names)}
        self.zones = {name: node.topology.zone for name, node in snapshot.nodes.items()}
        self.types = frozenset(node.accelerator_type for node in snapshot.nodes.values())
        self.groups = {}
        for allocation in snapshot.allocations.values():
            add_demands(self.groups, [demand_of(allocation.workload)] * len(allocation.replicas), 1)
        self._key, self._shapes, self._shape_arrays = None, [], None
        self._total = self.arrays.gpu_free.astype(np.float32).sum(axis=1)

    def _use_shapes(self, target: TargetWorkload) -> None:
        """Hold the GPU half for ``target``'s GPU shapes: columns of shapes held already are kept
        (their rows are up to date), new ones computed for every node."""
        arrays = self.arrays
        assert arrays is not None
        key = (target.num_gpu.tobytes(), target.gpu_milli.tobytes(), target.type_ok.tobytes())
        if key == self._key:
            return
        shapes = [(int(target.num_gpu[k]), int(target.gpu_milli[k]), target.type_ok[k].tobytes())
                  for k in range(len(target.count))]
        had = {s: i for i, s in enumerate(self._shapes)}
        missing = [k for k, s in enumerate(shapes) if s not in had]
        fif = np.zeros((arrays.n_nodes, len(shapes)), dtype=np.float32)
        ok = np.zeros((arrays.n_nodes, len(shapes)), dtype=bool)
        kept = [k for k, s in enumerate(shapes) if s in had]
        if kept:
            old = [had[shapes[k]] for k in kept]
            fif[:, kept], ok[:, kept] = self._frag_if_fit[:, old], self._gpu_ok[:, old]
        if missing:
            fif[:, missing], ok[:, missing], _ = gpu_fragmentation(
                arrays.gpu_free, arrays.type_index, target.num_gpu[missing], target.gpu_milli[missing],
                target.type_ok[missing])
        self._key, self._shapes = key, shapes
        self._shape_arrays = (target.num_gpu.copy(), target.gpu_milli.copy(), target.type_ok.copy())
        self._frag_if_fit, self._gpu_ok = fif, ok

    def fragmentation(self, target: TargetWorkload,
                      rows: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.float64]:
        """The expected fragmented GPU-milli under ``target`` of the nodes in ``rows`` (default all):
        what :func:`~tessera.policies.learned.features.expected_fragmentation` gives, exactly
        (a row's value depends on that row only)."""
        arrays = self.arrays
        assert arrays is not None
        self._use_shapes(target)
        if rows is None:
            frag = combine_fragmentation(self._frag_if_fit, self._gpu_ok, self._total,
                                         arrays.cpu_free, arrays.mem_free, target)
        else:
            frag = combine_fragmentation(self._frag_if_fit[rows], self._gpu_ok[rows], self._total[rows],
                                         arrays.cpu_free[rows], arrays.mem_free[rows], target)
        # exact integer sum, then one division (as expected_fragmentation does)
        return np.asarray((frag @ target.count) / max(int(target.count.sum()), 1), dtype=np.float64)
