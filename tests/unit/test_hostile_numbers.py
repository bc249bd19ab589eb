"""Hostile numbers in a workload (throughput or capacity near the float maximum) must not
break a decision: the API bounds them, but the solver must survive any float it is given.

``relativeThroughput: 1e308`` used to overflow ``round(10000 * throughput / best)`` in
:func:`tessera.solver.instance.build_instance` (``10000 * 1e308`` is infinity), so every
decision of the cycle failed with ``OverflowError``, not only the hostile job's.
"""

from __future__ import annotations

import math

import pytest

from tessera.core import ClusterSnapshot, WorkloadKind
from tessera.engine import Engine
from tessera.policy import available_policies, load_policy
from tessera.solver.instance import build_instance, normalised_throughputs
from tessera.testing import gang, node

HUGE = 1e308


class FixedClock:
    def now(self) -> float:
        return 0.0


def _snapshot() -> ClusterSnapshot:
    return ClusterSnapshot([node("h1", "H100", 8), node("a1", "A100", 8)])


def _hostile_pending() -> list:
    return [
        gang("ns/huge", 1, 8, [("H100", HUGE), ("A100", 1.0)]),
        gang("ns/tiny", 1, 8, [("H100", 5e-324), ("A100", HUGE)], submitted=1),
        gang("ns/svc", 1, 1, [("A100", HUGE)], kind=WorkloadKind.INFERENCE, submitted=2),
        gang("ns/plain", 1, 4, ["A100"], submitted=3),
    ]


def test_build_instance_survives_throughputs_near_the_float_maximum() -> None:
    instance = build_instance(_snapshot().ledger(), _hostile_pending())
    for spec in instance.gangs:
        assert spec.unit_value, spec.key
        assert all(isinstance(v, int) and 1 <= v <= 10_000 for v in spec.unit_value.values()), spec.unit_value
    huge = next(s for s in instance.gangs if s.key == "ns/huge")
    # the fast type keeps the full value, the other one the smallest positive value
    assert huge.unit_value["H100"] == 10_000 and huge.unit_value["A100"] == 1


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 0.5}),
        ({"a": HUGE, "b": HUGE / 2}, {"a": 1.0, "b": 0.5}),
        ({"a": HUGE, "b": 1.0}, {"a": 1.0, "b": 1.0 / HUGE}),
        ({"a": math.inf, "b": 1.0}, {"a": 1.0, "b": 0.0}),
        ({"a": math.nan, "b": 1.0}, {"a": 0.0, "b": 1.0}),
        ({"a": -3.0, "b": 0.0}, {"a": 0.0, "b": 0.0}),
        ({}, {}),
    ],
)
def test_normalised_throughputs_are_finite_and_in_zero_one(values, expected) -> None:
    got = normalised_throughputs(values)
    assert got == pytest.approx(expected)
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in got.values())


@pytest.mark.parametrize("name", [p.name for p in available_policies()])
def test_no_registered_policy_fails_on_hostile_throughputs(name: str) -> None:
    engine = Engine(load_policy(name), FixedClock(), time_budget_seconds=2.0, deterministic=True)
    result = engine.decide(_snapshot(), _hostile_pending())
    assert not result.error, result.error
    assert not result.rejected, result.rejected


def test_move_gains_survive_throughputs_near_the_float_maximum() -> None:
    from tessera.core import Allocation, ReplicaPlacement
    from tessera.solver.instance import build_pools
    from tessera.solver.moves import move_candidates

    job = gang("ns/slow", 1, 8, [("H100", HUGE), ("A100", 1.0)])
    running = Allocation(job, (ReplicaPlacement(0, "a1", "A100", tuple(range(8))),))
    snap = ClusterSnapshot([node("h1", "H100", 8), node("a1", "A100", 8)], [running])
    pools = build_pools(snap.ledger())
    candidates = move_candidates([running], pools, horizon_seconds=3600.0, weight_of={})
    assert [c.key for c in candidates] == ["ns/slow"]
    gain = candidates[0].gains["H100"]
    assert isinstance(gain, int) and 0 < gain <= 1_000


@pytest.mark.parametrize("capacity", [5e-324, 1e-300, HUGE, math.inf])
def test_replica_utilisation_is_bounded_whatever_the_capacity(capacity: float) -> None:
    from tessera.solver.rebalance import MAX_UTILISATION, replica_utilisation

    svc = gang("ns/svc", 1, 1, [("A100", capacity)], kind=WorkloadKind.INFERENCE)
    for load in (0.0, 1.0, HUGE, math.nan):
        util = replica_utilisation(svc, load, node("a1", "A100", 8))
        assert math.isfinite(util) and 0.0 <= util <= MAX_UTILISATION


@pytest.mark.parametrize(
    "throughput",
    [{"H100": HUGE, "A100": HUGE}, {"H100": HUGE, "A100": 1.0}, {"H100": 5e-324, "A100": HUGE}],
)
def test_sharding_survives_throughputs_near_the_float_maximum(throughput) -> None:
    from tessera.core.sharding import ShardingPlan, plan_sharding

    plan = plan_sharding(["H100", "A100", "A100"], global_batch_size=96, max_micro_batch=8,
                         throughput=throughput, allow_uneven=True)
    assert isinstance(plan, ShardingPlan)
    assert sum(plan.rank_micro_batches) * plan.micro_batch == 96


def test_sharding_scaling_leaves_ordinary_plans_unchanged() -> None:
    from tessera.core.sharding import plan_sharding

    # scaling by a power of two is exact: the same plan as the rates given in other units
    a = plan_sharding(["H100", "A100", "A100"], global_batch_size=96, max_micro_batch=8,
                      throughput={"H100": 3.0, "A100": 1.0})
    b = plan_sharding(["H100", "A100", "A100"], global_batch_size=96, max_micro_batch=8,
                      throughput={"H100": 3.0 * 2**40, "A100": 2.0**40})
    assert a == b


@pytest.mark.parametrize(("name", "params"), [("cpsat", {"round_seconds": 60}),
                                              *[(p.name, {}) for p in available_policies()]])
def test_elastic_gangs_with_hostile_throughputs_do_not_fail_a_decision(name: str, params: dict) -> None:
    # gang throughput = per-replica throughput x replicas: 4 x 1e308 is infinite
    pending = [gang("ns/huge", (1, 4), 1, [("H100", HUGE), ("A100", HUGE)]),
               gang("ns/mixed", (2, 4), 2, [("H100", HUGE), ("A100", 1.0)], submitted=1)]
    engine = Engine(load_policy(name, **params), FixedClock(), time_budget_seconds=2.0, deterministic=True)
    result = engine.decide(_snapshot(), pending)
    assert not result.error, result.error
    assert not result.rejected, result.rejected
