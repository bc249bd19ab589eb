"""The hybrid policy: the learned plan becomes CP-SAT's hint and its fallback."""

import random

from ortools.sat.python import cp_model

from tessera.core import ClusterSnapshot, Placement, Plan, ReplicaAssignment
from tessera.engine import Engine
from tessera.policies.cpsat import CpSat
from tessera.policies.gang import queue_order
from tessera.policies.hybrid import Hybrid
from tessera.policies.learned.policy import LearnedPolicy
from tessera.policy import PolicyContext, available_policies, load_policy
from tessera.sim.scale_cli import synthetic_cluster, synthetic_pending
from tessera.solver import ObjectiveWeights, build_instance, greedy_units, units_from_placements
from tessera.testing import gang, node


class Clock:
    def now(self) -> float:
        return 7_200.0


def instance(n_nodes: int, m_pending: int, seed: int):
    rng = random.Random(f"test/{seed}")
    nodes, allocations = synthetic_cluster(n_nodes, rng)
    return ClusterSnapshot(nodes, allocations, now_seconds=7_200.0), synthetic_pending(m_pending, rng, 7_200.0)


def ctx(budget: float = 0.5) -> PolicyContext:
    return PolicyContext(now_seconds=7_200.0, time_budget_seconds=budget, deterministic=True, seed=3)


def test_listed_and_loaded_by_name():
    assert "hybrid" in {p.name for p in available_policies()}
    policy = load_policy("hybrid", pools_per_group=3)
    assert isinstance(policy, Hybrid) and isinstance(policy, CpSat) and policy.pools_per_group == 3


def test_a_node_level_plan_becomes_pool_units_and_misfits_are_left_out():
    # a1, a2 idle A100s: one pool; v1 a V100 the gang may not use
    snap = ClusterSnapshot([node("a1", "A100", 8), node("a2", "A100", 8), node("v1", "V100", 8)])
    pending = [gang("ns/pair", 2, 8, ["A100"]), gang("ns/one", 1, 8, ["A100"])]
    inst = build_instance(snap.ledger(), queue_order(pending), now_seconds=7_200.0, weights=ObjectiveWeights())
    pool = next(p.index for p in inst.pools if "a1" in p.nodes)
    index = {g.key: g.index for g in inst.gangs}
    units = units_from_placements(inst, {
        "ns/pair": (ReplicaAssignment("a1", tuple(range(8))), ReplicaAssignment("a2", tuple(range(8)))),
        "ns/one": (ReplicaAssignment("v1", tuple(range(8))),),  # not a candidate pool: dropped
    })
    assert units == {index["ns/pair"]: {pool: 2}}
    # best fit completes the hint around the fixed gangs (here no room is left for ns/one),
    # where on its own it would start ns/one (first in queue order) and leave no room for the pair
    assert greedy_units(inst, units) == units
    assert greedy_units(inst, {}) == {index["ns/one"]: {pool: 1}}


def test_the_learned_plan_is_the_hint():
    snap = ClusterSnapshot([node(f"n{i}", "A100" if i % 2 else "V100", 8, zone=f"z{i % 3}") for i in range(8)])
    pending = [gang(f"ns/g{i}", 1, 2 + 2 * (i % 3)) for i in range(10)]
    learned = LearnedPolicy()
    seed = learned.decide(snap, pending, ctx())
    policy = Hybrid(learned=learned)
    policy.decide(snap, pending, ctx())
    stats = policy.last_stats
    assert stats["learned_placed"] == len(seed.placements) > 0
    # every learned placement maps onto the pool model here, so the hint starts exactly those gangs
    assert stats["hint_gangs"] == len(seed.placements)
    assert stats["chosen"] in ("cpsat", "learned")
    assert stats["score"] >= stats["seed_score"]


def test_a_failing_solver_falls_back_to_the_learned_plan(monkeypatch):
    def broken(self, model, *a, **kw):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(cp_model.CpSolver, "solve", broken)
    snap, pending = instance(60, 30, seed=2)
    learned = LearnedPolicy()
    seed = learned.decide(snap, pending, ctx())
    policy = Hybrid(learned=learned, preemption=False, moves=False)
    result = Engine(policy, Clock(), time_budget_seconds=0.5, deterministic=True).decide(snap, pending)
    assert not result.error and not result.rejected
    assert result.stats["status"] == "ERROR" and result.stats["chosen"] == "learned"
    assert [(p.workload, p.replicas) for p in result.plan.placements] == \
        sorted(((p.workload, p.replicas) for p in seed.placements), key=lambda wp: [w.key for w in queue_order(pending)].index(wp[0]))


def test_near_zero_budget_keeps_a_valid_plan_never_worse_than_the_learned_one():
    snap, pending = instance(200, 100, seed=5)
    policy = Hybrid()
    result = Engine(policy, Clock(), time_budget_seconds=0.0, deterministic=True).decide(snap, pending)
    assert not result.error and not result.rejected and result.plan.placements
    assert result.stats["chosen"] in ("cpsat", "learned")
    assert result.stats["score"] >= result.stats["seed_score"]


def test_deterministic_runs_repeat_exactly():
    snap, pending = instance(80, 40, seed=1)
    plans: list[Plan] = [Hybrid().decide(snap, pending, ctx()) for _ in range(2)]
    assert plans[0] == plans[1]
    assert all(isinstance(p, Placement) for p in plans[0].placements)
