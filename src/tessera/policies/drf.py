"""``drf``: Dominant Resource Fairness across queues, a baseline for queues.

Reimplemented from Ghodsi et al. (NSDI'11) as queue-level schedulers apply it (YARN's
DominantResourceFairnessPolicy, Volcano's ``drf`` plugin), on Tessera's quota rules
(``snapshot.quotas``, tessera.core.quota):

* each accelerator type is a resource; a queue's *dominant share* is the largest, over
  types, of the accelerators of that type it uses divided by the cluster's accelerators
  of that type, divided by the queue's weight (workloads without a queue form one more
  tenant, weight 1);
* progressive filling: the queue with the lowest dominant share offers its next workload
  (priority, then creation time); a workload that cannot start is passed over and the
  queue offers its next one (as BestEffortFIFO), until no queue has one left;
* a workload takes, among the types its queue's quota admits and where its gang has room,
  the one that leaves its queue's dominant share lowest (ties: by type name); speed plays
  no part (DRF is heterogeneity-agnostic);
* it never preempts: reclaim is the engine's, as for every policy.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence
from typing import ClassVar

from tessera.core import ClusterSnapshot, Placement, Plan, Workload, explain_unfit
from tessera.core.admission import quota_usage
from tessera.policies.gang import place_on_first_flavor, queue_order
from tessera.policy import Decision, PolicyContext


class DominantResourceFairness:
    """DRF across queues (lowest weighted dominant share first, no speed awareness)."""

    name: ClassVar[str] = "drf"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.ORDERING})

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        ledger = snapshot.ledger()
        usage = quota_usage(snapshot)
        capacity: Counter[str] = Counter()
        for candidate in snapshot.nodes.values():
            if candidate.accelerator_type and candidate.usable:
                capacity[candidate.accelerator_type] += candidate.accelerator_count
        used: defaultdict[str, Counter[str]] = defaultdict(Counter)  # queue -> type -> milli
        for allocation in snapshot.allocations.values():
            for replica in allocation.replicas:
                node = snapshot.nodes.get(replica.node)
                if node is not None and node.accelerator_type:
                    used[allocation.workload.queue][node.accelerator_type] += allocation.workload.demand.accelerator_milli
        tree = snapshot.quotas

        def weight(queue: str) -> float:
            q = tree.queues.get(queue) if tree is not None else None
            return q.weight if q is not None else 1.0

        def dominant(queue: str, extra: Mapping[str, int] | None = None) -> float:
            share = 0.0
            for t, cap in capacity.items():
                milli = used[queue][t] + (extra or {}).get(t, 0)
                share = max(share, milli / (1000 * cap))
            return share / weight(queue)

        queues: dict[str, deque[Workload]] = defaultdict(deque)
        for workload in queue_order(pending):
            queues[workload.queue].append(workload)
        present = snapshot.accelerator_types()
        placements: list[Placement] = []
        unplaced: dict[str, str] = {}
        while queues:
            queue = min(queues, key=lambda q: (dominant(q), q))
            workload = queues[queue].popleft()
            if not queues[queue]:
                del queues[queue]
            allowed = sorted({o.accelerator_type for o in workload.options} or present)
            need = max(1, workload.target_replicas) * workload.demand.accelerator_milli
            order = sorted((t for t in allowed if t in present),
                           key=lambda t: (dominant(queue, {t: need}), t))
            found = place_on_first_flavor(snapshot, ledger, usage, workload, order)
            if found is None:
                unplaced[workload.key] = explain_unfit(ledger, workload)
                continue
            flavor, chosen = found
            used[queue][flavor] += len(chosen) * workload.demand.accelerator_milli
            placements.append(Placement(workload.key, chosen, reason="drf: lowest dominant share first"))
        return Plan(placements=tuple(placements), unplaced=unplaced)
