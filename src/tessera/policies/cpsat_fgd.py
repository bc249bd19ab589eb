"""CP-SAT's batch step for single-pod workloads placed against a target workload (FGD protocol).

When the caller names the *target workload* (``ctx.params['target_workload']``, the
distribution of pod shapes expected, which the FGD protocol hands to every policy) and
every pending workload is one pod, :class:`~tessera.policies.cpsat.CpSat` decides the
batch here instead of in its pool-level model:

The *fragmentation* of this step (:meth:`FragmentationBatch.waste`) is FGD's expected
fragmentation of a node plus the GPU milli its free CPU cannot feed at the target
workload's CPU per GPU milli (:func:`unfed_gpu_milli`): FGD's measure alone looks at the
node as it is, and optimising it exactly fills GPUs on CPU-rich nodes and leaves free
GPUs beside little CPU, which strand when the cluster saturates (docs/cpsat.md).

1. FGD's own plan for the batch (pods one by one, each where FGD's expected
   fragmentation grows least) is computed first; it is the hint and the fallback;
2. every pod gets candidate options on the batch's starting state: the ``candidate_nodes``
   nodes where it grows fragmentation least (every device with room for a GPU share),
   plus FGD's choice;
3. :class:`~tessera.solver.BatchPackingModel` picks at most one option per pod with exact
   per-device, CPU and memory capacity, maximising GPU milli placed, then pods placed,
   then the least fragmentation growth;
4. both plans are evaluated *exactly* (applied in order, fragmentation re-measured on the
   nodes they touch, so pods sharing a node interact as they really do) and the better
   one is kept; FGD's plan wins ties.  CP-SAT is therefore never worse than FGD on the
   batch by this measure.

Why not the pool-level model: it aggregates nodes by free shape, so it cannot see which
device of a node a GPU share fits, and its only fragmentation term (a charge per node
opened) ignores the pods still to come; on the openb traces it allocated 7 points less
than FGD (see docs/cpsat.md, "FGD protocol").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tessera.core import ClusterSnapshot, Placement, Plan, ReplicaAssignment, Workload
from tessera.policies.placement import (
    TARGET_WORKLOAD_PARAM,
    FgdPolicy,
    FragmentationMeter,
    PlacementArrays,
    PodShape,
    ScoreCache,
    TargetArrays,
    TargetWorkload,
    choose_node,
)
from tessera.policy import PolicyContext
from tessera.solver import BatchNode, BatchPackingModel, BatchPod, PodOption, SolverLimits
from tessera.solver.batch_packing import option_value

#: candidate nodes per pod shape (the ones where fragmentation grows least)
CANDIDATE_NODES = 8
#: most solver time per batch (deterministic seconds in the simulator): the model is small
#: (at most batch x candidate options) and usually proven optimal far sooner
BATCH_BUDGET_SECONDS = 0.2
#: how much more (objective units) CP-SAT's plan must score than FGD's to replace it
MIN_GAIN = 0.0
#: nodes preselected by FGD's integer score per candidate kept (exact growth is computed on them)
PRESELECT = 4
#: weight of the GPU milli a node's free CPU cannot feed (:func:`unfed_gpu_milli`) in the
#: batch step's measure, added to FGD's expected fragmentation (0: FGD's measure alone)
CPU_BALANCE_WEIGHT = 1.0

#: a node-level plan of the batch: pod index -> (node index, devices)
NodePlan = dict[int, tuple[int, tuple[int, ...]]]


def batch_target(pending: Sequence[Workload], ctx: PolicyContext) -> TargetWorkload | None:
    """The target workload when the batch step applies (one pod per workload), else None."""
    target = ctx.params.get(TARGET_WORKLOAD_PARAM)
    if not isinstance(target, TargetWorkload) or not pending:
        return None
    if any(w.target_replicas != 1 or w.gang_min > 1 for w in pending):
        return None
    return target


class BatchState:
    """The arrays, FGD scorer and score cache, kept from one batch decision to the next.

    Rebuilding the arrays from the snapshot and rescoring every node for every pod shape
    was most of a decision's time; between two decisions of the FGD protocol only the pods
    just placed change the cluster.  :meth:`sync` applies the allocations that are new in
    the snapshot and rebuilds everything when anything else changed (nodes, target
    workload, an allocation removed or replaced), so the state always equals
    :meth:`PlacementArrays.from_snapshot` of the snapshot."""

    def __init__(self) -> None:
        self.arrays: PlacementArrays | None = None
        self.target: TargetWorkload | None = None
        self.fgd = FgdPolicy()
        self.meter: FragmentationMeter | None = None
        self.cache: ScoreCache | None = None
        self._nodes: tuple[tuple[str, bool], ...] = ()
        self._allocations: dict[str, object] = {}
        #: decisions that reused the previous state (for the statistics)
        self.reused = 0

    def sync(self, snapshot: ClusterSnapshot, target: TargetWorkload) -> PlacementArrays:
        nodes = tuple((n.name, n.usable) for n in snapshot.nodes.values())
        current = snapshot.allocations
        known = self._allocations
        same = (self.arrays is not None and target is self.target and nodes == self._nodes
                and len(known) <= len(current)
                and all(current.get(key) is allocation for key, allocation in known.items()))
        if same:
            assert self.arrays is not None
            new = sorted(current.keys() - known.keys())
            for key in new:
                allocation = current[key]
                shape = PodShape.of(allocation.workload)
                if any(len(r.devices) != shape.gpu_count for r in allocation.replicas):
                    same = False  # devices not named: rebuild from the snapshot's ledger
                    break
            if same:
                for key in new:
                    allocation = current[key]
                    shape = PodShape.of(allocation.workload)
                    for replica in allocation.replicas:
                        self.arrays.place(self.arrays.index[replica.node], shape, replica.devices)
                    known[key] = allocation
                self.reused += 1
                return self.arrays
        self.arrays = PlacementArrays.from_snapshot(snapshot)
        self.target = target
        self.fgd.prepare(self.arrays, target)
        self.meter = FragmentationMeter(self.arrays, target)
        self.cache = ScoreCache(self.arrays)
        self._nodes = nodes
        self._allocations = dict(current)
        return self.arrays


class FragmentationBatch:
    """One batch decision on the arrays of one snapshot (see the module doc)."""

    def __init__(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext,
                 target: TargetWorkload, candidate_nodes: int = CANDIDATE_NODES,
                 timer: Callable[[], float] = time.perf_counter, state: BatchState | None = None) -> None:
        """``timer`` only measures the phases for the statistics; it never steers a decision.
        ``state``: the state of the previous decision to continue from (a fresh one if None)."""
        self.timer = timer
        self.snapshot = snapshot
        self.pending = list(pending)
        self.ctx = ctx
        state = state or BatchState()
        self.arrays = state.sync(snapshot, target)
        assert state.meter is not None and state.cache is not None
        self.fgd = state.fgd
        self.meter = state.meter
        #: FGD's scores per (shape, node), shared by the candidate search and FGD's own plan
        self.cache = state.cache
        self.node_rank = FgdPolicy.node_rank(self.arrays, ctx)
        self.shapes = [PodShape.of(w) for w in self.pending]
        self.candidate_nodes = candidate_nodes
        #: candidate options per pod shape, on the batch's starting state (see :meth:`options`)
        self._per_shape: dict[PodShape, list[tuple[int, int, int]]] = {}
        #: the target workload's GPU milli per milli-CPU (prices free CPU in GPU milli)
        self.gpu_per_cpu = gpu_per_cpu_milli(self.meter.target)

    # -- plans ------------------------------------------------------------------------
    def fgd_plan(self) -> NodePlan:
        """FGD's sequential plan of the batch (the arrays are left as they were)."""
        plan: NodePlan = {}
        for i, shape in enumerate(self.shapes):
            choice = choose_node(self.arrays, shape, self.fgd, self.ctx.rng, self.cache, self.node_rank)
            if choice is None:
                continue
            self.arrays.place(choice.node, shape, choice.devices)
            plan[i] = (choice.node, choice.devices)
        self._release(plan)
        return plan

    def evaluate(self, plan: NodePlan) -> float | None:
        """Exact value of ``plan``: objective units of GPU milli and pods placed minus the
        real growth of :meth:`waste` on the nodes it touches; None if it does not fit."""
        touched = np.array(sorted({node for node, _ in plan.values()}), dtype=np.int64)
        before = self.waste(touched)
        applied: NodePlan = {}
        value = 0.0
        fits = True
        for i in sorted(plan):
            node, devices = plan[i]
            shape = self.shapes[i]
            ok = (self.arrays.cpu_free[node] >= shape.cpu_milli and self.arrays.memory_free[node] >= shape.memory_mib
                  and len(devices) == shape.gpu_count
                  and all(self.arrays.gpu_free[node, d] >= shape.gpu_milli for d in devices))
            if not ok:
                fits = False
                break
            self.arrays.place(node, shape, devices)
            applied[i] = plan[i]
            value += option_value(_pod(shape), 0)
        after = self.waste(touched)
        self._release(applied)
        return value - (after - before) if fits else None

    def waste(self, nodes: np.ndarray) -> float:
        """The batch step's measure of ``nodes`` as they are now, in milli-GPU: FGD's expected
        fragmentation plus :data:`CPU_BALANCE_WEIGHT` x the GPU milli their free CPU cannot
        feed (see :func:`unfed_gpu_milli`)."""
        if not nodes.size:
            return 0.0
        a = self.arrays
        return float(self.meter.node_fragmentation(nodes).sum()
                     + self._unfed(a.gpu_free[nodes], a.cpu_free[nodes]).sum())

    def _states_waste(self, gpu_free: np.ndarray, cpu_free: np.ndarray, types: np.ndarray) -> np.ndarray:
        """:meth:`waste` of hypothetical node states (one row each)."""
        return self.meter.target.fragmentation(gpu_free, cpu_free, types) + self._unfed(gpu_free, cpu_free)

    def _unfed(self, gpu_free: np.ndarray, cpu_free: np.ndarray) -> np.ndarray:
        if not CPU_BALANCE_WEIGHT:
            return np.zeros(gpu_free.shape[0])
        return CPU_BALANCE_WEIGHT * unfed_gpu_milli(gpu_free, cpu_free, self.gpu_per_cpu)

    def _release(self, plan: NodePlan) -> None:
        for i in sorted(plan, reverse=True):
            node, devices = plan[i]
            self.arrays.release(node, self.shapes[i], devices)

    # -- the model ----------------------------------------------------------------------
    def shape_options(self) -> None:
        """Candidate options of every pod shape of the batch, on the starting state (call
        before :meth:`fgd_plan`, which then finds FGD's scores of that state cached)."""
        for shape in self.shapes:
            if shape not in self._per_shape:
                self._per_shape[shape] = self._shape_options(shape)

    def options(self, seed: NodePlan) -> tuple[list[PodOption], list[int]]:
        """Candidate options of every pod (model node indices) and the node index of each."""
        raw: list[tuple[int, int, int, int]] = []  # (pod, array node, device, penalty)
        self.shape_options()
        per_shape = self._per_shape
        for i, shape in enumerate(self.shapes):
            seen = set()
            for node, device, penalty in per_shape[shape]:
                raw.append((i, node, device, penalty))
                seen.add((node, device))
            if i in seed:
                node, devices = seed[i]
                device = devices[0] if shape.shares_gpu else -1
                if (node, device) not in seen:
                    raw.append((i, node, device, self._penalty(node, shape, devices)))
        nodes = sorted({node for _, node, _, _ in raw})
        position = {node: k for k, node in enumerate(nodes)}
        return [PodOption(i, position[node], device, penalty) for i, node, device, penalty in raw], nodes

    def _shape_options(self, shape: PodShape) -> list[tuple[int, int, int]]:
        """(node, device, growth of :meth:`waste`) on the best ``candidate_nodes`` nodes for ``shape``."""
        a = self.arrays
        nodes = np.flatnonzero(a.feasible(shape))
        if nodes.size == 0:
            return []
        rank = self.node_rank[nodes] if self.node_rank is not None else nodes
        if nodes.size > PRESELECT * self.candidate_nodes:
            # FGD's integer scores (cached, and reused by FGD's own plan) preselect the nodes
            # whose exact fragmentation growth is then computed
            scores, _ = self.cache.scores(self.fgd, nodes, shape, self.ctx.rng)
            keep = np.lexsort((rank, -scores))[: PRESELECT * self.candidate_nodes]
            nodes, rank = nodes[keep], rank[keep]
        before = self.meter.node_fragmentation(nodes) + self._unfed(a.gpu_free[nodes], a.cpu_free[nodes])
        free = a.gpu_free[nodes]
        cpu_after = a.cpu_free[nodes] - shape.cpu_milli
        types = a.type_idx[nodes]
        if shape.shares_gpu:
            n, g = free.shape
            states = np.repeat(free[:, None, :], g, axis=1) - shape.gpu_milli * np.eye(g, dtype=np.int64)[None]
            after = self._states_waste(
                states.reshape(n * g, g), np.repeat(cpu_after, g), np.repeat(types, g)).reshape(n, g)
            growth = np.where(free >= shape.gpu_milli, after - before[:, None], np.inf)
            best = growth.min(axis=1)
        else:
            if shape.gpu_count:
                whole = free == 1000
                free = free - 1000 * (whole & (np.cumsum(whole, axis=1) <= shape.gpu_count))
            best = self._states_waste(free, cpu_after, types) - before
        top = np.lexsort((rank, best))[: self.candidate_nodes]
        out: list[tuple[int, int, int]] = []
        for k in top:
            node = int(nodes[k])
            if shape.shares_gpu:
                for d in np.flatnonzero(np.isfinite(growth[k])):
                    out.append((node, int(d), round(float(growth[k, d]))))
            else:
                out.append((node, -1, round(float(best[k]))))
        return out

    def _penalty(self, node: int, shape: PodShape, devices: tuple[int, ...]) -> int:
        row = np.array([node])
        before = self.waste(row)
        self.arrays.place(node, shape, devices)
        after = self.waste(row)
        self.arrays.release(node, shape, devices)
        return round(after - before)

    def solve(self, seed: NodePlan, limits: SolverLimits, stats: dict[str, Any]) -> NodePlan | None:
        """CP-SAT's plan (hinted with ``seed``), in array node indices; None without a solution."""
        options, nodes = self.options(seed)
        if not options:
            return None
        a = self.arrays
        model = BatchPackingModel(
            [_pod(s) for s in self.shapes],
            [BatchNode(int(a.cpu_free[n]), int(a.memory_free[n]), tuple(int(x) for x in a.gpu_free[n, : a.gpu_count[n]]))
             for n in nodes],
            options,
        )
        position = {node: k for k, node in enumerate(nodes)}
        model.add_hint({i: (position[n], d) for i, (n, d) in seed.items() if n in position})
        solution = model.solve(limits)
        outcome = solution.outcome
        stats.update(model.size)
        stats.update(status=outcome.status, objective=outcome.objective, best_bound=outcome.best_bound,
                     gap=outcome.gap, hint_objective=model.hint_objective, solve_seconds=outcome.wall_seconds,
                     deterministic_time=outcome.deterministic_time)
        if not outcome.has_solution:
            return None
        return {i: (nodes[n], devices) for i, (n, devices) in solution.chosen.items()}

    def decide(self, limits: SolverLimits, name: str) -> tuple[Plan, dict[str, Any]]:
        stats: dict[str, Any] = {"policy": name, "pending": len(self.pending), "mode": "fragmentation-batch"}
        phases: dict[str, float] = {}
        mark = self.timer()
        self.shape_options()
        seed = self.fgd_plan()
        seed_value = self.evaluate(seed)
        phases["fgd"], mark = self.timer() - mark, self.timer()
        found = self.solve(seed, limits, stats)
        phases["solve"], mark = self.timer() - mark, self.timer()
        found_value = self.evaluate(found) if found is not None else None
        phases["evaluate"] = self.timer() - mark
        stats["phase_seconds"] = phases
        stats.update(seed_score=seed_value, cpsat_score=found_value)
        chosen, plan = "fgd", seed
        if (found is not None and found_value is not None and seed_value is not None
                and found_value > seed_value + MIN_GAIN):
            chosen, plan = "cpsat", found
        stats.update(chosen=chosen, score=found_value if chosen == "cpsat" else seed_value, placed=len(plan))
        placements = []
        unplaced: dict[str, str] = {}
        for i, workload in enumerate(self.pending):
            if i in plan:
                node, devices = plan[i]
                placements.append(Placement(workload.key, (ReplicaAssignment(self.arrays.names[node], devices),),
                                            reason=f"{name}: {chosen} (fragmentation-aware batch)"))
            else:
                unplaced[workload.key] = self._why_unplaced(self.shapes[i])
        return Plan(placements=tuple(placements), unplaced=unplaced), stats

    def _why_unplaced(self, shape: PodShape) -> str:
        """The reason a pod waits, from the arrays (the ledger-wide explanation is far slower
        and a batch of the FGD protocol leaves many pods out once the cluster is full)."""
        fits = int(self.arrays.feasible(shape).sum())
        what = (f"{shape.gpu_count} whole GPU(s)" if shape.gpu_count and not shape.shares_gpu
                else f"{shape.gpu_milli} milli of one GPU" if shape.shares_gpu else "no GPU")
        types = f" of type {', '.join(shape.allowed_types)}" if shape.allowed_types else ""
        if fits == 0:
            return (f"needs {what}{types}, {shape.cpu_milli} milli-CPU and {shape.memory_mib} MiB; "
                    "no node has that much room on one node (and one device for a GPU share)")
        return (f"needs {what}{types}, {shape.cpu_milli} milli-CPU and {shape.memory_mib} MiB; {fits} node(s) "
                "had room before this batch, taken by the pods placed in it")


def unfed_gpu_milli(gpu_free: np.ndarray, cpu_free: np.ndarray, gpu_per_cpu: float) -> np.ndarray:
    """Free GPU milli of each node state (one row of per-device free milli each) beyond what
    its free CPU can feed at ``gpu_per_cpu`` (GPU milli per milli-CPU the workload asks).

    FGD's measure looks at the node as it is: a target shape that fits now counts its GPU
    milli as usable, even when the CPU left is enough for one or two more pods and the
    rest of the node's GPUs will have no CPU to run with.  Placing the pods of a batch so
    that this measure is least (what the batch step does exactly, FGD only to its score's
    resolution) fills GPUs on nodes with much CPU and leaves free GPUs beside little CPU;
    when the cluster saturates, those GPUs strand (docs/cpsat.md, "openb, --batch 16")."""
    return np.maximum(0.0, gpu_free.sum(axis=1) - gpu_per_cpu * cpu_free)


def gpu_per_cpu_milli(target: TargetArrays) -> float:
    """GPU milli the target workload asks per milli-CPU it asks (CPU-only shapes included)."""
    cpu = float(target.weights @ target.cpu)
    gpu = float(target.weights @ (target.count * target.milli))
    return gpu / cpu if cpu > 0 else 0.0


def _pod(shape: PodShape) -> BatchPod:
    return BatchPod(shape.cpu_milli, shape.memory_mib, shape.gpu_count, shape.gpu_milli)


__all__ = ["BATCH_BUDGET_SECONDS", "CANDIDATE_NODES", "CPU_BALANCE_WEIGHT", "BatchState", "FragmentationBatch",
           "batch_target", "gpu_per_cpu_milli", "unfed_gpu_milli"]
