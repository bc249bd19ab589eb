"""A placement policy's :class:`PlacementArrays` of the last snapshot it decided on, followed
along the snapshot's lineage (:attr:`ClusterSnapshot.delta`).

``PlacementArrays.from_snapshot`` walks every node and allocation in Python (~5 ms on the
openb cluster); a decision on a snapshot derived from the last one changes a node or two.
:class:`ArraysByLineage` keeps the arrays and their :class:`ScoreCache`, rewrites only the
rows the delta names (free capacity from the snapshot, affinity counted up and down) and
bumps their ``version`` so score caches and fragmentation meters recompute exactly those.
A decision's own placements are undone after it (``release`` is ``place``'s exact inverse),
so the arrays always equal ``from_snapshot`` of the snapshot last synced to; a snapshot off
the lineage is converted afresh.
"""

from __future__ import annotations

import numpy as np

from tessera.core import MILLI_PER_DEVICE, ClusterSnapshot, Workload
from tessera.policies.placement.arrays import (
    MAX_AFFINITY_SLOTS,
    SHARE_AFFINITY,
    IntArray,
    PlacementArrays,
    ScoreCache,
)


class ArraysByLineage:
    """The arrays, score cache, zones and node types of the last snapshot synced to."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.arrays: PlacementArrays | None = None
        self.cache: ScoreCache | None = None
        #: the target workload the cache's scores were computed for
        self.target: object = None
        self.zones: np.ndarray = np.zeros(0)
        self.types: frozenset[str | None] = frozenset()
        #: (node order given, its rank over these arrays): the same tuple object gives the same rank
        self.rank: tuple[object, IntArray] | None = None
        #: unplaced reasons by what they depend on, valid while the arrays hold the same state
        self.reasons: dict[tuple[object, ...], str] = {}

    def sync(self, snapshot: ClusterSnapshot) -> PlacementArrays:
        if self.arrays is not None and snapshot.version == self.version:
            return self.arrays
        delta = snapshot.delta
        arrays = self.arrays
        if arrays is None or delta is None or delta.parent != self.version or not delta.nodes_same:
            arrays = self.arrays = PlacementArrays.from_snapshot(snapshot)
            self.cache, self.target = ScoreCache(arrays), None
            self.zones = np.array([snapshot.nodes[name].topology.zone for name in arrays.names])
            self.types = frozenset(node.accelerator_type for node in snapshot.nodes.values())
            self.rank = None
            self.reasons = {}
        else:
            rows = np.array(sorted(arrays.index[name] for name in delta.nodes), dtype=np.int64)
            for row in rows.tolist():
                free = snapshot.free(arrays.names[row])
                arrays.cpu_free[row] = free.cpu_milli
                arrays.memory_free[row] = free.memory_mib
                devices = free.devices_milli
                if len(devices) == arrays.max_gpus:
                    arrays.gpu_free[row] = devices
                else:  # as from_snapshot: the node's own slots full, then the devices over them
                    arrays.gpu_free[row] = np.where(np.arange(arrays.max_gpus) < arrays.gpu_count[row],
                                                    MILLI_PER_DEVICE, 0)
                    arrays.gpu_free[row, : len(devices)] = devices
            for sign, allocations in ((-1, delta.removed), (1, [snapshot.allocations[k] for k in delta.added])):
                for allocation in allocations:
                    slot = _affinity_slot(allocation.workload)
                    if slot < 0:
                        continue
                    for replica in allocation.replicas:
                        if replica.node in arrays.index:
                            arrays.affinity[arrays.index[replica.node], slot] += sign
            if len(rows):
                arrays.version[rows] += 1
                arrays._refresh_derived(rows)
                self.reasons = {}
        self.version = snapshot.version
        return arrays


def _affinity_slot(workload: Workload) -> int:
    """``PodShape.of(workload).affinity_slot`` (what from_snapshot counts), without building the shape."""
    demand = workload.demand
    if demand.shared_milli:
        return SHARE_AFFINITY
    if demand.accelerators:
        return min(demand.accelerators, MAX_AFFINITY_SLOTS - 1)
    return -1
