"""Quota on actual placements: what the engine checks for every plan when queues exist.

The rules are :mod:`tessera.core.quota`'s; this module applies them to snapshots,
allocations and plan actions, per accelerator type of the nodes a replica is placed on
(never on a sum of requests: two 4-GPU replicas that can only run on two nodes count on
those nodes' types).  A snapshot without queues (``snapshot.quotas is None``) limits
nothing.

* :func:`quota_usage`: the tally of what runs, from the snapshot's allocations;
* :func:`placement_problem` / :func:`take` / :func:`give`: one action's replicas checked
  against and moved into or out of that tally (plan validation, tessera.core.plan);
* :func:`admit`: before a policy decides, whether a pending workload could be
  admitted at all (its smallest gang on any type it allows), so a workload its queue
  cannot take never holds room in a policy's plan that others could use;
* :func:`preemption_problem`: a workload is evicted for another only within its own queue,
  or when its queue borrows (reclaim), never below what its queue is guaranteed;
* :func:`normalised_use` / :func:`fair_share`: each queue's use weighted by speed, and its
  share of its weight x quota (the CP-SAT fair-share term, ``status.fairShare``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from tessera.core.model import (
    AcceleratorOption,
    Allocation,
    Workload,
)
from tessera.core.quota import QuotaTree, QuotaUsage, equivalent, reference_of
from tessera.core.snapshot import ClusterSnapshot

#: every quota refusal starts with this (the engine reports it as a wait for quota)
OVER_QUOTA = "over quota"


@dataclass(frozen=True, slots=True)
class Reservation:
    """Room a workload waiting for its own queue's quota holds in it (tessera.core.reclaim):
    it counts as used for every placement but that workload's own."""

    workload: str
    queue: str
    accelerator_type: str
    milli: int


def reserved_usage(snapshot: ClusterSnapshot, held: Iterable[Reservation]) -> QuotaUsage:
    """What runs, plus the room the reservations hold."""
    usage = quota_usage(snapshot)
    for r in held:
        usage.add(r.queue, r.accelerator_type, r.milli)
    return usage


def _per_type(snapshot: ClusterSnapshot, workload: Workload, nodes: Iterable[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    milli = workload.demand.accelerator_milli
    for name in nodes:
        node = snapshot.nodes.get(name)
        if node is not None and node.accelerator_type and milli:
            out[node.accelerator_type] += milli
    return _with_equivalents(snapshot, workload, out)


def _with_equivalents(snapshot: ClusterSnapshot, workload: Workload, per_type: Counter[str]) -> Counter[str]:
    """``per_type`` plus, for every normalized quota of the tree, what it counts as there:
    each type's milli x the workload's throughput on it over its throughput on the reference."""
    tree = snapshot.quotas
    if tree is None or not tree.references:
        return per_type
    out = Counter({t: m for t, m in per_type.items() if reference_of(t) is None})
    for reference in tree.references:
        out[equivalent(reference)] = sum(equivalent_milli(workload, t, m, reference) for t, m in out.items()
                                         if reference_of(t) is None)
    return out


def equivalent_milli(workload: Workload, accelerator_type: str, milli: int, reference: str) -> int:
    """What ``milli`` of ``workload`` on ``accelerator_type`` counts as in ``reference``-equivalents:
    x its throughput there over its throughput on the reference."""
    base = workload.throughput_on(reference)
    return round(milli * workload.throughput_on(accelerator_type) / base) if base > 0 else milli


def _on_type(snapshot: ClusterSnapshot, workload: Workload, accelerator_type: str, replicas: int) -> Counter[str]:
    return _with_equivalents(snapshot, workload,
                             Counter({accelerator_type: replicas * workload.demand.accelerator_milli}))


def _limited(snapshot: ClusterSnapshot, workload: Workload) -> bool:
    return snapshot.quotas is not None and bool(workload.queue)


def quota_usage(snapshot: ClusterSnapshot) -> QuotaUsage:
    """Milli-accelerators in use per (queue, type) by the snapshot's allocations."""
    usage = QuotaUsage()
    for allocation in snapshot.allocations.values():
        if _limited(snapshot, allocation.workload):
            give(snapshot, usage, allocation.workload, _nodes(allocation), sign=1)
    return usage


def _nodes(allocation: Allocation) -> list[str]:
    return [rp.node for rp in allocation.replicas]


def placement_problem(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload, nodes: Iterable[str]) -> str:
    """Why placing replicas of ``workload`` on ``nodes`` breaks its queue's quota ("" if not)."""
    return _quota_problem(snapshot, usage, workload, _per_type(snapshot, workload, nodes))


def gang_problem(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload, accelerator_type: str,
                 replicas: int) -> str:
    """Why ``replicas`` of ``workload`` on ``accelerator_type`` would break its queue's quota ("" if not)."""
    return _quota_problem(snapshot, usage, workload, _on_type(snapshot, workload, accelerator_type, replicas))


def take_gang(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload, accelerator_type: str,
              replicas: int) -> None:
    """Count ``replicas`` of ``workload`` on ``accelerator_type`` as used (nodes not chosen yet)."""
    if _limited(snapshot, workload):
        for t, milli in _on_type(snapshot, workload, accelerator_type, replicas).items():
            usage.add(workload.queue, t, milli)


def _quota_problem(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload, per_type: Counter[str]) -> str:
    tree = snapshot.quotas
    if tree is None or not workload.queue:
        return ""
    if workload.queue in tree.problems:
        return f"{OVER_QUOTA}: queue {workload.queue} cannot admit anything: {tree.problems[workload.queue]}"
    if workload.queue not in tree.queues:
        return f"{OVER_QUOTA}: queue {workload.queue} does not exist"
    if not tree.is_leaf(workload.queue):
        return f"{OVER_QUOTA}: queue {workload.queue} has child queues; only leaf queues hold workloads"
    for t, milli in sorted(per_type.items()):
        why = tree.why_not(usage, workload.queue, t, milli) if milli else ""
        if why:
            return f"{OVER_QUOTA}: {why}"
    return ""


def take(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload, nodes: Iterable[str]) -> None:
    """Count replicas of ``workload`` on ``nodes`` as used (after ``placement_problem`` said yes)."""
    give(snapshot, usage, workload, nodes, sign=1)


def give(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload, nodes: Iterable[str],
         sign: int = -1) -> None:
    """Count replicas of ``workload`` on ``nodes`` as released (``sign=1``: as used)."""
    if not _limited(snapshot, workload):
        return
    for t, milli in _per_type(snapshot, workload, nodes).items():
        usage.add(workload.queue, t, sign * milli)


def admit(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload,
          cache: dict[object, tuple[set[str], list[str]]] | None = None) -> tuple[Workload | None, str]:
    """What a policy is offered of ``workload`` before it decides: ``(None, why)`` when its
    queue cannot admit its smallest gang on any type it allows (a necessary condition only:
    the plan's actual placement is checked again by :func:`placement_problem`); else the
    workload allowed only the types its queue admits it on now (itself when quota rules out
    none), so a policy never spends a plan on a type the engine would refuse, and never
    keeps proposing it.  Where its queue's **own** remaining quota takes the gang on some
    types, only those: a queue uses its own quota before it borrows (borrowed room is what
    reclaim takes back), when there is room for the gang on those types now (else borrowing
    beats waiting).  ``cache``: answers kept across calls with the same ``usage`` (the
    answer depends only on the queue, the smallest gang, its demand and allowed types)."""
    key = (workload.queue, workload.gang_min, workload.demand.accelerator_milli,
           frozenset(o.accelerator_type for o in workload.options))
    known = cache.get(key) if cache is not None else None
    if known is None:
        known = _types(snapshot, usage, workload)
        if cache is not None:
            cache[key] = known
    types, reasons = known
    if reasons and not types:
        return None, f"{OVER_QUOTA}: " + "; ".join(dict.fromkeys(reasons))
    if not reasons or not types:
        return workload, ""
    if workload.options:
        options = tuple(o for o in workload.options if o.accelerator_type in types)
    else:
        options = tuple(AcceleratorOption(t) for t in sorted(types))
    return replace(workload, options=options), ""


def _types(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload) -> tuple[set[str], list[str]]:
    """:func:`_by_type`, narrowed to the queue's own quota where that takes the gang now."""
    types, reasons = _by_type(snapshot, usage, workload)
    tree = snapshot.quotas
    if tree is not None and types:
        need = max(1, workload.gang_min) * workload.demand.accelerator_milli
        own = {t for t in types if tree.used(usage, workload.queue, t) + need <= tree.quota(workload.queue, t)
               and _room(snapshot, t) >= need}
        if own and own != types:
            types, reasons = own, [*reasons, "borrowing"]
    return types, reasons


def _room(snapshot: ClusterSnapshot, accelerator_type: str) -> int:
    """Free milli-accelerators on the usable nodes of a type (a bound, not a packing)."""
    return sum(sum(snapshot.free(n.name).devices_milli) for n in snapshot.nodes.values()
               if n.accelerator_type == accelerator_type and n.usable)


def _by_type(snapshot: ClusterSnapshot, usage: QuotaUsage, workload: Workload) -> tuple[set[str], list[str]]:
    """The types (with nodes) the queue admits ``workload``'s smallest gang on, and why not
    on the others."""
    tree = snapshot.quotas
    if tree is None or not workload.queue or not workload.demand.accelerator_milli:
        return set(), []
    gang = max(1, workload.gang_min)
    allowed = {o.accelerator_type for o in workload.options} or snapshot.accelerator_types()
    admitted: set[str] = set()
    reasons = []
    present = snapshot.accelerator_types()
    for t in sorted(allowed):
        if t not in present:
            continue  # no node of that type: capacity, not quota, says why
        why = gang_problem(snapshot, usage, workload, t, gang)
        if why:
            reasons.append(why.removeprefix(f"{OVER_QUOTA}: "))
        else:
            admitted.add(t)
    return admitted, reasons


def preemption_problem(snapshot: ClusterSnapshot, usage: QuotaUsage, victim: Allocation,
                       beneficiary: Workload | None) -> str:
    """Why evicting ``victim`` for ``beneficiary`` breaks the queues' guarantees ("" if not).

    Allowed: no queues; a victim outside every queue; a victim in the beneficiary's own
    queue; a victim whose queue uses more than its quota of a type it holds (borrowed
    capacity is reclaimed) when the beneficiary's queue is in the same tree.
    """
    tree = snapshot.quotas
    if tree is None or beneficiary is None or not victim.workload.queue:
        return ""
    mine, theirs = beneficiary.queue, victim.workload.queue
    rules = tree.queues.get(mine)
    if mine == theirs:
        if rules is not None and not rules.may_preempt(True, beneficiary.priority, victim.workload.priority):
            return (f"queue {mine} preempts within itself {'never' if rules.within_queue == 'Never' else 'only lower priority'}"
                    f" (spec.preemption.withinQueue {rules.within_queue})")
        return ""
    if rules is not None and theirs in tree.queues and tree.root(mine) == tree.root(theirs):
        if not rules.may_preempt(False, beneficiary.priority, victim.workload.priority):
            return (f"queue {mine} reclaims {'nothing' if rules.reclaim_within_tree == 'Never' else 'only from lower priority'}"
                    f" (spec.preemption.reclaimWithinTree {rules.reclaim_within_tree})")
        for t in _per_type(snapshot, victim.workload, _nodes(victim)):
            if tree.borrowed(usage, theirs, t) > 0:
                return ""
    return (f"{victim.workload.key} runs within queue {theirs}'s quota; a workload of queue {mine or '(none)'} "
            "may only reclaim what that queue borrows")


def relative_speed(workload: Workload, accelerator_type: str) -> float:
    """``workload``'s throughput on a type over its fastest allowed type's (1 when unknown)."""
    best = max((o.throughput for o in workload.options if o.throughput > 0), default=0.0)
    here = workload.throughput_on(accelerator_type)
    return here / best if best > 0 and here > 0 else 1.0


def normalised_use(snapshot: ClusterSnapshot, exclude: Iterable[str] = ()) -> dict[str, int]:
    """Leaf queue -> milli-accelerators in use, each weighted by its workload's speed there
    relative to its fastest type (Gavel's normalised throughput: an hour of K80 is worth
    0.15 of a V100-hour to a ResNet, a whole one to a job as fast on both); ``exclude``:
    allocations left out (by key)."""
    tree = snapshot.quotas
    out: dict[str, int] = {}
    if tree is None:
        return out
    skip = set(exclude)
    for allocation in snapshot.allocations.values():
        w = allocation.workload
        if allocation.key in skip:
            continue
        if w.queue not in tree.queues:
            continue
        for replica in allocation.replicas:
            node = snapshot.nodes.get(replica.node)
            if node is not None and node.accelerator_type:
                out[w.queue] = out.get(w.queue, 0) + round(
                    w.demand.accelerator_milli * relative_speed(w, node.accelerator_type))
    return out


def fair_share(tree: QuotaTree, use: Mapping[str, int], name: str) -> float:
    """A queue's share: its (and its descendants') normalised use over its weight x its
    quota of all types; 1 = it uses its whole quota at full speed (0 without quota)."""
    quota = sum(tree.quota(name, t) for t in tree.accelerator_types)
    if quota <= 0:
        return 0.0
    subtree = [name]
    total = 0
    while subtree:
        node = subtree.pop()
        total += use.get(node, 0)
        subtree.extend(tree.children.get(node, ()))
    return total / (tree.queues[name].weight * quota)
