"""A vectorised one-pod-at-a-time placement environment for *training* the dispatcher.

It replays the FGD protocol's arrival sequence (name-sorted pods, shuffled with the seed,
inflated by uniform draws to 130% of the cluster's GPU-milli; see ``../shared/data/README.md``)
on :class:`~tessera.policies.learned.features.NodeArrays`, calling the very feature functions
the serving policy calls.  It exists because CMA-ES needs thousands of episodes: it skips the
core snapshot round trip.  Reported figures come from the simulator's protocol runner
(``tessera.sim.fgd``) with the ``learned`` policy plugged in, not from this module.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tessera.core import MILLI_PER_DEVICE
from tessera.policies.learned.features import (
    Demand,
    NodeArrays,
    TargetWorkload,
    commit_placement,
    expected_fragmentation,
    node_arrays,
    placement_features,
)

Scorer = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    demand: Demand


def read_nodes(path: Path) -> NodeArrays:
    """Nodes of an openb node list (``sn,cpu_milli,memory_mib,gpu,model``)."""
    with path.open(newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["sn"])
    return node_arrays(
        [r["sn"] for r in rows],
        [r["model"] or None for r in rows],
        [int(r["gpu"]) for r in rows],
        [[MILLI_PER_DEVICE] * int(r["gpu"]) for r in rows],
        [int(r["cpu_milli"]) for r in rows],
        [int(r["memory_mib"]) for r in rows],
        [int(r["cpu_milli"]) for r in rows],
        [int(r["memory_mib"]) for r in rows],
    )


def read_pods(path: Path) -> list[Pod]:
    """Pods of an openb pod list, sorted by name (``gpu_spec`` may be absent)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    pods = []
    for r in rows:
        num_gpu = int(r["num_gpu"])
        milli = int(r["gpu_milli"]) if num_gpu else 0
        spec = tuple(sorted(t for t in (r.get("gpu_spec") or "").split("|") if t))
        pods.append(Pod(r["name"], Demand(int(r["cpu_milli"]), int(r["memory_mib"]), num_gpu, milli, spec)))
    return sorted(pods, key=lambda p: p.name)


def arrival_sequence(pods: Sequence[Pod], cluster_gpu_milli: int, seed: int, demand_ratio: float = 1.3) -> list[Demand]:
    """The protocol's order: shuffled originals, then uniform draws until ``demand_ratio`` x capacity."""
    rng = random.Random(seed)
    order = list(pods)
    rng.shuffle(order)
    out = [p.demand for p in order]
    total = sum(d.total_gpu_milli for d in out)
    limit = demand_ratio * cluster_gpu_milli
    while total < limit:
        d = pods[rng.randrange(len(pods))].demand
        if total + d.total_gpu_milli > limit:
            break
        out.append(d)
        total += d.total_gpu_milli
    return out


def subsample(nodes: NodeArrays, keep_every: int, offset: int = 0) -> NodeArrays:
    """Every ``keep_every``-th node within each (type, GPU count) group: a smaller cluster of the same mix."""
    keep: list[int] = []
    groups: dict[tuple[int, int], list[int]] = {}
    for row in range(nodes.n_nodes):
        groups.setdefault((int(nodes.type_index[row]), int(nodes.gpu_count[row])), []).append(row)
    for rows in groups.values():
        keep += rows[offset % keep_every :: keep_every] or rows[:1]
    keep.sort()
    idx = np.array(keep)
    return NodeArrays(
        [nodes.names[i] for i in keep], list(nodes.type_names), nodes.type_index[idx].copy(),
        nodes.gpu_count[idx].copy(), nodes.gpu_free[idx].copy(), nodes.cpu_free[idx].copy(),
        nodes.mem_free[idx].copy(), nodes.cpu_total[idx].copy(), nodes.mem_total[idx].copy(), nodes.usable[idx].copy(),
    )


@dataclass(frozen=True, slots=True)
class EpisodeResult:
    gpu_allocation: float  # allocated / total GPU-milli at the end (130% arrived demand)
    arrived_demand: float
    placed: int
    unplaced: int
    #: allocation ratio after each pod, to plot against arrived demand
    curve: npt.NDArray[np.float64]


def run_episode(nodes: NodeArrays, sequence: Sequence[Demand], target: TargetWorkload, scorer: Scorer) -> EpisodeResult:
    """Place ``sequence`` one pod at a time on a copy of ``nodes``; lowest score wins, first row on ties."""
    state = nodes.copy()
    frag = expected_fragmentation(state.gpu_free, state.cpu_free, state.mem_free, state.type_index, target)
    capacity = float(max(int(state.gpu_count.sum()) * MILLI_PER_DEVICE, 1))
    allocated = arrived = 0
    placed = unplaced = 0
    curve = np.zeros(len(sequence))
    for i, demand in enumerate(sequence):
        arrived += demand.total_gpu_milli
        candidates = placement_features(state, demand, target, frag)
        if len(candidates.rows):
            choice = int(np.argmin(scorer(candidates.features)))
            commit_placement(state, candidates, choice, demand, frag)
            allocated += demand.total_gpu_milli
            placed += 1
        else:
            unplaced += 1
        curve[i] = allocated / capacity
    return EpisodeResult(allocated / capacity, arrived / capacity, placed, unplaced, curve)
