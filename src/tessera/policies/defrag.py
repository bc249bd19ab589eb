"""Defragmentation: move small work aside so a blocked gang can start.

A pending gang is *blocked only by fragmentation* when the cluster has enough free whole
devices of one allowed type for it in total, but no placement exists because they are
scattered. :class:`Defragment` then asks :class:`~tessera.solver.rebalance.DefragModel`
for the cheapest set of make-before-break moves after which the gang fits, and proposes
those moves and the gang's placement together, if admitting the gang is worth more than
the moves cost. :func:`greedy_smallest_first` is the baseline rule ("move the smallest
replica aside until the gang fits") it is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from tessera.core import (
    MILLI_PER_DEVICE,
    CapacityLedger,
    ClusterSnapshot,
    Migration,
    MigrationCostModel,
    Placement,
    Plan,
    ReplicaAssignment,
    Workload,
)
from tessera.policies.gang import place_gang, queue_order
from tessera.policy import Decision, PolicyContext
from tessera.solver.rebalance import DefragModel, DefragResult, Move


def fragmentation_blocked(snapshot: ClusterSnapshot, gang: Workload) -> bool:
    """True when ``gang`` does not fit now but its allowed type has enough free devices in total."""
    if not gang.demand.accelerators:
        return False  # shared-device gangs are not defragmented (yet)
    if place_gang(snapshot.ledger(), gang, replicas=gang.gang_min) is not None:
        return False
    needed = gang.gang_min * gang.demand.accelerators
    free_by_type: dict[str | None, int] = {}
    for name, node in snapshot.nodes.items():
        if node.usable and gang.allows(node.accelerator_type):
            free_by_type[node.accelerator_type] = free_by_type.get(node.accelerator_type, 0) + snapshot.free(
                name
            ).whole_devices
    if gang.allow_mixed_types:
        return sum(free_by_type.values()) >= needed
    return any(free >= needed for free in free_by_type.values())


def movable_workloads(snapshot: ClusterSnapshot, gang: Workload, now_seconds: float, cooldown_seconds: float) -> set[str]:
    """Running work that may be moved aside for ``gang``: smaller per replica, preemptible,
    lower or equal priority, and not moved within the cooldown."""
    out = set()
    for key, allocation in snapshot.allocations.items():
        w = allocation.workload
        if not w.preemptible or w.priority > gang.priority:
            continue
        if w.demand.accelerator_milli >= gang.demand.accelerator_milli:
            continue
        recent = any(
            rp.since_seconds is not None and now_seconds - rp.since_seconds < cooldown_seconds
            for rp in allocation.replicas
        )
        if not recent:
            out.add(key)
    return out


@dataclass(frozen=True, slots=True)
class GreedyResult:
    moves: tuple[Move, ...]
    admitted: bool


def greedy_smallest_first(
    snapshot: ClusterSnapshot,
    gang: Workload,
    movable: set[str] | None = None,
    cost_model: MigrationCostModel | None = None,
    max_moves: int = 64,
) -> GreedyResult:
    """Baseline: move the smallest replicas (fewest devices, then key) one by one to the
    fullest other node where each fits, until ``gang`` fits or nothing is left to move."""
    cost_model = cost_model or MigrationCostModel()
    ledger = snapshot.ledger()
    order = sorted(
        (
            (a.workload.demand.accelerator_milli, key, rp.replica, rp.node, rp.devices)
            for key, a in snapshot.allocations.items()
            if movable is None or key in movable
            for rp in a.replicas
            if rp.node in snapshot.nodes and a.workload.demand.needs_accelerator
        ),
    )
    moves: list[Move] = []
    for _, key, replica, source, devices in order:
        if _gang_fits(ledger, gang) or len(moves) >= max_moves:
            break
        workload = snapshot.allocations[key].workload
        target = _fullest_fit(ledger, snapshot, workload, source)
        if target is None:
            continue
        ledger.take(target, workload.demand)  # make before break
        ledger.give_back(source, workload.demand, devices)
        cost = cost_model.estimate(workload, snapshot.nodes[source], snapshot.nodes[target]).cost_seconds
        moves.append(Move(key, replica, source, target, cost))
    return GreedyResult(tuple(moves), _gang_fits(ledger, gang))


def greedy_emptiest_nodes(
    snapshot: ClusterSnapshot,
    gang: Workload,
    movable: set[str] | None = None,
    cost_model: MigrationCostModel | None = None,
    max_moves: int = 64,
) -> GreedyResult:
    """A stronger baseline: clear the allowed nodes with the most free devices first,
    moving each one's movable replicas (smallest first) to the fullest other node, until
    the gang fits. Nodes being cleared are not used as targets."""
    cost_model = cost_model or MigrationCostModel()
    ledger = snapshot.ledger()
    by_node: dict[str, list[tuple[int, str, int, tuple[int, ...]]]] = {}
    for key, a in snapshot.allocations.items():
        if movable is not None and key not in movable:
            continue
        for rp in a.replicas:
            if rp.node in snapshot.nodes:
                by_node.setdefault(rp.node, []).append((a.workload.demand.accelerator_milli, key, rp.replica, rp.devices))
    candidates = sorted(
        (n for n in snapshot.nodes.values() if n.usable and gang.allows(n.accelerator_type)),
        key=lambda n: (-ledger.free(n.name).accelerator_milli, n.name),
    )
    moves: list[Move] = []
    cleared: set[str] = set()
    for candidate in candidates:
        if _gang_fits(ledger, gang) or len(moves) >= max_moves:
            break
        cleared.add(candidate.name)
        for _, key, replica, devices in sorted(by_node.get(candidate.name, [])):
            if ledger.whole_free(candidate.name) * MILLI_PER_DEVICE >= gang.demand.accelerator_milli:
                break
            workload = snapshot.allocations[key].workload
            target = _fullest_fit(ledger, snapshot, workload, candidate.name, exclude=cleared)
            if target is None:
                continue
            ledger.take(target, workload.demand)
            ledger.give_back(candidate.name, workload.demand, devices)
            cost = cost_model.estimate(workload, candidate, snapshot.nodes[target]).cost_seconds
            moves.append(Move(key, replica, candidate.name, target, cost))
    return GreedyResult(tuple(moves), _gang_fits(ledger, gang))


def _gang_fits(ledger: CapacityLedger, gang: Workload) -> bool:
    scratch = CapacityLedger(ledger.nodes, ledger.freeze())
    return place_gang(scratch, gang, replicas=gang.gang_min) is not None


def _fullest_fit(
    ledger: CapacityLedger,
    snapshot: ClusterSnapshot,
    workload: Workload,
    source: str,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> str | None:
    best: tuple[int, str] | None = None
    source_type = snapshot.nodes[source].accelerator_type
    for name, node in sorted(snapshot.nodes.items()):
        if name == source or name in exclude or not node.usable or not workload.allows(node.accelerator_type):
            continue
        if not workload.allow_mixed_types and node.accelerator_type != source_type:
            continue
        if not ledger.fits(name, workload.demand):
            continue
        free = ledger.free(name).accelerator_milli
        if best is None or free < best[0]:
            best = (free, name)
    return None if best is None else best[1]


class Defragment:
    """Admits fragmentation-blocked gangs by moving small work aside, cheapest moves first."""

    name: ClassVar[str] = "defrag"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.REBALANCING, Decision.PLACEMENT})

    def __init__(
        self,
        cost_model: MigrationCostModel | None = None,
        *,
        value_seconds_per_device: float = 600.0,
        cooldown_seconds: float = 600.0,
        budget_moves: int = 16,
    ) -> None:
        self.cost_model = cost_model or MigrationCostModel()
        #: what starting one device of a blocked gang now is worth, in replica-seconds
        #: (roughly how long fragmentation would otherwise keep it waiting)
        self.value_seconds_per_device = value_seconds_per_device
        self.cooldown_seconds = cooldown_seconds
        self.budget_moves = budget_moves
        self.last_result: DefragResult | None = None

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        value_per_device = float(ctx.params.get("defrag.value_seconds_per_device", self.value_seconds_per_device))
        # the operator's --rebalance-param cooldown_seconds=... arrives as rebalance.cooldown_seconds
        cooldown = float(ctx.params.get("defrag.cooldown_seconds",
                                        ctx.params.get("rebalance.cooldown_seconds", self.cooldown_seconds)))
        unplaced: dict[str, str] = {}
        for gang in queue_order(pending):
            if not fragmentation_blocked(snapshot, gang):
                continue
            movable = movable_workloads(snapshot, gang, ctx.now_seconds, cooldown)
            greedy = greedy_emptiest_nodes(snapshot, gang, movable, self.cost_model, self.budget_moves)
            result = DefragModel(
                snapshot,
                gang,
                now_seconds=ctx.now_seconds,
                movable=movable,
                cost_model=self.cost_model,
                budget_moves=self.budget_moves,
                time_limit_seconds=ctx.time_budget_seconds,
                deterministic=ctx.deterministic,
            ).solve(hint=greedy.moves if greedy.admitted else ())
            self.last_result = result
            if result is None:
                unplaced[gang.key] = "fragmented, and no set of allowed moves makes room"
                continue
            value = value_per_device * gang.gang_min * gang.demand.accelerator_milli / MILLI_PER_DEVICE
            if result.cost_seconds >= value:
                unplaced[gang.key] = (
                    f"fragmented; making room costs {result.cost_seconds:.0f}s of service, "
                    f"more than admitting it is worth ({value:.0f}s)"
                )
                continue
            migrations = tuple(
                Migration(m.workload, m.replica, ReplicaAssignment(m.target), f"defragment for {gang.key}", m.cost_seconds)
                for m in result.moves
            )
            replicas = tuple(
                ReplicaAssignment(name) for name, count in sorted(result.gang_nodes.items()) for _ in range(count)
            )
            placement = Placement(gang.key, replicas, reason=f"admitted after {len(migrations)} move(s)")
            # one gang per round: its moves are in flight until the next snapshot
            return Plan(placements=(placement,), migrations=migrations, unplaced=unplaced)
        return Plan(unplaced=unplaced)
