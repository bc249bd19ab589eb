"""Failure processes (seeded MTBF/MTTR, availability series) and the Helios/Philly loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.sim.failures import (
    FailureClass,
    NodeTransition,
    availability_transitions,
    downtime_fraction,
    mtbf_mttr_transitions,
)
from tessera.sim.loaders.helios import (
    PHILLY_NODE_SEQUENCE,
    NodeSequencePoint,
    availability_series,
    available_fraction,
    load_philly_node_sequence,
)

NODES = [f"n-{i}" for i in range(20)]


def test_mtbf_mttr_is_seeded_and_alternates():
    classes = [FailureClass(mtbf_seconds=3600.0, mttr_seconds=600.0)]
    a = mtbf_mttr_transitions(NODES, classes, horizon_seconds=86400.0, seed=3)
    assert a == mtbf_mttr_transitions(NODES, classes, horizon_seconds=86400.0, seed=3)
    assert a != mtbf_mttr_transitions(NODES, classes, horizon_seconds=86400.0, seed=4)
    assert a == sorted(a)
    for node in NODES:
        states = [t.up for t in a if t.node == node]
        assert states == [False, True] * (len(states) // 2)  # down, up, down, up...
    # mean downtime share ~ MTTR / (MTBF + MTTR) = 1/7
    assert downtime_fraction(a, NODES, 86400.0) == pytest.approx(1 / 7, abs=0.05)


def test_adding_a_node_keeps_the_others_failures():
    classes = [FailureClass(3600.0, 600.0)]
    base = mtbf_mttr_transitions(NODES, classes, 20000.0, seed=1)
    more = mtbf_mttr_transitions([*NODES, "extra"], classes, 20000.0, seed=1)
    assert [t for t in more if t.node != "extra"] == base


def test_failure_classes_by_prefix():
    classes = [FailureClass(1e9, 1.0), FailureClass(100.0, 10.0, node_prefix="flaky-")]
    out = mtbf_mttr_transitions(["flaky-0", "solid-0"], classes, 10000.0, seed=0)
    assert out and {t.node for t in out} == {"flaky-0"}
    assert not mtbf_mttr_transitions(["x"], [FailureClass(10.0, 1.0, node_prefix="y")], 1000.0, seed=0)
    with pytest.raises(ValueError):
        FailureClass(0.0, 1.0)


def test_availability_series_maps_counts_to_nodes():
    series = [(0.0, 4), (100.0, 2), (200.0, 3), (300.0, 4)]
    out = availability_transitions(series, ["a", "b", "c", "d"], seed=0)
    downs = [t for t in out if not t.up]
    ups = [t for t in out if t.up]
    assert [t.time_seconds for t in downs] == [100.0, 100.0]
    # first down, first up
    assert ups[0] == NodeTransition(200.0, downs[0].node, True)
    assert ups[1] == NodeTransition(300.0, downs[1].node, True)
    assert downtime_fraction(out, ["a", "b", "c", "d"], 400.0) == pytest.approx((200 + 100) / 1600)
    with pytest.raises(ValueError):
        availability_transitions([(5.0, 1), (1.0, 1)], ["a"], seed=0)


def test_helios_loader_on_a_small_file(tmp_path: Path):
    path = tmp_path / "seq.csv"
    path.write_text(
        "time,active,total\n"
        "2017-10-03 00:00:00,300,400\n"
        "2017-10-03 00:01:00,0,400\n"  # telemetry gap: carries the last value
        "2017-10-03 00:02:00,100,400\n"
        "2017-10-03 00:03:00,200,200\n"
    )
    points = load_philly_node_sequence(path)
    assert points[1] == NodeSequencePoint(60.0, 0, 400)
    assert [f for _, f in available_fraction(points, "idle")] == [0.25, 0.25, 0.75, 0.0]
    assert [f for _, f in available_fraction(points, "total")] == [1.0, 1.0, 1.0, 0.5]
    # 2-minute windows take the minimum; 8 scenario nodes
    assert availability_series(points, 8, resample_seconds=120.0) == [(0.0, 2), (120.0, 0)]
    assert availability_series(points, 8, resample_seconds=60.0, scale_to_peak=True) == [
        (0.0, 3), (120.0, 8), (180.0, 0)
    ]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("when,a,b\n", "expected header"),
        ("time,active,total\n2017-10-03 00:00:00,x,1\n", ":2:"),
        ("time,active,total\n2017-10-03 00:00:00,5,1\n", "active <= total"),
        ("time,active,total\n2017-10-03 00:01:00,1,2\n2017-10-03 00:00:00,1,2\n", "does not increase"),
        ("time,active,total\n", "no data rows"),
    ],
)
def test_helios_loader_rejects_malformed_files(tmp_path: Path, body: str, fragment: str):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ValueError, match=fragment):
        load_philly_node_sequence(path)


@pytest.mark.data
def test_real_philly_sequence(shared_data: Path):
    points = load_philly_node_sequence(shared_data / PHILLY_NODE_SEQUENCE)
    assert len(points) > 100_000
    assert {p.total for p in points} == {420, 552, 174}
    week = availability_series(points, 16, resample_seconds=1800.0, duration_seconds=7 * 86400.0,
                               scale_to_peak=True)
    transitions = availability_transitions(week, [f"n-{i}" for i in range(16)], seed=0)
    assert len(transitions) > 50
    assert 0.1 < downtime_fraction(transitions, [f"n-{i}" for i in range(16)], 7 * 86400.0) < 0.7
