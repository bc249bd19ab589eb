"""The CP-SAT move model: upgrade running work to faster accelerator types.

Placement decides for pending gangs only; a job that started on a slow type when nothing
faster was free would stay there.  After placement, this model moves running
workloads (all replicas on one type) into the free room left on faster types when the
gain over a horizon beats the restart penalty (as Sia charges it):

    gain = weight x [(thr_new - thr_old) x horizon - thr_new x restart_cost] / thr_best

(each throughput is divided by ``thr_best`` first, so no finite input overflows).

Variables: ``move[j, t]`` (bool: running workload ``j`` moves to accelerator type ``t``).
Constraint families: one destination per workload, the free room of each type, a budget
of moves per decision.  Moves only go
to strictly faster types, so they never oscillate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from tessera.core import Allocation
from tessera.solver.instance import Pool, normalised_throughputs, replicas_fitting
from tessera.solver.limits import SolveOutcome, SolverLimits, run_solver


@dataclass(slots=True)
class MoveCandidate:
    allocation: Allocation
    #: destination accelerator type -> integer gain of moving there (only positive gains)
    gains: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.allocation.key


def move_candidates(
    allocations: Sequence[Allocation],
    pools: Sequence[Pool],
    *,
    horizon_seconds: float,
    weight_of: dict[str, int],
    scale: int = 1_000,
) -> list[MoveCandidate]:
    """Running single-replica workloads and the pools on faster types worth moving to."""
    out = []
    for allocation in allocations:
        workload = allocation.workload
        types = {rp.accelerator_type for rp in allocation.replicas}
        if not allocation.replicas or len(types) != 1 or not workload.preemptible or not workload.options:
            continue
        here = allocation.replicas[0].accelerator_type
        # throughputs relative to the best option (each in [0, 1]): any finite input stays finite
        raw = {o.accelerator_type: o.throughput for o in workload.options}
        relative = normalised_throughputs(raw)
        if here in relative:
            now_thr = relative[here]
        else:  # not an option: throughput_on says 1.0, relative to the best option
            best = max((v for v in raw.values() if 0 < v < math.inf), default=1.0)
            now_thr = min(1.0, 1.0 / best)
        candidate = MoveCandidate(allocation)
        room: dict[str, int] = defaultdict(int)
        for pool in pools:
            if pool.accelerator_type and pool.accelerator_type != here and workload.allows(pool.accelerator_type):
                room[pool.accelerator_type] += replicas_fitting(pool.shape, workload.demand) * pool.size
        for t, fits in room.items():
            new_thr = relative.get(t, 0.0)
            if new_thr <= now_thr or fits < len(allocation.replicas):
                continue
            gain = (new_thr - now_thr) * horizon_seconds - new_thr * workload.restart_cost_seconds
            value = round(weight_of.get(workload.key, 1) * scale * gain / max(1.0, horizon_seconds))
            if value > 0:
                candidate.gains[t] = value
        if candidate.gains:
            out.append(candidate)
    return out


@dataclass(frozen=True, slots=True)
class MoveChoice:
    outcome: SolveOutcome
    #: workload key -> destination accelerator type
    moves: dict[str, str]


class MoveModel:
    """Which running workloads move to which type's free room (see the module docstring)."""

    def __init__(self, candidates: Sequence[MoveCandidate], pools: Sequence[Pool], max_moves: int) -> None:
        self.candidates = list(candidates)
        self.pools_of: dict[str, list[Pool]] = defaultdict(list)
        for pool in pools:
            if pool.accelerator_type:
                self.pools_of[pool.accelerator_type].append(pool)
        self.max_moves = max_moves
        self.model = cp_model.CpModel()
        self.move: dict[tuple[int, str], cp_model.IntVar] = {}
        self._add_variables()
        self._add_one_destination()
        self._add_type_capacity()
        self._add_move_budget()
        self._set_objective()

    def _add_variables(self) -> None:
        for j, candidate in enumerate(self.candidates):
            for t in candidate.gains:
                self.move[j, t] = self.model.new_bool_var(f"move[{j},{t}]")

    def _add_one_destination(self) -> None:
        by_job: dict[int, list[cp_model.IntVar]] = defaultdict(list)
        for (j, _), var in self.move.items():
            by_job[j].append(var)
        for variables in by_job.values():
            self.model.add_at_most_one(variables)

    def _add_type_capacity(self) -> None:
        """Per destination type: whole devices, accelerator milli, CPU and memory of its free
        room (per-node fit is checked when the room is reserved)."""
        by_type: dict[str, list[tuple[int, cp_model.IntVar]]] = defaultdict(list)
        for (j, t), var in self.move.items():
            by_type[t].append((j, var))
        for t, users in by_type.items():
            pools = self.pools_of[t]
            variables = [var for _, var in users]
            demands = [(self.candidates[j].allocation.workload.demand, len(self.candidates[j].allocation.replicas))
                       for j, _ in users]
            for coefficients, room in (
                ([d.accelerators * r for d, r in demands], sum(p.size * p.shape.whole_devices for p in pools)),
                ([d.accelerator_milli * r for d, r in demands], sum(p.size * p.shape.accelerator_milli for p in pools)),
                ([d.cpu_milli * r for d, r in demands], sum(p.size * p.shape.cpu_milli for p in pools)),
                ([d.memory_mib * r for d, r in demands], sum(p.size * p.shape.memory_mib for p in pools)),
            ):
                if any(coefficients):
                    self.model.add(cp_model.LinearExpr.weighted_sum(variables, coefficients) <= room)

    def _add_move_budget(self) -> None:
        """At most ``max_moves`` restarts per decision: moves cost the cluster churn."""
        self.model.add(cp_model.LinearExpr.sum(list(self.move.values())) <= self.max_moves)

    def _set_objective(self) -> None:
        variables = list(self.move.values())
        gains = [self.candidates[j].gains[t] for (j, t) in self.move]
        self.model.maximize(cp_model.LinearExpr.weighted_sum(variables, gains))

    def solve(self, limits: SolverLimits) -> MoveChoice:
        solver, outcome = run_solver(self.model, limits)
        moves: dict[str, str] = {}
        if outcome.has_solution:
            for (j, t), var in self.move.items():
                if solver.boolean_value(var):
                    moves[self.candidates[j].key] = t
        return MoveChoice(outcome, moves)
