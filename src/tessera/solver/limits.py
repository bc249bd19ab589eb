"""Solver limits and the outcome of one CP-SAT solve, shared by every model."""

from __future__ import annotations

from dataclasses import dataclass

from ortools.sat.python import cp_model


@dataclass(frozen=True, slots=True)
class SolverLimits:
    """How long and how one CP-SAT solve may run.

    Deterministic mode (the simulator) uses one worker and ``max_deterministic_time``
    (CP-SAT work units, roughly seconds on one core), so the same instance and seed give
    the same answer on any machine; the wall-clock limit is then only a safety net
    (``deterministic_safety_factor`` x the budget, at least 120 s).
    """

    time_limit_seconds: float = 1.0
    deterministic: bool = False
    seed: int = 0
    num_workers: int = 2
    #: wall-clock safety net in deterministic mode (x the deterministic budget, at least
    #: 120 s): only a hung solve should reach it, since hitting it ends the determinism (a
    #: loaded machine once stretched 0.2 deterministic seconds to 15 wall seconds)
    deterministic_safety_factor: float = 200.0
    log: bool = False
    #: lighter presolve (one pass, no symmetry or probing): a scheduling decision is
    #: latency-bound and the hinted model is easy, so presolve was most of the time
    fast_presolve: bool = True

    def configure(self, solver: cp_model.CpSolver) -> None:
        params = solver.parameters
        params.random_seed = int(self.seed) & 0x7FFFFFFF
        params.log_search_progress = self.log
        if self.fast_presolve:
            params.max_presolve_iterations = 1
            params.symmetry_level = 0
            params.cp_model_probing_level = 0
        if self.deterministic:
            params.num_workers = 1
            params.max_deterministic_time = max(0.01, self.time_limit_seconds)
            params.max_time_in_seconds = max(120.0, self.time_limit_seconds * self.deterministic_safety_factor)
        else:
            params.num_workers = max(1, self.num_workers)
            params.max_time_in_seconds = max(0.01, self.time_limit_seconds)


@dataclass(frozen=True, slots=True)
class SolveOutcome:
    """Status and quality of one solve (objective in the model's integer units)."""

    status: str
    objective: float
    best_bound: float
    wall_seconds: float
    deterministic_time: float
    error: str = ""

    @property
    def has_solution(self) -> bool:
        return self.status in ("OPTIMAL", "FEASIBLE")

    @property
    def gap(self) -> float:
        """Relative gap CP-SAT proves between its solution and its bound (0 = optimal)."""
        if not self.has_solution:
            return float("nan")
        if self.status == "OPTIMAL":
            return 0.0
        return abs(self.best_bound - self.objective) / max(1.0, abs(self.best_bound))


def run_solver(model: cp_model.CpModel, limits: SolverLimits) -> tuple[cp_model.CpSolver, SolveOutcome]:
    """Solve ``model`` under ``limits``; never raises for a bad model (the status says so)."""
    solver = cp_model.CpSolver()
    limits.configure(solver)
    error = ""
    try:
        code = solver.solve(model)
        status = solver.status_name(code)
    except Exception as err:  # the solver must never take a scheduling cycle down
        status, error = "ERROR", f"{type(err).__name__}: {err}"
    if status == "MODEL_INVALID":
        error = model.validate() or "CP-SAT rejected the model"
    has = status in ("OPTIMAL", "FEASIBLE")
    return solver, SolveOutcome(
        status=status,
        objective=solver.objective_value if has else float("nan"),
        best_bound=solver.best_objective_bound if has else float("nan"),
        wall_seconds=solver.wall_time if not error else 0.0,
        deterministic_time=solver.deterministic_time if not error else 0.0,
        error=error,
    )


def upper_bound(var: cp_model.IntVar) -> int:
    """The largest value in ``var``'s domain.  (``var.proto.domain[-1]`` reads 0 with
    ortools 9.15: its repeated fields do not take negative indexes.)"""
    domain = var.proto.domain
    return int(domain[len(domain) - 1])
