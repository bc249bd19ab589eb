"""``kueue-like``: Kueue's admission as a placement policy, a baseline for queues.

Reimplemented from Kueue's documentation (ClusterQueue, ResourceFlavor fungibility,
BestEffortFIFO), on Tessera's quota rules (``snapshot.quotas``, tessera.core.quota):

* workloads in priority order, then by creation time; one that cannot be admitted does
  not block the ones behind it (BestEffortFIFO);
* each workload tries the accelerator types ("flavors") in its queue's order (the order
  of the Queue's ``quotas``; types no quota names after them, by name) and takes the
  **first** whose quota admits its gang (nominal first, then borrowing, as the quota rules
  allow) and where the gang has room; speed plays no part (Kueue is heterogeneity-agnostic);
* it never preempts: reclaim is the engine's, as for every policy.

Without queues it is first-flavor-that-fits by type name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tessera.core import ClusterSnapshot, Placement, Plan, Workload, explain_unfit
from tessera.core.admission import quota_usage
from tessera.policies.gang import place_on_first_flavor, queue_order
from tessera.policy import Decision, PolicyContext


class KueueLike:
    """Kueue-style admission (BestEffortFIFO, first flavor with quota and room, no speed awareness)."""

    name: ClassVar[str] = "kueue-like"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.ORDERING})

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        ledger = snapshot.ledger()
        usage = quota_usage(snapshot)
        present = snapshot.accelerator_types()
        placements: list[Placement] = []
        unplaced: dict[str, str] = {}
        for workload in queue_order(pending):
            allowed = {o.accelerator_type for o in workload.options} or set(present)
            flavors = [f for f in self._flavors(snapshot, workload, present) if f in allowed]
            found = place_on_first_flavor(snapshot, ledger, usage, workload, flavors)
            if found is None:
                unplaced[workload.key] = explain_unfit(ledger, workload)
                continue
            placements.append(Placement(workload.key, found[1], reason="kueue-like: first flavor with quota and room"))
        return Plan(placements=tuple(placements), unplaced=unplaced)

    @staticmethod
    def _flavors(snapshot: ClusterSnapshot, workload: Workload, present: frozenset[str]) -> list[str]:
        """The queue's flavor order (its quotas' order), then the other types present, by name."""
        tree = snapshot.quotas
        queue = tree.queues.get(workload.queue) if tree is not None else None
        listed = [t for t in (queue.quotas if queue is not None else ()) if t in present]
        return listed + sorted(t for t in present if t not in listed)
