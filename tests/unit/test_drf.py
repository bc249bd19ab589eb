"""The ``drf`` baseline (tessera.policies.drf): lowest weighted dominant share first."""

from __future__ import annotations

import dataclasses

from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement, Workload
from tessera.core.quota import Queue, QuotaTree, TypeQuota
from tessera.policies.drf import DominantResourceFairness
from tessera.policy import PolicyContext
from tessera.testing.builders import gang, nodes

CTX = PolicyContext(now_seconds=0.0, time_budget_seconds=1.0, deterministic=True)


def queued(workload: Workload, queue: str) -> Workload:
    return dataclasses.replace(workload, queue=queue)


def test_the_queue_with_the_lowest_dominant_share_goes_first_whatever_the_submit_order():
    tree = QuotaTree([Queue("org"), Queue("a", "org", {"V100": TypeQuota(16), "K80": TypeQuota(16)}),
                      Queue("b", "org", {"V100": TypeQuota(16), "K80": TypeQuota(16)})])
    # a holds 8 of the 16 K80 (dominant share 0.5); b holds 4 of the 16 V100 (0.25)
    running = [Allocation(queued(gang("ns/a0", 1, 8, ["K80"]), "a"), (ReplicaPlacement(0, "k-0", "K80"),)),
               Allocation(queued(gang("ns/b0", 1, 4, ["V100"]), "b"), (ReplicaPlacement(0, "v-0", "V100"),))]
    snapshot = ClusterSnapshot([*nodes("v", 2, "V100", 8), *nodes("k", 2, "K80", 8)], running, quotas=tree)
    pending = [queued(gang("ns/a1", 1, 8, ["V100"], submitted=0), "a"),  # first in line
               queued(gang("ns/b1", 1, 8, ["V100"], submitted=1), "b")]
    plan = DominantResourceFairness().decide(snapshot, pending, CTX)
    # room for one 8-GPU V100 gang (v-1): b's, the lower dominant share
    assert [p.workload for p in plan.placements] == ["ns/b1"]
    assert "ns/a1" in plan.unplaced


def test_a_gang_takes_the_type_that_keeps_its_queue_s_dominant_share_lowest():
    snapshot = ClusterSnapshot([*nodes("v", 1, "V100", 8), *nodes("k", 4, "K80", 8)])
    # 8 GPUs are 100 % of the V100 but 25 % of the K80: DRF takes K80 although V100 is faster
    plan = DominantResourceFairness().decide(snapshot, [gang("ns/j", 1, 8, [("V100", 5.0), ("K80", 1.0)])], CTX)
    assert plan.placements[0].replicas[0].node.startswith("k-")
