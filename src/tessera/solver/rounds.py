"""The CP-SAT round model: re-optimise every job's (accelerator type, replica count) each round.

Placement (:mod:`tessera.solver.placement`) decides for pending gangs only, in the room that
is free now; a job started on a slow type, or a long job holding the fast type while short
ones queue, stays as it is until it ends.  Sia (Jayaram Subramanya et al., SOSP'23)
instead re-solves the whole allocation every round: each job (running or waiting) gets
one configuration or none, running jobs that change configuration pay a restart.  This
model does the same over per-type capacity:

* variables ``choice[j, c]`` (bool): job ``j`` runs in configuration ``c`` (an accelerator
  type and a replica count) during the next round;
* constraint families: at most one configuration per job (``_add_one_config``), the
  capacity of each accelerator type (``_add_type_capacity``), jobs frozen in place
  (``_add_frozen``: work the round may not touch);
* objective: the sum of the configurations' integer values.  The caller folds its
  policy into the values: :func:`config_value` is ``weight x speedup x (1 - restart
  share)``, where the speedup is the configuration's throughput relative to the job's
  best configuration and the weight favours jobs with the least attained service (a
  job that has run long is likely to run long still: the JCT-minimising order when
  durations are unknown, as in Gavel's LAS and Tiresias).

Per-node fit is not modelled (the caller packs the chosen configurations onto nodes and
keeps a job where it is when its new configuration does not pack).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from tessera.core import Workload
from tessera.solver.limits import SolveOutcome, SolverLimits, run_solver
from tessera.solver.quota import QuotaTerms

#: objective units per unit of weighted speedup (CP-SAT needs integers)
VALUE_SCALE = 100_000


@dataclass(frozen=True, slots=True)
class RoundConfig:
    """One way to run a job for the next round."""

    accelerator_type: str
    replicas: int
    #: objective value of running this way (integer, see :func:`config_value`)
    value: int


@dataclass(slots=True)
class RoundJob:
    """A job the round may start, keep, move, resize or stop."""

    key: str
    configs: list[RoundConfig]
    #: per-replica use of each capacity dimension (``accelerator_milli``, ``cpu_milli``, ...)
    per_replica: Mapping[str, int]
    #: its configuration now, if it runs
    current: tuple[str, int] | None = None
    #: lexicographic tier: a higher tier's jobs are served before any lower tier's (priority)
    tier: int = 0


def config_value(weight: float, speedup: float, restart_share: float) -> int:
    """``weight x speedup x (1 - restart_share)`` in objective units, at least 1 when positive.

    ``restart_share``: the part of the coming horizon a restart would waste (0 for a job
    that keeps its configuration)."""
    value = weight * speedup * max(0.0, 1.0 - restart_share)
    return max(1, round(VALUE_SCALE * value)) if value > 0 else 0


@dataclass(frozen=True, slots=True)
class RoundChoice:
    outcome: SolveOutcome
    #: job key -> chosen configuration (jobs without one wait or stop)
    chosen: dict[str, RoundConfig] = field(default_factory=dict)
    #: objective value of the hint (the current allocation kept as it is), if given
    hint_objective: int | None = None


class RoundModel:
    """Which configuration each job runs in during the next round (see the module docstring)."""

    def __init__(self, jobs: Sequence[RoundJob], capacity: Mapping[str, Mapping[str, int]],
                 queues: QuotaTerms | None = None, workloads: Mapping[str, Workload] | None = None) -> None:
        """``capacity``: accelerator type -> dimension -> room for the jobs given (whatever
        other work uses is already taken out).  ``queues`` (with ``workloads``, key ->
        workload): the queues' quota rows (:mod:`tessera.solver.quota`) over the chosen
        configurations, the running jobs of the round counted by their choice only."""
        self.jobs = list(jobs)
        self.capacity = capacity
        self.model = cp_model.CpModel()
        self.choice: dict[tuple[int, int], cp_model.IntVar] = {}
        self._tier_scale = self._tier_scales()
        self._add_variables()
        self._add_one_config()
        self._add_type_capacity()
        #: objective terms beyond the configurations' values (the queues' fair share)
        self._extra: list[tuple[int, cp_model.IntVar]] = []
        if queues is not None and workloads is not None:
            queues.add_entries(self.model, [
                (workloads[self.jobs[j].key], self.jobs[j].configs[c].accelerator_type,
                 self.jobs[j].configs[c].replicas * workloads[self.jobs[j].key].demand.accelerator_milli, var)
                for (j, c), var in self.choice.items() if self.jobs[j].key in workloads], self._extra)
        self._set_objective()
        self.hint_objective: int | None = None

    def _tier_scales(self) -> dict[int, int]:
        """Multiplier per tier so that any job of a higher tier outweighs all lower tiers together."""
        tiers = sorted({job.tier for job in self.jobs})
        scales: dict[int, int] = {}
        scale = 1
        for tier in tiers:
            scales[tier] = scale
            total = sum(max((c.value for c in job.configs), default=0) for job in self.jobs if job.tier == tier)
            scale *= total + 1
        return scales

    def _add_variables(self) -> None:
        for j, job in enumerate(self.jobs):
            for c, config in enumerate(job.configs):
                if config.accelerator_type in self.capacity:
                    self.choice[j, c] = self.model.new_bool_var(f"choice[{j},{c}]")

    def _add_one_config(self) -> None:
        by_job: dict[int, list[cp_model.IntVar]] = defaultdict(list)
        for (j, _), var in self.choice.items():
            by_job[j].append(var)
        for variables in by_job.values():
            self.model.add_at_most_one(variables)

    def _add_type_capacity(self) -> None:
        """Per type and dimension: the replicas chosen use at most the type's room."""
        users: dict[str, list[tuple[cp_model.IntVar, Mapping[str, int], int]]] = defaultdict(list)
        for (j, c), var in self.choice.items():
            config = self.jobs[j].configs[c]
            users[config.accelerator_type].append((var, self.jobs[j].per_replica, config.replicas))
        for accelerator_type, uses in users.items():
            room = self.capacity[accelerator_type]
            for dimension, limit in room.items():
                coefficients = [per.get(dimension, 0) * replicas for _, per, replicas in uses]
                if any(coefficients):
                    variables = [var for var, _, _ in uses]
                    self.model.add(cp_model.LinearExpr.weighted_sum(variables, coefficients) <= limit)

    def _set_objective(self) -> None:
        variables = list(self.choice)
        coefficients = [self.jobs[j].configs[c].value * self._tier_scale[self.jobs[j].tier] for j, c in variables]
        # the fair share weighs like the lowest tier's values: it never outweighs priority
        self.model.maximize(cp_model.LinearExpr.weighted_sum(
            [self.choice[k] for k in variables] + [v for _, v in self._extra],
            coefficients + [c for c, _ in self._extra]))

    def add_hint(self, keep: Mapping[str, tuple[str, int]]) -> int:
        """Hint: the given jobs in the given configurations, every other job idle.  Returns
        the hint's objective (the value of changing nothing, when ``keep`` is the current
        allocation)."""
        total = 0
        for (j, c), var in self.choice.items():
            job, config = self.jobs[j], self.jobs[j].configs[c]
            on = keep.get(job.key) == (config.accelerator_type, config.replicas)
            self.model.add_hint(var, on)
            if on:
                total += config.value * self._tier_scale[job.tier]
        self.hint_objective = total
        return total

    def solve(self, limits: SolverLimits) -> RoundChoice:
        solver, outcome = run_solver(self.model, limits)
        chosen: dict[str, RoundConfig] = {}
        if outcome.has_solution:
            for (j, c), var in self.choice.items():
                if solver.boolean_value(var):
                    chosen[self.jobs[j].key] = self.jobs[j].configs[c]
        return RoundChoice(outcome, chosen, self.hint_objective)


__all__ = ["VALUE_SCALE", "RoundChoice", "RoundConfig", "RoundJob", "RoundModel", "config_value"]
