"""The pool-level CP-SAT placement model.

Variables (named containers on the model object):

* ``run[g]`` — gang ``g`` starts this round (bool);
* ``units[g, p]`` — units of gang ``g`` in pool ``p`` (int, bounded by what fits);
* ``use_type[g, t]`` — single-type gang ``g`` runs on accelerator type ``t`` (bool);
* ``opened[p]`` — untouched nodes of pool ``p`` put to use (int);
* ``in_domain[g, d]`` / ``on_nic[g, c]`` — gang ``g`` has units in network domain ``d``
  / on NIC class ``c`` (bool).

One ``_add_*`` method per constraint family; the objective maximises priority-weighted
normalised throughput and charges opened nodes and extra domains / NIC classes.  With
queues, :class:`tessera.solver.quota.QuotaTerms` adds their quota rows and a fair-share
term.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from ortools.sat.python import cp_model

from tessera.core import Spread
from tessera.solver.instance import PlacementInstance
from tessera.solver.limits import SolveOutcome, SolverLimits, run_solver, upper_bound
from tessera.solver.quota import QuotaTerms


def _put(values: dict[int, tuple[cp_model.IntVar, int]], var: cp_model.IntVar, value: int) -> None:
    # keyed by index: IntVar overloads == to build constraints, so it is a poor dict key
    values[var.index] = (var, value)


@dataclass(frozen=True, slots=True)
class PlacementSolution:
    outcome: SolveOutcome
    #: gang index -> {pool index: units}
    units: Mapping[int, Mapping[int, int]]


class PlacementModel:
    """CP-SAT model of one placement decision over pools (see the module docstring)."""

    def __init__(self, instance: PlacementInstance, queues: QuotaTerms | None = None) -> None:
        """``queues``: the quota rows and fair-share term of the snapshot's queues
        (:mod:`tessera.solver.quota`), in the same solve as placement."""
        self.instance = instance
        self.model = cp_model.CpModel()
        self.run: dict[int, cp_model.IntVar] = {}
        self.units: dict[tuple[int, int], cp_model.IntVar] = {}
        self.use_type: dict[tuple[int, str | None], cp_model.IntVar] = {}
        self.opened: dict[int, cp_model.IntVar] = {}
        self.in_domain: dict[tuple[int, str], cp_model.IntVar] = {}
        self.on_nic: dict[tuple[int, str], cp_model.IntVar] = {}
        #: the objective as (coefficient, variable) pairs, to evaluate a hint without solving
        self._objective: list[tuple[int, cp_model.IntVar]] = []
        self._pool = {p.index: p for p in instance.pools}
        #: the objective value of the last hint (model units), or None
        self.hint_objective: float | None = None
        self._add_variables()
        self._add_gang_all_or_nothing()
        self._add_single_type()
        self._add_pool_capacity()
        self._add_zone_spread()
        self._add_domain_affinity()
        self._add_fragmentation()
        self.queues = queues
        if queues is not None:
            queues.add(self.model, instance, self.units, self._objective)
        self._set_objective()

    # -- variables -------------------------------------------------------------------
    def _add_variables(self) -> None:
        for gang in self.instance.gangs:
            if gang.excluded or not gang.capacity:
                continue
            g = gang.index
            self.run[g] = self.model.new_bool_var(f"run[{g}]")
            for p, cap in gang.capacity.items():
                self.units[g, p] = self.model.new_int_var(0, min(cap, gang.max_units), f"units[{g},{p}]")

    def _gang_pools(self, g: int) -> list[int]:
        return list(self.instance.gangs[g].capacity)

    # -- constraint families ---------------------------------------------------------
    def _add_gang_all_or_nothing(self) -> None:
        """A gang starts with at least ``min`` units and at most ``target``, or not at all."""
        for g, run in self.run.items():
            gang = self.instance.gangs[g]
            total = cp_model.LinearExpr.sum([self.units[g, p] for p in self._gang_pools(g)])
            self.model.add(total >= gang.min_units * run)
            self.model.add(total <= gang.max_units * run)

    def _add_single_type(self) -> None:
        """One accelerator type per gang unless the workload allows mixing (types are
        restricted to the allowed ones already: only pools of allowed types are candidates)."""
        for g, run in self.run.items():
            gang = self.instance.gangs[g]
            pools_by_type: dict[str | None, list[int]] = defaultdict(list)
            for p in self._gang_pools(g):
                pools_by_type[self._pool[p].accelerator_type].append(p)
            if gang.workload.allow_mixed_types or len(pools_by_type) <= 1:
                continue
            for accelerator_type, pools in pools_by_type.items():
                use = self.model.new_bool_var(f"use_type[{g},{accelerator_type}]")
                self.use_type[g, accelerator_type] = use
                for p in pools:
                    self.model.add(self.units[g, p] <= gang.capacity[p] * use)
            self.model.add(sum(self.use_type[g, t] for t in pools_by_type) == run)

    def _add_pool_capacity(self) -> None:
        """Per pool: whole devices, accelerator milli, CPU and memory of all its nodes."""
        users: dict[int, list[int]] = defaultdict(list)
        for (g, p) in self.units:
            users[p].append(g)
        for p, gangs in users.items():
            if len(gangs) == 1:
                continue  # the variable's bound (what fits on the pool's nodes) is exact
            pool = self._pool[p]
            n = pool.size
            variables = [self.units[g, p] for g in gangs]
            bounds = [upper_bound(self.units[g, p]) for g in gangs]
            per_unit = [(self.instance.gangs[g].workload.demand, self.instance.gangs[g].unit_replicas) for g in gangs]
            only_whole = all(d.accelerators for d, _ in per_unit)
            for coefficients, room in (
                ([d.accelerators * u for d, u in per_unit], n * pool.shape.whole_devices),
                # whole-device gangs only: the milli row repeats the whole-device row
                ([] if only_whole else [d.accelerator_milli * u for d, u in per_unit], n * pool.shape.accelerator_milli),
                ([d.cpu_milli * u for d, u in per_unit], n * pool.shape.cpu_milli),
                ([d.memory_mib * u for d, u in per_unit], n * pool.shape.memory_mib),
            ):
                if sum(1 for c in coefficients if c) < 2:
                    continue
                if sum(c * b for c, b in zip(coefficients, bounds, strict=True)) <= room:
                    continue  # cannot bind
                self.model.add(cp_model.LinearExpr.weighted_sum(variables, coefficients) <= room)

    def _add_zone_spread(self) -> None:
        """Zone-spread workloads (inference anti-affinity): at most one replica per zone."""
        for g in self.run:
            gang = self.instance.gangs[g]
            if gang.workload.spread is not Spread.ZONE:
                continue
            by_zone: dict[str, list[int]] = defaultdict(list)
            for p in self._gang_pools(g):
                by_zone[self._pool[p].zone].append(p)
            for pools in by_zone.values():
                if len(pools) > 1:
                    self.model.add(sum(self.units[g, p] for p in pools) <= 1)

    def _add_domain_affinity(self) -> None:
        """Soft: replicas of one training gang prefer one network domain and one NIC class."""
        w = self.instance.weights
        for g, run in self.run.items():
            gang = self.instance.gangs[g]
            if not gang.prefers_one_domain:
                continue
            for attr, container, charge in (("domain", self.in_domain, w.extra_domain), ("nic", self.on_nic, w.extra_nic)):
                groups: dict[str, list[int]] = defaultdict(list)
                for p in self._gang_pools(g):
                    groups[getattr(self._pool[p], attr)].append(p)
                if len(groups) <= 1 or charge <= 0:
                    continue
                for label, pools in groups.items():
                    flag = self.model.new_bool_var(f"{attr}[{g},{label}]")
                    container[g, label] = flag
                    for p in pools:
                        self.model.add(self.units[g, p] <= gang.capacity[p] * flag)
                used = sum(container[g, label] for label in groups)
                self.model.add(used >= run)
                self._objective += [(-charge, container[g, label]) for label in groups]
                self._objective.append((charge, run))

    def _add_fragmentation(self) -> None:
        """Charge every untouched node a pool's units open: pack onto used nodes first."""
        w = self.instance.weights
        if w.open_node <= 0:
            return
        users: dict[int, list[int]] = defaultdict(list)
        for (g, p) in self.units:
            users[p].append(g)
        for p, gangs in users.items():
            pool = self._pool[p]
            if not pool.fresh:
                continue
            node_milli = pool.shape.accelerator_milli
            opened = self.model.new_int_var(0, pool.size, f"opened[{p}]")
            self.opened[p] = opened
            used = sum(self.instance.gangs[g].unit_demand_milli * self.units[g, p] for g in gangs)
            self.model.add(node_milli * opened >= used)
            self._objective.append((-w.open_node, opened))

    def _set_objective(self) -> None:
        w = self.instance.weights
        for g, run in self.run.items():
            gang = self.instance.gangs[g]
            # + queue-order tie-break: among equal gangs the earlier one starts (FIFO)
            self._objective.append((gang.weight * w.start + gang.order_bonus, run))
            for p in self._gang_pools(g):
                value = gang.unit_value.get(self._pool[p].accelerator_type, 0)
                fit = round(w.best_fit * self._pool[p].fullness)
                self._objective.append((gang.weight * value + fit, self.units[g, p]))
        coefficients = [c for c, _ in self._objective]
        variables = [v for _, v in self._objective]
        self.model.maximize(cp_model.LinearExpr.weighted_sum(variables, coefficients))

    # -- solving ---------------------------------------------------------------------
    def add_hint(self, units: Mapping[int, Mapping[int, int]]) -> int:
        """Hint a complete solution (e.g. the greedy plan); returns how many gangs it starts.

        Also sets :attr:`hint_objective`, the objective value of the hint."""
        hinted = self._hint_values(units)
        # straight into the proto: add_hint() per variable is slow on 30,000 variables
        hint = self.model.proto.solution_hint
        hint.vars.extend(list(hinted))
        hint.values.extend([value for _, value in hinted.values()])
        self.hint_objective = sum(c * hinted[v.index][1] for c, v in self._objective if v.index in hinted)
        return sum(1 for run in self.run.values() if hinted[run.index][1])

    def _hint_values(self, units: Mapping[int, Mapping[int, int]]) -> dict[int, tuple[cp_model.IntVar, int]]:
        """Values of every variable for the solution ``units`` (variable index -> (var, value)).

        Every variable is hinted (a complete hint lets CP-SAT start from it at once):
        gangs absent from ``units`` are hinted as not started, and a gang whose counts
        use pools that are not its candidates is dropped from the hint.
        """
        values: dict[int, tuple[cp_model.IntVar, int]] = {}
        kept: dict[int, dict[int, int]] = {}
        for g, run in self.run.items():
            counts = dict(units.get(g, {}))
            if counts and any((g, p) not in self.units for p in counts):
                counts = {}
            if counts:
                kept[g] = counts
            _put(values, run, 1 if counts else 0)
            for p in self._gang_pools(g):
                _put(values, self.units[g, p], counts.get(p, 0))
        for (g, t), var in self.use_type.items():
            _put(values, var, int(any(self._pool[p].accelerator_type == t for p in kept.get(g, {}))))
        for (g, label), var in self.in_domain.items():
            _put(values, var, int(any(self._pool[p].domain == label for p in kept.get(g, {}))))
        for (g, label), var in self.on_nic.items():
            _put(values, var, int(any(self._pool[p].nic == label for p in kept.get(g, {}))))
        used: dict[int, int] = defaultdict(int)
        for g, counts in kept.items():
            for p, c in counts.items():
                used[p] += c * self.instance.gangs[g].unit_demand_milli
        for p, var in self.opened.items():
            node_milli = max(1, self._pool[p].shape.accelerator_milli)
            _put(values, var, min(self._pool[p].size, -(-used[p] // node_milli)))
        return values

    def solve(self, limits: SolverLimits) -> PlacementSolution:
        solver, outcome = run_solver(self.model, limits)
        chosen: dict[int, dict[int, int]] = {}
        if outcome.has_solution:
            for g, run in self.run.items():
                if not solver.boolean_value(run):
                    continue
                counts = {p: int(solver.value(self.units[g, p])) for p in self._gang_pools(g)}
                chosen[g] = {p: c for p, c in counts.items() if c > 0}
        return PlacementSolution(outcome, chosen)

    @property
    def size(self) -> dict[str, int]:
        return {"model_gangs": len(self.run), "unit_vars": len(self.units), "type_vars": len(self.use_type),
                "pools": len(self.instance.pools)}
