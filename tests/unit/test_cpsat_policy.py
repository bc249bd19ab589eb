"""The cpsat policy as a whole: registry, clear reasons for infeasible input, solver
failures, determinism, and the pool decomposition against the monolithic model."""

import random

import pytest
from ortools.sat.python import cp_model

from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement, Spread, Workload, WorkloadKind
from tessera.engine import Engine
from tessera.policies.cpsat import CpSat
from tessera.policy import PolicyContext, available_policies, load_policy
from tessera.sim.scale_cli import synthetic_cluster, synthetic_pending
from tessera.testing import gang, node


class Clock:
    def now(self) -> float:
        return 7_200.0


def engine(policy=None, **kw):
    return Engine(policy or CpSat(), Clock(), time_budget_seconds=5.0, deterministic=True, **kw)


def replace(workload: Workload, **changes) -> Workload:
    return Workload(**{**{f: getattr(workload, f) for f in workload.__dataclass_fields__}, **changes})


def instance(n_nodes: int, m_pending: int, seed: int):
    rng = random.Random(f"test/{seed}")
    nodes, allocations = synthetic_cluster(n_nodes, rng)
    return ClusterSnapshot(nodes, allocations, now_seconds=7_200.0), synthetic_pending(m_pending, rng, 7_200.0)


def test_listed_and_loaded_by_name():
    assert "cpsat" in {p.name for p in available_policies()}
    assert isinstance(load_policy("cpsat", pools_per_group=3), CpSat)


@pytest.mark.parametrize(
    ("workload", "expected"),
    [
        (gang("ns/tpu", 1, 1, ["TPUv5"]), "no node has an allowed accelerator type (TPUv5)"),
        (replace(gang("ns/tp-spread", 2, 4, spread=Spread.NODE), tensor_parallel=8),
         "tensor-parallel groups of 8 need 2 replicas on one node, but the workload must spread"),
        (replace(gang("ns/tp-odd", 1, 1), tensor_parallel=4), "need replicas in multiples of 4"),
        (gang("ns/too-big", 1, 16), "needs 1 replicas (16 accelerators each); 0 fit on A100"),
    ],
)
def test_infeasible_input_gets_a_reason_not_an_exception(workload, expected):
    result = engine().decide(ClusterSnapshot([node("a1", "A100", 8)]), [workload, gang("ns/ok", 1, 1)])
    assert not result.error and not result.rejected
    assert [p.workload for p in result.plan.placements] == ["ns/ok"]
    assert expected in result.waiting[workload.key]


def test_empty_cluster_explains_itself():
    result = engine().decide(ClusterSnapshot([]), [gang("ns/a", 1, 1)])
    assert not result.error and "no node has an allowed accelerator type" in result.waiting["ns/a"]


def test_a_failing_solver_falls_back_to_the_greedy_plan(monkeypatch):
    def broken(self, model, *a, **kw):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(cp_model.CpSolver, "solve", broken)
    policy = CpSat()
    result = engine(policy).decide(ClusterSnapshot([node("a1", "A100", 8)]), [gang("ns/a", 1, 8)])
    assert not result.error and [p.workload for p in result.plan.placements] == ["ns/a"]
    assert result.stats["status"] == "ERROR" and "solver exploded" in result.stats["error"]
    assert result.stats["chosen"] == "greedy"


def test_deterministic_runs_repeat_exactly():
    snap, pending = instance(80, 40, seed=1)
    first = CpSat()
    plans = []
    for policy in (first, CpSat()):
        ctx = PolicyContext(now_seconds=7_200.0, time_budget_seconds=0.5, deterministic=True, seed=3)
        plans.append(policy.decide(snap, pending, ctx))
    assert plans[0] == plans[1]
    assert first.last_stats["status"] in ("OPTIMAL", "FEASIBLE")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decomposition_loses_under_two_percent_against_the_monolithic_model(seed):
    snap, pending = instance(24, 14, seed)
    scores = {}
    for label, policy in (("pools", CpSat()), ("monolithic", CpSat(monolithic=True))):
        ctx = PolicyContext(now_seconds=7_200.0, time_budget_seconds=10.0, deterministic=True)
        policy.decide(snap, pending, ctx)
        assert policy.last_stats["status"] == "OPTIMAL", policy.last_stats
        scores[label] = policy.last_stats["cpsat_score"]
    assert scores["pools"] >= 0.98 * scores["monolithic"], scores


def test_never_worse_than_its_greedy_hint():
    snap, pending = instance(60, 50, seed=4)
    policy = CpSat()
    policy.decide(snap, pending, PolicyContext(now_seconds=7_200.0, time_budget_seconds=1.0, deterministic=True))
    stats = policy.last_stats
    assert stats["objective"] >= stats["hint_objective"] - 1e-6


@pytest.mark.parametrize("kind", [WorkloadKind.TRAINING, WorkloadKind.INFERENCE])
def test_serving_is_never_stopped_to_move_to_a_faster_type(kind):
    """A training gang is stopped to restart on a 4x faster free type; a service is not
    (its replicas move make-before-break through the rebalancer, never all at once)."""
    work = gang("ns/w", 2, 8, [("A100", 1.0), ("H100", 4.0)], kind=kind)
    allocation = Allocation(work, (ReplicaPlacement(0, "a-0", "A100", tuple(range(8))),
                                   ReplicaPlacement(1, "a-1", "A100", tuple(range(8)))), started_at_seconds=0.0)
    cluster = ClusterSnapshot([node("a-0", "A100", 8), node("a-1", "A100", 8),
                               node("h-0", "H100", 8), node("h-1", "H100", 8)], [allocation], now_seconds=7_200.0)
    result = engine().decide(cluster, [])
    moved = [p.workload for p in result.plan.preemptions]
    assert moved == (["ns/w"] if kind is WorkloadKind.TRAINING else [])
