"""A greedy pool-level solution: the hint for CP-SAT and its fallback.

It is best fit at pool level — gangs in queue order (priority, then submission), each on
its fastest allowed accelerator type that has room, units into the fullest candidate
pools first — and it respects exactly the model's aggregate constraints, so CP-SAT
receives a feasible complete hint.  Working on pools rather than nodes keeps it fast on
10,000-node clusters, where a node-by-node greedy is the slow part of a decision.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from tessera.core import ReplicaAssignment, Spread
from tessera.solver.instance import GangSpec, PlacementInstance


def greedy_units(
    instance: PlacementInstance, fixed: Mapping[int, Mapping[int, int]] | None = None
) -> dict[int, dict[int, int]]:
    """Gang index -> {pool index: units} of the pool-level best-fit plan.

    ``fixed``: gangs already placed (e.g. another policy's plan); they are kept as they
    are, their room is taken first, and best fit completes the plan with the others."""
    fixed = fixed or {}
    pools = {p.index: p for p in instance.pools}
    room: dict[int, list[int]] = {
        p.index: [p.size * p.shape.whole_devices, p.size * p.shape.accelerator_milli,
                  p.size * p.shape.cpu_milli, p.size * p.shape.memory_mib]
        for p in instance.pools
    }
    out: dict[int, dict[int, int]] = {}
    for gang in instance.gangs:
        if gang.index in fixed:
            need = _unit_need(gang)
            for p, units in fixed[gang.index].items():
                room[p] = [have - per * units for have, per in zip(room[p], need, strict=True)]
            out[gang.index] = dict(fixed[gang.index])
    for gang in instance.gangs:
        if gang.excluded or not gang.capacity or gang.index in out:
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


def units_from_placements(
    instance: PlacementInstance, placements: Mapping[str, Sequence[ReplicaAssignment]]
) -> dict[int, dict[int, int]]:
    """A node-level plan (e.g. a learned policy's) as pool-level units, to hint CP-SAT with.

    Each replica counts in the pool of its node.  A gang is left out of the hint when its
    plan does not fit the model's variables: a node outside the instance's pools, a pool
    count that is not whole units, a pool that is not one of the gang's candidates, or more
    units in a pool than its variable allows.  Gangs left out are hinted as not started.
    """
    pool_of = {node: p.index for p in instance.pools for node in p.nodes}
    by_key = {g.key: g for g in instance.gangs}
    out: dict[int, dict[int, int]] = {}
    for key, replicas in placements.items():
        gang = by_key.get(key)
        if gang is None or gang.excluded or not replicas:
            continue
        counts: dict[int, int] = defaultdict(int)
        if any(a.node not in pool_of for a in replicas):
            continue
        for a in replicas:
            counts[pool_of[a.node]] += 1
        units = {p: c // gang.unit_replicas for p, c in counts.items()}
        whole = all(c % gang.unit_replicas == 0 for c in counts.values())
        fits = all(p in gang.capacity and u <= min(gang.capacity[p], gang.max_units) for p, u in units.items())
        total = sum(units.values())
        if whole and fits and gang.min_units <= total <= gang.max_units:
            out[gang.index] = units
    return out
