"""The operator's solver fallback: with ``--policy hybrid`` the learned plan is used when CP-SAT's
budget runs out, and the cycle stats and metrics name the learned artifact and the plan kept."""

from __future__ import annotations

import argparse
import random

import pytest
from prometheus_client import CollectorRegistry

from tessera.core import ClusterSnapshot
from tessera.operator.main import DEFAULT_POLICY, add_arguments, build_engine
from tessera.operator.metrics import OperatorMetrics
from tessera.policies.hybrid import Hybrid
from tessera.policies.learned.model import load_model
from tessera.policy import PolicyContext, load_policy
from tessera.sim.scale_cli import synthetic_cluster, synthetic_pending
from tessera.solver import SolverLimits


@pytest.fixture
def budget_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CP-SAT solve gets a time limit it cannot meet: it stops before a first solution
    (status UNKNOWN), as on a cluster too large for the operator's budget."""
    configure = SolverLimits.configure

    def starved(self: SolverLimits, solver: object) -> None:
        configure(self, solver)  # type: ignore[arg-type]
        solver.parameters.max_time_in_seconds = 1e-9  # type: ignore[attr-defined]
        solver.parameters.max_deterministic_time = 1e-9  # type: ignore[attr-defined]

    monkeypatch.setattr(SolverLimits, "configure", starved)


def operator_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def instance(seed: int = 4) -> tuple[ClusterSnapshot, list]:
    rng = random.Random(f"fallback/{seed}")
    nodes, allocations = synthetic_cluster(60, rng)
    return ClusterSnapshot(nodes, allocations, now_seconds=7_200.0), synthetic_pending(30, rng, 7_200.0)


def test_hybrid_in_the_operator_keeps_the_learned_plan_when_the_solver_runs_out_of_time(budget_runs_out):
    args = operator_args("--policy", "hybrid", "--time-budget-seconds", "0.2")
    policy = load_policy(args.policy)
    assert isinstance(policy, Hybrid)
    metrics = OperatorMetrics(CollectorRegistry())
    engine = build_engine(policy, args, metrics)
    snap, pending = instance()
    learned_plan = policy.learned.decide(snap, pending, PolicyContext(now_seconds=7_200.0))
    result = engine.decide(snap, pending)
    assert not result.error and not result.rejected
    assert result.stats["status"] == "UNKNOWN" and result.stats["chosen"] == "learned"
    assert result.plan.placements, "the learned plan places work although the solver found nothing"
    assert {p.workload: p.replicas for p in result.plan.placements} == \
        {p.workload: p.replicas for p in learned_plan.placements}
    artifact = load_model().artifact
    assert result.stats["policy_artifact"] == artifact == "openb-dispatch@1"
    registry = metrics.registry
    assert registry.get_sample_value("tessera_policy_artifact_info", {"policy": "hybrid", "artifact": artifact}) == 1
    assert registry.get_sample_value("tessera_plan_source_total", {"policy": "hybrid", "source": "learned"}) == 1
    assert registry.get_sample_value("tessera_solver_status_total", {"policy": "hybrid", "status": "UNKNOWN"}) == 1


def test_plain_cpsat_falls_back_to_best_fit_not_the_learned_plan(budget_runs_out):
    args = operator_args("--time-budget-seconds", "0.2")
    assert args.policy == DEFAULT_POLICY == "cpsat"
    metrics = OperatorMetrics(CollectorRegistry())
    engine = build_engine(load_policy(args.policy), args, metrics)
    snap, pending = instance()
    result = engine.decide(snap, pending)
    assert result.stats["chosen"] == "greedy" and "policy_artifact" not in result.stats
    assert metrics.registry.get_sample_value("tessera_plan_source_total", {"policy": "cpsat", "source": "greedy"}) == 1
