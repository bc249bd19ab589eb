"""The FGD (ATC'23) placement protocol: fill an openb cluster to 130% of its GPUs, pod by pod.

The protocol, as the authors' public simulator runs it (see ``docs/simulator-fgd.md``):

1. The pod list is sorted by name and shuffled with the run's seed.
2. Inflation: while the requested GPU milli is below ``max_demand`` % of the cluster's,
   pods drawn uniformly with replacement from the name-sorted list are appended; drawing
   stops at the first draw that would push the total past the target.  (As in the
   authors' code, that check adds the drawn pod's *per-GPU* milli, so a multi-GPU pod can
   overshoot by a few GPUs.)  A list already above the target is thinned by removing
   random pods.
3. Pods are placed one at a time (or ``batch`` at a time) and never deleted; a pod that
   fits nowhere stays unscheduled and the run goes on.
4. After each decision: GPU allocation (allocated / total GPU milli) and expected
   fragmented GPU milli (measured against the target workload) against arrived demand
   (requested GPU milli of all pods submitted so far / total).  Records per whole percent
   of arrived demand average the events rounding to it, as the authors' analysis does.

The built-in placement policies run on :class:`~tessera.policies.placement.PlacementArrays`
with a per-shape score cache (fast path).  Any other policy is called through
``decide(snapshot, pending, ctx)`` with the batch as its pending list, and its plan is
validated by the engine's :func:`~tessera.core.validate_plan` before it is applied.  Its
snapshots form a lineage (:meth:`~tessera.core.ClusterSnapshot.derive`, each with a
``delta``), so a policy that keeps a conversion of the last one pays for what changed
(docs/simulator-fgd.md, "Plugin policies").
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tessera.core import (
    MILLI_PER_DEVICE,
    Allocation,
    ClusterSnapshot,
    Node,
    ReplicaPlacement,
    Workload,
    validate_plan,
)
from tessera.policies.placement import (
    NODE_ORDER_PARAM,
    TARGET_WORKLOAD_PARAM,
    TIE_BREAK_PARAM,
    FragmentationMeter,
    PlacementArrays,
    PlacementPolicy,
    PodShape,
    ScoreCache,
    TargetWorkload,
    TieBreak,
    choose_node,
    node_order,
)
from tessera.policy import Policy, PolicyContext
from tessera.sim.loaders.openb import OpenbNode, OpenbPod

#: the target workload keeps the most frequent pod shapes covering this share of pods
DEFAULT_POPULARITY = 0.95
DEFAULT_MAX_DEMAND_PCT = 130.0


def pod_shape(pod: OpenbPod) -> PodShape:
    return PodShape(pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.gpu_milli, tuple(sorted(pod.gpu_spec)))


def cluster_arrays(nodes: Sequence[OpenbNode]) -> PlacementArrays:
    return PlacementArrays(
        [n.name for n in nodes],
        [n.gpu_model for n in nodes],
        [n.gpu_count for n in nodes],
        [n.cpu_milli for n in nodes],
        [n.memory_mib for n in nodes],
    )


def target_workload(pods: Sequence[OpenbPod], popularity: float = DEFAULT_POPULARITY) -> TargetWorkload:
    """FGD's target workload: the pod shapes of the original list and their frequencies."""
    return TargetWorkload.from_shapes((pod_shape(p) for p in pods), popularity)


def arrival_order(
    pods: Sequence[OpenbPod], total_gpu_milli: int, seed: int, max_demand_pct: float = DEFAULT_MAX_DEMAND_PCT
) -> list[int]:
    """Indices into ``pods`` (name-sorted) in arrival order: shuffled, then inflated or thinned."""
    rng = random.Random(seed)
    order = list(range(len(pods)))
    rng.shuffle(order)
    if not pods:
        return order
    target = max_demand_pct / 100.0 * total_gpu_milli
    requested = sum(p.total_gpu_milli for p in pods)
    if requested < target:
        while True:
            drawn = rng.randrange(len(pods))
            # (sic) the authors compare with the drawn pod's per-GPU milli, then add its total
            if requested + pods[drawn].gpu_milli > target:
                break
            order.append(drawn)
            requested += pods[drawn].total_gpu_milli
    else:
        while requested > target and order:
            removed = order.pop(rng.randrange(len(order)))
            requested -= pods[removed].total_gpu_milli
    return order


@dataclass(slots=True)
class RunResult:
    """One protocol run: the event trace and what happened to the pods."""

    policy: str
    seed: int
    total_gpu_milli: int
    #: after each decision: requested GPU milli so far, allocated GPU milli, expected fragmented GPU milli
    arrived_milli: list[int] = field(default_factory=list)
    allocated_milli: list[int] = field(default_factory=list)
    fragmented_milli: list[float] = field(default_factory=list)
    pods_arrived: int = 0
    pods_placed: int = 0
    pods_unscheduled: int = 0
    #: arrived pods whose shape fits no node even of the empty cluster (counted as arrived demand)
    pods_never_fit: int = 0
    decisions: int = 0
    seconds: float = 0.0
    #: (arrival step, node name) of every placed pod, in placement order
    placements: list[tuple[int, str]] = field(default_factory=list)

    def records(self, max_demand_pct: float | None = None) -> list[dict[str, Any]]:
        """One record per whole percent of arrived demand (the authors' binning)."""
        if not self.arrived_milli:
            return []
        scale = 100.0 / self.total_gpu_milli
        arrived = np.round(np.asarray(self.arrived_milli, dtype=np.float64) * scale)
        allocated = np.round(np.asarray(self.allocated_milli, dtype=np.float64) * scale, 2)
        fragmented = np.round(np.asarray(self.fragmented_milli, dtype=np.float64) * scale, 2)
        top = int(arrived.max()) if max_demand_pct is None else int(max_demand_pct)
        out = []
        for pct in range(0, top + 1):
            hit = arrived == pct
            if not hit.any():
                hit = (arrived >= pct - 1) & (arrived <= pct + 1)
                if not hit.any():
                    continue
            out.append({
                "policy": self.policy,
                "seed": self.seed,
                "demand_pct": pct,
                "gpu_alloc_pct": round(float(allocated[hit].mean()), 2),
                "frag_gpu_pct": round(float(fragmented[hit].mean()), 2),
            })
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "seed": self.seed, "pods_arrived": self.pods_arrived,
            "pods_placed": self.pods_placed, "pods_unscheduled": self.pods_unscheduled,
            "pods_never_fit": self.pods_never_fit, "decisions": self.decisions,
            "seconds": round(self.seconds, 3),
            "final_arrived_pct": round(100.0 * self.arrived_milli[-1] / self.total_gpu_milli, 3) if self.arrived_milli else 0.0,
            "final_alloc_pct": round(100.0 * self.allocated_milli[-1] / self.total_gpu_milli, 3) if self.allocated_milli else 0.0,
        }


def run_protocol(
    nodes: Sequence[OpenbNode],
    pods: Sequence[OpenbPod],
    policy: Policy,
    seed: int,
    *,
    policy_name: str | None = None,
    max_demand_pct: float = DEFAULT_MAX_DEMAND_PCT,
    batch: int = 1,
    popularity: float = DEFAULT_POPULARITY,
    tie_break: TieBreak = "ordered",
    clock: Callable[[], float] = time.perf_counter,
    fast_path: bool = True,
    incremental: bool = True,
) -> RunResult:
    """Run the FGD protocol once.  ``pods`` may come in any order; they are sorted by name first.

    ``tie_break``: "ordered" settles equal scores by a seeded random node order fixed for
    the run (what reproduces the published results), "random" picks uniformly each time.
    ``clock`` only times the run for the report; it never influences a decision.
    ``fast_path=False`` runs a built-in placement policy through ``decide`` like any plugin
    (same placements; for measuring the generic path).  ``incremental=False`` builds every
    decision's snapshot from scratch (no lineage, so a policy's caches start afresh each
    time): the reference the incremental snapshots are checked against.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    started = clock()
    ordered = sorted(pods, key=lambda p: p.name)
    arrays = cluster_arrays(nodes)
    total = arrays.total_gpu_milli
    if total <= 0:
        raise ValueError("the node list has no GPUs; the FGD protocol measures GPU allocation")
    order = arrival_order(ordered, total, seed, max_demand_pct)
    target = target_workload(ordered, popularity)
    policy_rng = random.Random(random.Random(seed).getrandbits(64) ^ 0x5EED_F6D)
    result = RunResult(policy_name or policy.name, seed, total)
    meter = FragmentationMeter(arrays, target)
    shapes = {p.name: pod_shape(p) for p in ordered}
    empty = cluster_arrays(nodes)
    fits_empty: dict[PodShape, bool] = {}

    state = _RunState(arrays, meter, result)
    node_rank = node_order(arrays.n_nodes, policy_rng) if tie_break == "ordered" else None
    if fast_path and isinstance(policy, PlacementPolicy):
        policy.prepare(arrays, target)
        cache = ScoreCache(arrays)
        step = 0
        for step, index in enumerate(order, start=1):
            pod = ordered[index]
            shape = shapes[pod.name]
            state.arrive(shape, fits_empty, empty)
            choice = choose_node(arrays, shape, policy, policy_rng, cache, node_rank)
            if choice is not None:
                state.place(choice.node, shape, choice.devices, step)
            else:
                result.pods_unscheduled += 1
            if step % batch == 0 or step == len(order):
                state.record()
    else:
        params: dict[str, Any] = {TARGET_WORKLOAD_PARAM: target, TIE_BREAK_PARAM: tie_break}
        if node_rank is not None:
            params[NODE_ORDER_PARAM] = tuple(arrays.names[i] for i in np.argsort(node_rank))
        _run_generic(policy, nodes, ordered, order, shapes, params, batch, seed, policy_rng, state, fits_empty, empty,
                     incremental)
    result.seconds = clock() - started
    return result


class _RunState:
    """Counters shared by both paths: arrived and allocated milli, fragmentation, events."""

    def __init__(self, arrays: PlacementArrays, meter: FragmentationMeter, result: RunResult) -> None:
        self.arrays = arrays
        self.meter = meter
        self.result = result
        self.arrived = 0
        self.allocated = 0
        self.fragmented = meter.cluster_fragmentation()

    def arrive(self, shape: PodShape, fits_empty: dict[PodShape, bool], empty: PlacementArrays) -> None:
        self.arrived += shape.total_gpu_milli
        self.result.pods_arrived += 1
        fits = fits_empty.get(shape)
        if fits is None:
            fits = fits_empty[shape] = bool(empty.feasible(shape).any())
        if not fits:
            self.result.pods_never_fit += 1

    def place(self, node: int, shape: PodShape, devices: tuple[int, ...], step: int) -> None:
        row = np.array([node])
        before = float(self.meter.node_fragmentation(row)[0])
        self.arrays.place(node, shape, devices)
        self.fragmented += float(self.meter.node_fragmentation(row)[0]) - before
        self.allocated += shape.total_gpu_milli
        self.result.pods_placed += 1
        self.result.placements.append((step, self.arrays.names[node]))

    def record(self) -> None:
        self.result.decisions += 1
        self.result.arrived_milli.append(self.arrived)
        self.result.allocated_milli.append(self.allocated)
        self.result.fragmented_milli.append(self.fragmented)


def _run_generic(
    policy: Policy,
    nodes: Sequence[OpenbNode],
    ordered: Sequence[OpenbPod],
    order: Sequence[int],
    shapes: dict[str, PodShape],
    params: dict[str, Any],
    batch: int,
    seed: int,
    rng: random.Random,
    state: _RunState,
    fits_empty: dict[PodShape, bool],
    empty: PlacementArrays,
    incremental: bool = True,
) -> None:
    """Any Policy: hand it each batch as its pending list and apply the validated plan.

    Each decision's snapshot is the last one with the last batch's allocations appended
    (:meth:`ClusterSnapshot.derive`, copy-on-write): it costs what changed, and its
    ``delta`` lets a policy update its own conversion instead of redoing it.
    """
    node_objects: list[Node] = [n.to_node() for n in nodes]
    allocations: list[Allocation] = []
    snapshot = ClusterSnapshot(node_objects, allocations, now_seconds=0.0)
    templates: dict[int, Workload] = {}  # pod index -> its workload (inflated copies get their own key)
    new: list[Allocation] = []
    arrays = state.arrays
    pending: list[tuple[Workload, PodShape, int]] = []
    for step, index in enumerate(order, start=1):
        pod = ordered[index]
        shape = shapes[pod.name]
        state.arrive(shape, fits_empty, empty)
        # inflated copies of a pod need their own key
        template = templates.get(index)
        if template is None:
            template = templates[index] = pod.to_workload()
        pending.append((replace(template, key=f"{pod.name}#{step}", submitted_at_seconds=float(step)), shape, step))
        if step % batch and step != len(order):
            continue
        if incremental:
            snapshot = snapshot.derive(new, now_seconds=float(step))
        else:
            snapshot = ClusterSnapshot(node_objects, allocations, now_seconds=float(step))
        new = []
        workloads = [w for w, _, _ in pending]
        ctx = PolicyContext(
            now_seconds=float(step), rng=rng, deterministic=True, seed=seed,
            params=params,
        )
        plan = policy.decide(snapshot, workloads, ctx)
        validated = validate_plan(snapshot, workloads, plan)
        by_key = {w.key: (w, s, k) for w, s, k in pending}
        placed: set[str] = set()
        for placement in validated.accepted.placements:
            workload, wshape, arrived_at = by_key[placement.workload]
            replicas = []
            for replica, assignment in enumerate(placement.replicas):
                node = arrays.index[assignment.node]
                devices = assignment.devices or _default_devices(arrays, node, wshape)
                state.place(node, wshape, devices, arrived_at)
                replicas.append(ReplicaPlacement(replica, assignment.node, node_objects[node].accelerator_type, devices))
            allocations.append(Allocation(workload, tuple(replicas), started_at_seconds=float(step)))
            new.append(allocations[-1])
            placed.add(workload.key)
        state.result.pods_unscheduled += sum(1 for w, _, _ in pending if w.key not in placed)
        pending.clear()
        state.record()


def _default_devices(arrays: PlacementArrays, node: int, shape: PodShape) -> tuple[int, ...]:
    """Devices when a plan names none: best fit for a share, lowest-index free GPUs otherwise."""
    if shape.shares_gpu:
        return (arrays.best_fit_gpu(node, shape),)
    if shape.gpu_count:
        return arrays.devices_for(node, shape, -1)
    return ()


def parse_seeds(text: str) -> list[int]:
    """``"42-51"``, ``"42,45,50"`` or ``"42"``."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            a, b = int(lo), int(hi)
            if b < a:
                raise ValueError(f"seed range {part!r} runs backwards")
            seeds.extend(range(a, b + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


__all__ = [
    "DEFAULT_MAX_DEMAND_PCT",
    "DEFAULT_POPULARITY",
    "MILLI_PER_DEVICE",
    "RunResult",
    "arrival_order",
    "cluster_arrays",
    "parse_seeds",
    "pod_shape",
    "run_protocol",
    "target_workload",
]
