"""Job-completion-time baselines: heterogeneity-agnostic FIFO and a Gavel-style LAS policy.

``fifo`` starts jobs in submission order on any accelerator type with room (a seeded
random choice: it ignores how fast a job runs on each type), never preempts, and lets a
later job start when an earlier one does not fit (no head-of-line blocking unless
``strict=True``).

``gavel`` follows Gavel (Narayanan et al., OSDI'20) in spirit: scheduling rounds (6
minutes by default); each round the jobs with the least attained service (LAS, in
normalised effective accelerator-seconds: time x accelerators x throughput on the type
/ best throughput) get the accelerators, with preemption; the chosen jobs are then
assigned types so that jobs that gain most from a fast type get it (a regret-ordered
greedy assignment over normalised throughput instead of Gavel's LP).  Between rounds it
only fills free room, in the same order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

from tessera.core import (
    MILLI_PER_DEVICE,
    CapacityLedger,
    ClusterSnapshot,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    RestartIntent,
    Spread,
    Workload,
)
from tessera.core.service import attained_service, normalised_throughput
from tessera.policy import Decision, PolicyContext


class _NodesByType:
    """Usable node names per accelerator type, in name order (deterministic).

    Remembers the last answer keyed on the identity of the snapshot's node map: a source
    that reuses an unchanged (immutable) map, like the simulator, pays for the grouping
    once; a new map is a new computation.  One per policy instance.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[Mapping[str, object], dict[str, list[str]]] | None = None

    def __call__(self, snapshot: ClusterSnapshot) -> dict[str, list[str]]:
        nodes = snapshot.nodes
        last = self._last
        if last is not None and last[0] is nodes:
            return last[1]
        out: dict[str, list[str]] = {}
        for name in sorted(nodes):
            node = nodes[name]
            if node.usable and node.accelerator_type:
                out.setdefault(node.accelerator_type, []).append(name)
        self._last = (nodes, out)
        return out


def _allowed(workload: Workload, present: Sequence[str]) -> list[str]:
    return [t for t in present if workload.allows(t)]


def _need_milli(workload: Workload, replicas: int) -> int:
    return workload.demand.accelerator_milli * replicas


def fill_type(
    ledger: CapacityLedger,
    workload: Workload,
    node_names: Sequence[str],
    replicas: int,
) -> tuple[ReplicaAssignment, ...] | None:
    """Reserve ``replicas`` replicas on the listed nodes (first fit, fullest-free first is not needed
    for whole devices) or nothing."""
    taken: list[ReplicaAssignment] = []
    demand = workload.demand
    one_per_node = workload.spread is Spread.NODE
    used_zones: set[str] = set()
    for name in node_names:
        if workload.spread is Spread.ZONE and ledger.nodes[name].topology.zone in used_zones:
            continue
        while len(taken) < replicas and ledger.fits(name, demand):
            taken.append(ReplicaAssignment(name, ledger.take(name, demand)))
            used_zones.add(ledger.nodes[name].topology.zone)
            if one_per_node or workload.spread is Spread.ZONE:
                break
        if len(taken) == replicas:
            return tuple(taken)
    for a in taken:
        ledger.give_back(a.node, demand, a.devices)
    return None


def _fill_any(
    ledger: CapacityLedger, workload: Workload, node_lists: Sequence[Sequence[str]], replicas: int
) -> tuple[ReplicaAssignment, ...] | None:
    """The first node list (type) that takes the gang, at the largest size in [gang_min, replicas]."""
    for names in node_lists:
        for count in range(replicas, workload.gang_min - 1, -1):
            got = fill_type(ledger, workload, names, count)
            if got is not None:
                return got
    return None


class Fifo:
    """Heterogeneity-agnostic FIFO: submission order, any accelerator type with room, no preemption."""

    name: ClassVar[str] = "fifo"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.ORDERING})

    def __init__(self, strict: bool = False) -> None:
        #: True: a job that does not fit blocks every later one (strict FIFO)
        self.strict = strict
        self._types_by_node = _NodesByType()

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        if not pending:
            return Plan()
        by_type = self._types_by_node(snapshot)
        free = snapshot.free
        # free room per type, and only the nodes that have some (full nodes are never scanned)
        free_milli: dict[str, int] = {}
        with_room: dict[str, list[str]] = {}
        for accelerator_type, names in by_type.items():
            total = 0
            room = []
            for name in names:
                milli = sum(free(name).devices_milli)
                if milli:
                    total += milli
                    room.append(name)
            free_milli[accelerator_type] = total
            with_room[accelerator_type] = room
        present = sorted(by_type)
        ledger: CapacityLedger | None = None
        placements: list[Placement] = []
        unplaced: dict[str, str] = {}
        blocked_by = ""
        for workload in sorted(pending, key=lambda w: (-w.priority, w.submitted_at_seconds, w.key)):
            if blocked_by:
                unplaced[workload.key] = f"strict FIFO: waiting behind {blocked_by}"
                continue
            replicas = workload.target_replicas
            need = _need_milli(workload, workload.gang_min)
            candidates = [t for t in _allowed(workload, present) if free_milli[t] >= need]
            assignments = None
            if candidates:
                ledger = ledger or snapshot.ledger()
                ctx.rng.shuffle(candidates)  # agnostic: any type with room is as good as another
                for accelerator_type in candidates:
                    for count in range(replicas, workload.gang_min - 1, -1):
                        assignments = fill_type(ledger, workload, with_room[accelerator_type], count)
                        if assignments is not None:
                            break
                    if assignments is not None:
                        free_milli[accelerator_type] -= _need_milli(workload, len(assignments))
                        break
            if assignments is None:
                unplaced[workload.key] = (
                    f"queued: needs {workload.gang_min} x {workload.demand.accelerator_milli / MILLI_PER_DEVICE:g} "
                    f"accelerators; free now: "
                    + (", ".join(f"{t}={free_milli[t] / MILLI_PER_DEVICE:g}" for t in _allowed(workload, present)) or "none allowed")
                )
                if self.strict:
                    blocked_by = workload.key
                continue
            placements.append(Placement(workload.key, assignments, reason="fifo"))
        return Plan(placements=tuple(placements), unplaced=unplaced)


class GavelLAS:
    """Gavel-style heterogeneity-aware LAS: rounds, least attained effective service first, preemptive."""

    name: ClassVar[str] = "gavel"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset(
        {Decision.PLACEMENT, Decision.ORDERING, Decision.PREEMPTION}
    )
    #: the simulator aligns its rounds to this (the operator calls ``decide`` on its own cadence)
    round_seconds: float = 360.0

    def __init__(
        self, round_seconds: float = 360.0, stickiness: float = 0.05, lease_rounds: float = 0.0, move_gain: float = 0.25
    ) -> None:
        self.round_seconds = round_seconds
        #: a running job competes as if it had this many rounds less service (fewer, costly restarts)
        self.lease_rounds = lease_rounds
        #: a running job changes type only if its normalised throughput gains at least this much
        self.move_gain = move_gain
        self._running: frozenset[str] = frozenset()
        self._types_by_node = _NodesByType()
        #: bonus to a running job's current type, so it only moves for a real gain
        self.stickiness = stickiness
        # attained service per workload in this decision (tessera.core.service), read from the
        # snapshot: a restarted or newly elected operator ranks exactly as the old one did
        self._service: dict[str, float] = {}
        self._last_round = -math.inf

    def next_round_seconds(self) -> float:
        """DecidesInRounds: when the next round is due (-inf before the first decision)."""
        return self._last_round + self.round_seconds

    def resume_rounds(self, last_round_seconds: float) -> None:
        """ResumesRounds: continue a round clock whose last round was at ``last_round_seconds``."""
        if math.isfinite(last_round_seconds):
            self._last_round = max(self._last_round, last_round_seconds)

    def attained_service(self, key: str) -> float:
        return self._service.get(key, 0.0)

    def _account(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], now: float) -> None:
        service = {w.key: attained_service(w, None, now) for w in pending}
        for key, alloc in snapshot.allocations.items():
            service[key] = attained_service(alloc.workload, alloc, now)
        self._service = service

    def _order_key(self, w: Workload) -> tuple[float, float, float, str]:
        devices = max(1e-9, w.gang_min * w.demand.accelerator_milli / MILLI_PER_DEVICE)
        attained = self._service.get(w.key, 0.0) / devices
        if w.key in self._running:
            attained -= self.lease_rounds * self.round_seconds
        return (-w.priority, attained, w.submitted_at_seconds, w.key)

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        now = ctx.now_seconds
        self._account(snapshot, pending, now)
        self._running = frozenset(snapshot.allocations)
        if now >= self._last_round + self.round_seconds - 1e-9:
            self._last_round = now
            return self._round(snapshot, pending)
        return self._fill(snapshot, pending, snapshot.ledger(), [], {})

    def _round(self, snapshot: ClusterSnapshot, pending: Sequence[Workload]) -> Plan:
        by_type = self._types_by_node(snapshot)
        present = sorted(by_type)
        capacity = {t: sum(snapshot.nodes[n].accelerator_count for n in names) * MILLI_PER_DEVICE for t, names in by_type.items()}
        running = {k: a for k, a in snapshot.allocations.items() if a.replicas}
        current_type = {k: a.replicas[0].accelerator_type or "" for k, a in running.items()}
        # work without accelerators (CPU-only pods) has no type to win or lose: it stays put
        fixed = {k for k, a in running.items() if not a.workload.preemptible or not a.workload.demand.needs_accelerator}
        for k in fixed:
            a = running[k]
            if current_type[k]:
                capacity[current_type[k]] = capacity.get(current_type[k], 0) - _need_milli(a.workload, len(a.replicas))
        movable = [running[k].workload for k in running if k not in fixed]
        candidates = sorted([*movable, *pending], key=self._order_key)

        # 1. selection by least attained service, against the total capacity
        budget = sum(max(0, c) for c in capacity.values())
        size: dict[str, int] = {}
        selected: list[Workload] = []
        for w in candidates:
            n = len(running[w.key].replicas) if w.key in running else w.target_replicas
            need = _need_milli(w, n)
            if need <= budget and _allowed(w, present):
                selected.append(w)
                size[w.key] = n
                budget -= need
        # 2. types: jobs that lose most by not getting their best type choose first
        def prefs(w: Workload) -> list[tuple[float, str]]:
            scored = [
                (normalised_throughput(w, t) + (self.stickiness if current_type.get(w.key) == t else 0.0), t)
                for t in _allowed(w, present)
            ]
            return sorted(scored, key=lambda p: (-p[0], p[1]))

        rank = {w.key: i for i, w in enumerate(selected)}
        pref_of = {w.key: prefs(w) for w in selected}

        def regret(w: Workload) -> tuple[float, int]:
            p = pref_of[w.key]
            return (-(p[0][0] - p[1][0]) if len(p) > 1 else -math.inf, rank[w.key])

        left = dict(capacity)
        assigned: dict[str, str] = {}
        # running jobs keep their type (a move costs a restart) ...
        for w in selected:
            t = current_type.get(w.key)
            if t is not None and left.get(t, 0) >= _need_milli(w, size[w.key]):
                assigned[w.key] = t
                left[t] -= _need_milli(w, size[w.key])
        # ... newcomers take the rest, those losing most without their best type first ...
        for w in sorted(selected, key=regret):
            if w.key in assigned:
                continue
            need = _need_milli(w, size[w.key])
            for _, t in pref_of[w.key]:
                if left[t] >= need:
                    assigned[w.key] = t
                    left[t] -= need
                    break
        # ... and a running job moves up only for a clear gain
        for w in sorted(selected, key=regret):
            here = assigned.get(w.key)
            if here is None or here != current_type.get(w.key):
                continue
            need = _need_milli(w, size[w.key])
            for score, t in pref_of[w.key]:
                if t != here and left[t] >= need and score >= normalised_throughput(w, here) + self.move_gain:
                    left[here] += need
                    left[t] -= need
                    assigned[w.key] = t
                    break

        # 3. nodes: keep what stays, release what moves or stops, place the rest
        ledger = snapshot.ledger()
        preemptions: list[Preemption] = []
        for k, a in running.items():
            if k in fixed:
                continue
            target = assigned.get(k)
            if target == current_type[k]:
                continue
            for rp in a.replicas:
                ledger.give_back(rp.node, a.workload.demand, rp.devices)
            reason = "LAS round: moves to " + target if target else "LAS round: more attained service than waiting jobs"
            preemptions.append(Preemption(k, reason))
        intents: dict[str, RestartIntent] = {}  # where moving jobs restart (kept with the workload)
        to_place: list[Workload] = []
        for w in selected:
            if w.key in assigned and (w.key not in running or assigned[w.key] != current_type[w.key]):
                to_place.append(w)
        # bigger gangs first: they are the hardest to fit
        to_place.sort(key=lambda w: (-_need_milli(w, size[w.key]), rank[w.key]))
        placements: list[Placement] = []
        unplaced: dict[str, str] = {}
        for w in to_place:
            types = [assigned[w.key]] + [t for _, t in pref_of[w.key] if t != assigned[w.key]]
            got = _fill_any(ledger, w, [by_type[t] for t in types], size[w.key])
            if got is None:
                if w.key in running:
                    # nowhere to go: keep it where it is
                    preemptions = [p for p in preemptions if p.workload != w.key]
                    for rp in running[w.key].replicas:
                        ledger.hold(rp.node, w.demand, rp.devices)
                else:
                    unplaced[w.key] = "LAS round: selected, but no node of an allowed type has room for the gang"
                continue
            if w.key in running:
                intents[w.key] = RestartIntent(snapshot.nodes[got[0].node].accelerator_type or "", None,
                                               snapshot.now_seconds)
            else:
                placements.append(Placement(w.key, got, reason=f"LAS round on {snapshot.nodes[got[0].node].accelerator_type}"))
        # moving jobs are placed in the follow-up cycle; their room is kept free here by the ledger
        for w in pending:
            if w.key not in unplaced and all(p.workload != w.key for p in placements):
                unplaced[w.key] = (
                    f"LAS round: waiting; attained service {self._service.get(w.key, 0.0) / 3600.0:.2f} "
                    "normalised accelerator-hours is more than the running jobs'"
                )
        preemptions = [dataclasses.replace(p, restart_on=intents.get(p.workload)) for p in preemptions]
        return Plan(placements=tuple(placements), preemptions=tuple(preemptions), unplaced=unplaced)

    def _fill(
        self,
        snapshot: ClusterSnapshot,
        pending: Sequence[Workload],
        ledger: CapacityLedger,
        placements: list[Placement],
        unplaced: dict[str, str],
    ) -> Plan:
        """Between rounds: start waiting jobs in free room, moving jobs first, no preemption."""
        if not pending:
            return Plan()
        by_type = self._types_by_node(snapshot)
        present = sorted(by_type)
        # where the last round wanted the jobs it stopped to move to restart
        intended = {w.key: w.restart_intent.accelerator_type for w in pending
                    if w.restart_intent is not None and w.restart_intent.holds_at(snapshot.now_seconds, self.round_seconds)}
        order = sorted(pending, key=lambda w: (w.key not in intended, *self._order_key(w)))
        for w in order:
            scored = sorted(
                ((-normalised_throughput(w, t), t) for t in _allowed(w, present)),
                key=lambda p: (p[1] != intended.get(w.key), p[0], p[1]),
            )
            got = _fill_any(ledger, w, [by_type[t] for _, t in scored], w.target_replicas)
            if got is None:
                unplaced[w.key] = "waiting for free accelerators (LAS order, next round may preempt)"
            else:
                placements.append(Placement(w.key, got, reason="LAS fill"))
        return Plan(placements=tuple(placements), unplaced=unplaced)
