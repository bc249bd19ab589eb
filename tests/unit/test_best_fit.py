from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement
from tessera.engine import Engine
from tessera.policies.greedy import BestFit
from tessera.testing import gang, node


class FixedClock:
    def now(self) -> float:
        return 0.0


def run(snap, pending):
    return Engine(BestFit(), FixedClock()).decide(snap, pending)


def test_prefers_the_fastest_allowed_type():
    snap = ClusterSnapshot([node("a1", "A100", 8), node("h1", "H100", 8)])
    result = run(snap, [gang("ns/j", 1, 8, [("A100", 1.0), ("H100", 2.5)])])
    assert result.plan.placements[0].replicas[0].node == "h1"


def test_packs_onto_the_fullest_node():
    job = gang("ns/old", 1, 4, ["A100"])
    snap = ClusterSnapshot(
        [node("a1", "A100", 8), node("a2", "A100", 8)],
        [Allocation(job, (ReplicaPlacement(0, "a2", "A100", (0, 1, 2, 3)),))],
    )
    result = run(snap, [gang("ns/j", 1, 4, ["A100"])])
    assert result.plan.placements[0].replicas[0].node == "a2"


def test_gang_that_does_not_fit_waits_with_a_reason():
    snap = ClusterSnapshot([node("h1", "H100", 8), node("h2", "H100", 8)])
    result = run(snap, [gang("ns/big", 4, 8, ["H100"])])
    assert not result.plan.placements
    assert result.waiting["ns/big"] == "needs 4 replicas (8 accelerators each); 2 fit on H100"


def test_elastic_gang_takes_what_fits_down_to_min():
    snap = ClusterSnapshot([node("h1", "H100", 8), node("h2", "H100", 8)])
    result = run(snap, [gang("ns/el", (1, 4), 8, ["H100"])])
    assert len(result.plan.placements[0].replicas) == 2


def test_priority_goes_first():
    snap = ClusterSnapshot([node("h1", "H100", 8)])
    result = run(snap, [gang("ns/low", 1, 8, submitted=0), gang("ns/high", 1, 8, submitted=5, priority=5)])
    assert [p.workload for p in result.plan.placements] == ["ns/high"]
    assert "ns/low" in result.waiting


def test_a_failing_policy_leaves_everything_waiting():
    class Broken(BestFit):
        def decide(self, snapshot, pending, ctx):
            raise RuntimeError("boom")

    result = Engine(Broken(), FixedClock()).decide(ClusterSnapshot([node("h1")]), [gang("ns/a")])
    assert "boom" in result.error and "boom" in result.waiting["ns/a"]
