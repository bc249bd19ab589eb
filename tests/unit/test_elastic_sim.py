"""Failure modes in the simulator on hand-checked runs: elastic reshards, restart requeues, none stalls."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.core import AcceleratorOption, ReplicaDemand, Workload, WorkloadKind
from tessera.policy import load_policy
from tessera.sim import failures
from tessera.sim.models import NodeEvent, SimWorkload, ThroughputModel
from tessera.sim.report import summarize
from tessera.sim.scenario import load_scenario
from tessera.sim.simulator import FAILURE_MODES, SimConfig, Simulator
from tessera.testing import node

ROOT = Path(__file__).resolve().parents[2]
# 4 nodes of one GPU each; one job wants all 4 (min 2); node n-3 fails at 1000 s and returns at 5000 s
CLUSTER = [node(f"n-{i}", "A100", 1) for i in range(4)]
EVENTS = [NodeEvent(1000.0, "n-3", False), NodeEvent(5000.0, "n-3", True)]
WORK = 40_000.0  # 10 000 s at 4 replicas x 1.0/s


def training(batch: int | None = None) -> SimWorkload:
    w = Workload(
        key="j", kind=WorkloadKind.TRAINING, demand=ReplicaDemand(accelerators=1), min_replicas=2, max_replicas=4,
        options=(AcceleratorOption("A100", 1.0),), restart_cost_seconds=100.0, global_batch_size=batch,
        micro_batch_size=4 if batch else None,
    )
    return SimWorkload(w, ThroughputModel({"A100": 1.0}), work=WORK)


def simulate(mode: str, batch: int | None = None, rigid: bool = True) -> Simulator:
    workloads = failures.workloads_for_mode(mode, [training(batch)], rigid_baselines=rigid)
    policy = failures.policy_for_mode(mode, load_policy("best-fit"))
    config = SimConfig(checkpoint_interval_seconds=600.0, round_seconds=60.0, cycle_when_idle=True)
    return Simulator(CLUSTER, workloads, policy, config, node_events=EVENTS,
                     failure_handler=FAILURE_MODES[mode](), observers=[failures.GoodputObserver()]).run()


def test_modes_are_registered():
    assert {"elastic", "restart", "none"} <= set(FAILURE_MODES)


def test_elastic_shrinks_then_grows_back():
    sim = simulate("elastic")
    job = sim.jobs["j"]
    # 1000 s at rate 4 = 4000; the failure rolls back 400 s (checkpoint every 600 s) -> 2400
    # reshard to 3 at 1000 (100 s pause), runs 3/s until the grow at 5000 + hysteresis wait
    assert job.lost_work == pytest.approx(1600.0)
    assert job.reshards == 2 and job.restarts == 0
    # grow: node back at 5000; hysteresis 300 s since the reshard at 1000 has passed -> grows at 5000
    # progress by 5000: 2400 + 3 x 3900 = 14100; pause 100 s; then 4/s for the remaining 25900 -> 6475 s
    assert job.finish == pytest.approx(5000.0 + 100.0 + (WORK - 14100.0) / 4.0)
    record = summarize(sim)
    assert record["goodput"] == pytest.approx(WORK / 3600.0)  # all work kept at the end
    assert record["lost_work_accelerator_hours"] == pytest.approx(1600.0 / 3600.0)


def test_elastic_keeps_the_global_batch_exact():
    sim = simulate("elastic", batch=64)  # 3 replicas cannot split 64 evenly -> runs on 2
    job = sim.jobs["j"]
    assert job.reshards == 2
    assert job.finish == pytest.approx(5000.0 + 100.0 + (WORK - 2400.0 - 2 * 3900.0) / 4.0)


def test_restart_requeues_at_full_size_and_waits_for_the_node():
    sim = simulate("restart")
    job = sim.jobs["j"]
    assert job.restarts == 1 and job.reshards == 0
    # stopped at 1000 with 2400 kept; restarts when n-3 returns at 5000, pays 100 s
    assert job.finish == pytest.approx(5000.0 + 100.0 + (WORK - 2400.0) / 4.0)


def test_restart_with_elastic_range_comes_back_smaller_and_stays_small():
    sim = simulate("restart", rigid=False)
    job = sim.jobs["j"]
    assert job.restarts == 1
    # restarted at once on 3 replicas, never grows: 2400 + 3/s after 100 s
    assert job.finish == pytest.approx(1000.0 + 100.0 + (WORK - 2400.0) / 3.0)


def test_none_stalls_until_the_node_returns():
    sim = simulate("none")
    job = sim.jobs["j"]
    assert job.restarts == 0 and job.reshards == 0 and job.failures == 1
    assert job.finish == pytest.approx(5000.0 + 100.0 + (WORK - 2400.0) / 4.0)


def test_elastic_beats_restart_on_this_run():
    assert simulate("elastic").jobs["j"].finish < simulate("restart").jobs["j"].finish


def test_below_min_releases_and_requeues_with_progress_kept():
    events = [NodeEvent(1000.0, f"n-{i}", False) for i in (1, 2, 3)] + [
        NodeEvent(3000.0, f"n-{i}", True) for i in (1, 2, 3)
    ]
    config = SimConfig(checkpoint_interval_seconds=600.0, round_seconds=60.0, cycle_when_idle=True)
    sim = Simulator(CLUSTER, [training()], failures.policy_for_mode("elastic", load_policy("best-fit")), config,
                    node_events=events, failure_handler=FAILURE_MODES["elastic"]()).run()
    job = sim.jobs["j"]
    assert job.restarts == 1 and sim.preemptions == 0  # released after failure, not preempted
    assert job.finish == pytest.approx(3000.0 + 100.0 + (WORK - 2400.0) / 4.0)


def test_shipped_scenario_runs_three_modes_with_same_failures():
    scenario = load_scenario(ROOT / "sim" / "scenarios" / "node-failures.yaml")
    assert scenario.failure_modes == ["elastic", "restart", "none"]
    events = scenario.node_events_for(0)
    assert events == scenario.node_events_for(0) and events != scenario.node_events_for(1)
    assert sum(1 for e in events if not e.up) > 10


@pytest.mark.data
def test_helios_scenario_builds_availability_events(shared_data: Path):
    scenario = load_scenario(ROOT / "sim" / "scenarios" / "node-failures-helios.yaml")
    events = scenario.node_events_for(0)
    assert sum(1 for e in events if not e.up) > 20
    assert {e.node for e in events} <= {n.name for n in scenario.nodes}


def test_remaining_seconds_are_exposed_to_the_policy_when_asked():
    seen: list[float] = []

    class Probe(failures.Observer):
        def on_cycle(self, sim: Simulator, result: object) -> None:
            job = sim.jobs.get("j")
            if job is not None and job.alloc is not None and "tessera.dev/remaining-seconds" in job.workload.attributes:
                seen.append(float(job.workload.attributes["tessera.dev/remaining-seconds"]))

    config = SimConfig(round_seconds=600.0, cycle_when_idle=True, expose_remaining_seconds=True)
    Simulator(CLUSTER, [training()], load_policy("best-fit"), config, observers=[Probe()]).run()
    # 4 replicas at 1.0/s: 10 000 s of work from t=0, cycles every 600 s see what is left then
    assert seen[0] == pytest.approx(WORK / 4.0)
    assert seen[1:4] == pytest.approx([WORK / 4.0 - 600.0 * k for k in (1, 2, 3)])
    quiet = Simulator(CLUSTER, [training()], load_policy("best-fit"), SimConfig()).run()
    assert "tessera.dev/remaining-seconds" not in quiet.jobs["j"].workload.attributes


def test_scenario_elastic_settings_default_to_the_policy_defaults_and_reach_the_wrapper():
    from tessera.policies.elastic import ElasticSettings, ElasticWrapper
    from tessera.sim.scenario import scenario_from_dict

    scenario = load_scenario(ROOT / "sim" / "scenarios" / "node-failures.yaml")
    assert scenario.elastic_settings == ElasticSettings()
    import yaml

    raw = yaml.safe_load((ROOT / "sim" / "scenarios" / "node-failures.yaml").read_text())
    raw["failures"]["elastic"] = {"grow_before_placement": True, "hysteresis_seconds": 60}
    settings = scenario_from_dict(raw).elastic_settings
    assert settings.grow_before_placement and settings.hysteresis_seconds == 60.0
    wrapped = failures.policy_for_mode("elastic", load_policy("best-fit"), settings)
    assert isinstance(wrapped, ElasticWrapper) and wrapped.settings == settings


@pytest.mark.parametrize("mode", ["none", "restart", "elastic"])
def test_replicas_on_a_down_node_are_not_busy_time(mode: str):
    sim = simulate(mode)
    busy_seconds = sim.busy_milli_seconds["A100"] / 1000.0
    capacity_seconds = sim.capacity_milli_seconds["A100"] / 1000.0
    assert busy_seconds <= capacity_seconds + 1e-6
    if mode == "none":  # holds all 4 replicas throughout; n-3 is down from 1000 s to 5000 s
        finish = sim.jobs["j"].finish
        assert finish is not None
        assert busy_seconds == pytest.approx(4 * finish - 4000.0)
