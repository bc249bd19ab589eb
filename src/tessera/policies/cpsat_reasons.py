"""Why a gang waits, in words a user can act on, computed on node pools.

Same wording as :func:`tessera.core.explain_unfit` ("needs 4 replicas of one type (8
accelerators each); 2 fit on H100"), plus the constraint that binds when it is not
plain capacity: zone or node spread, tensor-parallel groups that must stay in one node.
Working on pools (identical nodes counted once) keeps this cheap on 10,000 nodes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from tessera.core import Spread
from tessera.solver import GangSpec, Pool, replicas_fitting


class PoolView:
    """Free capacity summarised by pool, with a cache of "replicas per node" per demand.

    ``pools`` may be a callable: the pools are then built on first use (most decisions
    on a roomy cluster never need the view after placement)."""

    def __init__(self, pools: Sequence[Pool] | Callable[[], Sequence[Pool]]) -> None:
        self._source = pools
        self._pools: list[Pool] | None = None if callable(pools) else list(pools)
        self._cache: dict[object, int] = {}
        self._units: dict[object, dict[str | None, int]] = {}
        self._zones: dict[object, set[str]] = {}

    @property
    def pools(self) -> list[Pool]:
        if self._pools is None:
            assert callable(self._source)
            self._pools = list(self._source())
        return self._pools

    @staticmethod
    def _signature(gang: GangSpec) -> tuple[object, ...]:
        w = gang.workload
        return (w.demand, w.allowed_types, w.spread, gang.unit_replicas)

    def _per_node(self, gang: GangSpec, pool: Pool) -> int:
        key = (gang.workload.demand, pool.shape)
        k = self._cache.get(key)
        if k is None:
            k = self._cache[key] = replicas_fitting(pool.shape, gang.workload.demand)
        return k

    def units_by_type(self, gang: GangSpec) -> dict[str | None, int]:
        """Units that fit per allowed type (gang alone, spread respected per node)."""
        signature = self._signature(gang)
        cached = self._units.get(signature)
        if cached is not None:
            return cached
        out: dict[str | None, int] = defaultdict(int)
        self._units[signature] = out
        for pool in self.pools:
            if not gang.workload.allows(pool.accelerator_type):
                continue
            k = self._per_node(gang, pool) // gang.unit_replicas
            if gang.workload.spread is not Spread.NONE:
                k = min(k, 1)
            out[pool.accelerator_type] += k * pool.size
        return out

    def zones_with_room(self, gang: GangSpec) -> set[str]:
        signature = self._signature(gang)
        zones = self._zones.get(signature)
        if zones is None:
            zones = self._zones[signature] = {
                p.zone for p in self.pools if gang.workload.allows(p.accelerator_type) and self._per_node(gang, p) >= 1
            }
        return zones

    def fits_alone(self, gang: GangSpec) -> bool:
        if gang.workload.spread is Spread.ZONE:
            return len(self.zones_with_room(gang)) >= gang.min_units
        units = self.units_by_type(gang)
        if gang.workload.allow_mixed_types:
            return sum(units.values()) >= gang.min_units
        return max(units.values(), default=0) >= gang.min_units

    def binding_constraint(self, gang: GangSpec) -> str:
        """The spread or tensor-parallel constraint that keeps the gang out, or ""."""
        workload = gang.workload
        need = gang.min_units
        if workload.spread is Spread.ZONE:
            zones = self.zones_with_room(gang)
            if len(zones) < need:
                return f"spread across zones needs {need} zones, {len(zones)} have room"
        elif workload.spread is Spread.NODE:
            nodes = sum(p.size for p in self.pools
                        if workload.allows(p.accelerator_type) and self._per_node(gang, p) >= 1)
            if nodes < need:
                return f"spread across nodes needs {need} nodes, {nodes} have room"
        if gang.unit_replicas > 1:
            best = max(self.units_by_type(gang).values(), default=0)
            if best < need:
                per_unit = workload.demand.accelerators * gang.unit_replicas
                return (f"tensor-parallel groups of {workload.tensor_parallel} stay inside one node: needs "
                        f"{need} group(s) of {per_unit} free accelerators on one node, {best} available")
        return ""

    def capacity(self, gang: GangSpec) -> str:
        """Plain capacity, per allowed type (the wording of ``explain_unfit``)."""
        workload = gang.workload
        demand = workload.demand
        present = sorted({p.accelerator_type for p in self.pools if p.accelerator_type})
        allowed = list(workload.allowed_types) or present
        if demand.needs_accelerator and not any(t in present for t in allowed):
            return (f"no node has an allowed accelerator type ({', '.join(allowed) or 'any'}); "
                    f"cluster has: {', '.join(present) or 'no accelerators'}")
        units = self.units_by_type(gang)
        parts = [f"{units.get(t, 0) * gang.unit_replicas} fit on {t}" for t in allowed if t in present]
        per = f" ({demand.accelerators} accelerators each)" if demand.accelerators > 1 else ""
        mixed = " of one type" if len(allowed) > 1 and not workload.allow_mixed_types else ""
        return f"needs {workload.gang_min} replicas{mixed}{per}; " + ", ".join(parts)


def explain_waiting(gang: GangSpec, before: PoolView, after: PoolView, pack_failure: str, preemption: str) -> str:
    """Why ``gang`` waits: the binding constraint (or capacity) after this decision, whether
    it would have fitted alone before it, and what preemption found."""
    if gang.excluded:
        reason = gang.excluded
    else:
        reason = after.binding_constraint(gang) or after.capacity(gang)
        if pack_failure:
            reason = f"{pack_failure}; {reason}"
        elif before.fits_alone(gang):
            reason = f"room went to higher-value gangs this round; now {reason}"
    if preemption:
        reason = f"{reason}; {preemption}"
    return reason
