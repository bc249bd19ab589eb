"""A greedy pool-level solution: the hint for CP-SAT and its fallback.

It is best fit at pool level — gangs in queue order (priority, then submission), each on
its fastest allowed accelerator type that has room, units into the fullest candidate
pools first — and it respects exactly the model's aggregate constraints, so CP-SAT
receives a feasible complete hint.  Working on pools rather than nodes keeps it fast on
10,000-node clusters, where a node-by-node greedy is the slow part of a decision.
"""

from __future__ import annotations

from collections import defaultdict

from tessera.core import Spread
from tessera.solver.instance import GangSpec, PlacementInstance


def greedy_units(instance: PlacementInstance) -> dict[int, dict[int, int]]:
    """Gang index -> {pool index: units} of the pool-level best-fit plan."""
    pools = {p.index: p for p in instance.pools}
    room: dict[int, list[int]] = {
        p.index: [p.size * p.shape.whole_devices, p.size * p.shape.accelerator_milli,
                  p.size * p.shape.cpu_milli, p.size * p.shape.memory_mib]
        for p in instance.pools
    }
    out: dict[int, dict[int, int]] = {}
    for gang in instance.gangs:
        if gang.excluded or not gang.capacity:
            continue
        need = _unit_need(gang)
        groups: dict[str | None, list[int]] = defaultdict(list)
        for p in gang.capacity:
            key = None if gang.workload.allow_mixed_types else pools[p].accelerator_type
            groups[key].append(p)
        order = sorted(groups, key=lambda t: (-gang.unit_value.get(t, 0) if t is not None else 0, str(t)))
        for group in order:
            chosen: dict[int, int] = {}
            zones: set[str] = set()
            total = 0
            for p in groups[group]:
                if total >= gang.max_units:
                    break
                if gang.workload.spread is Spread.ZONE and pools[p].zone in zones:
                    continue
                fit = min(gang.capacity[p], gang.max_units - total)
                for have, per in zip(room[p], need, strict=True):
                    if per:
                        fit = min(fit, have // per)
                if fit <= 0:
                    continue
                if gang.workload.spread is Spread.ZONE:
                    fit = 1
                    zones.add(pools[p].zone)
                chosen[p] = fit
                total += fit
            if total >= gang.min_units:
                for p, units in chosen.items():
                    room[p] = [have - per * units for have, per in zip(room[p], need, strict=True)]
                out[gang.index] = chosen
                break
    return out


def _unit_need(gang: GangSpec) -> list[int]:
    demand = gang.workload.demand
    u = gang.unit_replicas
    return [demand.accelerators * u, demand.accelerator_milli * u, demand.cpu_milli * u, demand.memory_mib * u]
