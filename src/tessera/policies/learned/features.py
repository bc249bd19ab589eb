"""The one feature module of the learned dispatcher, used by training and by serving alike.

Training (:mod:`tessera.policies.learned.env`) and the policy (:mod:`...policy`) both turn the
cluster into :class:`NodeArrays` and a replica's needs into a :class:`Demand`, and both call
:func:`placement_features` / :func:`ordering_features`; there is no second implementation to
drift (no train/serve skew). A test checks that the arrays built from a core snapshot equal
the ones the training environment builds for the same state.

Placement features describe one (replica, node) pair *after* the replica would be placed,
vectorised over every feasible node; the model scores them and the lowest score wins.
The fragmentation features follow Weng et al., ATC'23 (FGD): a node's fragmentation for a
task shape is the free GPU-milli that shape cannot use there (all of it when the shape does
not fit the node at all); the expected fragmentation weighs shapes by how common they are
in the target workload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.core import MILLI_PER_DEVICE, ClusterSnapshot, Workload
from tessera.policies.learned.shapes import (  # re-exported: training and serving import them from here
    Demand,
    ShapeKey,
    TargetWorkload,
    add_demands,
    demand_from_replica,
    demand_of,
    target_from_groups,
    target_workload,
)

#: bump when a feature's meaning changes: weights trained on another version are refused
FEATURE_VERSION = "1"

PLACEMENT_FEATURES: tuple[str, ...] = (
    "frag_delta_gpus",  # expected fragmentation after - before, in GPUs (FGD's score)
    "frag_after_frac",  # expected fragmentation after, as a share of the node's GPU-milli
    "gpu_left_gpus",  # free GPU-milli left on the node, in GPUs (best fit's score)
    "gpu_left_frac",  # same, as a share of the node's GPUs
    "cpu_left_frac",  # free CPU left, share of the node's CPU
    "mem_left_frac",  # free memory left, share of the node's memory
    "whole_gpus_broken",  # fully free GPUs this replica leaves partly used
    "device_left_gpus",  # shared replica: free milli left on the device it lands on
    "node_was_idle",  # the node had no GPU in use before
    "cpu_gpu_imbalance",  # |cpu_left_frac - gpu_left_frac|
    "type_demand",  # share of the target workload (by GPU-milli) that may use this node's type
    "cpu_pod_on_gpu_node",  # a CPU-only replica on a GPU node: CPU share it takes there
)

ORDERING_FEATURES: tuple[str, ...] = (
    "slack_hours",  # (deadline - now - remaining work) in hours; large when no deadline
    "has_deadline",
    "work_hours",  # estimated remaining run time at full size, hours
    "waited_hours",  # time since submission, hours
    "gpus",  # accelerators the gang needs at its minimum size
    "priority",
    "overdue",  # 1 when the deadline can no longer be met
    "modified_due_hours",  # max(deadline, now + remaining work) - now, hours (MDD's key); large without deadline
)

_NO_DEADLINE_SLACK_HOURS = 1_000.0


@dataclass(slots=True)
class NodeArrays:
    """Free and total capacity of every node, as arrays (rows in node-name order).

    ``gpu_free`` holds free milli per device slot; slots a node does not have hold 0, so
    sums and "fully free" tests are right without a mask.
    """

    names: list[str]
    type_names: list[str]
    #: index into ``type_names``; -1 for a node without accelerators
    type_index: npt.NDArray[np.int64]
    gpu_count: npt.NDArray[np.int64]
    gpu_free: npt.NDArray[np.int64]  # (nodes, max devices)
    cpu_free: npt.NDArray[np.int64]
    mem_free: npt.NDArray[np.int64]
    cpu_total: npt.NDArray[np.int64]
    mem_total: npt.NDArray[np.int64]
    usable: npt.NDArray[np.bool_]

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    def copy(self) -> NodeArrays:
        return NodeArrays(
            list(self.names), list(self.type_names), self.type_index.copy(), self.gpu_count.copy(),
            self.gpu_free.copy(), self.cpu_free.copy(), self.mem_free.copy(), self.cpu_total.copy(),
            self.mem_total.copy(), self.usable.copy(),
        )


def node_arrays(
    names: Sequence[str],
    accelerator_types: Sequence[str | None],
    gpu_count: Sequence[int],
    gpu_free: Sequence[Sequence[int]],
    cpu_free: Sequence[int],
    mem_free: Sequence[int],
    cpu_total: Sequence[int],
    mem_total: Sequence[int],
    usable: Sequence[bool] | None = None,
) -> NodeArrays:
    """Build :class:`NodeArrays` from plain per-node columns (training and serving both come here)."""
    type_names = sorted({t for t in accelerator_types if t})
    index = {t: i for i, t in enumerate(type_names)}
    slots = max([len(f) for f in gpu_free] + [1])
    free = np.zeros((len(names), slots), dtype=np.int64)
    for row, devices in enumerate(gpu_free):
        free[row, : len(devices)] = devices
    return NodeArrays(
        names=list(names),
        type_names=type_names,
        type_index=np.array([index[t] if t else -1 for t in accelerator_types], dtype=np.int64),
        gpu_count=np.asarray(gpu_count, dtype=np.int64),
        gpu_free=free,
        cpu_free=np.asarray(cpu_free, dtype=np.int64),
        mem_free=np.asarray(mem_free, dtype=np.int64),
        cpu_total=np.asarray(cpu_total, dtype=np.int64),
        mem_total=np.asarray(mem_total, dtype=np.int64),
        usable=np.ones(len(names), dtype=bool) if usable is None else np.asarray(usable, dtype=bool),
    )


def arrays_from_snapshot(snapshot: ClusterSnapshot) -> NodeArrays:
    """The snapshot's free capacity as :class:`NodeArrays` (nodes in name order)."""
    nodes = [snapshot.nodes[name] for name in sorted(snapshot.nodes)]
    frees = [snapshot.free(n.name) for n in nodes]
    return node_arrays(
        [n.name for n in nodes],
        [n.accelerator_type for n in nodes],
        [n.accelerator_count for n in nodes],
        [f.devices_milli for f in frees],
        [f.cpu_milli for f in frees],
        [f.memory_mib for f in frees],
        [n.cpu_milli for n in nodes],
        [n.memory_mib for n in nodes],
        [n.usable for n in nodes],
    )


#: odd 64-bit multipliers for hashing node states (fixed, so training and serving hash alike)
_STATE_HASH = np.random.default_rng(20231).integers(1, 2**62, size=64, dtype=np.int64) | 1


def expected_fragmentation(
    gpu_free: npt.NDArray[np.int64],
    cpu_free: npt.NDArray[np.int64],
    mem_free: npt.NDArray[np.int64],
    type_index: npt.NDArray[np.int64],
    target: TargetWorkload,
) -> npt.NDArray[np.float64]:
    """Expected fragmented GPU-milli of each row (a node state) under ``target``.

    For each shape: if it fits the node, the free milli on devices that cannot hold one of
    its per-device requests is fragmented; if it does not fit, every free milli is.
    Identical rows (many nodes share a state: empty nodes of one model, say) are computed once.
    """
    if len(gpu_free) <= 32:
        return _expected_fragmentation(gpu_free, cpu_free, mem_free, type_index, target)
    slots = gpu_free.shape[1]
    # a 64-bit hash of each row's state; rows hashing alike are taken as equal (a collision among a
    # few thousand rows has probability ~1e-13, and it would only blur one feature of one node)
    key = (gpu_free @ _STATE_HASH[:slots]) + cpu_free * _STATE_HASH[slots] + mem_free * _STATE_HASH[slots + 1] \
        + type_index * _STATE_HASH[slots + 2]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(first) > 0.7 * len(key):
        return _expected_fragmentation(gpu_free, cpu_free, mem_free, type_index, target)
    unique = _expected_fragmentation(gpu_free[first], cpu_free[first], mem_free[first], type_index[first], target)
    return unique[inverse.reshape(-1)]


def fragmentation_matrix(
    gpu_free: npt.NDArray[np.int64],
    cpu_free: npt.NDArray[np.int64],
    mem_free: npt.NDArray[np.int64],
    type_index: npt.NDArray[np.int64],
    target: TargetWorkload,
) -> npt.NDArray[np.int64]:
    """Fragmented GPU-milli of each row for each of the target's shapes, (rows, shapes), exact
    integers: an entry depends on its row and its shape only (so it may be cached)."""
    frag_if_fit, gpu_ok, total = gpu_fragmentation(gpu_free, type_index, target.num_gpu, target.gpu_milli,
                                                   target.type_ok)
    return combine_fragmentation(frag_if_fit, gpu_ok, total, cpu_free, mem_free, target)


def gpu_fragmentation(
    gpu_free: npt.NDArray[np.int64],
    type_index: npt.NDArray[np.int64],
    num_gpu: npt.NDArray[np.int64],
    gpu_milli: npt.NDArray[np.int64],
    type_ok: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
    """The GPU half of :func:`fragmentation_matrix`, which depends on a shape's GPUs, milli and
    types only (not on its CPU and memory, which are means that drift): per (row, shape) the
    free milli a fitting shape cannot use and whether the GPUs and type fit; per row the free milli."""
    # float32 is exact here (integers below 2**24) and lets one batched matmul do the sums:
    # per (row, shape) the free milli on devices below the shape's per-device request, and
    # how many non-empty devices are below it.
    free = gpu_free.astype(np.float32)
    total = free.sum(axis=1)
    threshold = np.minimum(gpu_milli, MILLI_PER_DEVICE).astype(np.float32)  # (K,)
    below = (free[:, None, :] < threshold[None, :, None]).astype(np.float32)  # (M, K, G)
    nonempty = (free > 0).astype(np.float32)
    sums = np.matmul(below, np.stack([free, nonempty], axis=2))  # (M, K, 2)
    frag_if_fit = sums[:, :, 0]
    usable_devices = nonempty.sum(axis=1)[:, None] - sums[:, :, 1]
    gpu_fit = (usable_devices >= num_gpu[None, :]) | (num_gpu[None, :] == 0)
    type_fit = np.where(type_index[:, None] >= 0, type_ok[:, np.maximum(type_index, 0)].T, num_gpu[None, :] == 0)
    return frag_if_fit, gpu_fit & type_fit, total


def combine_fragmentation(
    frag_if_fit: npt.NDArray[np.float32],
    gpu_ok: npt.NDArray[np.bool_],
    total: npt.NDArray[np.float32],
    cpu_free: npt.NDArray[np.int64],
    mem_free: npt.NDArray[np.int64],
    target: TargetWorkload,
) -> npt.NDArray[np.int64]:
    """:func:`fragmentation_matrix` from its GPU half and the shapes' CPU and memory."""
    fits = (cpu_free[:, None] >= target.cpu_milli[None, :]) & (mem_free[:, None] >= target.memory_mib[None, :]) & gpu_ok
    return np.where(fits, frag_if_fit, total[:, None]).astype(np.int64)


def _expected_fragmentation(
    gpu_free: npt.NDArray[np.int64],
    cpu_free: npt.NDArray[np.int64],
    mem_free: npt.NDArray[np.int64],
    type_index: npt.NDArray[np.int64],
    target: TargetWorkload,
) -> npt.NDArray[np.float64]:
    frag = fragmentation_matrix(gpu_free, cpu_free, mem_free, type_index, target)
    # exact integer sum, then one division: a row's value never depends on which rows are computed
    # with it, so ties break the same way in training (incremental) and serving (from scratch)
    return np.asarray((frag @ target.count) / max(int(target.count.sum()), 1), dtype=np.float64)


def feasible_nodes(nodes: NodeArrays, demand: Demand) -> npt.NDArray[np.int64]:
    """Row indices of nodes where one replica of ``demand`` fits now."""
    ok = nodes.usable & (nodes.cpu_free >= demand.cpu_milli) & (nodes.mem_free >= demand.memory_mib)
    if demand.num_gpu:
        if demand.types:
            allowed = np.array([t in demand.types for t in nodes.type_names] + [False], dtype=bool)
            ok &= allowed[nodes.type_index]  # index -1 hits the trailing False
        else:
            ok &= nodes.type_index >= 0
        if demand.shared:
            ok &= (nodes.gpu_free >= demand.gpu_milli).any(axis=1)
        else:
            ok &= (nodes.gpu_free >= MILLI_PER_DEVICE).sum(axis=1) >= demand.num_gpu
    return np.flatnonzero(ok)


def place_on_devices(gpu_free: npt.NDArray[np.int64], demand: Demand) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Free milli per device after one replica lands on each row, and the device chosen (shared).

    Mirrors :class:`~tessera.core.CapacityLedger`: a shared replica goes to the fullest device
    that still has room (lowest index on ties); whole devices are the lowest free indices.
    """
    rows = np.arange(gpu_free.shape[0])
    if demand.shared:
        room = np.where(gpu_free >= demand.gpu_milli, gpu_free, np.iinfo(np.int64).max)
        device = room.argmin(axis=1)
        after = gpu_free.copy()
        after[rows, device] -= demand.gpu_milli
        return after, device
    if demand.num_gpu:
        full = gpu_free >= MILLI_PER_DEVICE
        take = full & (np.cumsum(full, axis=1) <= demand.num_gpu)
        return np.where(take, 0, gpu_free), np.full(len(rows), -1)
    return gpu_free, np.full(len(rows), -1)


@dataclass(slots=True)
class PlacementCandidates:
    """Features of placing one replica on each feasible node."""

    rows: npt.NDArray[np.int64]
    features: npt.NDArray[np.float64]  # (len(rows), len(PLACEMENT_FEATURES))
    gpu_free_after: npt.NDArray[np.int64]
    frag_after: npt.NDArray[np.float64]


def placement_features(
    nodes: NodeArrays,
    demand: Demand,
    target: TargetWorkload,
    frag_before: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64] | None = None,
) -> PlacementCandidates:
    """Features of each (replica, node) pair for the feasible ``rows`` (default: all feasible)."""
    rows = feasible_nodes(nodes, demand) if rows is None else rows
    before = nodes.gpu_free[rows]
    after, device = place_on_devices(before, demand)
    cpu_after = nodes.cpu_free[rows] - demand.cpu_milli
    mem_after = nodes.mem_free[rows] - demand.memory_mib
    types = nodes.type_index[rows]
    frag_after = expected_fragmentation(after, cpu_after, mem_after, types, target)
    count = nodes.gpu_count[rows]
    gpu_total = np.maximum(count * MILLI_PER_DEVICE, 1)
    gpu_left = after.sum(axis=1)
    gpu_frac = np.where(count > 0, gpu_left / gpu_total, 0.0)
    cpu_frac = cpu_after / np.maximum(nodes.cpu_total[rows], 1)
    mem_frac = mem_after / np.maximum(nodes.mem_total[rows], 1)
    full_before = (before >= MILLI_PER_DEVICE).sum(axis=1)
    full_after = (after >= MILLI_PER_DEVICE).sum(axis=1)
    broken = full_before - full_after - (demand.num_gpu if not demand.shared else 0)
    if demand.shared:
        device_left = after[np.arange(len(rows)), device] / MILLI_PER_DEVICE
    else:
        device_left = np.zeros(len(rows))
    idle = (before.sum(axis=1) >= gpu_total) & (count > 0)
    type_demand = np.where(types >= 0, target.type_demand[np.maximum(types, 0)] if target.type_demand.size else 0.0, 0.0)
    cpu_on_gpu = (demand.num_gpu == 0) * (count > 0) * (demand.cpu_milli / np.maximum(nodes.cpu_total[rows], 1))
    features = np.column_stack([
        (frag_after - frag_before[rows]) / MILLI_PER_DEVICE,
        frag_after / gpu_total,
        gpu_left / MILLI_PER_DEVICE,
        gpu_frac,
        cpu_frac,
        mem_frac,
        broken,
        device_left,
        idle,
        np.abs(cpu_frac - gpu_frac),
        type_demand,
        cpu_on_gpu,
    ]).astype(np.float64)
    return PlacementCandidates(rows, features, after, frag_after)


def commit_placement(
    nodes: NodeArrays, candidates: PlacementCandidates, choice: int, demand: Demand, frag: npt.NDArray[np.float64]
) -> int:
    """Apply candidate ``choice`` to ``nodes`` and ``frag`` in place; return the node row."""
    row = int(candidates.rows[choice])
    nodes.gpu_free[row] = candidates.gpu_free_after[choice]
    nodes.cpu_free[row] -= demand.cpu_milli
    nodes.mem_free[row] -= demand.memory_mib
    frag[row] = candidates.frag_after[choice]
    return row


def ordering_features(workloads: Sequence[Workload], now_seconds: float,
                      work_seconds: Mapping[str, float] | None = None) -> npt.NDArray[np.float64]:
    """Features of each pending workload for queue ordering (rows follow ``workloads``).

    ``work_seconds`` is the estimated remaining run time of each workload (key -> seconds),
    e.g. from the simulator's performance model; absent keys use the workload's
    ``estimated_seconds`` attribute, else one hour.
    """
    work = work_seconds or {}
    remaining = np.array([work.get(w.key, _estimated(w)) for w in workloads], dtype=np.float64)
    deadline = np.array([np.nan if w.deadline_seconds is None else w.deadline_seconds for w in workloads],
                        dtype=np.float64)
    return ordering_matrix(
        now_seconds,
        deadline,
        remaining,
        np.array([w.submitted_at_seconds for w in workloads], dtype=np.float64),
        np.array([w.gang_min * w.demand.accelerator_milli / MILLI_PER_DEVICE for w in workloads], dtype=np.float64),
        np.array([w.priority for w in workloads], dtype=np.float64),
    )


def _estimated(w: Workload) -> float:
    try:
        return float(w.attributes.get("estimated_seconds", 3_600.0))
    except ValueError:
        return 3_600.0


def ordering_matrix(
    now_seconds: float,
    deadline_seconds: npt.NDArray[np.float64],
    remaining_seconds: npt.NDArray[np.float64],
    submitted_seconds: npt.NDArray[np.float64],
    gpus: npt.NDArray[np.float64],
    priority: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """:data:`ORDERING_FEATURES` from columns (``deadline_seconds`` NaN = none); the training env calls this too."""
    has = ~np.isnan(deadline_seconds)
    slack = np.where(has, (np.nan_to_num(deadline_seconds) - now_seconds - remaining_seconds) / 3_600.0,
                     _NO_DEADLINE_SLACK_HOURS)
    return np.column_stack([
        slack,
        has.astype(np.float64),
        remaining_seconds / 3_600.0,
        (now_seconds - submitted_seconds) / 3_600.0,
        gpus,
        priority,
        (has & (slack < 0)).astype(np.float64),
        np.where(has, np.maximum(np.nan_to_num(deadline_seconds) - now_seconds, remaining_seconds) / 3_600.0,
                 _NO_DEADLINE_SLACK_HOURS),
    ]).reshape(len(deadline_seconds), len(ORDERING_FEATURES))


__all__ = [
    "FEATURE_VERSION",
    "ORDERING_FEATURES",
    "PLACEMENT_FEATURES",
    "Demand",
    "NodeArrays",
    "PlacementCandidates",
    "ShapeKey",
    "TargetWorkload",
    "add_demands",
    "arrays_from_snapshot",
    "combine_fragmentation",
    "commit_placement",
    "demand_from_replica",
    "demand_of",
    "expected_fragmentation",
    "feasible_nodes",
    "fragmentation_matrix",
    "gpu_fragmentation",
    "node_arrays",
    "ordering_features",
    "ordering_matrix",
    "place_on_devices",
    "placement_features",
    "target_from_groups",
    "target_workload",
]
