"""``spread-first``: each replica on the usable node with the most free accelerator capacity.

A small but complete policy written only against the public SDK (``tessera.policy``,
``tessera.core``). It handles every workload shape the core model has: whole-device gangs
(all or nothing, elastic down to ``min_replicas``), GPU-sharing pods, CPU-only pods,
accelerator-type constraints (fastest allowed type first), and node/zone spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tessera.core import (
    CapacityLedger,
    ClusterSnapshot,
    Placement,
    Plan,
    ReplicaAssignment,
    Spread,
    Workload,
    explain_unfit,
)
from tessera.policy import Decision, PolicyContext

__all__ = ["SpreadFirst"]


class SpreadFirst:
    """Worst fit: spread replicas over the least-loaded nodes (an out-of-tree example plugin)."""

    name: ClassVar[str] = "spread-first"
    version: ClassVar[str] = "0.1.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.ORDERING})

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        ledger = snapshot.ledger()
        placements: list[Placement] = []
        unplaced: dict[str, str] = {}
        # priority first, then oldest; the key breaks ties so the order is total (deterministic)
        for workload in sorted(pending, key=lambda w: (-w.priority, w.submitted_at_seconds, w.key)):
            replicas = self._place(ledger, workload)
            if replicas is None:
                unplaced[workload.key] = explain_unfit(ledger, workload)
            else:
                placements.append(Placement(workload.key, replicas, reason="spread-first"))
        return Plan(placements=tuple(placements), unplaced=unplaced)

    def _type_groups(self, ledger: CapacityLedger, workload: Workload) -> list[set[str | None]]:
        present = {n.accelerator_type for n in ledger.nodes.values()}
        if not workload.demand.needs_accelerator:
            return [present]
        allowed = sorted((t for t in present if t and workload.allows(t)),
                         key=lambda t: (-workload.throughput_on(t), t))
        if workload.allow_mixed_types:
            return [set(allowed)] if allowed else []
        return [{t} for t in allowed]

    def _place(self, ledger: CapacityLedger, workload: Workload) -> tuple[ReplicaAssignment, ...] | None:
        for group in self._type_groups(ledger, workload):
            taken: list[ReplicaAssignment] = []
            nodes_used: set[str] = set()
            zones_used: set[str] = set()
            while len(taken) < workload.target_replicas:
                best: tuple[int, int, str] | None = None
                for node in ledger.nodes.values():
                    if not node.usable or node.accelerator_type not in group:
                        continue
                    if workload.spread is Spread.NODE and node.name in nodes_used:
                        continue
                    if workload.spread is Spread.ZONE and node.topology.zone in zones_used:
                        continue
                    if not ledger.fits(node.name, workload.demand):
                        continue
                    free = ledger.free(node.name)
                    # most free accelerator milli first, then most free CPU, then name
                    key = (-free.accelerator_milli, -free.cpu_milli, node.name)
                    if best is None or key < best:
                        best = key
                if best is None:
                    break
                devices = ledger.take(best[2], workload.demand)
                taken.append(ReplicaAssignment(best[2], devices))
                nodes_used.add(best[2])
                zones_used.add(ledger.nodes[best[2]].topology.zone)
            if len(taken) >= workload.gang_min:
                return tuple(taken)
            for assignment in taken:  # gang all or nothing: give back a partial gang
                ledger.give_back(assignment.node, workload.demand, assignment.devices)
        return None
