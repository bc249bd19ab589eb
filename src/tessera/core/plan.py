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

from tessera.core import admission
from tessera.core.model import (
    Allocation,
    ReplicaDemand,
    RestartIntent,
    Spread,
    Workload,
)
from tessera.core.snapshot import CapacityError, CapacityLedger, ClusterSnapshot

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
    #: where the policy wants the workload to restart (a round moving it to another type);
    #: kept with the workload so the follow-up decision of any leader honours it
    restart_on: RestartIntent | None = None


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
    snapshot: ClusterSnapshot, pending: Sequence[Workload], plan: Plan,
    reserved: Sequence[admission.Reservation] = (),
) -> ValidatedPlan:
    """Check ``plan`` action by action against ``snapshot``.

    Actions are applied to a scratch ledger in a fixed order (preemptions, shrinking,
    migrations, placements, growing) so a later action may use room an earlier one
    freed.  Each action is a ``Statement`` on the ledger: it is committed whole or
    discarded exactly, so an invalid action is rejected whole and leaves the ledger
    untouched.

    Two kinds of action are compound across that order: a resize frees its removed
    replicas before the placements and adds its new ones after them, and a preemption
    made for a ``beneficiary`` frees room for that beneficiary's placement.  When the
    second half fails (the resize's add, or the beneficiary's placement), the first half
    cannot simply be put back: a migration or placement in between may already use its
    room.  So the whole attempt is discarded and the plan checked again from the start
    with the failed compound action refused from the outset (rejected with the reason it
    failed for); what was accepted then never counted on room that is not freed.  Each
    new attempt refuses at least one more action, so there are few attempts, and a plan
    whose compound actions all hold is checked once.

    With queues (``snapshot.quotas``) every action is also checked against the quotas
    (tessera.core.admission), with ``reserved`` room counted as used except by the
    workload that holds it (tessera.core.reclaim).
    """
    ledger = snapshot.ledger()
    refused: dict[tuple[str, int], str] = {}
    while True:
        with ledger.statement() as attempt:
            result, failed = _attempt(snapshot, pending, plan, ledger, refused, reserved)
            if not failed:
                attempt.commit()
                return result
        # the attempt is discarded: the ledger is the snapshot's again.  Only actions that
        # were not refused can fail, so every round refuses more and the loop ends.
        assert failed.keys().isdisjoint(refused)
        refused.update(failed)


def _attempt(
    snapshot: ClusterSnapshot,
    pending: Sequence[Workload],
    plan: Plan,
    ledger: CapacityLedger,
    refused: Mapping[tuple[str, int], str],
    reserved: Sequence[admission.Reservation] = (),
) -> tuple[ValidatedPlan, dict[tuple[str, int], str]]:
    """One pass of ``validate_plan`` with the actions in ``refused`` (("preemption" or
    "resize", index in the plan) -> reason) rejected up front.  Returns the result and
    the compound actions whose second half failed (empty when the result stands)."""
    pending_by_key = {w.key: w for w in pending}
    rejected: list[Rejection] = []
    accepted_pre: list[Preemption] = []
    accepted_res: list[Resize] = []
    accepted_mig: list[Migration] = []
    accepted_pl: list[Placement] = []
    failed: dict[tuple[str, int], str] = {}
    evicted: set[str] = set()
    # replicas per running workload after this plan: key -> {replica: (node, devices)},
    # built on first use: a plan touches few of the running workloads (simulator hot path)
    live = _LiveReplicas(snapshot.allocations)
    # accelerators in use per queue and type after this plan (only with queues)
    usage = admission.reserved_usage(snapshot, reserved) if snapshot.quotas is not None else None
    holds = {r.workload: r for r in reserved}

    # preemption index -> its beneficiary, for the ones whose beneficiary has a placement here
    enabling: dict[int, str] = {}
    beneficiaries = {pl.workload for pl in plan.placements}
    for index, pre in enumerate(plan.preemptions):
        allocation = snapshot.allocations.get(pre.workload)
        reason = refused.get(("preemption", index), "")
        if not reason:
            reason = _check_preemption(snapshot, pre, allocation, evicted)
        if not reason and pre.beneficiary in pending_by_key and not pending_by_key[pre.beneficiary].preempts:
            reason = f"{pre.beneficiary} never preempts (its PriorityClass has preemptionPolicy: Never)"
        if not reason and usage is not None and allocation is not None and not pre.after_failure:
            running = snapshot.allocations.get(pre.beneficiary)
            for_whom = pending_by_key.get(pre.beneficiary) or (running.workload if running else None)
            reason = admission.preemption_problem(snapshot, usage, allocation, for_whom)
        if reason:
            rejected.append(Rejection(pre, reason))
            continue
        assert allocation is not None
        with ledger.statement() as statement:
            for rp in allocation.replicas:
                statement.give_back(rp.node, allocation.workload.demand, rp.devices)
            statement.commit()
        if usage is not None:
            admission.give(snapshot, usage, allocation.workload, [rp.node for rp in allocation.replicas])
        evicted.add(pre.workload)
        live.pop(pre.workload, None)
        accepted_pre.append(pre)
        if pre.beneficiary in beneficiaries:
            enabling[index] = pre.beneficiary

    # resizes whose removals are freed now; their adds come after the placements
    resize_adds: list[tuple[int, Resize]] = []
    for index, rs in enumerate(plan.resizes):
        if ("resize", index) in refused:
            continue  # rejected where its add would have been checked, as in the first attempt
        allocation = snapshot.allocations.get(rs.workload)
        reason = _check_resize(rs, allocation, evicted, live)
        if reason:
            rejected.append(Rejection(rs, reason))
            continue
        assert allocation is not None
        with ledger.statement() as statement:
            for idx in rs.remove:
                node, devices = live[rs.workload].pop(idx)
                statement.give_back(node, allocation.workload.demand, devices)
                if usage is not None:
                    admission.give(snapshot, usage, allocation.workload, [node])
            statement.commit()
        resize_adds.append((index, rs))

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
        if not reason and usage is not None:
            # the target's type counts before the source's is released (make before break)
            reason = admission.placement_problem(snapshot, usage, workload, [mig.to.node])
        if not reason:
            with ledger.statement() as statement:
                try:  # make before break: the target must fit before the source is released
                    devices = statement.take(mig.to.node, workload.demand, mig.to.devices)
                except CapacityError as err:
                    reason = str(err)
                else:
                    statement.give_back(src_node, workload.demand, src_devices)
                    statement.commit()
        if reason:
            rejected.append(Rejection(mig, reason))
            continue
        if usage is not None:
            admission.take(snapshot, usage, workload, [mig.to.node])
            admission.give(snapshot, usage, workload, [src_node])
        live[mig.workload][mig.replica] = (mig.to.node, devices)
        moved.add((mig.workload, mig.replica))
        accepted_mig.append(mig)

    placed: set[str] = set()
    # beneficiary -> why its (first) placement was rejected
    not_placed: dict[str, str] = {}
    for pl in plan.placements:
        reason = _check_placement(snapshot, pending_by_key, pl, placed)
        if not reason:
            workload = pending_by_key[pl.workload]
            reason = _check_replicas(snapshot, workload, [a.node for a in pl.replicas])
            hold = holds.pop(pl.workload, None) if usage is not None else None
            if usage is not None:
                if hold is not None:  # its own reservation is room for it
                    usage.add(hold.queue, hold.accelerator_type, -hold.milli)
                reason = reason or admission.placement_problem(snapshot, usage, workload, [a.node for a in pl.replicas])
            reason = reason or _take_all(ledger, workload.demand, pl.replicas)
            if not reason and usage is not None:
                admission.take(snapshot, usage, workload, [a.node for a in pl.replicas])
            elif hold is not None and usage is not None:
                usage.add(hold.queue, hold.accelerator_type, hold.milli)
                holds[pl.workload] = hold
        if reason:
            not_placed.setdefault(pl.workload, reason)
            rejected.append(Rejection(pl, reason))
            continue
        placed.add(pl.workload)
        accepted_pl.append(pl)

    for index, beneficiary in enabling.items():
        if beneficiary not in placed:
            failed[("preemption", index)] = (
                f"preempted for {beneficiary}, whose placement was rejected: {not_placed[beneficiary]}"
            )

    refused_adds = {i: r for (kind, i), r in refused.items() if kind == "resize"}
    for index, rs in _in_plan_order(resize_adds, refused_adds, plan.resizes):
        if index in refused_adds:
            rejected.append(Rejection(rs, refused_adds[index]))
            continue
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
        if usage is not None:
            reason = reason or admission.placement_problem(snapshot, usage, workload, [a.node for a in rs.add])
        reason = reason or _take_all(ledger, workload.demand, rs.add)
        if not reason and usage is not None:
            admission.take(snapshot, usage, workload, [a.node for a in rs.add])
        if reason:
            if rs.remove:
                # its removals were freed for the actions before this one: not undoable
                # here, so the attempt is redone with this resize refused (see validate_plan)
                failed[("resize", index)] = reason
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
    return ValidatedPlan(accepted, tuple(rejected), ledger), failed


def _in_plan_order(
    checked: Sequence[tuple[int, Resize]], refused: Mapping[int, str], resizes: Sequence[Resize]
) -> list[tuple[int, Resize]]:
    """The resizes that reach the growing step: those that passed the shrinking checks
    and those refused up front, in the order of the plan."""
    return sorted([*checked, *((i, resizes[i]) for i in refused)], key=lambda item: item[0])


def _check_preemption(
    snapshot: ClusterSnapshot, pre: Preemption, allocation: Allocation | None, evicted: set[str]
) -> str:
    if allocation is None:
        return f"{pre.workload} is not running"
    if pre.workload in evicted:
        return f"{pre.workload} is preempted twice"
    if pre.after_failure:
        if not lost_replicas(snapshot, allocation):
            return f"{pre.workload} lost no replica; nothing to release after failure"
    elif not allocation.workload.preemptible:
        return f"{pre.workload} is not preemptible"
    return ""


def _check_placement(
    snapshot: ClusterSnapshot, pending_by_key: Mapping[str, Workload], pl: Placement, placed: set[str]
) -> str:
    workload = pending_by_key.get(pl.workload)
    if workload is None:
        return f"{pl.workload} is not pending"
    if pl.workload in placed or pl.workload in snapshot.allocations:
        return f"{pl.workload} is already placed"
    n = len(pl.replicas)
    if not workload.gang_min <= n <= workload.max_replicas:
        return f"{pl.workload}: gang of {n} replicas is outside [{workload.gang_min}, {workload.max_replicas}]"
    return ""


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


def _check_resize(
    rs: Resize, allocation: Allocation | None, evicted: set[str], live: _LiveReplicas
) -> str:
    if allocation is None or rs.workload in evicted:
        return f"{rs.workload} is not running"
    # the replicas still there: an earlier resize of this plan may have removed some
    indices = set(live[rs.workload])
    if len(set(rs.remove)) != len(rs.remove) or not set(rs.remove) <= indices:
        return f"{rs.workload}: resize removes unknown replicas {sorted(set(rs.remove) - indices)}"
    return ""


def _take_all(
    ledger: CapacityLedger, demand: ReplicaDemand, replicas: Sequence[ReplicaAssignment]
) -> str:
    """Reserve every replica or none (gang all-or-nothing, one statement on the ledger)."""
    with ledger.statement() as statement:
        for assignment in replicas:
            try:
                statement.take(assignment.node, demand, assignment.devices)
            except CapacityError as err:
                return str(err)  # the statement is discarded on exit
        statement.commit()
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
