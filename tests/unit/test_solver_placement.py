"""Each constraint family of the CP-SAT placement model on a tiny instance with a known answer."""

import dataclasses

from tessera.core import Allocation, ClusterSnapshot, Node, ReplicaPlacement, Spread, Topology
from tessera.core.quota import Queue, QuotaTree, TypeQuota
from tessera.engine import Engine
from tessera.policies.cpsat import CpSat
from tessera.policies.greedy import BestFit
from tessera.testing import gang, node


class FixedClock:
    def now(self) -> float:
        return 0.0


def decide(snap, pending, policy=None, **kw):
    result = Engine(policy or CpSat(), FixedClock(), time_budget_seconds=5.0, deterministic=True, **kw).decide(
        snap, pending)
    assert not result.rejected, result.rejected  # every proposed action passes validation
    assert not result.error, result.error
    return result


def placed(result):
    return {p.workload: [r.node for r in p.replicas] for p in result.plan.placements}


def rack_node(name, accelerator_type="A100", count=8, rack="r1", zone="z1", nic="ib"):
    return Node(name, accelerator_type, count, cpu_milli=96_000, memory_mib=1_024_000,
                topology=Topology(zone=zone, domain=rack, nic=nic))


def busy(key, node_name, accelerator_type, devices, priority=0, **kw):
    job = gang(key, 1, len(devices), priority=priority, **kw)
    return Allocation(job, (ReplicaPlacement(0, node_name, accelerator_type, tuple(devices)),))


def test_per_node_capacity_caps_what_starts():
    snap = ClusterSnapshot([node("a1", "A100", 8), node("a2", "A100", 8)])
    result = decide(snap, [gang(f"ns/j{i}", 1, 8, submitted=i) for i in range(3)])
    assert sorted(placed(result)) == ["ns/j0", "ns/j1"]
    assert result.waiting["ns/j2"].endswith("0 fit on A100")


def test_gang_is_all_or_nothing_and_elastic_takes_what_fits():
    snap = ClusterSnapshot([node("a1", "A100", 8), node("a2", "A100", 8)])
    result = decide(snap, [gang("ns/rigid", 3, 8), gang("ns/elastic", (1, 4), 8, submitted=1)])
    assert "ns/rigid" not in placed(result)
    assert len(placed(result)["ns/elastic"]) == 2


def test_only_allowed_accelerator_types():
    snap = ClusterSnapshot([node("h1", "H100", 8), node("v1", "V100", 8)],
                           [busy("ns/old", "v1", "V100", range(8))])
    result = decide(snap, [gang("ns/v", 1, 4, ["V100"])])
    assert not placed(result)
    assert "0 fit on V100" in result.waiting["ns/v"]


def test_one_type_per_gang_unless_mixing_is_allowed():
    snap = ClusterSnapshot([node("h1", "H100", 8), node("a1", "A100", 8)])
    single = decide(snap, [gang("ns/g", 2, 8, ["H100", "A100"])])
    assert not placed(single)
    assert "of one type" in single.waiting["ns/g"]
    mixed = decide(snap, [gang("ns/g", 2, 8, ["H100", "A100"], mixed=True)])
    assert sorted(placed(mixed)["ns/g"]) == ["a1", "h1"]


def test_places_where_the_pair_runs_fastest_not_merely_where_it_fits():
    # greedy gives j the H100 (its fastest) and k the V100; k gains 3x on H100, j only 2.5x
    snap = ClusterSnapshot([node("a1", "A100", 8), node("h1", "H100", 8), node("v1", "V100", 8)])
    pending = [gang("ns/j", 2, 4, [("A100", 1.0), ("H100", 2.5)]), gang("ns/k", 1, 8, [("V100", 1.0), ("H100", 3.0)])]
    assert placed(decide(snap, pending, BestFit())) == {"ns/j": ["h1", "h1"], "ns/k": ["v1"]}
    assert placed(decide(snap, pending)) == {"ns/j": ["a1", "a1"], "ns/k": ["h1"]}


def test_higher_priority_wins_the_last_node():
    snap = ClusterSnapshot([node("h1", "H100", 8)])
    result = decide(snap, [gang("ns/low", 1, 8), gang("ns/high", 1, 8, submitted=5, priority=5)])
    assert list(placed(result)) == ["ns/high"]
    assert "room went to higher-value gangs" in result.waiting["ns/low"]


def test_tensor_parallel_groups_stay_inside_one_node():
    tp = gang("ns/tp", 2, 4)
    tp = type(tp)(**{**{f: getattr(tp, f) for f in tp.__dataclass_fields__}, "tensor_parallel": 8})
    # two nodes with 4 free each: 8 free accelerators but no node holds a group of 8
    split = ClusterSnapshot([node("a1", "A100", 8), node("a2", "A100", 8)],
                            [busy("ns/x", "a1", "A100", range(4)), busy("ns/y", "a2", "A100", range(4))])
    result = decide(split, [tp])
    assert not placed(result)
    assert "tensor-parallel groups of 8 stay inside one node" in result.waiting["ns/tp"]
    whole = ClusterSnapshot([node("a1", "A100", 8), node("a2", "A100", 8)], [busy("ns/x", "a1", "A100", range(4))])
    assert placed(decide(whole, [tp]))["ns/tp"] == ["a2", "a2"]


def test_inference_replicas_spread_across_nodes_and_zones():
    nodes = [node("a1", "A100", 8, zone="z1"), node("a2", "A100", 8, zone="z2")]
    by_node = decide(ClusterSnapshot(nodes), [gang("ns/svc", 3, 1, spread=Spread.NODE)])
    assert not placed(by_node)
    assert "spread across nodes needs 3 nodes, 2 have room" in by_node.waiting["ns/svc"]
    zones = [*nodes, node("a3", "A100", 8, zone="z2")]
    by_zone = decide(ClusterSnapshot(zones), [gang("ns/svc", 3, 1, spread=Spread.ZONE)])
    assert "spread across zones needs 3 zones, 2 have room" in by_zone.waiting["ns/svc"]
    ok = decide(ClusterSnapshot(zones), [gang("ns/svc", 2, 1, spread=Spread.ZONE)])
    assert {snap_zone(n) for n in placed(ok)["ns/svc"]} == {"z1", "z2"}


def snap_zone(name):
    return {"a1": "z1", "a2": "z2", "a3": "z2"}[name]


def test_replicas_of_one_gang_prefer_one_network_domain():
    # a1 (rack-a) is half used, so best fit would start there and split the gang
    nodes = [rack_node("a1", count=16, rack="rack-a"), rack_node("b1", rack="rack-b"), rack_node("b2", rack="rack-b")]
    snap = ClusterSnapshot(nodes, [busy("ns/old", "a1", "A100", range(8))])
    assert placed(decide(snap, [gang("ns/dp", 2, 8)]))["ns/dp"] == ["b1", "b2"]


def test_replicas_avoid_mixing_nic_classes():
    nodes = [rack_node("a1", count=16, rack="rack-a", nic="ib"),
             rack_node("c1", rack="rack-c", nic="roce"), rack_node("c2", rack="rack-c2", nic="roce")]
    snap = ClusterSnapshot(nodes, [busy("ns/old", "a1", "A100", range(8))])
    assert sorted(placed(decide(snap, [gang("ns/dp", 2, 8)]))["ns/dp"]) == ["c1", "c2"]


def test_fragmentation_fills_used_nodes_before_opening_new_ones():
    snap = ClusterSnapshot([node("fresh", "A100", 8), node("used", "A100", 8)],
                           [busy("ns/old", "used", "A100", range(6))])
    assert placed(decide(snap, [gang("ns/a", 1, 1), gang("ns/b", 1, 1)])) == {"ns/a": ["used"], "ns/b": ["used"]}


def test_exposes_solver_statistics_through_the_engine():
    result = decide(ClusterSnapshot([node("a1", "A100", 8)]), [gang("ns/a", 1, 8)])
    stats = result.stats
    assert stats["status"] == "OPTIMAL" and stats["gap"] == 0.0
    assert stats["chosen"] in ("cpsat", "greedy") and stats["pools"] == 1
    assert stats["decision_seconds"] >= 0 and stats["objective"] > 0


def test_running_work_moves_to_a_faster_type_when_the_gain_beats_the_restart_cost():
    job = gang("ns/run", 1, 8, [("V100", 1.0), ("H100", 3.0)])
    snap = ClusterSnapshot([node("v1", "V100", 8), node("h1", "H100", 8)], [busy_on(job, "v1", "V100")])
    (move,) = decide(snap, []).plan.migrations
    assert move.workload == "ns/run" and move.to.node == "h1"
    assert "faster H100" in move.reason and move.estimated_cost_seconds == job.restart_cost_seconds


def test_a_job_that_has_not_run_for_its_restart_cost_since_it_started_is_not_moved():
    # it would pay a restart again before it earned back the last one: moving jobs back and
    # forth (each restart placing it where quota or room allows) could go on for ever
    job = gang("ns/run", 1, 8, [("V100", 1.0), ("H100", 3.0)])
    snap = ClusterSnapshot([node("v1", "V100", 8), node("h1", "H100", 8)],
                           [busy_on(job, "v1", "V100", started=-job.restart_cost_seconds / 2)])
    assert not decide(snap, []).plan.migrations


def test_no_move_to_a_type_the_job_s_queue_would_not_admit_it_on():
    quotas = QuotaTree([Queue("org"), Queue("team", "org", {"V100": TypeQuota(8)}),
                        Queue("other", "org", {"H100": TypeQuota(8, lending_limit=0)})])
    job = dataclasses.replace(gang("ns/run", 1, 8, [("V100", 1.0), ("H100", 3.0)]), queue="team")
    snap = ClusterSnapshot([node("v1", "V100", 8), node("h1", "H100", 8)], [busy_on(job, "v1", "V100")],
                           quotas=quotas)
    assert not decide(snap, []).plan.migrations  # H100 is free, but other never lends it
    lent = QuotaTree([Queue("org"), Queue("team", "org", {"V100": TypeQuota(8)}),
                      Queue("other", "org", {"H100": TypeQuota(8)})])
    snap = ClusterSnapshot([node("v1", "V100", 8), node("h1", "H100", 8)], [busy_on(job, "v1", "V100")],
                           quotas=lent)
    assert decide(snap, []).plan.migrations


def test_no_move_when_the_restart_costs_more_than_the_gain():
    job = gang("ns/run", 1, 8, [("V100", 1.0), ("H100", 1.1)])
    job = type(job)(**{**{f: getattr(job, f) for f in job.__dataclass_fields__}, "restart_cost_seconds": 600.0})
    snap = ClusterSnapshot([node("v1", "V100", 8), node("h1", "H100", 8)], [busy_on(job, "v1", "V100")])
    assert not decide(snap, []).plan.migrations


def busy_on(job, node_name, accelerator_type, started=-3600.0):
    """``job`` running on one node since ``started`` (an hour before the decisions' clock)."""
    return Allocation(job, (ReplicaPlacement(0, node_name, accelerator_type, tuple(range(job.demand.accelerators))),),
                      started_at_seconds=started)


def test_best_fit_prefers_the_fuller_of_two_used_nodes():
    snap = ClusterSnapshot([node("light", "A100", 8), node("heavy", "A100", 8)],
                           [busy("ns/x", "light", "A100", range(2)), busy("ns/y", "heavy", "A100", range(6))])
    assert placed(decide(snap, [gang("ns/a", 1, 1)])) == {"ns/a": ["heavy"]}
