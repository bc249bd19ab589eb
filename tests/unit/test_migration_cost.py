"""The migration cost model against hand-computed figures."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tessera.core import LinkModel, MigrationCostModel, Node, Topology, WorkloadKind
from tessera.core.migration import (
    ATTR_LAST_CHECKPOINT_AT_SECONDS,
    ATTR_MAX_UNAVAILABLE,
    ATTR_STATE_GIB,
    ATTR_WEIGHTS_GIB,
    GBIT_PER_GIB,
    max_unavailable,
    params_for,
)
from tessera.testing.builders import gang

KV_4_GIB_GBIT = 4 * 8 * 2**30 / 1e9  # 34.359738368 Gbit


def n(name: str, zone: str = "z1", domain: str = "", nic: str = "") -> Node:
    return Node(name, "H100", 8, topology=Topology(zone=zone, domain=domain, nic=nic))


def svc(**attrs: str):
    return replace(gang("svc", 2, 1, ("H100",), kind=WorkloadKind.INFERENCE), attributes=attrs)


def test_gbit_per_gib():
    assert abs(GBIT_PER_GIB - 8.589934592) < 1e-12


def test_inference_defaults_same_domain():
    est = MigrationCostModel().estimate(svc(), n("a", domain="r1"), n("b", domain="r1"))
    # 5 s scheduling + 8 GiB / 0.5 GiB/s image + 16 GiB / 2 GiB/s weights
    assert est.image_pull_seconds == pytest.approx(16.0)
    assert est.weights_load_seconds == pytest.approx(8.0)
    assert est.cold_start_seconds == pytest.approx(29.0)
    # 4 GiB KV cache over 200 Gbit/s
    assert est.state_transfer_seconds == pytest.approx(KV_4_GIB_GBIT / 200)
    assert est.in_flight_seconds == pytest.approx(29.0 + 0.17179869184)
    # make before break: only the cut-over is lost; the target idles while warming up
    assert est.capacity_lost_replica_seconds == pytest.approx(0.17179869184)
    assert est.reserved_replica_seconds == pytest.approx(29.17179869184)
    assert est.cost_seconds == pytest.approx(0.17179869184 + 0.1 * 29.17179869184)
    assert est.restart_penalty_seconds == 0.0


@pytest.mark.parametrize(
    ("source", "target", "gbit"),
    [
        (n("a", domain="r1"), n("b", domain="r2"), 50.0),  # same zone, other rack
        (n("a", zone="z1"), n("b", zone="z2"), 10.0),  # across zones
        (n("a", domain="r1", nic="ib"), n("b", domain="r1", nic="roce"), 25.0),  # NIC mismatch
    ],
)
def test_link_speed_by_topology(source: Node, target: Node, gbit: float):
    assert LinkModel().gbit_per_second(source, target) == gbit
    est = MigrationCostModel().estimate(svc(), source, target)
    assert est.state_transfer_seconds == pytest.approx(KV_4_GIB_GBIT / gbit)


def test_attributes_override_defaults():
    w = svc(**{ATTR_WEIGHTS_GIB: "130", ATTR_STATE_GIB: "0"})  # llama2-70b fp16, no KV cache moved
    est = MigrationCostModel().estimate(w, n("a"), n("b"))
    assert est.weights_load_seconds == pytest.approx(65.0)
    assert est.cold_start_seconds == pytest.approx(5 + 16 + 65)
    assert est.state_transfer_seconds == 0.0
    assert est.cost_seconds == pytest.approx(0.1 * 86)


def test_bad_attribute_is_a_loud_error():
    with pytest.raises(ValueError, match="not a number"):
        params_for(svc(**{ATTR_WEIGHTS_GIB: "lots"}))


def test_training_restart_penalty_expected_half_interval():
    job = gang("job", 4, 8, ("H100",))
    est = MigrationCostModel().estimate(job, n("a"), n("b"), gang_replicas=4)
    # cold start 5 + 12/0.5 + 32/2 = 45 s; restart 60 s + 1800/2 s of lost progress
    assert est.cold_start_seconds == pytest.approx(45.0)
    assert est.restart_penalty_seconds == pytest.approx(960.0)
    # the whole gang of 4 stops for the move and the recomputation
    assert est.capacity_lost_replica_seconds == pytest.approx(4 * (45 + 960))
    assert est.cost_seconds == pytest.approx(4020.0)


def test_training_restart_penalty_from_last_checkpoint():
    job = gang("job", 2, 8, ("H100",))
    job = replace(job, attributes={ATTR_LAST_CHECKPOINT_AT_SECONDS: "100"})
    est = MigrationCostModel().estimate(job, n("a"), n("b"), now_seconds=400.0, gang_replicas=2)
    assert est.restart_penalty_seconds == pytest.approx(60 + 300)
    assert est.capacity_lost_replica_seconds == pytest.approx(2 * (45 + 360))


def test_max_unavailable():
    assert max_unavailable(svc()) == 1
    assert max_unavailable(svc(**{ATTR_MAX_UNAVAILABLE: "2"})) == 2
