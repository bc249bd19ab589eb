"""In-memory resharding in the simulator: survivors keep their progress, only the reshard pause is paid.

Same hand-checked setting as ``test_elastic_sim.py``: 4 one-GPU nodes, one job of 4 replicas
(min 2) with 40 000 units of work at 1.0/s per replica, checkpoints every 600 s, restart cost
100 s; node n-3 fails at 1000 s and returns at 5000 s.  At the failure the job has done 4000
units, 1600 of them (the last 400 s at 4/s) since its last checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from tessera.core import AcceleratorOption, ReplicaDemand, Workload, WorkloadKind
from tessera.policies.elastic import DP_STATE_ATTRIBUTE, RESHARD_COST_ATTRIBUTE
from tessera.policy import load_policy
from tessera.sim import failures
from tessera.sim.models import NodeEvent, SimWorkload, ThroughputModel
from tessera.sim.run_cli import run_scenario
from tessera.sim.scenario import load_scenario, scenario_from_dict
from tessera.sim.simulator import FAILURE_MODES, SimConfig, Simulator
from tessera.testing import node

CLUSTER = [node(f"n-{i}", "A100", 1) for i in range(4)]
EVENTS = [NodeEvent(1000.0, "n-3", False), NodeEvent(5000.0, "n-3", True)]
WORK = 40_000.0  # 10 000 s at 4 replicas x 1.0/s
PAUSE = 10.0


def training() -> SimWorkload:
    w = Workload(
        key="j", kind=WorkloadKind.TRAINING, demand=ReplicaDemand(accelerators=1), min_replicas=2, max_replicas=4,
        options=(AcceleratorOption("A100", 1.0),), restart_cost_seconds=100.0,
    )
    return SimWorkload(w, ThroughputModel({"A100": 1.0}), work=WORK)


def simulate(mode: str, spec: SimWorkload | None = None, events: list[NodeEvent] = EVENTS,
             pause: float | None = PAUSE) -> Simulator:
    workloads = failures.workloads_for_mode(mode, [spec or training()], rigid_baselines=True,
                                            reshard_pause_seconds=pause)
    policy = failures.policy_for_mode(mode, load_policy("best-fit"))
    config = SimConfig(checkpoint_interval_seconds=600.0, round_seconds=60.0, cycle_when_idle=True)
    return Simulator(CLUSTER, workloads, policy, config, node_events=events,
                     failure_handler=FAILURE_MODES[mode](), observers=[failures.GoodputObserver()]).run()


def test_in_memory_keeps_the_survivors_progress_and_pays_only_the_pause():
    sim = simulate("elastic")
    job = sim.jobs["j"]
    assert job.workload.attributes[RESHARD_COST_ATTRIBUTE] == "10"
    assert job.lost_work == 0.0 and job.failures == 1
    assert job.reshards == 2 and job.restarts == 0
    # 4000 kept at 1000 s; 10 s pause; 3/s until the grow at 5000 s; 10 s pause; then 4/s
    at_grow = 4000.0 + 3.0 * (5000.0 - 1000.0 - PAUSE)
    assert job.finish == pytest.approx(5000.0 + PAUSE + (WORK - at_grow) / 4.0)


def test_checkpoint_mode_rolls_back_on_the_same_run():
    sim = simulate("elastic", pause=None)  # rollback: checkpoint
    job = sim.jobs["j"]
    assert RESHARD_COST_ATTRIBUTE not in job.workload.attributes
    assert job.lost_work == pytest.approx(1600.0)
    at_grow = 2400.0 + 3.0 * (5000.0 - 1000.0 - 100.0)
    assert job.finish == pytest.approx(5000.0 + 100.0 + (WORK - at_grow) / 4.0)
    assert simulate("elastic").jobs["j"].finish < job.finish


@pytest.mark.parametrize("mode", ["restart", "none"])
def test_restart_and_none_still_roll_back_under_in_memory(mode: str):
    sim = simulate(mode)
    job = sim.jobs["j"]
    assert RESHARD_COST_ATTRIBUTE not in job.workload.attributes
    assert job.lost_work == pytest.approx(1600.0)
    assert job.finish == pytest.approx(5000.0 + 100.0 + (WORK - 2400.0) / 4.0)


def test_sharded_dp_state_falls_back_to_the_checkpoint():
    spec = training()
    sharded = replace(spec, workload=replace(spec.workload, attributes=MappingProxyType({DP_STATE_ATTRIBUTE: "sharded"})))
    job = simulate("elastic", sharded).jobs["j"]
    assert RESHARD_COST_ATTRIBUTE not in job.workload.attributes
    assert job.lost_work == pytest.approx(1600.0)


def test_release_below_min_restarts_from_the_checkpoint_even_in_memory():
    # three of four nodes fail: one survivor < min 2, the job is requeued and reloads its checkpoint
    events = [NodeEvent(1000.0, f"n-{i}", False) for i in (1, 2, 3)] + [
        NodeEvent(3000.0, f"n-{i}", True) for i in (1, 2, 3)
    ]
    job = simulate("elastic", events=events).jobs["j"]
    assert job.restarts == 1 and job.reshards == 0
    assert job.lost_work == pytest.approx(1600.0) and job.rollback_pending == 0.0
    assert job.finish == pytest.approx(3000.0 + 100.0 + (WORK - 2400.0) / 4.0)


def _scenario(rollback: str, dp_state: str = "replicated") -> dict[str, object]:
    return {
        "name": "t", "seeds": [0], "policies": ["best-fit"],
        "cluster": {"nodes": [{"type": "H100", "count": 4, "accelerators": 8, "prefix": "h"}]},
        "workload": {"training": {
            "generator": "synthetic", "jobs": 3, "jobs_per_hour": 100.0, "median_duration_seconds": 7200,
            "sigma": 0.0, "serial_fraction": 0.0, "restart_cost_seconds": 300, "models": {"m": {"H100": 1.0}},
            "elastic": True, "replica_mix": [[4, 1.0]], "accelerators_per_replica": 8,
            "min_replica_fraction": 0.5, "dp_state": dp_state}},
        "failures": {"modes": ["elastic", "restart"], "rigid_baselines": True,
                     "events": [{"time_seconds": 1000, "node": "h-1"}, {"time_seconds": 9000, "node": "h-1", "up": True}],
                     "elastic": {"rollback": rollback, "reshard_pause_seconds": 30}},
        "sim": {"round_seconds": 300, "cycle_when_idle": True, "checkpoint_interval_seconds": 1800},
    }


def test_scenario_rollback_reaches_the_run_and_the_record():
    scenario = scenario_from_dict(_scenario("in_memory"))
    assert scenario.reshard_pause_seconds == 30.0 and scenario.elastic_rollback == "in_memory"
    assert not hasattr(scenario.elastic_settings, "rollback")  # a simulator setting, not the policy's
    records, _ = run_scenario(scenario, ["best-fit"], [0])
    by_mode = {r["failure_mode"]: r for r in records}
    assert by_mode["elastic"]["rollback"] == "in_memory" and by_mode["restart"]["rollback"] == "checkpoint"
    assert by_mode["elastic"]["lost_work_accelerator_hours"] == 0.0
    assert by_mode["restart"]["lost_work_accelerator_hours"] > 0.0
    checkpoint, _ = run_scenario(scenario_from_dict(_scenario("checkpoint")), ["best-fit"], [0])
    assert {r["failure_mode"]: r for r in checkpoint}["elastic"]["lost_work_accelerator_hours"] > 0.0


def test_scenario_sharded_dp_state_disables_in_memory():
    scenario = scenario_from_dict(_scenario("in_memory", dp_state="sharded"))
    workloads, _ = scenario.workloads(0)
    assert all(w.workload.attributes[DP_STATE_ATTRIBUTE] == "sharded" for w in workloads)
    tagged = failures.workloads_for_mode("elastic", workloads, rigid_baselines=True,
                                         reshard_pause_seconds=scenario.reshard_pause_seconds)
    assert not any(RESHARD_COST_ATTRIBUTE in w.workload.attributes for w in tagged)


def test_default_rollback_is_checkpoint():
    raw = _scenario("checkpoint")
    del raw["failures"]["elastic"]  # type: ignore[index]
    scenario = scenario_from_dict(raw)
    assert scenario.elastic_rollback == "checkpoint" and scenario.reshard_pause_seconds is None


def test_shipped_scenarios_declare_their_reshard_model():
    scenarios = Path(__file__).resolve().parents[2] / "sim" / "scenarios"
    large = load_scenario(scenarios / "node-failures.yaml")
    assert large.elastic_rollback == "in_memory" and large.reshard_pause_seconds == 60.0
    workloads, _ = large.workloads(0)
    assert {w.workload.max_replicas for w in workloads} == {8, 16}
    assert not any(DP_STATE_ATTRIBUTE in w.workload.attributes for w in workloads)  # replicated state
    backlog = load_scenario(scenarios / "node-failures-backlog.yaml")
    assert backlog.elastic_rollback == "checkpoint" and backlog.reshard_pause_seconds is None
    assert {w.workload.max_replicas for w in backlog.workloads(0)[0]} == {4, 8}
    for name in ("node-failures-helios.yaml", "node-failures-helios-backlog.yaml"):
        assert load_scenario(scenarios / name).spec.failures is not None  # loads without the data
