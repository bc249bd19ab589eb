"""The serving simulation behind the rebalancing experiments, on a tiny synthetic cluster."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tessera.core import Migration, Node, ReplicaAssignment, Topology
from tessera.sim.inference_load import Capacity
from tessera.sim.rebalance_sim import (
    Experiment,
    RebalanceSection,
    ServiceSetup,
    ServingSimulation,
    weighted_percentile,
)

STEP = 5.0
HALF = 360  # steps: 30 minutes


def experiment(policy_params: dict | None = None) -> Experiment:
    settings = RebalanceSection(
        step_seconds=STEP, period_seconds=60, slo_seconds=6, perf_path="unused", model="m", tensor_parallel=4,
        capacity_latency_seconds=3, hardware={"H100": "h", "A100": "a"}, total_requests_per_second=6.5,
        hot_share=0.9, phase_seconds=1800, max_unavailable=2,
        attributes={"tessera.dev/weights-gib": "64"},
    )
    nodes = [Node("h100-0", "H100", 8, topology=Topology("z1", "r1"))] + [
        Node(f"a100-{i}", "A100", 8, topology=Topology("z1", "r2")) for i in range(3)
    ]
    return Experiment(
        name="tiny",
        nodes=tuple(nodes),
        services=(ServiceSetup("a", 2, 4, {}), ServiceSetup("b", 2, 4, {})),
        trace_path=Path("unused"),
        perf_path=Path("unused"),
        settings=settings,
        policies=("rebalance-cost-aware", "rebalance-cost-blind"),
        policy_params=policy_params or {"rebalance-cost-aware": {"cooldown_seconds": 300}},
        seeds=(0,),
        duration_seconds=2 * HALF * STEP,
    )


#: a is hot in the first half hour, b in the second
SERIES = {"a": [6.0] * HALF + [0.5] * HALF, "b": [0.5] * HALF + [6.0] * HALF}
CAPACITY = {"H100": Capacity(4.0, 16, 3.0, 1.0), "A100": Capacity(1.0, 4, 3.0, 1.5)}


class Watched(ServingSimulation):
    """Records the most replicas of one service ever moving at once."""

    most_moving = 0

    def _advance_moves(self) -> None:
        super()._advance_moves()
        per_service = Counter(m.replica.service for m in self.queue)
        self.most_moving = max([self.most_moving, *per_service.values()])


def test_initial_placement_puts_the_first_service_on_the_fast_type():
    sim = ServingSimulation(experiment(), SERIES, CAPACITY, "off")
    assert {sim.replicas["a", i].node for i in range(2)} == {"h100-0"}
    assert all(sim.replicas["b", i].node.startswith("a100") for i in range(2))


def test_cost_aware_follows_the_hot_service_and_beats_off():
    off = ServingSimulation(experiment(), SERIES, CAPACITY, "off").run()
    sim = Watched(experiment(), SERIES, CAPACITY, "rebalance-cost-aware")
    aware = sim.run()
    # off: b overloads its A100s (3 req/s per replica against 1) for the whole second half
    assert off.per_service_slo["b"] < 0.2
    assert aware.per_service_slo["b"] > 0.8
    assert aware.slo_attainment > off.slo_attainment + 0.3
    # a off the H100 node (stage 1), b on (stage 2): four moves, two at a time at most
    assert aware.migrations == 4
    assert sim.most_moving <= 2
    assert {sim.replicas["b", i].node for i in range(2)} == {"h100-0"}


def wobbly(hot_first: bool) -> list[float]:
    """Hot for one half hour; the cold half flips between 0.3 and 1.7 req/s every minute."""
    cold = [0.3 if (i // 12) % 2 else 1.7 for i in range(HALF)]
    return [6.0] * HALF + cold if hot_first else cold + [6.0] * HALF


def test_cost_blind_chases_noise_cost_aware_does_not():
    series = {"a": wobbly(True), "b": wobbly(False)}
    aware = ServingSimulation(experiment(), series, CAPACITY, "rebalance-cost-aware").run()
    blind = ServingSimulation(experiment(), series, CAPACITY, "rebalance-cost-blind").run()
    assert blind.migrations > aware.migrations  # the scale of the difference: bench_rebalance
    assert aware.slo_attainment >= blind.slo_attainment - 0.01


def test_executor_refuses_a_second_move_of_a_moving_replica():
    sim = ServingSimulation(experiment(), SERIES, CAPACITY, "off")
    move = Migration("b", 0, ReplicaAssignment("a100-2"))
    sim._enqueue(move)
    sim._enqueue(move)
    assert sim.refused == 1 and len(sim.queue) == 1


def test_a_move_takes_cold_start_then_cut_over():
    sim = ServingSimulation(experiment(), SERIES, CAPACITY, "off")
    replica = sim.replicas["b", 0]
    sim._enqueue(Migration("b", 0, ReplicaAssignment("a100-2")))
    move = sim.queue[0]
    sim._advance_moves()
    assert move.started_at == 0.0 and replica.serving
    # 5 s scheduling + 8 GiB / 0.5 GiB/s image + 64 GiB / 2 GiB/s weights = 53 s cold start
    assert move.cold_start_seconds == pytest.approx(53.0)
    sim.clock.t = 53.0
    sim._advance_moves()
    assert not replica.serving  # the KV cache is in transit
    sim.clock.t = 53.0 + move.transfer_seconds
    sim._advance_moves()
    assert replica.serving and replica.node == "a100-2" and not sim.queue


def test_weighted_percentile():
    assert weighted_percentile([(1.0, 98.0), (5.0, 1.0), (9.0, 1.0)], 0.99) == 5.0
    assert weighted_percentile([(1.0, 1.0), (float("inf"), 1.0)], 0.99) == float("inf")


@pytest.mark.data
@pytest.mark.slow
def test_skewed_inference_scenario_reports_every_mode(shared_data, tmp_path, monkeypatch):
    import json

    from tessera.cli import main

    monkeypatch.setenv("TESSERA_DATA", str(shared_data))
    scenario = Path(__file__).resolve().parents[2] / "sim" / "scenarios" / "skewed-inference.yaml"
    out = tmp_path / "skewed.json"
    assert main(["sim", "run", "--scenario", str(scenario), "--seed", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"off", "cost-blind", "cost-aware"}
    for mode in report["modes"].values():
        assert 0.0 <= mode["slo_attainment"] <= 1.0
        assert mode["migrations"] >= 0
    assert report["modes"]["off"]["migrations"] == 0
    assert report["capacity_requests_per_second"]["H100"] > report["capacity_requests_per_second"]["A100"]
