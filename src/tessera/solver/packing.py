"""Packing a pool-level solution onto nodes.

The model says "3 units of gang g in pool p"; packing picks the nodes and device
indices on a scratch :class:`~tessera.core.CapacityLedger`.  Inside a pool, nodes already
used this round are filled first (best fit: the fullest that still fits), then untouched
nodes in (domain, name) order, so a gang's replicas land next to each other.  Pool
capacity is an aggregate, so a rare unit may not fit its pool (mixed demands on a node);
it is then *repaired* into another pool of the same type (its candidates first, then any
other), an elastic gang keeps
what fits down to its minimum, and otherwise the gang is dropped whole with a reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tessera.core import CapacityError, CapacityLedger, ReplicaAssignment, Spread
from tessera.solver.instance import GangSpec, PlacementInstance, Pool, replicas_fitting, shape_of


@dataclass(slots=True)
class PackResult:
    #: gang key -> its replicas, in placement order
    placed: dict[str, tuple[ReplicaAssignment, ...]] = field(default_factory=dict)
    #: gang key -> why the pool-level plan could not be packed
    failed: dict[str, str] = field(default_factory=dict)
    #: units moved to another pool than the model chose
    repaired_units: int = 0
    #: elastic gangs started smaller than the model chose
    shrunk_gangs: int = 0


class _PoolCursor:
    """Nodes of one pool, touched ones first."""

    __slots__ = ("touched", "untouched")

    def __init__(self, ledger: CapacityLedger, pool: Pool) -> None:
        self.touched: list[str] = []
        order = sorted(pool.nodes, key=lambda n: (ledger.nodes[n].topology.domain, n))
        self.untouched = list(reversed(order))  # pop() from the end is O(1)


class Packer:
    """Packs gangs onto the nodes of their pools (one instance per decision)."""

    def __init__(self, ledger: CapacityLedger, instance: PlacementInstance) -> None:
        self.ledger = ledger
        self.instance = instance
        self._pools = {p.index: p for p in instance.pools}
        self._cursors: dict[int, _PoolCursor] = {}

    def _cursor(self, p: int) -> _PoolCursor:
        cursor = self._cursors.get(p)
        if cursor is None:
            cursor = self._cursors[p] = _PoolCursor(self.ledger, self._pools[p])
        return cursor

    def _take_unit(self, node: str, gang: GangSpec) -> list[ReplicaAssignment] | None:
        demand = gang.workload.demand
        taken: list[ReplicaAssignment] = []
        for _ in range(gang.unit_replicas):
            try:
                taken.append(ReplicaAssignment(node, self.ledger.take(node, demand)))
            except CapacityError:
                for a in taken:
                    self.ledger.give_back(a.node, demand, a.devices)
                return None
        return taken

    def _fits_unit(self, node: str, gang: GangSpec) -> bool:
        if gang.unit_replicas == 1:
            return self.ledger.fits(node, gang.workload.demand)
        return replicas_fitting(shape_of(self.ledger, node), gang.workload.demand) >= gang.unit_replicas

    def _place_unit(self, p: int, gang: GangSpec, used_nodes: set[str], domain: str) -> list[ReplicaAssignment] | None:
        cursor = self._cursor(p)
        one_per_node = gang.workload.spread is not Spread.NONE
        best: tuple[tuple[bool, int], str] | None = None
        for name in cursor.touched:
            if one_per_node and name in used_nodes:
                continue
            free = self.ledger.free(name)
            key = (bool(domain) and self.ledger.nodes[name].topology.domain != domain, free.accelerator_milli)
            if best is not None and key >= best[0]:
                continue
            if self._fits_unit(name, gang):
                best = (key, name)
        if best is not None:
            taken = self._take_unit(best[1], gang)
            if taken is not None:
                self._retire_if_full(cursor, best[1])
                return taken
        while cursor.untouched:
            name = cursor.untouched.pop()
            cursor.touched.append(name)
            if one_per_node and name in used_nodes:
                continue
            taken = self._take_unit(name, gang)
            if taken is not None:
                self._retire_if_full(cursor, name)
                return taken
        return None

    def _retire_if_full(self, cursor: _PoolCursor, node: str) -> None:
        free = self.ledger.free(node)
        if free.accelerator_milli == 0 and self.ledger.nodes[node].accelerator_count:
            cursor.touched.remove(node)

    def pack(self, chosen: Mapping[int, Mapping[int, int]]) -> PackResult:
        """Place every chosen gang (biggest units first) or report why it could not be."""
        result = PackResult()
        order = sorted(chosen, key=lambda g: (-self.instance.gangs[g].unit_demand_milli,
                                              -self.instance.gangs[g].weight, g))
        for g in order:
            self._pack_gang(self.instance.gangs[g], chosen[g], result)
        return result

    def _pack_gang(self, gang: GangSpec, counts: Mapping[int, int], result: PackResult) -> None:
        assignments: list[ReplicaAssignment] = []
        used_nodes: set[str] = set()
        domain = ""
        short = 0
        types = set()
        for p in sorted(counts, key=lambda q: (-counts[q], q)):
            types.add(self._pools[p].accelerator_type)
            for _ in range(counts[p]):
                unit = self._place_unit(p, gang, used_nodes, domain)
                if unit is None:
                    short += 1
                    continue
                assignments.extend(unit)
                used_nodes.add(unit[0].node)
                domain = domain or self.ledger.nodes[unit[0].node].topology.domain
        if short:
            short = self._repair(gang, counts, types, short, assignments, used_nodes, domain, result)
        placed_units = len(assignments) // gang.unit_replicas
        if short and placed_units < gang.min_units:
            for a in assignments:
                self.ledger.give_back(a.node, gang.workload.demand, a.devices)
            result.failed[gang.key] = (
                f"the pool-level plan did not pack onto nodes ({short} of "
                f"{sum(counts.values())} tensor-parallel unit(s) found no node with room)"
            )
            return
        if short:
            result.shrunk_gangs += 1
        result.placed[gang.key] = tuple(assignments)

    def _repair(
        self,
        gang: GangSpec,
        counts: Mapping[int, int],
        types: set[str | None],
        short: int,
        assignments: list[ReplicaAssignment],
        used_nodes: set[str],
        domain: str,
        result: PackResult,
    ) -> int:
        zone_spread = gang.workload.spread is Spread.ZONE
        zones = {self.ledger.nodes[a.node].topology.zone for a in assignments}
        # the gang's candidate pools first, then every other pool of an allowed type (a unit
        # that fits somewhere is never dropped because the aggregate plan was optimistic)
        others = [q.index for q in self.instance.pools
                  if q.index not in gang.capacity and gang.workload.allows(q.accelerator_type)]
        for p in [*gang.capacity, *others]:
            if short == 0:
                break
            pool = self._pools[p]
            if p in counts or (types and not gang.workload.allow_mixed_types and pool.accelerator_type not in types):
                continue
            if zone_spread and pool.zone in zones:
                continue
            while short:
                unit = self._place_unit(p, gang, used_nodes, domain)
                if unit is None:
                    break
                assignments.extend(unit)
                used_nodes.add(unit[0].node)
                zones.add(pool.zone)
                short -= 1
                result.repaired_units += 1
                if zone_spread:
                    break
        return short


def pool_counts(
    instance: PlacementInstance, placements: Mapping[str, Sequence[ReplicaAssignment]]
) -> dict[int, dict[int, int]]:
    """Gang index -> {pool: units} of a node-level plan (to hint the model with it)."""
    pool_of = {node: p.index for p in instance.pools for node in p.nodes}
    by_key = {g.key: g for g in instance.gangs}
    out: dict[int, dict[int, int]] = {}
    for key, replicas in placements.items():
        gang = by_key.get(key)
        if gang is None:
            continue
        counts: dict[int, int] = {}
        for a in replicas:
            p = pool_of.get(a.node)
            if p is None:
                counts = {}
                break
            counts[p] = counts.get(p, 0) + 1
        # replicas -> units (a greedy plan knows nothing of units; round down)
        units = {p: c // gang.unit_replicas for p, c in counts.items() if c // gang.unit_replicas}
        if units:
            out[gang.index] = units
    return out
