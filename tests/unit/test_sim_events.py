"""The event queue and the determinism of whole runs."""

from __future__ import annotations

from tessera.policy import load_policy
from tessera.sim import events as ev
from tessera.sim.generators import synthetic_training
from tessera.sim.report import summarize
from tessera.sim.simulator import SimConfig, Simulator
from tessera.testing import nodes


def test_events_pop_by_time_then_kind_order_then_insertion():
    q = ev.EventQueue()
    q.push(5.0, ev.SCHEDULE, "cycle")
    q.push(5.0, ev.ARRIVAL, "arrival")
    q.push(5.0, ev.COMPLETION, "done")
    q.push(1.0, ev.SCHEDULE, "early")
    q.push(5.0, ev.ARRIVAL, "arrival-2")
    assert [p for _, _, p in q.drain()] == ["early", "done", "arrival", "arrival-2", "cycle"]
    assert q.popped == 5


def test_extension_kinds_get_their_own_number_and_place():
    kind = ev.new_event_kind(order=ev.event_order(ev.ARRIVAL) + 1)
    assert kind not in (ev.COMPLETION, ev.ARRIVAL, ev.SCHEDULE)
    q = ev.EventQueue()
    q.push(1.0, ev.SCHEDULE, "cycle")
    q.push(1.0, kind, "custom")
    q.push(1.0, ev.ARRIVAL, "arrival")
    assert [p for _, _, p in q.drain()] == ["arrival", "custom", "cycle"]


def _run(policy: str, seed: int) -> dict:
    models = {"m1": {"H100": 2.0, "A100": 1.0}, "m2": {"H100": 1.0, "A100": 0.9}}
    workloads = synthetic_training(jobs=40, jobs_per_hour=20, seed=seed, models=models, median_duration_seconds=1800)
    cluster = nodes("h", 1, "H100", 8) + nodes("a", 1, "A100", 8)
    sim = Simulator(cluster, workloads, load_policy(policy), SimConfig(seed=seed)).run()
    record = summarize(sim)
    return {k: v for k, v in record.items() if "ms" not in k and k not in ("wall_seconds", "events_per_second")}


def test_same_seed_same_result_and_other_seed_differs():
    for policy in ("fifo", "gavel"):
        first = _run(policy, 3)
        assert first == _run(policy, 3)
        assert first["jobs_finished"] == 40
        assert first != _run(policy, 4)
