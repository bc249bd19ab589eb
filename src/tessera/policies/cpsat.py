"""The default decision-maker: a CP-SAT placement model with preemption and elastic shrink.

One decision:

1. nodes are aggregated into pools and the pool-level model
   (:class:`tessera.solver.PlacementModel`) chooses which gangs start, on which
   accelerator type and in which pools, maximising priority-weighted normalised throughput
   minus fragmentation and cross-domain charges; a pool-level best-fit plan
   (:func:`tessera.solver.greedy_units`) is the solution hint and the fallback;
2. the pool-level answer is packed onto nodes; the better of it and the greedy plan
   (scored with the same objective) is kept, so CP-SAT is never worse than its hint;
3. gangs still waiting that outrank running work get a victim-selection model each
   (:class:`tessera.solver.PreemptionModel`): lower-priority elastic jobs shrink toward
   their minimum first, whole lower-priority gangs are evicted only if still needed, at
   least lost work;
4. running work moves to faster types with free room when the gain beats the restart
   penalty (:class:`tessera.solver.MoveModel`): a single replica by migration, a gang by
   stopping it so that it restarts there in the follow-up decision;
5. every gang left waiting gets a reason naming the constraint that binds.

Solver statistics of the last decision are in :attr:`CpSat.last_stats` (a plain dict the
engine copies into ``CycleResult.stats``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from tessera.core import (
    Allocation,
    CapacityLedger,
    ClusterSnapshot,
    Migration,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    Resize,
    Workload,
    WorkloadKind,
)
from tessera.core.admission import quota_usage
from tessera.core.service import attained_service, per_accelerator
from tessera.policies.cpsat_fgd import BATCH_BUDGET_SECONDS, BatchState, FragmentationBatch, batch_target
from tessera.policies.cpsat_reasons import PoolView, explain_waiting
from tessera.policies.cpsat_rounds import RoundPlanner
from tessera.policies.cpsat_score import admitted_moves, quota_allows_move, quota_problem, score_placements
from tessera.policies.gang import queue_order
from tessera.policy import Decision, PolicyContext
from tessera.solver import (
    GangSpec,
    MoveModel,
    ObjectiveWeights,
    Packer,
    PlacementInstance,
    PlacementModel,
    PreemptionModel,
    QueueState,
    QuotaTerms,
    SolverLimits,
    VictimSpec,
    build_instance,
    build_pools,
    candidate_nodes,
    greedy_units,
    lost_work_seconds,
    move_candidates,
    restrict_candidates,
    units_from_placements,
    victims_on,
)
from tessera.solver.rounds import VALUE_SCALE


class CpSat:
    """CP-SAT placement: fastest accelerator type per gang, gang-aware, topology-aware, with preemption."""

    name: ClassVar[str] = "cpsat"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset(
        {Decision.PLACEMENT, Decision.ORDERING, Decision.PREEMPTION, Decision.RESIZING}
    )

    def __init__(
        self,
        *,
        monolithic: bool = False,
        weights: ObjectiveWeights | None = None,
        max_pools: int = 400,
        pools_per_group: int = 2,
        max_unit_vars: int = 4_000,
        num_workers: int = 2,
        use_hint: bool = True,
        preemption: bool = True,
        max_preemptors: int = 4,
        preemption_max_nodes: int = 64,
        checkpoint_interval_seconds: float = 1_800.0,
        placement_budget_share: float = 0.75,
        las_after_seconds: float | None = None,
        moves: bool = True,
        move_horizon_seconds: float = 3_600.0,
        max_moves: int = 16,
        round_seconds: float = 0.0,
        service_scale_seconds: float = 600.0,
        restart_horizon_seconds: float = 300.0,
        min_run_seconds: float = 0.0,
        round_resize_in_place: bool = False,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``monolithic``: one pool per node (exact, slow; for comparison).  ``max_pools``:
        above this many pools, domains are dropped from the pool key.  ``pools_per_group``:
        candidate pools per gang and accelerator type, applied only when the full model
        would have more than ``max_unit_vars`` (gang, pool) variables.  ``placement_budget_share``: part of
        the time budget for the placement model, the rest for preemption models.
        ``timer`` measures latency and the budget left (never used by a deterministic
        decision).  ``moves``: move running single-replica work to faster types with free
        room when the gain over ``move_horizon_seconds`` beats its restart cost (at most
        ``max_moves`` per decision).  ``las_after_seconds``: when set, a waiting gang may also
        preempt running work of its own priority that has run at least this long in one go
        and has attained that much more service per accelerator (least attained service
        first, as Gavel and Tiresias do); off by default.  ``round_seconds`` > 0: round mode
        (:mod:`tessera.policies.cpsat_rounds`): every round re-decides every running and
        waiting job's type with :class:`tessera.solver.RoundModel`, weighting jobs by least
        attained service (``service_scale_seconds``) and charging restarts over
        ``restart_horizon_seconds``, never moving a job that (re)started less than
        ``min_run_seconds`` ago; the simulator aligns its rounds to it.  Off (0) by
        default: decisions on arrivals and completions only.  ``round_resize_in_place``: a
        round that keeps an elastic job on its type at another size resizes it in place
        (``Resize``) instead of stopping and restarting it (off: the setting of the
        simulator results in docs/cpsat.md)."""
        self.monolithic = monolithic
        self.weights = weights or ObjectiveWeights()
        self.max_pools = max_pools
        self.pools_per_group = pools_per_group
        self.max_unit_vars = max_unit_vars
        self.num_workers = num_workers
        self.use_hint = use_hint
        self.preemption = preemption
        self.max_preemptors = max_preemptors
        self.preemption_max_nodes = preemption_max_nodes
        self.checkpoint_interval_seconds = checkpoint_interval_seconds
        self.placement_budget_share = placement_budget_share
        self.las_after_seconds = las_after_seconds
        self.moves = moves
        self.move_horizon_seconds = move_horizon_seconds
        self.max_moves = max_moves
        self._timer = timer
        #: the simulator calls a policy with ``round_seconds`` > 0 every round
        self.round_seconds = round_seconds
        self._rounds = RoundPlanner(
            round_seconds=round_seconds, service_scale_seconds=service_scale_seconds,
            restart_horizon_seconds=restart_horizon_seconds, min_run_seconds=min_run_seconds, limits=self._limits,
            resize_in_place=round_resize_in_place,
            # the round model values a job at VALUE_SCALE where the placement model says
            # weights.throughput: the same fair-share weight in its units
            fair_share=self.weights.fair_share * VALUE_SCALE // max(1, self.weights.throughput),
        ) if round_seconds > 0 else None
        #: statistics of the last decision (see docs/cpsat.md, "Statistics")
        self.last_stats: dict[str, Any] = {}
        #: arrays and FGD scores carried between fragmentation-aware batch decisions
        self._batch_state = BatchState()

    # ------------------------------------------------------------------------------
    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        if self._rounds is not None:
            started = self._timer()
            stats: dict[str, Any] = {"policy": self.name, "pending": len(pending), "mode": "rounds"}
            plan = self._rounds.decide(snapshot, pending, ctx, stats)
            stats["decision_seconds"] = self._timer() - started
            self.last_stats = stats
            return plan
        target = batch_target(pending, ctx)
        if target is not None:
            # single pods against a named target workload (the FGD protocol): node-level,
            # fragmentation-aware batch packing, never worse than FGD's plan of the batch
            started = self._timer()
            budget = min(BATCH_BUDGET_SECONDS, ctx.time_budget_seconds * self.placement_budget_share)
            batch = FragmentationBatch(snapshot, queue_order(pending), ctx, target, timer=self._timer,
                                       state=self._batch_state)
            build_seconds = self._timer() - started
            plan, stats = batch.decide(self._limits(ctx, budget), self.name)
            stats["phase_seconds"]["build"] = build_seconds
            stats["decision_seconds"] = self._timer() - started
            self.last_stats = stats
            return plan
        return self.decide_seeded(snapshot, pending, ctx, None)

    def resume_rounds(self, last_round_seconds: float) -> None:
        """ResumesRounds: continue a round clock (a new leader's first round when the old one's was due)."""
        if self._rounds is not None:
            self._rounds.resume(last_round_seconds)

    def next_round_seconds(self) -> float | None:
        """Round mode: when the next round is due on the decision clock (``ctx.now_seconds``;
        -inf before the first decision), so a caller deciding on its own cadence (the
        operator's loop) can wake for it; None outside round mode."""
        return self._rounds.next_round_seconds if self._rounds is not None else None

    @property
    def round_solves(self) -> dict[str, float]:
        """Round mode: solves so far, how many proved optimal, the largest gap proved, how many
        found nothing (empty outside round mode)."""
        r = self._rounds
        if r is None:
            return {}
        return {"solves": r.solves, "optimal": r.optimal, "max_gap": r.max_gap, "no_solution": r.no_solution}

    def decide_seeded(
        self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext, seed: Plan | None,
        *, seed_label: str = "seed", started: float | None = None,
    ) -> Plan:
        """:meth:`decide`, with another policy's plan (``seed``) in the greedy plan's place.

        The seed's placements become the placement model's hint (mapped onto pools by
        :func:`tessera.solver.units_from_placements`, completed by best fit) and the fallback: it is kept as it
        is, and reported as ``chosen: seed_label``, when CP-SAT finds nothing in time or
        its packed plan scores lower.  Only placements are taken from the seed.
        ``started``: when the caller's own work (e.g. producing the seed) counts against
        the budget, the timer reading at which the decision began."""
        started = self._timer() if started is None else started
        ordered = queue_order(pending)
        stats: dict[str, Any] = {"policy": self.name, "pending": len(ordered)}

        instance = build_instance(
            snapshot.ledger(), ordered, now_seconds=ctx.now_seconds, weights=self.weights,
            monolithic=self.monolithic, max_pools=self.max_pools,
        )
        keys = {w.key for w in ordered}
        seed_placements = {p.workload: p.replicas for p in seed.placements if p.workload in keys} if seed is not None else {}
        # a seed's gangs that do not map onto the model's variables are completed by best fit
        hint = greedy_units(instance, units_from_placements(instance, seed_placements) if seed is not None else None)
        before = PoolView(instance.pools)
        candidates = sum(len(g.capacity) for g in instance.gangs)
        if not self.monolithic and candidates > self.max_unit_vars:
            restrict_candidates(instance, hint, self.pools_per_group)
        queues = QueueState.of(snapshot)
        terms = QuotaTerms(queues, self.weights.fair_share) if queues is not None else None
        model = PlacementModel(instance, terms)
        if terms is not None:
            stats.update(quota_rows=terms.rows, quota_rows_closed=terms.closed)
        stats["hint_gangs"] = model.add_hint(hint) if self.use_hint else 0
        stats["hint_objective"] = model.hint_objective
        stats.update(model.size)
        stats["pools_by_domain"] = instance.pools_by_domain
        phases = {"build": self._timer() - started}

        budget = ctx.time_budget_seconds * self.placement_budget_share
        if not ctx.deterministic:
            budget = max(0.05, budget - (self._timer() - started))
        mark = self._timer()
        solution = model.solve(self._limits(ctx, budget))
        phases["solve"] = self._timer() - mark
        mark = self._timer()
        outcome = solution.outcome
        stats.update(status=outcome.status, objective=outcome.objective, best_bound=outcome.best_bound,
                     gap=outcome.gap, solve_seconds=outcome.wall_seconds,
                     deterministic_time=outcome.deterministic_time)
        if outcome.error:
            stats["error"] = outcome.error

        # pack the CP-SAT answer; the greedy hint is packed too when CP-SAT has nothing or
        # its packing needed repairs, and the better plan (same objective) is kept.  A seed
        # plan is already node-level: it is scored as it is and kept when it is better.
        chosen_by, packed, ledger = "greedy", None, snapshot.ledger()
        if outcome.has_solution:
            packed = Packer(ledger, instance).pack(solution.units)
            chosen_by = "cpsat"
            stats.update(cpsat_score=score_placements(instance, snapshot.ledger(), packed.placed),
                         repaired_units=packed.repaired_units, shrunk_at_packing=packed.shrunk_gangs,
                         pack_failures=len(packed.failed))
        placements: Mapping[str, tuple[ReplicaAssignment, ...]]
        pack_failures: Mapping[str, str]
        if seed is not None:
            seed_score = score_placements(instance, snapshot.ledger(), seed_placements)
            stats["seed_score"] = seed_score
            if packed is None or (seed_score > stats["cpsat_score"]
                                  and not quota_problem(snapshot, instance, seed_placements)):
                chosen_by, ledger = seed_label, snapshot.ledger()
                demand = {w.key: w.demand for w in ordered}
                for key, replicas in seed_placements.items():
                    for a in replicas:
                        ledger.take(a.node, demand[key], a.devices)
                placements, pack_failures = seed_placements, {}
            else:
                placements, pack_failures = packed.placed, packed.failed
        else:
            if packed is None or packed.failed or packed.shrunk_gangs:
                greedy_ledger = snapshot.ledger()
                greedy = Packer(greedy_ledger, instance).pack(hint)
                greedy_score = score_placements(instance, snapshot.ledger(), greedy.placed)
                stats["greedy_score"] = greedy_score
                # with queues, best fit ignores what the gangs take from each other's quota:
                # it is the fallback only when it keeps to the quotas too
                if packed is None or (greedy_score > stats["cpsat_score"]
                                      and not quota_problem(snapshot, instance, greedy.placed)):
                    chosen_by, packed, ledger = "greedy", greedy, greedy_ledger
            assert packed is not None
            placements, pack_failures = packed.placed, packed.failed
        stats["chosen"] = chosen_by
        # the kept plan's score under the model's objective (comparable across policies)
        stats["score"] = stats[{"cpsat": "cpsat_score", "greedy": "greedy_score"}.get(chosen_by, "seed_score")]
        after = PoolView(lambda: build_pools(ledger, by_domain=False))
        phases["pack"] = self._timer() - mark
        mark = self._timer()

        plan_placements = [Placement(key, placements[key], reason=f"{self.name}: {chosen_by}")
                           for key in (w.key for w in ordered) if key in placements]
        preemptions: list[Preemption] = []
        resizes: list[Resize] = []
        tried_preemption: dict[str, str] = {}
        if self.preemption:
            self._preempt(snapshot, instance, ordered, placements, ledger, ctx, started,
                          plan_placements, preemptions, resizes, tried_preemption, stats, before)
        phases["preempt"] = self._timer() - mark
        mark = self._timer()
        migrations: list[Migration] = []
        if self.moves:
            changed = {p.workload for p in preemptions} | {r.workload for r in resizes}
            self._upgrade(snapshot, ledger, ctx, changed, migrations, preemptions, stats)
        phases["moves"] = self._timer() - mark
        mark = self._timer()

        placed = {p.workload for p in plan_placements}
        unplaced = {}
        for gang in instance.gangs:
            if gang.key in placed:
                continue
            unplaced[gang.key] = explain_waiting(gang, before, after, pack_failures.get(gang.key, ""),
                                                 tried_preemption.get(gang.key, ""))
        phases["explain"] = self._timer() - mark
        stats.update(placed=len(placed), preempted=len(preemptions), shrunk=len(resizes), moved=len(migrations),
                     phase_seconds=phases, decision_seconds=self._timer() - started)
        self.last_stats = stats
        return Plan(placements=tuple(plan_placements), preemptions=tuple(preemptions),
                    resizes=tuple(resizes), migrations=tuple(migrations), unplaced=unplaced)

    # ------------------------------------------------------------------------------
    @staticmethod
    def attained_per_accelerator(snapshot: ClusterSnapshot, workload: Workload, now_seconds: float,
                                 replicas: int | None = None) -> float:
        """Attained service (tessera.core.service) per accelerator of the gang: seconds of
        full-gang running on its best type. Read from the workload and its run, so a
        restarted or newly elected operator ranks exactly as the old one did."""
        service = attained_service(workload, snapshot.allocations.get(workload.key), now_seconds)
        return per_accelerator(workload, service, replicas)

    def _limits(self, ctx: PolicyContext, seconds: float) -> SolverLimits:
        return SolverLimits(time_limit_seconds=seconds, deterministic=ctx.deterministic, seed=ctx.seed,
                            num_workers=self.num_workers)

    def _preempt(
        self,
        snapshot: ClusterSnapshot,
        instance: PlacementInstance,
        ordered: Sequence[Workload],
        placements: Mapping[str, tuple[ReplicaAssignment, ...]],
        ledger: CapacityLedger,
        ctx: PolicyContext,
        started: float,
        plan_placements: list[Placement],
        preemptions: list[Preemption],
        resizes: list[Resize],
        tried: dict[str, str],
        stats: dict[str, Any],
        before: PoolView,
    ) -> None:
        """Victim selection, one model per waiting gang, highest priority first.

        Only gangs that would not fit in the free capacity even on their own are
        considered: preemption is the last resort, not a way to win a tie."""
        running = [a for a in snapshot.allocations.values() if a.nodes <= snapshot.nodes.keys()]
        if not running:
            return
        lowest = min(a.workload.priority for a in running)
        las = self.las_after_seconds is not None
        waiting = [instance.gangs[_index(instance, w.key)] for w in ordered
                   if w.key not in placements and (w.priority > lowest or las)]
        if las:  # least attained service first within a priority level
            now = ctx.now_seconds
            waiting.sort(key=lambda g: (-g.workload.priority,
                                        self.attained_per_accelerator(snapshot, g.workload, now), g.index))
        gone: set[str] = set()
        removed: dict[str, set[int]] = defaultdict(set)
        solves = 0
        share = ctx.time_budget_seconds * (1 - self.placement_budget_share)
        for gang in waiting:
            if gang.excluded or before.fits_alone(gang):
                continue
            if not gang.workload.preempts:  # its PriorityClass says never: it waits for room
                tried[gang.key] = "waits for room: it never preempts (preemptionPolicy: Never)"
                continue
            if solves >= self.max_preemptors:
                tried[gang.key] = f"not considered for preemption this round (at most {self.max_preemptors} per decision)"
                continue
            victims = self._victims(snapshot, gang.workload, gone, removed, ctx.now_seconds)
            if not victims:
                tried[gang.key] = ("no lower-priority preemptible work to make room" if not las else
                                   "no lower-priority or longer-served preemptible work to make room")
                continue
            nodes = candidate_nodes(ledger, gang, victims, self.preemption_max_nodes)
            victims = victims_on(victims, nodes)
            budget = share / max(1, min(len(waiting), self.max_preemptors))
            if not ctx.deterministic:
                budget = max(0.02, min(budget, ctx.time_budget_seconds - (self._timer() - started)))
            choice = PreemptionModel(ledger, gang, victims, nodes).solve(self._limits(ctx, budget))
            solves += 1
            if not choice.outcome.has_solution:
                tried[gang.key] = ("preempting every lower-priority workload would still not make room"
                                   if choice.outcome.status == "INFEASIBLE"
                                   else f"victim selection found no answer in time ({choice.outcome.status})")
                continue
            assignments = _apply_preemption(snapshot, ledger, gang, choice.evict, choice.remove, choice.units)
            if assignments is None:
                tried[gang.key] = "the chosen victims did not leave room on the nodes (packing failed)"
                continue
            why = f"preempted by {gang.key} (priority {gang.workload.priority})"
            for key in choice.evict:
                victim, n_victim = snapshot.allocations[key].workload, len(snapshot.allocations[key].replicas)
                reason = f"{why}; own priority {victim.priority}"
                if victim.priority == gang.workload.priority:
                    reason = (f"preempted by {gang.key}: least attained service first "
                              f"({self.attained_per_accelerator(snapshot, gang.workload, ctx.now_seconds) / 3600:.2f} h vs "
                              f"{self.attained_per_accelerator(snapshot, victim, ctx.now_seconds, n_victim) / 3600:.2f} h"
                              " per accelerator)")
                preemptions.append(Preemption(key, reason=reason, beneficiary=gang.key))
                gone.add(key)
            for key, replicas in choice.remove.items():
                resizes.append(Resize(key, remove=replicas,
                                      reason=f"shrunk toward its minimum for {gang.key} (priority {gang.workload.priority})"))
                removed[key].update(replicas)
            plan_placements.append(Placement(gang.key, assignments,
                                             reason=f"{self.name}: after preempting lower-priority work"))
        stats["preemption_solves"] = solves

    def _upgrade(
        self, snapshot: ClusterSnapshot, ledger: CapacityLedger, ctx: PolicyContext, changed: set[str],
        migrations: list[Migration], preemptions: list[Preemption], stats: dict[str, Any],
    ) -> None:
        """Move running work to faster types with free room (restart cost charged):
        single replicas by migration, gangs by a stop and restart in the follow-up decision."""
        pools = build_pools(ledger, by_domain=False)
        # serving work is never stopped to move: its replicas move one at a time,
        # make-before-break, through the rebalancer (tessera.policies.rebalance)
        running = [a for k, a in sorted(snapshot.allocations.items())
                   if k not in changed and a.nodes <= snapshot.nodes.keys()
                   and a.workload.kind is not WorkloadKind.INFERENCE]
        # a job that has not yet run for its restart cost since it (re)started is not moved
        # again: moving it back and forth would only ever pay restarts
        running = [a for a in running
                   if ctx.now_seconds - a.started_at_seconds >= max(1.0, a.workload.restart_cost_seconds)]
        candidates = move_candidates(running, pools, horizon_seconds=self.move_horizon_seconds, weight_of={})
        usage = quota_usage(snapshot) if snapshot.quotas is not None else None
        if usage is not None:
            candidates = admitted_moves(snapshot, usage, candidates)
        if not candidates:
            return
        budget = ctx.time_budget_seconds * (1 - self.placement_budget_share) / 2
        choice = MoveModel(candidates, pools, self.max_moves).solve(self._limits(ctx, max(0.02, budget)))
        stats["move_status"] = choice.outcome.status
        nodes_of: dict[str, list[str]] = defaultdict(list)
        for pool in sorted(pools, key=lambda q: (q.shape.accelerator_milli, q.index)):  # fullest first
            if pool.accelerator_type:
                nodes_of[pool.accelerator_type].extend(pool.nodes)
        for key in sorted(choice.moves):
            allocation = snapshot.allocations[key]
            workload = allocation.workload
            destination = choice.moves[key]
            if usage is not None and not quota_allows_move(snapshot, usage, allocation, destination):
                continue  # an earlier move of this decision took the quota it needed
            # reserve the destination now so later moves in this decision see it taken
            taken: list[ReplicaAssignment] = []
            for _ in allocation.replicas:
                target = next((n for n in nodes_of[destination] if ledger.fits(n, workload.demand)), None)
                if target is None:
                    break
                taken.append(ReplicaAssignment(target, ledger.take(target, workload.demand)))
            if len(taken) < len(allocation.replicas):
                for a in taken:
                    ledger.give_back(a.node, workload.demand, a.devices)
                continue  # aggregate room, but not on the nodes: skip this move this round
            source_type = allocation.replicas[0].accelerator_type
            if len(allocation.replicas) == 1:
                source = allocation.replicas[0]
                ledger.give_back(source.node, workload.demand, source.devices)
                migrations.append(Migration(
                    key, source.replica, taken[0],
                    reason=f"moved from {source_type} to faster {destination}",
                    estimated_cost_seconds=workload.restart_cost_seconds,
                ))
            else:
                # a gang cannot change type replica by replica (one type per gang): it is
                # stopped here and, with the room reserved above left free, restarts on the
                # faster type in the follow-up decision
                for a in taken:
                    ledger.give_back(a.node, workload.demand, a.devices)
                for rp in allocation.replicas:
                    ledger.give_back(rp.node, workload.demand, rp.devices)
                preemptions.append(Preemption(
                    key, reason=(f"moving from {source_type} to faster {destination}: "
                                 "restarts there next (gain beats the restart cost)")))

    def _las_victim(self, allocation: Allocation, beneficiary: Workload, now_seconds: float) -> bool:
        """Equal priority: preemptible under LAS once it ran ``las_after_seconds`` in one go
        and has attained that much more service per accelerator than the beneficiary."""
        if self.las_after_seconds is None:
            return False
        if now_seconds - allocation.started_at_seconds < self.las_after_seconds:
            return False
        workload = allocation.workload
        mine = per_accelerator(workload, attained_service(workload, allocation, now_seconds), len(allocation.replicas))
        theirs = per_accelerator(beneficiary, attained_service(beneficiary, None, now_seconds))
        return mine >= theirs + self.las_after_seconds

    def _victims(
        self, snapshot: ClusterSnapshot, beneficiary: Workload, gone: set[str],
        removed: Mapping[str, set[int]], now_seconds: float,
    ) -> list[VictimSpec]:
        out = []
        for key in sorted(snapshot.allocations):
            allocation = snapshot.allocations[key]
            workload = allocation.workload
            if key in gone or workload.priority > beneficiary.priority or not workload.preemptible:
                continue
            if workload.priority == beneficiary.priority and not self._las_victim(allocation, beneficiary, now_seconds):
                continue
            if key in removed:
                continue  # already shrunk this round: one change per workload per decision
            accelerators = max(1, workload.demand.accelerator_milli // 1000)
            extra = len(allocation.replicas) - max(1, workload.gang_min)
            # shrink the newest replicas first: they carry the least state
            removable = tuple(sorted((rp.replica for rp in allocation.replicas), reverse=True)[:max(0, extra)])
            out.append(VictimSpec(
                allocation=allocation,
                evict_cost=round(lost_work_seconds(allocation, now_seconds, self.checkpoint_interval_seconds)),
                removable=removable,
                shrink_fixed_cost=round(workload.restart_cost_seconds * accelerators * len(allocation.replicas)),
                shrink_replica_cost=accelerators,
            ))
        return out


def _index(instance: PlacementInstance, key: str) -> int:
    for gang in instance.gangs:
        if gang.key == key:
            return gang.index
    raise KeyError(key)


def _apply_preemption(
    snapshot: ClusterSnapshot,
    ledger: CapacityLedger,
    gang: GangSpec,
    evict: Sequence[str],
    remove: Mapping[str, Sequence[int]],
    units: Mapping[str, int],
) -> tuple[ReplicaAssignment, ...] | None:
    """Free the victims on ``ledger`` and put the beneficiary's units where the model said,
    or undo everything and return None."""
    released = []
    for key in evict:
        allocation = snapshot.allocations[key]
        released += [(allocation.workload.demand, rp) for rp in allocation.replicas]
    for key, indices in remove.items():
        allocation = snapshot.allocations[key]
        released += [(allocation.workload.demand, rp) for rp in allocation.replicas if rp.replica in indices]
    demand = gang.workload.demand
    taken: list[ReplicaAssignment] = []
    # one statement: the victims leave and the beneficiary lands, or the ledger is as before
    with ledger.statement() as statement:
        for victim_demand, rp in released:
            statement.give_back(rp.node, victim_demand, rp.devices)
        try:
            for node in sorted(units):
                for _ in range(units[node] * gang.unit_replicas):
                    taken.append(ReplicaAssignment(node, statement.take(node, demand)))
        except Exception:  # CapacityError: aggregate room but not per device
            return None  # the statement is discarded on exit
        statement.commit()
    return tuple(taken)


__all__ = ["CpSat"]
