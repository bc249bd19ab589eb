"""CP-SAT's round mode: Sia-style re-optimisation of every job's accelerator type each round.

Used by :class:`tessera.policies.cpsat.CpSat` when ``round_seconds`` > 0 (the simulator
then calls it every round, besides arrivals and completions).  At a round, every
running preemptible job and every waiting one is a candidate for one configuration
(accelerator type, replica count) or none (:class:`tessera.solver.RoundModel`):

    value(job, config) = weight(job) x speedup(job, config) x (1 - restart share)

* ``speedup``: the configuration's throughput over the job's best (1.0 on its fastest
  type at its target size), from the workload's per-type throughputs;
* ``weight`` = 1 / (1 + attained / ``service_scale_seconds``), with ``attained`` the
  service the job has had in seconds at its best speed: the least-attained-service
  order that minimises average JCT when durations are unknown (Gavel, Tiresias), made
  soft so the solver can trade a young job on a slow type against an older one on a
  fast type;
* ``restart share`` = restart cost / ``restart_horizon_seconds`` for a running job whose
  configuration changes (Sia's restart penalty), 0 for one that keeps it.

A job whose type changes is stopped at the round and placed on its new type in the
follow-up decision (its room is reserved in between).  Between rounds the same model
runs over the waiting jobs only: it starts them in the free room.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tessera.core import (
    Allocation,
    CapacityLedger,
    ClusterSnapshot,
    Placement,
    Plan,
    Preemption,
    Resize,
    RestartIntent,
    Workload,
)
from tessera.core.service import attained_service, per_accelerator
from tessera.policies.jct import fill_type
from tessera.policy import PolicyContext
from tessera.solver import (
    QueueState,
    QuotaTerms,
    RoundConfig,
    RoundJob,
    RoundModel,
    SolverLimits,
    config_value,
)


def _per_replica(workload: Workload) -> dict[str, int]:
    d = workload.demand
    return {"devices": d.accelerators, "shared_milli": d.shared_milli if not d.accelerators else 0,
            "cpu_milli": d.cpu_milli, "memory_mib": d.memory_mib}


def _best_throughput(workload: Workload) -> float:
    """The gang's best throughput at up to its target size on any allowed type."""
    n = workload.target_replicas
    return max((max(workload.gang_throughput_on(o.accelerator_type, k) for k in {n, *dict(o.gang_throughput)} if k <= n)
                for o in workload.options), default=0.0)


def _speedup(workload: Workload, accelerator_type: str, replicas: int) -> float:
    """Gang throughput on the type at ``replicas`` over the best the job can get (measured
    per count when the workload lists it, else per-replica throughput x replicas)."""
    best = _best_throughput(workload)
    if best <= 0:
        return 1.0
    return workload.gang_throughput_on(accelerator_type, replicas) / best


def movable(allocation: Allocation, snapshot: ClusterSnapshot) -> bool:
    """Running work the round may stop or move: preemptible, on accelerators of one type, on known nodes."""
    workload = allocation.workload
    types = {rp.accelerator_type for rp in allocation.replicas}
    return (bool(allocation.replicas) and workload.preemptible and workload.demand.needs_accelerator
            and len(types) == 1 and None not in types and allocation.nodes <= snapshot.nodes.keys())


def candidate_sizes(workload: Workload) -> list[int]:
    """Replica counts an elastic job may run with: its target, its maximum, halvings of the
    target and powers of two from its minimum to its maximum (enough choice to fit a crowded
    round, follow a sub-linear scaling curve and use idle room, without a variable per count)."""
    sizes = {workload.target_replicas, workload.gang_min, workload.max_replicas}
    n = workload.target_replicas
    while n // 2 >= workload.gang_min:
        n //= 2
        sizes.add(n)
    power = 1
    while power < workload.max_replicas:
        if power >= workload.gang_min:
            sizes.add(power)
        power *= 2
    return sorted(sizes, reverse=True)


class RoundPlanner:
    """State and decisions of CP-SAT's round mode (one per policy instance)."""

    def __init__(
        self,
        *,
        round_seconds: float,
        service_scale_seconds: float,
        restart_horizon_seconds: float,
        min_run_seconds: float,
        limits: Callable[[PolicyContext, float], SolverLimits],
        resize_in_place: bool = False,
        fair_share: int = 0,
    ) -> None:
        """``fair_share``: with queues, objective value per thousandth of the worst-off
        queue's share (tessera.solver.quota), in the round model's units."""
        self.round_seconds = round_seconds
        self.fair_share = fair_share
        self.service_scale_seconds = service_scale_seconds
        self.restart_horizon_seconds = restart_horizon_seconds
        self.min_run_seconds = min_run_seconds
        #: an elastic job the round keeps on its type at another size is resized in place
        #: (Resize: kept replicas keep running) instead of stopped and restarted
        self.resize_in_place = resize_in_place
        self._limits = limits
        #: attained service per workload of the current decision, in seconds at the workload's
        #: best speed; read from the snapshot (tessera.core.service), never carried over
        self._attained: dict[str, float] = {}
        self._last_round = -math.inf
        #: over every solve so far: how many, how many proved optimal, the largest relative
        #: gap proved, and how many found no solution (benchmarks report these)
        self.solves = 0
        self.optimal = 0
        self.max_gap = 0.0
        self.no_solution = 0

    # ------------------------------------------------------------------------------
    def attained_seconds(self, key: str) -> float:
        return self._attained.get(key, 0.0)

    def resume(self, last_round_seconds: float) -> None:
        """Continue a round clock whose last round was at ``last_round_seconds``."""
        if math.isfinite(last_round_seconds):
            self._last_round = max(self._last_round, last_round_seconds)

    @property
    def next_round_seconds(self) -> float:
        """When the next round is due on the decision clock (-inf before the first decision)."""
        return self._last_round + self.round_seconds

    def _account(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], now: float) -> None:
        """Attained service of every workload in this decision, from the workloads and their runs:
        a restarted or newly elected operator sees what the old one saw."""
        attained: dict[str, float] = {}
        for workload in pending:
            attained[workload.key] = per_accelerator(
                workload, attained_service(workload, None, now), workload.target_replicas)
        for key, allocation in snapshot.allocations.items():
            workload = allocation.workload
            attained[key] = per_accelerator(
                workload, attained_service(workload, allocation, now), workload.target_replicas)
        self._attained = attained

    def weight(self, key: str) -> float:
        return 1.0 / (1.0 + self.attained_seconds(key) / max(1e-9, self.service_scale_seconds))

    # ------------------------------------------------------------------------------
    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext,
               stats: dict[str, Any]) -> Plan:
        now = ctx.now_seconds
        self._account(snapshot, pending, now)
        is_round = now >= self._last_round + self.round_seconds - 1e-9
        if is_round:
            self._last_round = now
        nodes_of: dict[str, list[str]] = {}
        for name in sorted(snapshot.nodes):
            node = snapshot.nodes[name]
            if node.usable and node.accelerator_type:
                nodes_of.setdefault(node.accelerator_type, []).append(name)
        # between rounds running work keeps its room: only waiting jobs are placed
        # and a job that (re)started less than ``min_run_seconds`` ago keeps its room too:
        # a restart must pay off before the job can be moved again (no thrashing)
        running = {k: a for k, a in snapshot.allocations.items()
                   if is_round and movable(a, snapshot) and now - a.started_at_seconds >= self.min_run_seconds}
        ledger = snapshot.ledger()
        for allocation in running.values():  # the round re-decides this room
            for rp in allocation.replicas:
                ledger.give_back(rp.node, allocation.workload.demand, rp.devices)
        capacity = self._capacity(ledger, nodes_of)
        priorities = sorted({w.priority for w in pending} | {a.workload.priority for a in running.values()})
        tier_of = {p: i for i, p in enumerate(priorities)}
        # type and size a round chose for jobs it stopped to move (Workload.restart_intent,
        # kept in status): the follow-up decisions place them so, whichever leader makes them
        intended = {w.key: (w.restart_intent.accelerator_type, w.restart_intent.replicas or w.target_replicas)
                    for w in pending
                    if w.restart_intent is not None and w.restart_intent.holds_at(now, self.round_seconds)}
        jobs: list[RoundJob] = []
        for allocation in running.values():
            jobs.append(self._job(allocation.workload, allocation, nodes_of, tier_of))
        eligible = [w for w in pending if w.demand.needs_accelerator and any(w.allows(t) for t in nodes_of)]
        for workload in eligible:
            job = self._job(workload, None, nodes_of, tier_of, intended.get(workload.key))
            if workload.key in intended:
                # a job the last round stopped to move: its reserved room is its own
                job.tier = len(priorities)
            jobs.append(job)
        # with queues, the round keeps to their quotas: what it re-decides counts by its choice
        queues = QueueState.of(snapshot, exclude=running.keys())
        workloads = {w.key: w for w in eligible} | {k: a.workload for k, a in running.items()}
        model = RoundModel(jobs, capacity, QuotaTerms(queues, self.fair_share) if queues is not None else None,
                           workloads)
        current = {a.key: (a.replicas[0].accelerator_type or "", len(a.replicas)) for a in running.values()}
        hint_objective = model.add_hint(current)
        budget = ctx.time_budget_seconds
        choice = model.solve(self._limits(ctx, budget))
        outcome = choice.outcome
        self.solves += 1
        if outcome.status == "OPTIMAL":
            self.optimal += 1
        elif outcome.has_solution:
            self.max_gap = max(self.max_gap, outcome.gap)
        else:
            self.no_solution += 1
        stats.update(round=is_round, round_jobs=len(jobs), status=outcome.status, objective=outcome.objective,
                     best_bound=outcome.best_bound, gap=outcome.gap, hint_objective=hint_objective,
                     solve_seconds=outcome.wall_seconds, deterministic_time=outcome.deterministic_time)
        chosen = dict(choice.chosen) if outcome.has_solution else {
            k: RoundConfig(t, n, 0) for k, (t, n) in current.items()}  # no answer: change nothing
        return self._apply(snapshot, ledger, running, pending, eligible, chosen, nodes_of, intended, stats)

    def _capacity(self, ledger: CapacityLedger, nodes_of: Mapping[str, Sequence[str]]) -> dict[str, dict[str, int]]:
        capacity: dict[str, dict[str, int]] = {}
        for accelerator_type, names in nodes_of.items():
            room = {"devices": 0, "shared_milli": 0, "cpu_milli": 0, "memory_mib": 0}
            for name in names:
                free = ledger.free(name)
                room["devices"] += free.whole_devices
                room["shared_milli"] += free.accelerator_milli
                room["cpu_milli"] += free.cpu_milli
                room["memory_mib"] += free.memory_mib
            capacity[accelerator_type] = room
        return capacity

    def _job(self, workload: Workload, allocation: Allocation | None, nodes_of: Mapping[str, Sequence[str]],
             tier_of: Mapping[int, int], intended: tuple[str, int] | None = None) -> RoundJob:
        """The job's configurations: every allowed type at its current size (running) or at
        the sizes :func:`candidate_sizes` offers (waiting); only the intended one for a job
        the last round stopped to move."""
        weight = self.weight(workload.key)
        configs = []
        here: tuple[str, int] | None = None
        if allocation is not None:
            here = (allocation.replicas[0].accelerator_type or "", len(allocation.replicas))
            sizes = sorted({here[1], *candidate_sizes(workload)}, reverse=True)
            options = [(t, n) for t in sorted(nodes_of) if workload.allows(t) for n in sizes]
        elif intended is not None:
            options = [intended] if intended[0] in nodes_of else []
        else:
            sizes = candidate_sizes(workload)
            options = [(t, n) for t in sorted(nodes_of) if workload.allows(t) for n in sizes]
        share = workload.restart_cost_seconds / max(1e-9, self.restart_horizon_seconds)
        for accelerator_type, replicas in options:
            speedup = _speedup(workload, accelerator_type, replicas)
            if here == (accelerator_type, replicas):
                # keeping it avoids the restart that stopping it now would cost later
                value = config_value(weight, speedup, -share)
            else:
                value = config_value(weight, speedup, share if here is not None else 0.0)
            if value > 0 or here == (accelerator_type, replicas):
                configs.append(RoundConfig(accelerator_type, replicas, value))
        return RoundJob(workload.key, configs, _per_replica(workload), current=here,
                        tier=tier_of.get(workload.priority, 0))

    def _apply(
        self, snapshot: ClusterSnapshot, ledger: CapacityLedger, running: Mapping[str, Allocation],
        pending: Sequence[Workload], eligible: Sequence[Workload], chosen: Mapping[str, RoundConfig],
        nodes_of: Mapping[str, Sequence[str]], intended: Mapping[str, tuple[str, int]], stats: dict[str, Any],
    ) -> Plan:
        """Keep, stop or move running jobs and start waiting ones as chosen, packed onto nodes."""
        # running jobs that keep their configuration take their room back first
        stopping: dict[str, str] = {}
        resizes: list[Resize] = []
        growing: dict[str, int] = {}  # key -> replicas to add in place
        for key, allocation in running.items():
            config = chosen.get(key)
            here = (allocation.replicas[0].accelerator_type or "", len(allocation.replicas))
            if config is not None and (config.accelerator_type, config.replicas) == here:
                for rp in allocation.replicas:
                    ledger.hold(rp.node, allocation.workload.demand, rp.devices)
            elif config is not None and self.resize_in_place and config.accelerator_type == here[0]:
                # same type, another size: reshard in place; the kept replicas keep running
                ordered = sorted(allocation.replicas, key=lambda rp: rp.replica)
                for rp in ordered[:config.replicas]:
                    ledger.hold(rp.node, allocation.workload.demand, rp.devices)
                if config.replicas < here[1]:
                    resizes.append(Resize(key, remove=tuple(rp.replica for rp in ordered[config.replicas:]),
                                          reason=f"round: shrinks to {config.replicas} x {config.accelerator_type} "
                                                 "(room for jobs with less attained service)"))
                else:
                    growing[key] = config.replicas - here[1]
            else:
                stopping[key] = (f"round: restarts as {config.replicas} x {config.accelerator_type} "
                                 "(worth its restart)" if config
                                 else f"round: waits for jobs with less attained service "
                                      f"({self.attained_seconds(key) / 3600:.2f} h at best speed)")
        # then the rest, biggest first (hardest to fit); waiting jobs the last round moved first
        by_key = {w.key: w for w in eligible} | {k: a.workload for k, a in running.items()}
        todo = [k for k in chosen if k in by_key and (k in stopping or k in growing or k not in running)]
        todo.sort(key=lambda k: (k not in intended, -chosen[k].replicas * by_key[k].demand.accelerator_milli, k))
        placements: list[Placement] = []
        moving = 0
        intents: dict[str, RestartIntent] = {}
        for key in todo:
            workload, config = by_key[key], chosen[key]
            names = sorted(nodes_of[config.accelerator_type], key=lambda n: (ledger.free(n).whole_devices, n))
            if key in growing:
                extra = fill_type(ledger, workload, names, growing[key])
                if extra is not None:  # else it keeps its size
                    resizes.append(Resize(key, add=extra, reason=f"round: grows to {config.replicas} x "
                                                                 f"{config.accelerator_type} (worth more there)"))
                continue
            got = fill_type(ledger, workload, names, config.replicas)
            if got is None:
                if key in running:  # no room on the nodes after all: it stays where it is
                    del stopping[key]
                    for rp in running[key].replicas:
                        ledger.hold(rp.node, workload.demand, rp.devices)
                continue
            if key in running:
                # stopped now and placed in the follow-up decision: the room taken here on
                # this decision's ledger is left free by every other placement of this plan
                intents[key] = RestartIntent(config.accelerator_type, config.replicas, snapshot.now_seconds)
                moving += 1
            else:
                placements.append(Placement(key, got, reason=f"cpsat round: {config.accelerator_type} x{len(got)}"))
        preemptions = [Preemption(k, reason=why, restart_on=intents.get(k)) for k, why in sorted(stopping.items())]
        placed = {p.workload for p in placements}
        unplaced = {}
        for w in pending:
            if w.key in placed:
                continue
            if w not in eligible:
                unplaced[w.key] = "cpsat round mode: schedules accelerator work on known types only"
            elif w.key in chosen:
                unplaced[w.key] = "cpsat round: chosen, but its type's nodes have no room for the gang"
            else:
                unplaced[w.key] = (f"cpsat round: waiting; running jobs are worth more this round "
                                   f"(attained {self.attained_seconds(w.key) / 3600:.2f} h at best speed)")
        stats.update(placed=len(placements), preempted=len(preemptions), moving=moving, resized=len(resizes))
        return Plan(placements=tuple(placements), preemptions=tuple(preemptions), resizes=tuple(resizes),
                    unplaced=unplaced)


__all__ = ["RoundPlanner", "candidate_sizes", "movable"]
