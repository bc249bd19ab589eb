"""Greedy built-in policies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tessera.core import ClusterSnapshot, Placement, Plan, Workload, explain_unfit
from tessera.policies.gang import place_gang, queue_order
from tessera.policy import Decision, PolicyContext


class BestFit:
    """Accelerator-type-aware best fit: each gang on its fastest allowed type with room, packed onto the fullest nodes."""

    name: ClassVar[str] = "best-fit"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.ORDERING})

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        ledger = snapshot.ledger()
        placements: list[Placement] = []
        unplaced: dict[str, str] = {}
        for workload in queue_order(pending):
            assignments = place_gang(ledger, workload)
            if assignments is None:
                unplaced[workload.key] = explain_unfit(ledger, workload)
            else:
                placements.append(Placement(workload.key, assignments, reason="best fit"))
        return Plan(placements=tuple(placements), unplaced=unplaced)
