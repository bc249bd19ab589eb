import pytest

from tessera.core import (
    Allocation,
    CapacityError,
    ClusterSnapshot,
    ReplicaDemand,
    ReplicaPlacement,
    Workload,
    WorkloadKind,
)
from tessera.testing import gang, node


def test_replica_demand_rejects_whole_and_shared_together():
    with pytest.raises(ValueError, match="not both"):
        ReplicaDemand(accelerators=1, shared_milli=300)
    with pytest.raises(ValueError, match="between 1 and 999"):
        ReplicaDemand(accelerators=0, shared_milli=1000)


def test_workload_rejects_min_above_max():
    with pytest.raises(ValueError, match="min <= max"):
        Workload("ns/a", WorkloadKind.TRAINING, ReplicaDemand(), min_replicas=3, max_replicas=2)


def test_snapshot_derives_free_capacity_from_allocations():
    job = gang("ns/a", 2, 3, ["A100"], cpu_milli=1000)
    alloc = Allocation(job, (ReplicaPlacement(0, "n1", "A100", (0, 1, 2)), ReplicaPlacement(1, "n1", "A100", (3, 4, 5))))
    snap = ClusterSnapshot([node("n1", count=8, cpu_milli=4000)], [alloc])
    free = snap.free("n1")
    assert free.whole_devices == 2
    assert free.cpu_milli == 2000


def test_shared_devices_use_best_fit_within_a_node():
    snap = ClusterSnapshot([node("n1", count=2)])
    ledger = snap.ledger()
    d1 = ledger.take("n1", ReplicaDemand(accelerators=0, shared_milli=600))
    d2 = ledger.take("n1", ReplicaDemand(accelerators=0, shared_milli=300))
    assert d1 == (0,) and d2 == (0,)  # the fuller device is chosen while it has room
    d3 = ledger.take("n1", ReplicaDemand(accelerators=0, shared_milli=300))
    assert d3 == (1,)
    assert ledger.whole_free("n1") == 0
    with pytest.raises(CapacityError):
        ledger.take("n1", ReplicaDemand(accelerators=1))


def test_ledger_give_back_restores_capacity():
    ledger = ClusterSnapshot([node("n1", count=4)]).ledger()
    demand = ReplicaDemand(accelerators=3)
    devices = ledger.take("n1", demand)
    assert ledger.whole_free("n1") == 1
    ledger.give_back("n1", demand, devices)
    assert ledger.whole_free("n1") == 4


def test_snapshot_rejects_duplicate_nodes():
    with pytest.raises(ValueError, match="twice"):
        ClusterSnapshot([node("n1"), node("n1")])


def test_allows_and_throughput():
    w = gang("ns/a", 1, 1, [("H100", 3.0), "A100"])
    assert w.allows("H100") and w.allows("A100") and not w.allows("V100")
    assert w.throughput_on("H100") == 3.0 and w.throughput_on("A100") == 1.0
    cpu_only = gang("ns/b", 1, 0)
    assert cpu_only.allows(None)


def test_replicas_without_device_indices_get_them_so_release_frees_capacity():
    # the operator cannot see which devices a device plugin picked
    job = gang("ns/a", 2, 4, ["A100"])
    alloc = Allocation(job, (ReplicaPlacement(0, "n1", "A100"), ReplicaPlacement(1, "n1", "A100")))
    snap = ClusterSnapshot([node("n1", count=8)], [alloc])
    placed = snap.allocations["ns/a"].replicas
    assert [rp.devices for rp in placed] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    ledger = snap.ledger()
    assert ledger.whole_free("n1") == 0
    for rp in placed:
        ledger.give_back(rp.node, job.demand, rp.devices)
    assert ledger.whole_free("n1") == 8


def test_statement_commits_or_discards_exactly():
    job = gang("ns/a", 1, 4, ["A100"], cpu_milli=1000)
    running = Allocation(job, (ReplicaPlacement(0, "n1", "A100", (0, 1, 2, 3)),))
    ledger = ClusterSnapshot([node("n1", count=8, cpu_milli=4000)], [running]).ledger()
    before = ledger.free("n1")
    with ledger.statement() as statement:
        statement.give_back("n1", job.demand, (0, 1, 2, 3))
        statement.take("n1", job.demand)
        statement.take("n1", job.demand)
        assert ledger.whole_free("n1") == 0
    # left without commit: discarded, and exactly what was there before comes back
    assert ledger.free("n1") == before
    statement = ledger.statement()
    devices = statement.take("n1", job.demand)
    statement.commit()
    assert devices == (4, 5, 6, 7) and ledger.whole_free("n1") == 0 and ledger.cpu_free("n1") == 2000


def test_statements_nest_and_close_innermost_first():
    demand = ReplicaDemand(accelerators=2)
    ledger = ClusterSnapshot([node("n1", count=4)]).ledger()
    outer = ledger.statement()
    ledger.take("n1", demand)  # plain calls belong to the innermost open statement
    inner = ledger.statement()
    inner.take("n1", demand)
    with pytest.raises(RuntimeError, match="inner statement"):
        outer.commit()
    inner.commit()  # now part of the outer statement
    assert ledger.whole_free("n1") == 0
    outer.discard()
    assert ledger.whole_free("n1") == 4
    with pytest.raises(RuntimeError, match="closed"):
        outer.discard()


def test_failed_take_changes_nothing_and_hold_never_refuses():
    demand = ReplicaDemand(accelerators=3, cpu_milli=3000)
    ledger = ClusterSnapshot([node("n1", count=4, cpu_milli=4000)]).ledger()
    ledger.take("n1", demand)
    with pytest.raises(CapacityError):
        ledger.take("n1", demand)
    assert ledger.whole_free("n1") == 1 and ledger.cpu_free("n1") == 1000
    # replaying what already runs: the over-commit stays visible instead of raising
    assert ledger.hold("n1", demand, (1, 2, 3)) == (1, 2, 3)
    assert ledger.device_free("n1") == [0, -1000, -1000, 0] and ledger.cpu_free("n1") == -2000
