"""The CP-SAT victim-selection model: make room for one high-priority gang.

Given a gang that does not fit in free capacity, choose whole running workloads of
lower priority to evict and replicas of lower-priority elastic workloads to remove,
such that the gang fits, at least lost work.  Shrinking is always cheaper than any
eviction (lexicographic weights), so elastic jobs shrink toward their minimum before
anything is evicted; a gang is never partially evicted.

Variables: ``evict[v]`` (bool), ``remove[v, r]`` (bool, replica ``r`` of elastic ``v``),
``shrunk[v]`` (bool), ``units[n]`` (units of the beneficiary on node ``n``),
``use_type[t]`` (bool).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from tessera.core import Allocation, CapacityLedger, ReplicaDemand, ReplicaPlacement, Spread
from tessera.solver.instance import GangSpec, NodeShape, replicas_fitting, shape_of
from tessera.solver.limits import SolveOutcome, SolverLimits, run_solver


@dataclass(slots=True)
class VictimSpec:
    """A running workload that may lose replicas or be evicted for the beneficiary."""

    allocation: Allocation
    #: lost work if evicted (accelerator-seconds; integer)
    evict_cost: int
    #: replicas that may be removed by shrinking (elastic, above min), else empty
    removable: tuple[int, ...] = ()
    #: one-off cost of resharding if shrunk at all, and per removed replica
    shrink_fixed_cost: int = 0
    shrink_replica_cost: int = 0
    #: may the whole workload be evicted (preemptible)?
    evictable: bool = True

    @property
    def key(self) -> str:
        return self.allocation.key


@dataclass(frozen=True, slots=True)
class PreemptionChoice:
    outcome: SolveOutcome
    evict: tuple[str, ...] = ()
    #: workload -> replica indices removed
    remove: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: node -> units of the beneficiary the model expects there
    units: dict[str, int] = field(default_factory=dict)


def lost_work_seconds(allocation: Allocation, now_seconds: float, checkpoint_interval_seconds: float) -> float:
    """Accelerator-seconds an eviction throws away: restart cost plus work since the
    last checkpoint (estimated as the time run, capped at one checkpoint interval)."""
    demand = allocation.workload.demand
    accelerators = max(1.0, len(allocation.replicas) * demand.accelerator_milli / 1000)
    since_checkpoint = min(max(0.0, now_seconds - allocation.started_at_seconds), checkpoint_interval_seconds)
    return accelerators * (allocation.workload.restart_cost_seconds + since_checkpoint)


class PreemptionModel:
    """Chooses victims for one beneficiary gang (see the module docstring)."""

    def __init__(
        self,
        ledger: CapacityLedger,
        gang: GangSpec,
        victims: Sequence[VictimSpec],
        nodes: Sequence[str],
    ) -> None:
        self.ledger = ledger
        self.gang = gang
        self.victims = list(victims)
        self.nodes = list(nodes)
        self.model = cp_model.CpModel()
        self.evict: dict[str, cp_model.IntVar] = {}
        self.remove: dict[tuple[str, int], cp_model.IntVar] = {}
        self.shrunk: dict[str, cp_model.IntVar] = {}
        self.units: dict[str, cp_model.IntVar] = {}
        self.use_type: dict[str | None, cp_model.IntVar] = {}
        #: node -> [(victim key, replica placement)] on that node
        self._on_node: dict[str, list[tuple[VictimSpec, ReplicaPlacement]]] = defaultdict(list)
        for victim in self.victims:
            for rp in victim.allocation.replicas:
                self._on_node[rp.node].append((victim, rp))
        self._add_variables()
        self._add_gang_fits()
        self._add_shrink_limits()
        self._add_single_type()
        self._add_spread()
        self._add_node_capacity()
        self._set_objective()

    def _add_variables(self) -> None:
        for victim in self.victims:
            if victim.evictable:
                self.evict[victim.key] = self.model.new_bool_var(f"evict[{victim.key}]")
            if victim.removable:
                self.shrunk[victim.key] = self.model.new_bool_var(f"shrunk[{victim.key}]")
                for r in victim.removable:
                    self.remove[victim.key, r] = self.model.new_bool_var(f"remove[{victim.key},{r}]")
        for name in self.nodes:
            cap = self._max_units(name)
            self.units[name] = self.model.new_int_var(0, cap, f"units[{name}]")

    def _max_units(self, node: str) -> int:
        """Units that would fit on ``node`` if every candidate victim there left."""
        free = self.ledger.free(node)
        devices = list(free.devices_milli)
        cpu, mem = free.cpu_milli, free.memory_mib
        for victim, rp in self._on_node.get(node, []):
            demand = victim.allocation.workload.demand
            per = 1000 if demand.accelerators else demand.shared_milli
            for i in rp.devices:
                if 0 <= i < len(devices):
                    devices[i] = min(1000, devices[i] + per)
            cpu += demand.cpu_milli
            mem += demand.memory_mib
        k = replicas_fitting(NodeShape(tuple(devices), cpu, mem), self.gang.workload.demand) // self.gang.unit_replicas
        if self.gang.workload.spread is not Spread.NONE:
            k = min(k, 1)
        return min(k, self.gang.max_units)

    def _freed(self, victim: VictimSpec, rp: ReplicaPlacement) -> cp_model.LinearExprT:
        """1 when replica ``rp`` of ``victim`` leaves (evicted or removed), else 0."""
        parts: list[cp_model.IntVar] = []
        if victim.key in self.evict:
            parts.append(self.evict[victim.key])
        if (victim.key, rp.replica) in self.remove:
            parts.append(self.remove[victim.key, rp.replica])
        return cp_model.LinearExpr.sum(parts)

    def _add_gang_fits(self) -> None:
        """The beneficiary must start whole: between min and target units."""
        total = sum(self.units.values())
        self.model.add(total >= self.gang.min_units)
        self.model.add(total <= self.gang.max_units)

    def _add_shrink_limits(self) -> None:
        """A shrunk workload keeps its minimum, and is either shrunk or evicted, not both."""
        for victim in self.victims:
            if not victim.removable:
                continue
            removed = [self.remove[victim.key, r] for r in victim.removable]
            keep_min = max(1, victim.allocation.workload.gang_min)
            self.model.add(sum(removed) <= max(0, len(victim.allocation.replicas) - keep_min))
            for var in removed:
                self.model.add(var <= self.shrunk[victim.key])
                if victim.key in self.evict:
                    self.model.add(var + self.evict[victim.key] <= 1)

    def _add_single_type(self) -> None:
        by_type: dict[str | None, list[str]] = defaultdict(list)
        for name in self.nodes:
            by_type[self.ledger.nodes[name].accelerator_type].append(name)
        if self.gang.workload.allow_mixed_types or len(by_type) <= 1:
            return
        for accelerator_type, names in by_type.items():
            use = self.use_type[accelerator_type] = self.model.new_bool_var(f"use_type[{accelerator_type}]")
            for name in names:
                self.model.add(self.units[name] <= self.gang.max_units * use)
        self.model.add_exactly_one(self.use_type.values())

    def _add_spread(self) -> None:
        if self.gang.workload.spread is not Spread.ZONE:
            return
        by_zone: dict[str, list[str]] = defaultdict(list)
        for name in self.nodes:
            by_zone[self.ledger.nodes[name].topology.zone].append(name)
        for names in by_zone.values():
            self.model.add(sum(self.units[n] for n in names) <= 1)

    def _add_node_capacity(self) -> None:
        """Per node: the beneficiary's units fit in free room plus what leaving replicas free."""
        demand = self.gang.workload.demand
        u = self.gang.unit_replicas
        for name in self.nodes:
            free = self.ledger.free(name)
            var = self.units[name]
            whole: list[cp_model.LinearExprT] = []
            milli: list[cp_model.LinearExprT] = []
            cpu: list[cp_model.LinearExprT] = []
            mem: list[cp_model.LinearExprT] = []
            for victim, rp in self._on_node.get(name, []):
                vd = victim.allocation.workload.demand
                freed = self._freed(victim, rp)
                if vd.accelerators:
                    # only whole-device replicas surely leave whole devices behind
                    whole.append(len(rp.devices) * freed)
                milli.append(vd.accelerator_milli * freed)
                cpu.append(vd.cpu_milli * freed)
                mem.append(vd.memory_mib * freed)
            if demand.accelerators:
                self.model.add(demand.accelerators * u * var <= free.whole_devices + sum(whole))
            if demand.accelerator_milli:
                self.model.add(demand.accelerator_milli * u * var <= free.accelerator_milli + sum(milli))
            if demand.cpu_milli:
                self.model.add(demand.cpu_milli * u * var <= free.cpu_milli + sum(cpu))
            if demand.memory_mib:
                self.model.add(demand.memory_mib * u * var <= free.memory_mib + sum(mem))

    def _set_objective(self) -> None:
        """Least lost work; every shrink is cheaper than any eviction."""
        shrink_terms: list[cp_model.LinearExprT] = []
        worst_shrink = 0
        for victim in self.victims:
            if not victim.removable:
                continue
            shrink_terms.append(victim.shrink_fixed_cost * self.shrunk[victim.key])
            shrink_terms += [victim.shrink_replica_cost * self.remove[victim.key, r] for r in victim.removable]
            worst_shrink += victim.shrink_fixed_cost + victim.shrink_replica_cost * len(victim.removable)
        evict_base = worst_shrink + 1
        evict_terms = [(evict_base + v.evict_cost) * self.evict[v.key] for v in self.victims if v.key in self.evict]
        self.model.minimize(cp_model.LinearExpr.sum(shrink_terms) + cp_model.LinearExpr.sum(evict_terms))

    def solve(self, limits: SolverLimits) -> PreemptionChoice:
        solver, outcome = run_solver(self.model, limits)
        if not outcome.has_solution:
            return PreemptionChoice(outcome)
        evict = tuple(sorted(k for k, var in self.evict.items() if solver.boolean_value(var)))
        remove: dict[str, list[int]] = defaultdict(list)
        for (key, r), var in self.remove.items():
            if solver.boolean_value(var):
                remove[key].append(r)
        units = {n: int(solver.value(v)) for n, v in self.units.items() if solver.value(v) > 0}
        return PreemptionChoice(outcome, evict, {k: tuple(sorted(v)) for k, v in remove.items()}, units)


def candidate_nodes(
    ledger: CapacityLedger, gang: GangSpec, victims: Sequence[VictimSpec], max_nodes: int
) -> list[str]:
    """Usable nodes of allowed types where a unit of the gang fits now or once the
    candidate victims there leave; nodes with room first, then those whose victims lose
    the least work (at most ``max_nodes``)."""
    on_node: dict[str, list[ReplicaPlacement]] = defaultdict(list)
    cost_on_node: dict[str, int] = defaultdict(int)
    demand_of: dict[int, object] = {}
    for victim in victims:
        for rp in victim.allocation.replicas:
            on_node[rp.node].append(rp)
            demand_of[id(rp)] = victim.allocation.workload.demand
            cost_on_node[rp.node] += victim.evict_cost
    demand = gang.workload.demand
    scored: list[tuple[tuple[int, int, str], str]] = []
    for name, node in ledger.nodes.items():
        if not node.usable or not gang.workload.allows(node.accelerator_type):
            continue
        shape = shape_of(ledger, name)
        if replicas_fitting(shape, demand) >= gang.unit_replicas:
            scored.append(((0, 0, name), name))
            continue
        if name not in on_node:
            continue
        devices = list(ledger.free(name).devices_milli)
        cpu, mem = shape.cpu_milli, shape.memory_mib
        for rp in on_node[name]:
            vd = demand_of[id(rp)]
            assert isinstance(vd, ReplicaDemand)
            for i in rp.devices:
                if 0 <= i < len(devices):
                    devices[i] = min(1000, devices[i] + (1000 if vd.accelerators else vd.shared_milli))
            cpu += vd.cpu_milli
            mem += vd.memory_mib
        if replicas_fitting(NodeShape(tuple(devices), cpu, mem), demand) >= gang.unit_replicas:
            scored.append(((1, cost_on_node[name], name), name))
    scored.sort()
    return [name for _, name in scored[:max_nodes]]


def victims_on(victims: Sequence[VictimSpec], nodes: Sequence[str]) -> list[VictimSpec]:
    """The victims with at least one replica on ``nodes`` (the others cannot help)."""
    wanted = set(nodes)
    return [v for v in victims if any(rp.node in wanted for rp in v.allocation.replicas)]
