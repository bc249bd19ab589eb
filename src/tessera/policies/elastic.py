"""Elastic resharding: shrink off failed nodes, release below the minimum, grow back.

:class:`ElasticWrapper` wraps any placement policy.  One ``decide`` call does, in order:

1. **Failures.**  For each running training workload, the replicas on nodes that are gone,
   not ready, cordoned or tainted (``Node.usable`` is False) are lost.  If the survivors
   (plus replacements on free capacity, up to the target) admit a sharding plan that keeps
   the global batch exactly and uses at least ``min_replicas`` replicas, the workload is
   resized onto them (one :class:`~tessera.core.Resize` that removes the lost replicas and
   any survivor the plan cannot use, and adds the replacements).  Otherwise it is released
   with ``Preemption(after_failure=True)`` so the actuator requeues it; its progress record
   (checkpoint) stays with the workload.  Failure handling ignores hysteresis: the lost
   replicas are gone either way.
2. **Placement.**  The inner policy decides for the pending workloads on a snapshot that
   already reflects step 1, so it cannot hand out capacity twice.  Its placements of jobs
   with a global batch are trimmed to the replicas an exact sharding plan uses (a
   placement policy only knows ``[min, max]`` and may pick, e.g., 5 replicas for a batch
   that splits over 4 or 6 only); a placement no plan fits is withdrawn with the reason.
3. **Growth.**  With what is still free, a running training workload below its target
   grows when (a) its replica set has been stable for ``hysteresis_seconds`` (read from
   ``Allocation.stable_since_seconds``, i.e. from cluster state, never from memory in this
   object), and (b) the estimated time saved exceeds the restart cost:
   ``remaining x (1 - T_old / T_new) > resize cost + min_gain_seconds`` (resize cost: the
   restart cost, or the in-memory reshard pause of a job that declares one) where
   ``T`` is :func:`~tessera.core.sharding.plan_throughput` of the old and new plans.
   Pending workloads are served first: growth only takes what the inner policy left.
   With ``grow_before_placement`` growth runs before step 2 instead, for running jobs
   whose priority is at least that of every pending workload (shorter JCT for the jobs
   already running, fewer jobs started at their minimum).

The wrapper is stateless: everything it needs (node health, replicas, last resize time,
remaining time) comes from the snapshot and the workloads, so a restarted operator or a
replayed simulation decides the same.

Why a wrapper and not a standalone policy: the engine runs one policy per cycle, and
resizing competes for the same free capacity as placement.  Wrapping lets any placement
policy (best-fit, CP-SAT, learned) become elastic and keeps the capacity accounting in
one decision.  The ``elastic`` entry point is :class:`ElasticBestFit` (this wrapper around
best-fit); ``ElasticWrapper(inner)`` composes with anything else.

Parameters (``PolicyContext.params``, overriding the constructor):
``elastic_hysteresis_seconds``, ``elastic_min_gain_seconds``,
``elastic_assumed_remaining_seconds``, ``elastic_grow_before_placement``.  Per workload (``Workload.attributes``):
``tessera.dev/remaining-seconds`` (estimated time left at the current size),
``tessera.dev/allow-uneven-split`` ("true" lets identical ranks differ by one micro-batch) and
``tessera.dev/reshard-cost-seconds`` (the job reshards *in memory*: survivors keep their
state and new replicas copy it from a peer, so a resize pauses it this long instead of
``restart_cost_seconds``; see :func:`resize_cost_seconds`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from tessera.core import (
    Allocation,
    CapacityLedger,
    ClusterSnapshot,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    ReplicaPlacement,
    Resize,
    Spread,
    Workload,
    WorkloadKind,
    lost_replicas,
)
from tessera.core.elastic import (
    ALLOW_UNEVEN_ATTRIBUTE,
    DP_STATE_ATTRIBUTE,
    REMAINING_SECONDS_ATTRIBUTE,
    RESHARD_COST_ATTRIBUTE,
    in_memory_reshard_seconds,
    resize_cost_seconds,
    sharding_for,
)
from tessera.core.sharding import ShardingPlan, plan_throughput
from tessera.policies.gang import best_fit_score
from tessera.policies.greedy import BestFit
from tessera.policy import Decision, Policy, PolicyContext
from tessera.policy.capabilities import BackedByArtifact, DecidesInRounds, ReportsDecisionStats, ResumesRounds

__all__ = [
    "ALLOW_UNEVEN_ATTRIBUTE",
    "DP_STATE_ATTRIBUTE",
    "REMAINING_SECONDS_ATTRIBUTE",
    "RESHARD_COST_ATTRIBUTE",
    "ElasticBestFit",
    "ElasticSettings",
    "ElasticWrapper",
    "ReplicaSetChoice",
    "in_memory_reshard_seconds",
    "replica_set_throughput",
    "resize_cost_seconds",
    "sharding_for",
]

@dataclass(frozen=True, slots=True)
class ElasticSettings:
    """Tunables of the elastic decisions (all times in seconds)."""

    #: minimum time between two resizes of one job that are not forced by a failure
    hysteresis_seconds: float = 300.0
    #: growth must save at least this much time beyond the restart cost
    min_gain_seconds: float = 0.0
    #: remaining run time assumed when a workload does not state it
    assumed_remaining_seconds: float = 3600.0
    #: running jobs below their target grow before pending work of no higher priority is
    #: placed (False: growth only takes what placement left)
    grow_before_placement: bool = False


@dataclass(frozen=True, slots=True)
class ReplicaSetChoice:
    """The replicas a workload should run on and the plan they follow."""

    keep: tuple[int, ...]
    add: tuple[ReplicaAssignment, ...]
    throughput: float
    plan: ShardingPlan | None


def replica_set_throughput(workload: Workload, replicas: Sequence[tuple[int, str | None]]) -> float:
    """Relative samples/s of ``workload`` on ``replicas`` (0.0 when no plan is feasible)."""
    if not replicas:
        return 0.0
    plan = sharding_for(workload, replicas)
    if isinstance(plan, str):
        return 0.0
    if plan is None:
        return sum(workload.throughput_on(t) for _, t in replicas)
    return plan_throughput(plan, {o.accelerator_type: o.throughput for o in workload.options})


class ElasticWrapper:
    """Makes a placement policy elastic: reshard on node failures, requeue below min, grow back."""

    name: ClassVar[str] = "elastic"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset(
        {Decision.PLACEMENT, Decision.ORDERING, Decision.RESIZING, Decision.PREEMPTION}
    )
    def __init__(self, inner: Policy | None = None, settings: ElasticSettings | None = None) -> None:
        self.inner: Policy = inner if inner is not None else BestFit()
        self.settings = settings or ElasticSettings()

    # -- capabilities (tessera.policy.capabilities): its own, and the inner policy's ------

    def growth_hysteresis_seconds(self, params: Mapping[str, Any]) -> float:
        """ReshardsOnFailure: the growth hysteresis after ``params``."""
        return float(params.get("elastic_hysteresis_seconds", self.settings.hysteresis_seconds))

    @property
    def round_seconds(self) -> float:
        """DecidesInRounds: the inner policy's round (0: no rounds)."""
        inner = self.inner
        return float(inner.round_seconds) if isinstance(inner, DecidesInRounds) else 0.0

    def next_round_seconds(self) -> float | None:
        inner = self.inner
        return inner.next_round_seconds() if isinstance(inner, DecidesInRounds) else None

    def resume_rounds(self, last_round_seconds: float) -> None:
        """ResumesRounds: the inner policy's round clock."""
        inner = self.inner
        if isinstance(inner, ResumesRounds):
            inner.resume_rounds(last_round_seconds)

    @property
    def last_stats(self) -> Mapping[str, Any]:
        """ReportsDecisionStats: the inner policy's statistics of its last decision."""
        inner = self.inner
        return inner.last_stats if isinstance(inner, ReportsDecisionStats) else {}

    @property
    def artifact(self) -> str:
        """BackedByArtifact: the inner policy's trained artifact ("" without one)."""
        inner = self.inner
        return str(inner.artifact) if isinstance(inner, BackedByArtifact) else ""

    def _settings(self, ctx: PolicyContext) -> ElasticSettings:
        p = ctx.params
        s = self.settings
        return ElasticSettings(
            hysteresis_seconds=float(p.get("elastic_hysteresis_seconds", s.hysteresis_seconds)),
            min_gain_seconds=float(p.get("elastic_min_gain_seconds", s.min_gain_seconds)),
            assumed_remaining_seconds=float(
                p.get("elastic_assumed_remaining_seconds", s.assumed_remaining_seconds)
            ),
            grow_before_placement=_flag(p.get("elastic_grow_before_placement", s.grow_before_placement)),
        )

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        settings = self._settings(ctx)
        ledger = snapshot.ledger()
        releases: list[Preemption] = []
        resizes: list[Resize] = []
        after: dict[str, Allocation | None] = {}  # workload -> allocation after step 1 (None = released)

        # 1. failures, in a deterministic order (priority, then key)
        for allocation in sorted(snapshot.allocations.values(), key=lambda a: (-a.workload.priority, a.key)):
            lost = lost_replicas(snapshot, allocation)
            if not lost or allocation.workload.kind is not WorkloadKind.TRAINING:
                continue
            action, new_allocation = self._recover(snapshot, ledger, allocation, lost, ctx.now_seconds)
            if isinstance(action, Preemption):
                releases.append(action)
            else:
                resizes.append(action)
            after[allocation.key] = new_allocation

        # 1b. growth first (grow_before_placement): a job below its target takes free capacity
        # back before pending work of no higher priority starts on it
        if settings.grow_before_placement:
            top_pending = max((w.priority for w in pending), default=None)
            for allocation in sorted(snapshot.allocations.values(), key=lambda a: (-a.workload.priority, a.key)):
                if allocation.key in after or (top_pending is not None and allocation.workload.priority < top_pending):
                    continue
                grow = self._grow(snapshot, ledger, allocation, ctx.now_seconds, settings)
                if grow is not None:
                    resizes.append(grow)
                    after[allocation.key] = _applied(allocation, snapshot, grow.remove, grow.add, ctx.now_seconds)

        # 2. placement by the inner policy on the state after steps 1 and 1b
        shadow = snapshot
        if after:
            kept = [after.get(a.key, a) for a in snapshot.allocations.values()]
            shadow = snapshot.with_changes(allocations=[a for a in kept if a is not None])
        inner_plan = self._feasible_placements(shadow, pending, self.inner.decide(shadow, pending, ctx))
        touched = set(after)
        inner_touched = (
            {p.workload for p in inner_plan.preemptions}
            | {r.workload for r in inner_plan.resizes}
            | {m.workload for m in inner_plan.migrations}
        )
        # free capacity once the failures and the inner plan are carried out
        ledger = shadow.ledger()
        demands = {w.key: w.demand for w in pending}
        for placement in inner_plan.placements:
            if placement.workload in demands:
                for assignment in placement.replicas:
                    ledger.hold(assignment.node, demands[placement.workload], assignment.devices)
        for pre in inner_plan.preemptions:
            evicted = shadow.allocations.get(pre.workload)
            if evicted is not None and pre.workload not in touched:
                for rp in evicted.replicas:
                    ledger.give_back(rp.node, evicted.workload.demand, rp.devices)

        # 3. growth with what is left
        for allocation in sorted(shadow.allocations.values(), key=lambda a: (-a.workload.priority, a.key)):
            if allocation.key in touched or allocation.key in inner_touched:
                continue
            grow = self._grow(snapshot, ledger, allocation, ctx.now_seconds, settings)
            if grow is not None:
                resizes.append(grow)

        return Plan(
            placements=inner_plan.placements,
            preemptions=(*[p for p in inner_plan.preemptions if p.workload not in touched], *releases),
            resizes=(*[r for r in inner_plan.resizes if r.workload not in touched], *resizes),
            migrations=tuple(m for m in inner_plan.migrations if m.workload not in touched),
            unplaced=inner_plan.unplaced,
        )

    # -- step 2 -----------------------------------------------------------------------
    @staticmethod
    def _feasible_placements(snapshot: ClusterSnapshot, pending: Sequence[Workload], plan: Plan) -> Plan:
        """Trim the inner policy's placements of sharded jobs to a replica count that keeps the batch exact.

        A placement policy only knows ``[min, max]``: it may start a job on, say, 5 replicas
        when the global batch splits over 4 or 6 only.  Such a job cannot run on all 5, so
        the replicas the sharding plan does not use are dropped (their capacity stays free
        for growth and later cycles); a placement no plan fits is withdrawn with the reason.
        """
        workloads = {w.key: w for w in pending}
        placements: list[Placement] = []
        unplaced = dict(plan.unplaced)
        changed = False
        for placement in plan.placements:
            workload = workloads.get(placement.workload)
            if workload is None or workload.kind is not WorkloadKind.TRAINING:
                placements.append(placement)
                continue
            replicas = [(i, snapshot.nodes[a.node].accelerator_type) for i, a in enumerate(placement.replicas)]
            sharding = sharding_for(workload, replicas)
            if sharding is None or (not isinstance(sharding, str) and len(sharding.replicas_used) == len(replicas)):
                placements.append(placement)  # no batch to keep, or every replica takes part
                continue
            changed = True
            if isinstance(sharding, str):
                unplaced[workload.key] = f"no sharding plan on the {len(replicas)} replica(s) free: {sharding}"
                continue
            used = set(sharding.replicas_used)
            kept = tuple(a for i, a in enumerate(placement.replicas) if i in used)
            placements.append(
                replace(
                    placement,
                    replicas=kept,
                    reason=f"{placement.reason}; {len(kept)} of {len(replicas)} replicas keep the global batch exact",
                )
            )
        if not changed:
            return plan
        return replace(plan, placements=tuple(placements), unplaced=unplaced)

    # -- step 1 -----------------------------------------------------------------------
    def _recover(
        self,
        snapshot: ClusterSnapshot,
        ledger: CapacityLedger,
        allocation: Allocation,
        lost: tuple[int, ...],
        now_seconds: float,
    ) -> tuple[Resize | Preemption, Allocation | None]:
        workload = allocation.workload
        survivors = [rp for rp in allocation.replicas if rp.replica not in lost]
        room = workload.target_replicas - len(survivors)
        choice = self._choose(snapshot, ledger, workload, survivors, room)
        n_lost = len(lost)
        if choice is None:
            for rp in survivors:
                ledger.give_back(rp.node, workload.demand, rp.devices)
            why = sharding_for(workload, [(rp.replica, rp.accelerator_type) for rp in survivors])
            detail = f": {why}" if isinstance(why, str) else ""
            reason = (
                f"lost {n_lost} replica(s) to failed nodes; {len(survivors)} survivor(s) cannot run "
                f"the job (min {workload.gang_min}){detail}; released and requeued"
            )
            return Preemption(workload.key, reason, after_failure=True), None
        removed = tuple(sorted({*lost, *(rp.replica for rp in survivors if rp.replica not in choice.keep)}))
        for rp in survivors:
            if rp.replica not in choice.keep:
                ledger.give_back(rp.node, workload.demand, rp.devices)
        for assignment in choice.add:
            ledger.take(assignment.node, workload.demand, assignment.devices)
        total = len(choice.keep) + len(choice.add)
        reason = (
            f"lost {n_lost} replica(s) to failed nodes; resharded {len(allocation.replicas)} -> {total} replicas"
            + (f" ({len(choice.add)} replacement(s))" if choice.add else "")
        )
        return Resize(workload.key, remove=removed, add=choice.add, reason=reason), _applied(
            allocation, snapshot, removed, choice.add, now_seconds
        )

    # -- step 3 -----------------------------------------------------------------------
    def _grow(
        self,
        snapshot: ClusterSnapshot,
        ledger: CapacityLedger,
        allocation: Allocation,
        now_seconds: float,
        settings: ElasticSettings,
    ) -> Resize | None:
        workload = allocation.workload
        if workload.kind is not WorkloadKind.TRAINING:
            return None
        room = workload.target_replicas - len(allocation.replicas)
        if room <= 0:
            return None
        if now_seconds - allocation.stable_since_seconds < settings.hysteresis_seconds:
            return None
        current = [(rp.replica, rp.accelerator_type) for rp in allocation.replicas]
        # 0.0 when the current set has no exact plan (placed by another policy): any plan gains
        old_rate = replica_set_throughput(workload, current)
        choice = self._choose(snapshot, ledger, workload, list(allocation.replicas), room)
        if choice is None or not choice.add or choice.throughput <= 0:
            return None
        remaining = float(
            workload.attributes.get(REMAINING_SECONDS_ATTRIBUTE, settings.assumed_remaining_seconds)
        )
        saved_seconds = remaining * (1.0 - old_rate / choice.throughput)
        cost_seconds = resize_cost_seconds(workload)
        if saved_seconds <= cost_seconds + settings.min_gain_seconds:
            return None
        for assignment in choice.add:
            ledger.take(assignment.node, workload.demand, assignment.devices)
        removed = tuple(rp.replica for rp in allocation.replicas if rp.replica not in choice.keep)
        total = len(choice.keep) + len(choice.add)
        return Resize(
            workload.key,
            remove=removed,
            add=choice.add,
            reason=(
                f"grow {len(allocation.replicas)} -> {total} replicas: saves ~{saved_seconds:.0f}s "
                f"> resize cost {cost_seconds:.0f}s"
            ),
        )

    # -- shared -----------------------------------------------------------------------
    def _choose(
        self,
        snapshot: ClusterSnapshot,
        ledger: CapacityLedger,
        workload: Workload,
        survivors: Sequence[ReplicaPlacement],
        room: int,
    ) -> ReplicaSetChoice | None:
        """Survivors plus up to ``room`` new replicas: the feasible set with the most throughput.

        Candidates are tentatively reserved on ``ledger`` and released again; the caller
        reserves the ones it keeps.  Survivors are listed first so the sharding plan keeps
        them in preference to new replicas (no needless restarts of running pods).
        """
        candidates = self._candidates(snapshot, ledger, workload, survivors, max(0, room))
        for assignment in candidates:
            ledger.give_back(assignment.node, workload.demand, assignment.devices)
        next_index = max((rp.replica for rp in survivors), default=-1) + 1
        # new replicas get fresh indices (the actuator assigns the real ones in the same order)
        replicas = [(rp.replica, rp.accelerator_type) for rp in survivors] + [
            (next_index + k, snapshot.nodes[a.node].accelerator_type) for k, a in enumerate(candidates)
        ]
        best: ReplicaSetChoice | None = None
        # try every count of new replicas: a smaller add may shard better (divisibility)
        for n_add in range(len(candidates), -1, -1):
            subset = replicas[: len(survivors) + n_add]
            if len(subset) < workload.gang_min:
                continue
            plan = sharding_for(workload, subset)
            if isinstance(plan, str):
                continue
            used = set(plan.replicas_used) if plan is not None else {i for i, _ in subset}
            if len(used) < workload.gang_min:
                continue
            keep = tuple(rp.replica for rp in survivors if rp.replica in used)
            add = tuple(a for k, a in enumerate(candidates[:n_add]) if next_index + k in used)
            rate = replica_set_throughput(workload, [r for r in subset if r[0] in used])
            if best is None or rate > best.throughput + 1e-9:
                best = ReplicaSetChoice(keep, add, rate, plan)
        return best

    @staticmethod
    def _candidates(
        snapshot: ClusterSnapshot,
        ledger: CapacityLedger,
        workload: Workload,
        survivors: Sequence[ReplicaPlacement],
        room: int,
    ) -> list[ReplicaAssignment]:
        """Up to ``room`` new replicas on free capacity (reserved on ``ledger``), best fit.

        Without mixing, new replicas use the survivors' accelerator type; with mixing (or
        no survivors) the fastest allowed type with room comes first.
        """
        survivor_types = {rp.accelerator_type for rp in survivors}
        used_nodes = {rp.node for rp in survivors}
        used_zones = {snapshot.nodes[rp.node].topology.zone for rp in survivors if rp.node in snapshot.nodes}
        out: list[ReplicaAssignment] = []
        while len(out) < room:
            best: tuple[float, float, str] | None = None
            for node in snapshot.nodes.values():
                if not node.usable or not workload.allows(node.accelerator_type):
                    continue
                if not workload.allow_mixed_types and survivor_types and node.accelerator_type not in survivor_types:
                    continue
                if workload.spread is Spread.NODE and node.name in used_nodes:
                    continue
                if workload.spread is Spread.ZONE and node.topology.zone in used_zones:
                    continue
                if not ledger.fits(node.name, workload.demand):
                    continue
                key = (-workload.throughput_on(node.accelerator_type), best_fit_score(ledger, node.name, workload), node.name)
                if best is None or key < best:
                    best = key
            if best is None:
                break
            name = best[2]
            devices = ledger.take(name, workload.demand)
            out.append(ReplicaAssignment(name, devices))
            used_nodes.add(name)
            used_zones.add(snapshot.nodes[name].topology.zone)
            if not workload.allow_mixed_types:
                survivor_types = {snapshot.nodes[name].accelerator_type}
        return out


def _flag(value: object) -> bool:
    """A boolean parameter given as a bool or a string ("true"/"false")."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _applied(
    allocation: Allocation,
    snapshot: ClusterSnapshot,
    removed: tuple[int, ...],
    added: tuple[ReplicaAssignment, ...],
    now_seconds: float,
) -> Allocation:
    """The allocation as it will be once a resize is carried out (for the inner policy's view)."""
    kept = [rp for rp in allocation.replicas if rp.replica not in removed]
    next_index = max((rp.replica for rp in allocation.replicas), default=-1) + 1
    new = [
        ReplicaPlacement(next_index + k, a.node, snapshot.nodes[a.node].accelerator_type, a.devices)
        for k, a in enumerate(added)
    ]
    return replace(allocation, replicas=(*kept, *new), resized_at_seconds=now_seconds)


class ElasticBestFit(ElasticWrapper):
    """Best-fit placement with elastic resharding: shrink on node failures, requeue below min, grow back."""

    name: ClassVar[str] = "elastic"
    version: ClassVar[str] = "1.0.0"

    def __init__(self) -> None:
        super().__init__(BestFit())


def with_failure_handling(inner: Policy) -> ElasticWrapper:
    """``inner`` wrapped by :class:`ElasticWrapper` under ``inner``'s own name and version
    (metrics, status and Events keep naming the placement policy), deciding resizes and
    failure releases besides what ``inner`` decides."""
    cls = type(
        f"{type(inner).__name__}WithFailureHandling",
        (ElasticWrapper,),
        {
            "name": inner.name,
            "version": inner.version,
            "decides": frozenset(inner.decides) | {Decision.RESIZING, Decision.PREEMPTION},
            "__doc__": f"{type(inner).__name__} with elastic failure handling (reshard, requeue, grow back).",
        },
    )
    wrapped: ElasticWrapper = cls(inner)
    return wrapped
