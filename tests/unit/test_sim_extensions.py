"""The extension points the elastic-resharding and rebalancing work plug into."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tessera.core import AcceleratorOption, ReplicaDemand, Workload, WorkloadKind
from tessera.policy import load_policy
from tessera.sim import events as ev
from tessera.sim.generators import inference_service
from tessera.sim.models import LoadSeries, NodeEvent, SimWorkload, ThroughputModel
from tessera.sim.report import summarize
from tessera.sim.simulator import FAILURE_MODES, Observer, SimConfig, SimJob, Simulator, register_failure_mode
from tessera.testing import nodes


class KeepSurvivors:
    """An 'elastic' failure mode: keep running on the surviving replicas when the gang allows."""

    def on_replicas_lost(self, sim: Simulator, job: SimJob, lost: Sequence[int]) -> None:
        assert job.alloc is not None
        if len(job.alloc.replicas) - len(lost) >= job.workload.gang_min:
            sim.drop_replicas(job, lost)
        else:
            sim.stop_job(job, lose_since_checkpoint=True)


def elastic_job(work: float) -> SimWorkload:
    w = Workload(
        key="j", kind=WorkloadKind.TRAINING, demand=ReplicaDemand(accelerators=1), min_replicas=1, max_replicas=2,
        options=(AcceleratorOption("A100", 1.0),), restart_cost_seconds=10.0,
    )
    return SimWorkload(w, ThroughputModel({"A100": 1.0}), work=work)


def test_a_registered_failure_mode_shrinks_instead_of_restarting():
    register_failure_mode("test-keep-survivors", KeepSurvivors)
    assert "test-keep-survivors" in FAILURE_MODES
    sim = Simulator(
        nodes("n", 2, "A100", 1), [elastic_job(100.0)], load_policy("fifo"),
        node_events=[NodeEvent(20.0, "n-1", False)], failure_handler=FAILURE_MODES["test-keep-survivors"](),
    ).run()
    j = sim.jobs["j"]
    # 2/s for 20 s = 40; reshard pause 10 s; 60 left at 1/s -> 90
    assert j.restarts == 0 and j.replicas == 0
    assert j.finish == pytest.approx(90.0)


class CountCycles(Observer):
    def __init__(self) -> None:
        self.cycles = 0
        self.finished: list[str] = []

    def on_cycle(self, sim: Simulator, result: Any) -> None:
        self.cycles += 1

    def on_job_finished(self, sim: Simulator, job: SimJob) -> None:
        self.finished.append(job.key)

    def report(self, sim: Simulator) -> Mapping[str, Any]:
        return {"observed_cycles": self.cycles, "observed_finished": len(self.finished)}


def test_custom_event_kinds_handlers_and_observers():
    spike = ev.new_event_kind(order=3)
    svc = inference_service("svc", throughput={"A100": 10.0}, load=LoadSeries.constant(5.0), min_replicas=1,
                            max_replicas=1, cold_start_seconds=0.0)
    observer = CountCycles()
    sim = Simulator(nodes("n", 1, "A100", 1), [svc], load_policy("fifo"), SimConfig(horizon_seconds=100.0),
                    observers=[observer])
    seen: list[float] = []

    def on_spike(rate: float) -> None:
        seen.append(sim.now())
        sim.set_load(sim.jobs["svc"], rate)

    sim.on(spike, on_spike)
    sim.schedule(50.0, spike, 20.0)
    sim.run()
    record = summarize(sim)
    assert seen == [50.0]
    # 5 req/s served for 50 s, then 10 of 20 req/s for 50 s
    assert record["slo_attainment"] == pytest.approx((250 + 500) / (250 + 1000))
    assert record["observed_cycles"] == observer.cycles >= 1
