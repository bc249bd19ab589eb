"""The learned policy's conversion of a snapshot, kept up to date along the snapshot's lineage.

Serving needs, per decision, the cluster as :class:`NodeArrays`, the demand mix the target
workload is estimated from, and every node's expected fragmentation under that target.
Converting a 1,500-node snapshot with 10,000 allocations from scratch costs ~10 ms; a
decision changes one node.  :class:`SnapshotConversion` converts a snapshot once and then
follows its descendants through :attr:`ClusterSnapshot.delta` (the nodes touched, the
allocations added and removed): only the touched rows are rewritten, the demand groups
are counted up and down, and the fragmentation of a (node, target shape) pair is cached
per shape and recomputed for touched rows only.  Any snapshot that is not the next one of
the lineage (built from scratch, or from another parent, or with different nodes) is
converted afresh, so the result never depends on the cache: it equals the conversion
from scratch to the last digit (a unit test compares the two).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core import ClusterSnapshot
from tessera.policies.learned.features import (
    NodeArrays,
    ShapeKey,
    TargetWorkload,
    add_demands,
    arrays_from_snapshot,
    demand_of,
    fragmentation_matrix,
)

#: what a fragmentation column depends on: the shape's CPU, memory, GPUs, milli and allowed types
ShapeSignature = tuple[int, int, int, int, bytes]


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
        self._signatures: list[ShapeSignature] = []
        self._columns: npt.NDArray[np.int64] = np.zeros((0, 0), dtype=np.int64)

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
            for row in rows:
                free = snapshot.free(arrays.names[row])
                devices = free.devices_milli
                arrays.gpu_free[row, :] = 0
                arrays.gpu_free[row, : len(devices)] = devices
                arrays.cpu_free[row] = free.cpu_milli
                arrays.mem_free[row] = free.memory_mib
            for allocation in delta.removed:
                add_demands(self.groups, [demand_of(allocation.workload)] * len(allocation.replicas), -1)
            for key in delta.added:
                allocation = snapshot.allocations[key]
                add_demands(self.groups, [demand_of(allocation.workload)] * len(allocation.replicas), 1)
            if len(rows) and self._signatures:
                self._columns[rows] = fragmentation_matrix(
                    arrays.gpu_free[rows], arrays.cpu_free[rows], arrays.mem_free[rows], arrays.type_index[rows],
                    _shapes(self._signatures, len(arrays.type_names)))
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
        self._signatures = []
        self._columns = np.zeros((self.arrays.n_nodes, 0), dtype=np.int64)

    def fragmentation(self, target: TargetWorkload) -> npt.NDArray[np.float64]:
        """Every node's expected fragmented GPU-milli under ``target`` (what
        :func:`~tessera.policies.learned.features.expected_fragmentation` gives, exactly)."""
        arrays = self.arrays
        assert arrays is not None
        signatures = [(int(target.cpu_milli[k]), int(target.memory_mib[k]), int(target.num_gpu[k]),
                       int(target.gpu_milli[k]), target.type_ok[k].tobytes()) for k in range(len(target.count))]
        if signatures != self._signatures:
            have = {s: i for i, s in enumerate(self._signatures)}
            missing = [s for s in signatures if s not in have]
            fresh = fragmentation_matrix(arrays.gpu_free, arrays.cpu_free, arrays.mem_free, arrays.type_index,
                                         _shapes(missing, len(arrays.type_names))) if missing else None
            where = {s: i for i, s in enumerate(missing)}
            columns = [self._columns[:, have[s]] if s in have else fresh[:, where[s]]  # type: ignore[index]
                       for s in signatures]
            self._columns = np.stack(columns, axis=1) if columns else np.zeros((arrays.n_nodes, 0), dtype=np.int64)
            self._signatures = signatures
        # exact integer sum, then one division (as expected_fragmentation does)
        return np.asarray((self._columns @ target.count) / max(int(target.count.sum()), 1), dtype=np.float64)


def _shapes(signatures: list[ShapeSignature], n_types: int) -> TargetWorkload:
    """A TargetWorkload holding just these shapes (what ``fragmentation_matrix`` reads)."""
    n = len(signatures)
    column: Any = np.array
    return TargetWorkload(
        cpu_milli=column([s[0] for s in signatures], dtype=np.int64),
        memory_mib=column([s[1] for s in signatures], dtype=np.int64),
        num_gpu=column([s[2] for s in signatures], dtype=np.int64),
        gpu_milli=column([s[3] for s in signatures], dtype=np.int64),
        type_ok=np.array([np.frombuffer(s[4], dtype=bool) for s in signatures], dtype=bool).reshape(n, n_types),
        probability=np.zeros(n), count=np.zeros(n, dtype=np.int64), type_demand=np.zeros(n_types),
    )
