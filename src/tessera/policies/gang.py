"""Gang placement helpers shared by the greedy built-in policies."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

from tessera.core import (
    AcceleratorOption,
    CapacityLedger,
    ClusterSnapshot,
    ReplicaAssignment,
    Spread,
    Workload,
)
from tessera.core.admission import gang_problem, take
from tessera.core.quota import QuotaUsage

#: score(ledger, node_name, workload) -> lower is better
NodeScore = Callable[[CapacityLedger, str, Workload], float]


def best_fit_score(ledger: CapacityLedger, node: str, workload: Workload) -> float:
    """Free accelerator milli left on the node after this replica (fuller nodes first)."""
    free = ledger.free(node)
    return free.accelerator_milli - workload.demand.accelerator_milli


def candidate_types(ledger: CapacityLedger, workload: Workload,
                    types: Iterable[str | None] | None = None) -> list[tuple[str | None, ...]]:
    """Groups of accelerator types one gang may use, fastest first.

    Without mixing, each allowed type is its own group; with mixing, one group of all.
    ``types``: the nodes' accelerator types when the caller knows them (else read from the ledger).
    """
    if types is None:
        types = {n.accelerator_type for n in ledger.nodes.values()}
    present = sorted(set(types), key=str)
    if not workload.demand.needs_accelerator:
        return [tuple(present)]
    allowed = [t for t in present if t is not None and workload.allows(t)]
    allowed.sort(key=lambda t: (-workload.throughput_on(t), t))
    if workload.allow_mixed_types:
        return [tuple(allowed)] if allowed else []
    return [(t,) for t in allowed]


def place_gang(
    ledger: CapacityLedger,
    workload: Workload,
    score: NodeScore = best_fit_score,
    replicas: int | None = None,
) -> tuple[ReplicaAssignment, ...] | None:
    """Reserve a whole gang on ``ledger`` or nothing.

    Tries each candidate type group, placing up to ``replicas`` (default: the
    workload's target) one replica at a time on the best-scoring node, and keeps the
    group with the highest total throughput among those reaching the gang minimum.
    """
    want = replicas if replicas is not None else workload.target_replicas
    best: tuple[float, tuple[ReplicaAssignment, ...]] | None = None
    for group in candidate_types(ledger, workload):
        assignments = _fill(ledger, workload, group, want, score)
        if len(assignments) >= workload.gang_min:
            value = sum(workload.throughput_on(ledger.nodes[a.node].accelerator_type) for a in assignments)
            if best is None or value > best[0] + 1e-12:
                best = (value, assignments)
        _release(ledger, workload, assignments)
    if best is None:
        return None
    for assignment in best[1]:
        ledger.take(assignment.node, workload.demand, assignment.devices)
    return best[1]


def _fill(
    ledger: CapacityLedger,
    workload: Workload,
    group: Sequence[str | None],
    want: int,
    score: NodeScore,
) -> tuple[ReplicaAssignment, ...]:
    allowed = set(group)
    nodes = [n for n in ledger.nodes.values() if n.usable and n.accelerator_type in allowed]
    used_nodes: set[str] = set()
    used_zones: set[str] = set()
    out: list[ReplicaAssignment] = []
    while len(out) < want:
        best_name = None
        best_score = 0.0
        for node in nodes:
            if workload.spread is Spread.NODE and node.name in used_nodes:
                continue
            if workload.spread is Spread.ZONE and node.topology.zone in used_zones:
                continue
            if not ledger.fits(node.name, workload.demand):
                continue
            s = score(ledger, node.name, workload)
            if best_name is None or s < best_score or (s == best_score and node.name < best_name):
                best_name, best_score = node.name, s
        if best_name is None:
            break
        devices = ledger.take(best_name, workload.demand)
        out.append(ReplicaAssignment(best_name, devices))
        used_nodes.add(best_name)
        used_zones.add(ledger.nodes[best_name].topology.zone)
    return tuple(out)


def _release(ledger: CapacityLedger, workload: Workload, assignments: Sequence[ReplicaAssignment]) -> None:
    for a in assignments:
        ledger.give_back(a.node, workload.demand, a.devices)


def queue_order(pending: Sequence[Workload]) -> list[Workload]:
    """Priority first, then submission time, then key (a total, deterministic order)."""
    return sorted(pending, key=lambda w: (-w.priority, w.submitted_at_seconds, w.key))


def place_on_first_flavor(snapshot: ClusterSnapshot, ledger: CapacityLedger, usage: QuotaUsage, workload: Workload,
                          flavors: Iterable[str]) -> tuple[str, tuple[ReplicaAssignment, ...]] | None:
    """The first of ``flavors`` (accelerator types, in the caller's order) whose quota admits the
    whole gang and where it has room: the gang reserved there on ``ledger`` and counted in
    ``usage``; None when none does (the quota-aware baselines' admission step)."""
    replicas = max(1, workload.target_replicas)
    for flavor in flavors:
        if gang_problem(snapshot, usage, workload, flavor, replicas):
            continue  # no quota for it on this flavor: the next one
        one = dataclasses.replace(workload, options=(AcceleratorOption(flavor, workload.throughput_on(flavor)),))
        chosen = place_gang(ledger, one)
        if chosen is not None:
            take(snapshot, usage, workload, [a.node for a in chosen])
            return flavor, chosen
    return None
