"""Plans (what a policy wants done) and their validation against a snapshot.

A policy proposes; the engine validates every action before anything is applied, so a
buggy or learned policy cannot over-commit a node, start part of a gang, or put a
replica on an accelerator type the workload does not allow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from tessera.core.model import (
    Allocation,
    CapacityError,
    CapacityLedger,
    ClusterSnapshot,
    ReplicaDemand,
    Spread,
    Workload,
)

_NO_REASONS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ReplicaAssignment:
    """Put one replica on ``node`` (optionally on given device indices)."""

    node: str
    devices: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Placement:
    """Start a pending workload: all its replicas at once (a gang), or none."""

    workload: str
    replicas: tuple[ReplicaAssignment, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Preemption:
    """Evict a running workload entirely (never part of a gang)."""

    workload: str
    reason: str
    #: the workload the room is made for, if any
    beneficiary: str = ""
    #: release (and requeue) a workload that already lost replicas to failed, deleted or
    #: cordoned nodes and cannot go on with the survivors.  Not a choice to evict, so it
    #: applies to non-preemptible workloads too; valid only if a replica really was lost.
    after_failure: bool = False


@dataclass(frozen=True, slots=True)
class Resize:
    """Shrink or grow a running elastic workload: drop some replicas, add others."""

    workload: str
    remove: tuple[int, ...] = ()
    add: tuple[ReplicaAssignment, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Migration:
    """Move one running replica, make-before-break: the target is reserved first."""

    workload: str
    replica: int
    to: ReplicaAssignment
    reason: str = ""
    estimated_cost_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one policy decision asks for. Empty by default."""

    placements: tuple[Placement, ...] = ()
    preemptions: tuple[Preemption, ...] = ()
    resizes: tuple[Resize, ...] = ()
    migrations: tuple[Migration, ...] = ()
    #: pending workloads left waiting, with a reason a user can act on
    unplaced: Mapping[str, str] = field(default_factory=lambda: _NO_REASONS)

    @property
    def empty(self) -> bool:
        return not (self.placements or self.preemptions or self.resizes or self.migrations)


Action = Placement | Preemption | Resize | Migration


@dataclass(frozen=True, slots=True)
class Rejection:
    action: Action
    reason: str


@dataclass(frozen=True, slots=True)
class ValidatedPlan:
    """The part of a plan that is safe to apply, and what was refused and why."""

    accepted: Plan
    rejected: tuple[Rejection, ...]
    #: free capacity once the accepted actions are applied
    ledger: CapacityLedger = field(compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return not self.rejected


def validate_plan(
    snapshot: ClusterSnapshot, pending: Sequence[Workload], plan: Plan
) -> ValidatedPlan:
    """Check ``plan`` action by action against ``snapshot``.

    Actions are applied to a scratch ledger in a fixed order (preemptions, shrinking,
    migrations, placements, growing) so a later action may use room an earlier one
    freed.  An invalid action is rejected whole and leaves the ledger untouched.
    """
    ledger = snapshot.ledger()
    pending_by_key = {w.key: w for w in pending}
    rejected: list[Rejection] = []
    accepted_pre: list[Preemption] = []
    accepted_res: list[Resize] = []
    accepted_mig: list[Migration] = []
    accepted_pl: list[Placement] = []
    evicted: set[str] = set()
    # replicas per running workload after this plan: key -> {replica: (node, devices)},
    # built on first use: a plan touches few of the running workloads (simulator hot path)
    live = _LiveReplicas(snapshot.allocations)

    for pre in plan.preemptions:
        allocation = snapshot.allocations.get(pre.workload)
        if allocation is None:
            rejected.append(Rejection(pre, f"{pre.workload} is not running"))
            continue
        if pre.workload in evicted:
            rejected.append(Rejection(pre, f"{pre.workload} is preempted twice"))
            continue
        if pre.after_failure:
            if not lost_replicas(snapshot, allocation):
                rejected.append(Rejection(pre, f"{pre.workload} lost no replica; nothing to release after failure"))
                continue
        elif not allocation.workload.preemptible:
            rejected.append(Rejection(pre, f"{pre.workload} is not preemptible"))
            continue
        for rp in allocation.replicas:
            ledger.give_back(rp.node, allocation.workload.demand, rp.devices)
        evicted.add(pre.workload)
        live.pop(pre.workload, None)
        accepted_pre.append(pre)

    resize_adds: list[Resize] = []
    for rs in plan.resizes:
        allocation = snapshot.allocations.get(rs.workload)
        reason = _check_resize(rs, allocation, evicted)
        if reason:
            rejected.append(Rejection(rs, reason))
            continue
        assert allocation is not None
        for idx in rs.remove:
            node, devices = live[rs.workload].pop(idx)
            ledger.give_back(node, allocation.workload.demand, devices)
        resize_adds.append(rs)

    moved: set[tuple[str, int]] = set()
    for mig in plan.migrations:
        allocation = snapshot.allocations.get(mig.workload)
        if allocation is None or mig.workload in evicted:
            rejected.append(Rejection(mig, f"{mig.workload} is not running"))
            continue
        if mig.replica not in live[mig.workload] or (mig.workload, mig.replica) in moved:
            rejected.append(Rejection(mig, f"{mig.workload} has no replica {mig.replica} to move"))
            continue
        workload = allocation.workload
        src_node, src_devices = live[mig.workload][mig.replica]
        others = [n for i, (n, _) in live[mig.workload].items() if i != mig.replica]
        reason = _check_node(snapshot, workload, mig.to.node) or _check_spread(
            snapshot, workload, [*others, mig.to.node]
        )
        if not reason and not workload.allow_mixed_types:
            types = {snapshot.nodes[n].accelerator_type for n in others if n in snapshot.nodes}
            if types and snapshot.nodes[mig.to.node].accelerator_type not in types:
                reason = f"{workload.key} may not mix accelerator types"
        if not reason:
            try:  # make before break: the target must fit before the source is released
                devices = ledger.take(mig.to.node, workload.demand, mig.to.devices)
            except CapacityError as err:
                reason = str(err)
        if reason:
            rejected.append(Rejection(mig, reason))
            continue
        ledger.give_back(src_node, workload.demand, src_devices)
        live[mig.workload][mig.replica] = (mig.to.node, devices)
        moved.add((mig.workload, mig.replica))
        accepted_mig.append(mig)

    placed: set[str] = set()
    for pl in plan.placements:
        candidate = pending_by_key.get(pl.workload)
        if candidate is None:
            rejected.append(Rejection(pl, f"{pl.workload} is not pending"))
            continue
        workload = candidate
        if pl.workload in placed or pl.workload in snapshot.allocations:
            rejected.append(Rejection(pl, f"{pl.workload} is already placed"))
            continue
        n = len(pl.replicas)
        if not workload.gang_min <= n <= workload.max_replicas:
            rejected.append(
                Rejection(
                    pl,
                    f"{pl.workload}: gang of {n} replicas is outside "
                    f"[{workload.gang_min}, {workload.max_replicas}]",
                )
            )
            continue
        reason = _check_replicas(snapshot, workload, [a.node for a in pl.replicas])
        if not reason:
            reason = _take_all(ledger, workload.demand, pl.replicas)
        if reason:
            rejected.append(Rejection(pl, reason))
            continue
        placed.add(pl.workload)
        accepted_pl.append(pl)

    for rs in resize_adds:
        allocation = snapshot.allocations[rs.workload]
        workload = allocation.workload
        kept = [node for node, _ in live[rs.workload].values()]
        total = len(kept) + len(rs.add)
        reason = ""
        if not workload.gang_min <= total <= workload.max_replicas:
            reason = f"{rs.workload}: resize to {total} replicas is outside [{workload.gang_min}, {workload.max_replicas}]"
        reason = reason or _check_replicas(
            snapshot, workload, [a.node for a in rs.add], existing=kept
        )
        reason = reason or _take_all(ledger, workload.demand, rs.add)
        if reason:
            # undo the removals of this resize: it is rejected whole
            for idx in rs.remove:
                rp = next(r for r in allocation.replicas if r.replica == idx)
                ledger.hold(rp.node, workload.demand, rp.devices)  # issue #13: may over-commit
            rejected.append(Rejection(rs, reason))
            continue
        accepted_res.append(rs)

    accepted = Plan(
        placements=tuple(accepted_pl),
        preemptions=tuple(accepted_pre),
        resizes=tuple(accepted_res),
        migrations=tuple(accepted_mig),
        unplaced=plan.unplaced,
    )
    return ValidatedPlan(accepted, tuple(rejected), ledger)


def lost_replicas(snapshot: ClusterSnapshot, allocation: Allocation) -> tuple[int, ...]:
    """Replicas of ``allocation`` on nodes that are gone, not ready, cordoned or tainted."""
    out = []
    for rp in allocation.replicas:
        node = snapshot.nodes.get(rp.node)
        if node is None or not node.usable:
            out.append(rp.replica)
    return tuple(out)


class _LiveReplicas(dict[str, dict[int, tuple[str, tuple[int, ...]]]]):
    """Replicas of running workloads as the plan is applied, materialised per workload on first access."""

    def __init__(self, allocations: Mapping[str, Allocation]) -> None:
        super().__init__()
        self._allocations = allocations

    def __missing__(self, key: str) -> dict[int, tuple[str, tuple[int, ...]]]:
        value = {rp.replica: (rp.node, rp.devices) for rp in self._allocations[key].replicas}
        self[key] = value
        return value


def _check_resize(rs: Resize, allocation: Allocation | None, evicted: set[str]) -> str:
    if allocation is None or rs.workload in evicted:
        return f"{rs.workload} is not running"
    indices = {rp.replica for rp in allocation.replicas}
    if len(set(rs.remove)) != len(rs.remove) or not set(rs.remove) <= indices:
        return f"{rs.workload}: resize removes unknown replicas {sorted(set(rs.remove) - indices)}"
    return ""


def _take_all(
    ledger: CapacityLedger, demand: ReplicaDemand, replicas: Sequence[ReplicaAssignment]
) -> str:
    """Reserve every replica or none (gang all-or-nothing on the ledger)."""
    taken: list[tuple[str, tuple[int, ...]]] = []
    for assignment in replicas:
        try:
            taken.append((assignment.node, ledger.take(assignment.node, demand, assignment.devices)))
        except CapacityError as err:
            for node, devices in taken:
                ledger.give_back(node, demand, devices)
            return str(err)
    return ""


def _check_node(snapshot: ClusterSnapshot, workload: Workload, node_name: str) -> str:
    node = snapshot.nodes.get(node_name)
    if node is None:
        return f"node {node_name} does not exist"
    if not node.usable:
        return f"node {node_name} is not ready or not schedulable"
    if not workload.allows(node.accelerator_type):
        return (
            f"{workload.key} may not run on {node.accelerator_type or 'a node without accelerators'}"
            f" (allowed: {', '.join(workload.allowed_types) or 'any'})"
        )
    return ""


def _check_spread(snapshot: ClusterSnapshot, workload: Workload, nodes: Sequence[str]) -> str:
    if workload.spread is Spread.NODE:
        dup = [n for n, c in Counter(nodes).items() if c > 1]
        if dup:
            return f"{workload.key} must spread across nodes; {dup[0]} has two replicas"
    elif workload.spread is Spread.ZONE:
        zones = Counter(snapshot.nodes[n].topology.zone for n in nodes if n in snapshot.nodes)
        dup = [z for z, c in zones.items() if c > 1]
        if dup:
            return f"{workload.key} must spread across zones; zone {dup[0]!r} has two replicas"
    return ""


def _check_replicas(
    snapshot: ClusterSnapshot,
    workload: Workload,
    nodes: Sequence[str],
    existing: Sequence[str] = (),
) -> str:
    for node_name in nodes:
        reason = _check_node(snapshot, workload, node_name)
        if reason:
            return reason
    if not workload.allow_mixed_types:
        types = {snapshot.nodes[n].accelerator_type for n in [*existing, *nodes] if n in snapshot.nodes}
        if len(types) > 1:
            return f"{workload.key} may not mix accelerator types (got {', '.join(sorted(map(str, types)))})"
    return _check_spread(snapshot, workload, [*existing, *nodes])


def explain_unfit(ledger: CapacityLedger, workload: Workload) -> str:
    """Why ``workload`` cannot start now, in words a user can act on.

    Counts how many replicas would fit on each allowed accelerator type, e.g.
    ``"needs 4 x H100 replicas (8 accelerators each), 2 fit"``.
    """
    demand = workload.demand
    present = {n.accelerator_type for n in ledger.nodes.values()}
    allowed = list(workload.allowed_types) or sorted(t for t in present if t)
    if not demand.needs_accelerator:
        allowed = ["(cpu)"]
    missing = [t for t in allowed if t not in present and t != "(cpu)"]
    if demand.needs_accelerator and len(missing) == len(allowed):
        return (
            f"no node has an allowed accelerator type ({', '.join(allowed) or 'any'}); "
            f"cluster has: {', '.join(sorted(t for t in present if t)) or 'no accelerators'}"
        )
    parts = []
    for accelerator_type in allowed:
        if accelerator_type in missing:
            continue
        fit = 0
        for name, node in ledger.nodes.items():
            if not node.usable:
                continue
            if accelerator_type != "(cpu)" and node.accelerator_type != accelerator_type:
                continue
            fit += _replicas_fitting(ledger, name, demand, workload.spread is Spread.NODE)
        parts.append(f"{fit} fit on {accelerator_type}")
    per = f" ({demand.accelerators} accelerators each)" if demand.accelerators > 1 else ""
    mixed = " of one type" if len(allowed) > 1 and not workload.allow_mixed_types else ""
    return f"needs {workload.gang_min} replicas{mixed}{per}; " + ", ".join(parts)


def _replicas_fitting(ledger: CapacityLedger, node: str, demand: ReplicaDemand, one_per_node: bool) -> int:
    n = ledger.free(node).replicas_fitting(demand)
    n = 1_000_000 if n is None else n
    return min(n, 1) if one_per_node else n
