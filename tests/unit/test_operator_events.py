"""Events go off the decision's path (BackgroundEvents) and a spec is checked once per generation."""

from __future__ import annotations

import threading
from typing import Any

from tessera.operator.handlers import CheckedGenerations
from tessera.operator.status import BackgroundEvents


def test_background_events_are_all_posted_and_flush_waits_for_them() -> None:
    posted: list[tuple[Any, ...]] = []
    events = BackgroundEvents(lambda *args: posted.append(args), threads=3)
    for i in range(200):
        events("ElasticJob", {"metadata": {"name": f"j{i}"}}, "Normal", "Scheduled", "bound")
    assert events.flush(10)
    assert len(posted) == 200 and events.dropped == 0


def test_background_events_drop_beyond_capacity_and_never_block_the_caller() -> None:
    gate = threading.Event()
    posted: list[tuple[Any, ...]] = []

    def slow(*args: Any) -> None:
        gate.wait(10)
        posted.append(args)

    events = BackgroundEvents(slow, threads=1, capacity=5)
    for i in range(12):
        events(i)  # returns at once although nothing can be posted yet
    assert events.dropped == 7
    gate.set()
    assert events.flush(10)
    assert sorted(a[0] for a in posted) == [0, 1, 2, 3, 4]


def test_a_failing_post_is_contained() -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("API server away")

    events = BackgroundEvents(broken, threads=1)
    events("x")
    assert events.flush(10)


def test_each_generation_of_a_workload_is_checked_once() -> None:
    checked = CheckedGenerations(limit=2)
    job = {"metadata": {"uid": "a", "generation": 1}}
    assert checked.first(job)
    assert not checked.first(job)  # a status write: same generation
    assert checked.first({"metadata": {"uid": "a", "generation": 2}})  # the spec changed
    checked.first({"metadata": {"uid": "b", "generation": 1}})
    checked.first({"metadata": {"uid": "c", "generation": 1}})  # over the limit: "a" is forgotten
    assert checked.first({"metadata": {"uid": "a", "generation": 2}})
