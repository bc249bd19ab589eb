"""The CP-SAT rebalancer on tiny instances whose best move set is known by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tessera.core import (
    Allocation,
    ClusterSnapshot,
    ReplicaPlacement,
    Spread,
    Workload,
    WorkloadKind,
    validate_plan,
)
from tessera.core.migration import ATTR_MAX_UNAVAILABLE
from tessera.policies.rebalance import RebalanceCostAware, RebalanceCostBlind, utilisation_spread
from tessera.policy import PolicyContext
from tessera.solver.rebalance import RebalanceConfig, RebalanceModel
from tessera.testing.builders import gang, node

NOW = 10_000.0


def service(key: str, replicas: int, max_unavailable: int = 1, spread: Spread = Spread.NONE) -> Workload:
    """An inference service: 2 req/s per replica on A100, 4 on H100, one GPU each."""
    w = gang(key, replicas, 1, (("A100", 2.0), ("H100", 4.0)), kind=WorkloadKind.INFERENCE, mixed=True, spread=spread)
    return replace(w, attributes={ATTR_MAX_UNAVAILABLE: str(max_unavailable)})


def running(w: Workload, nodes: list[tuple[str, str, tuple[int, ...]]], load: float, since: float = 0.0) -> Allocation:
    return Allocation(
        w,
        tuple(ReplicaPlacement(i, n, t, d, since_seconds=since) for i, (n, t, d) in enumerate(nodes)),
        observed_load_per_second=load,
    )


def hot_cold(hot_load: float = 6.0, free_h100: int = 2, hot_unavailable: int = 2, since: float = 0.0) -> ClusterSnapshot:
    """hot (2 replicas, 3 req/s each = 150% of an A100) on a100-1; cold on h100-1; h100-2 spare."""
    nodes = [node("a100-1", "A100", 2), node("h100-1", "H100", 2), node("h100-2", "H100", 2)]
    allocations = [
        running(service("hot", 2, hot_unavailable), [("a100-1", "A100", (0,)), ("a100-1", "A100", (1,))], hot_load, since),
        running(service("cold", 2), [("h100-1", "H100", (0,)), ("h100-1", "H100", (1,))], 0.4, since),
    ]
    if free_h100 < 2:
        blocker = gang("blocker", 1, 2 - free_h100, ("H100",))
        allocations.append(Allocation(blocker, (ReplicaPlacement(0, "h100-2", "H100", tuple(range(2 - free_h100))),)))
    return ClusterSnapshot(nodes, allocations, now_seconds=NOW)


def solve(snapshot: ClusterSnapshot, **config: object):
    """One-stage rounds unless a test asks for more: every target has room now."""
    config.setdefault("stages", 1)
    return RebalanceModel(snapshot, RebalanceConfig(deterministic=True, **config), now_seconds=NOW).solve()  # type: ignore[arg-type]


def targets(result) -> list[tuple[str, int, str]]:
    return [(m.workload, m.replica, m.target) for m in result.moves]


def test_best_move_set_moves_the_hot_service_to_the_spare_fast_node():
    result = solve(hot_cold())
    # both hot replicas to the empty H100 node: utilisation 1.5 -> 0.75 (< target 0.8)
    assert targets(result) == [("hot", 0, "h100-2"), ("hot", 1, "h100-2")]
    # SLO risk 2 x (1.5 - 0.8) x 300 s = 420 and peak 0.1 x 300 x 1.5 = 45 before;
    # after: peak 0.1 x 300 x 0.75 = 22.5, plus the two moves' cost
    assert result.baseline_seconds == pytest.approx(465.0)
    move_cost = sum(m.cost_seconds for m in result.moves)
    assert result.objective_seconds == pytest.approx(22.5 + move_cost, abs=0.01)
    assert move_cost == pytest.approx(2 * (0.6872 + 0.1 * 29.6872), abs=0.01)  # same zone, no shared rack


def test_plan_passes_validation_make_before_break():
    snapshot = hot_cold()
    plan = RebalanceCostAware(RebalanceConfig(deterministic=True)).decide(snapshot, [], PolicyContext(now_seconds=NOW))
    validated = validate_plan(snapshot, [], plan)
    assert validated.ok, validated.rejected
    assert sum(m.workload == "hot" for m in plan.migrations) == 2
    assert all(m.estimated_cost_seconds > 0 for m in plan.migrations)


def test_max_unavailable_limits_moves_per_service():
    result = solve(hot_cold(hot_unavailable=1))
    assert len(result.moves) == 1
    assert result.moves[0].workload == "hot"
    assert result.moves[0].target == "h100-2"


def test_budget_limits_moves_per_round():
    assert len(solve(hot_cold(), budget_moves=1).moves) == 1
    assert solve(hot_cold(), budget_moves=0).moves == ()


def test_capacity_must_be_free_on_the_target_before_release():
    # one free H100 device: only one replica can land there, though both want to
    result = solve(hot_cold(free_h100=1))
    assert targets(result) == [("hot", 0, "h100-2")] or targets(result) == [("hot", 1, "h100-2")]


def swap_cluster() -> ClusterSnapshot:
    """h100-1 is full of cold replicas, there is no spare H100, a100-2 is empty."""
    nodes = [node("a100-1", "A100", 2), node("h100-1", "H100", 2), node("a100-2", "A100", 2)]
    return ClusterSnapshot(
        nodes,
        [
            running(service("hot", 2, 2), [("a100-1", "A100", (0,)), ("a100-1", "A100", (1,))], 6.0),
            running(service("cold", 2, 2), [("h100-1", "H100", (0,)), ("h100-1", "H100", (1,))], 0.4),
        ],
        now_seconds=NOW,
    )


def test_one_stage_cannot_swap_through_capacity_freed_in_the_same_round():
    # the swap hot<->cold needs cold's devices released before hot's replicas start there
    result = solve(swap_cluster(), stages=1)
    assert all(m.target != "h100-1" for m in result.moves)


def test_two_stages_swap_cold_off_the_fast_node_then_hot_on():
    result = solve(swap_cluster(), stages=2)
    stage1 = sorted((m.workload, m.target) for m in result.moves if m.stage == 1)
    stage2 = sorted((m.workload, m.target) for m in result.moves if m.stage == 2)
    assert stage1 == [("cold", "a100-2"), ("cold", "a100-2")]
    assert stage2 == [("hot", "h100-1"), ("hot", "h100-1")]
    # listed stage by stage, the plan validates make-before-break move after move
    plan = RebalanceCostAware(RebalanceConfig(deterministic=True, stages=2)).decide(
        swap_cluster(), [], PolicyContext(now_seconds=NOW)
    )
    assert [m.workload for m in plan.migrations] == ["cold", "cold", "hot", "hot"]
    assert validate_plan(swap_cluster(), [], plan).ok


def test_cooldown_pins_recently_moved_replicas():
    assert solve(hot_cold(since=NOW - 100), cooldown_seconds=600).moves == ()
    assert len(solve(hot_cold(since=NOW - 700), cooldown_seconds=600).moves) == 2


def test_net_gain_threshold_blocks_small_gains():
    # gain is 465 - (22.5 + ~6.6) ~ 436 replica-seconds
    assert solve(hot_cold(), net_gain_threshold_seconds=500).moves == ()
    assert len(solve(hot_cold(), net_gain_threshold_seconds=400).moves) == 2


def test_cost_aware_stays_put_when_moving_costs_more_than_it_gains():
    # hot at 1.65 req/s per replica: 82.5% of an A100, 2.5% over target: SLO risk
    # 2 x 0.025 x 300 = 15 s, peak 0.1 x 300 x 0.825 = 24.75 s; both to h100-2 leaves a
    # peak of 12.375 s and costs 2 x 3.66 s: a gain of ~20 s, under the 30 s threshold
    snapshot = hot_cold(hot_load=3.3)
    assert solve(snapshot).moves == ()
    blind = RebalanceCostBlind(imbalance_threshold=0.2).decide(snapshot, [], PolicyContext(now_seconds=NOW))
    assert sum(m.workload == "hot" for m in blind.migrations) == 2  # the baseline moves anyway


def test_cost_blind_waits_until_imbalance_exceeds_threshold():
    snapshot = hot_cold(hot_load=0.8)  # hot at 20% of an A100; cold at 5% of an H100
    assert utilisation_spread(snapshot) == pytest.approx(0.2 - 0.05)
    ctx = PolicyContext(now_seconds=NOW)
    quiet = RebalanceCostBlind(imbalance_threshold=0.2)
    assert quiet.decide(snapshot, [], ctx).migrations == ()
    assert quiet.last_result is None  # the solver did not even run
    eager = RebalanceCostBlind(imbalance_threshold=0.1)
    eager.decide(snapshot, [], ctx)
    assert eager.last_result is not None


def test_training_is_not_moved_by_default():
    nodes = [node("a", "A100", 8), node("b", "A100", 8)]
    job = gang("job", 1, 4, ("A100",))
    snapshot = ClusterSnapshot(nodes, [Allocation(job, (ReplicaPlacement(0, "a", "A100", (0, 1, 2, 3)),))], now_seconds=NOW)
    assert solve(snapshot, net_gain_threshold_seconds=0).moves == ()


def test_node_spread_is_respected():
    # hot must keep its replicas on distinct nodes: only one may join h100-2... and the other
    # H100 node is full, so exactly one replica moves
    nodes = [node("a100-1", "A100", 2), node("a100-2", "A100", 2), node("h100-1", "H100", 2), node("h100-2", "H100", 2)]
    hot = service("hot", 2, 2, spread=Spread.NODE)
    snapshot = ClusterSnapshot(
        nodes,
        [
            running(hot, [("a100-1", "A100", (0,)), ("a100-2", "A100", (0,))], 6.0),
            running(service("cold", 2, 2), [("h100-1", "H100", (0,)), ("h100-1", "H100", (1,))], 0.4),
        ],
        now_seconds=NOW,
    )
    result = solve(snapshot)
    assert [m.target for m in result.moves] == ["h100-2"]


def test_same_type_only_without_mixing():
    nodes = [node("a100-1", "A100", 2), node("h100-1", "H100", 2)]
    w = replace(service("hot", 1), allow_mixed_types=False)
    snapshot = ClusterSnapshot(nodes, [running(w, [("a100-1", "A100", (0,))], 3.0)], now_seconds=NOW)
    assert solve(snapshot, net_gain_threshold_seconds=0).moves == ()


def test_policy_params_override_config():
    snapshot = hot_cold()
    ctx = PolicyContext(now_seconds=NOW, params={"rebalance.budget_moves": "1", "rebalance.deterministic": "true"})
    assert len(RebalanceCostAware().decide(snapshot, [], ctx).migrations) == 1


def test_registered_in_entry_points():
    from tessera.policy import available_policies

    names = {p.name for p in available_policies()}
    assert {"rebalance-cost-aware", "rebalance-cost-blind"} <= names


def test_settings_as_constructor_keywords():
    policy = RebalanceCostAware(budget_moves=1, net_gain_threshold_seconds=10.0)
    assert policy.config.budget_moves == 1 and policy.config.net_gain_threshold_seconds == 10.0
    with pytest.raises(TypeError, match="unknown rebalance settings"):
        RebalanceCostAware(budget=1)
