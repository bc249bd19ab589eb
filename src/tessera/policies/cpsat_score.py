"""How good a node-level plan is under the placement model, and whether it keeps the quotas.

The CP-SAT policy packs its pool-level answer onto nodes and may fall back to the best-fit
hint or a seed plan; :func:`score_placements` scores each with the model's own objective so
the better is kept, and :func:`quota_problem` says whether a fallback built without the
quota rows keeps to the queues' quotas; :func:`admitted_moves` and
:func:`quota_allows_move` keep moves to faster types to those the queue admits the job on
once it gives back what it holds (as admission will offer it when it restarts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tessera.core import Allocation, CapacityLedger, ClusterSnapshot, ReplicaAssignment
from tessera.core.admission import admit, give, placement_problem, quota_usage, take, take_gang
from tessera.core.quota import QuotaUsage
from tessera.solver import MoveCandidate, PlacementInstance, node_fullness


def score_placements(
    instance: PlacementInstance, free: CapacityLedger, placements: Mapping[str, Sequence[ReplicaAssignment]]
) -> float:
    """The placement model's objective evaluated on a node-level plan (to compare plans)."""
    w = instance.weights
    by_key = {g.key: g for g in instance.gangs}
    opened: set[str] = set()
    total = 0.0
    for key, replicas in placements.items():
        gang = by_key[key]
        value = 0.0
        domains, nics = set(), set()
        for a in replicas:
            node = free.nodes[a.node]
            value += gang.unit_value.get(node.accelerator_type, 0) / gang.unit_replicas
            node_free = free.free(a.node)
            fullness = node_fullness(node.accelerator_count, node_free.accelerator_milli, node.cpu_milli,
                                     node_free.cpu_milli)
            total += w.best_fit * fullness / gang.unit_replicas
            domains.add(node.topology.domain)
            nics.add(node.topology.nic)
            if node.accelerator_count and free.whole_free(a.node) == node.accelerator_count:
                opened.add(a.node)
        total += gang.weight * (w.start + value) + gang.order_bonus
        if gang.prefers_one_domain:
            total -= w.extra_domain * (len(domains) - 1) + w.extra_nic * (len(nics) - 1)
    return total - w.open_node * len(opened)


def quota_problem(snapshot: ClusterSnapshot, instance: PlacementInstance,
                  placements: Mapping[str, Sequence[ReplicaAssignment]]) -> str:
    """Why a plan's placements, taken together, break a queue's quota ("" if not)."""
    if snapshot.quotas is None:
        return ""
    usage = quota_usage(snapshot)
    by_key = {g.key: g.workload for g in instance.gangs}
    for key, replicas in placements.items():
        nodes = [a.node for a in replicas]
        why = placement_problem(snapshot, usage, by_key[key], nodes)
        if why:
            return f"{key}: {why}"
        take(snapshot, usage, by_key[key], nodes)
    return ""


def _offered(snapshot: ClusterSnapshot, usage: QuotaUsage, allocation: Allocation) -> set[str]:
    """The types admission would offer ``allocation``'s workload if it restarted now."""
    released = usage.copy()
    give(snapshot, released, allocation.workload, [rp.node for rp in allocation.replicas])
    admitted, _why = admit(snapshot, released, allocation.workload)
    if admitted is None:
        return set()
    return {o.accelerator_type for o in admitted.options} or set(snapshot.accelerator_types())


def admitted_moves(snapshot: ClusterSnapshot, usage: QuotaUsage,
                   candidates: Sequence[MoveCandidate]) -> list[MoveCandidate]:
    """``candidates`` with only the destinations the queue admits each job on."""
    out = []
    for candidate in candidates:
        offered = _offered(snapshot, usage, candidate.allocation)
        candidate.gains = {t: v for t, v in candidate.gains.items() if t in offered}
        if candidate.gains:
            out.append(candidate)
    return out


def quota_allows_move(snapshot: ClusterSnapshot, usage: QuotaUsage, allocation: Allocation, destination: str) -> bool:
    """Whether the queue still admits the job on ``destination`` given the moves taken so far
    (``usage`` is updated when it does)."""
    if destination not in _offered(snapshot, usage, allocation):
        return False
    give(snapshot, usage, allocation.workload, [rp.node for rp in allocation.replicas])
    take_gang(snapshot, usage, allocation.workload, destination, len(allocation.replicas))
    return True
