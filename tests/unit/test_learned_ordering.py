"""EDD and MDD baselines, and the learned ordering's use of the same features."""

from __future__ import annotations

import numpy as np

from tessera.core import ClusterSnapshot
from tessera.policies.learned.features import ORDERING_FEATURES, PLACEMENT_FEATURES
from tessera.policies.learned.model import LearnedModel, LinearScorer, fgd_equivalent_weights
from tessera.policies.learned.policy import LearnedPolicy
from tessera.policies.ordering import EarliestDueDate, ModifiedDueDate
from tessera.policy import PolicyContext
from tessera.testing import gang, node

# one 8-GPU node: only one of the two 8-GPU jobs can start
SNAP = ClusterSnapshot([node("a", "A100", 8)], now_seconds=0.0)
# hopeless: due at 100 s but needs 1000 s; feasible: due at 500 s, needs 100 s
HOPELESS = gang("ns/hopeless", 1, 8, deadline=100.0, estimated_seconds=1_000.0)
FEASIBLE = gang("ns/feasible", 1, 8, deadline=500.0, estimated_seconds=100.0)
NO_DEADLINE = gang("ns/whenever", 1, 8, submitted=-10.0)


def first(policy: object, pending: list) -> str:  # type: ignore[type-arg]
    plan = policy.decide(SNAP, pending, PolicyContext())  # type: ignore[attr-defined]
    return plan.placements[0].workload


def test_edd_takes_the_earliest_deadline_even_if_hopeless() -> None:
    assert first(EarliestDueDate(), [FEASIBLE, HOPELESS, NO_DEADLINE]) == "ns/hopeless"


def test_mdd_takes_the_job_that_can_still_make_it() -> None:
    # MDD: hopeless -> max(100, 0 + 1000) = 1000; feasible -> max(500, 100) = 500
    assert first(ModifiedDueDate(), [HOPELESS, FEASIBLE, NO_DEADLINE]) == "ns/feasible"


def test_work_estimates_from_context_override_attributes() -> None:
    ctx = PolicyContext(params={"work_seconds": {"ns/hopeless": 10.0, "ns/feasible": 10.0}})
    plan = ModifiedDueDate().decide(SNAP, [FEASIBLE, HOPELESS], ctx)
    assert plan.placements[0].workload == "ns/hopeless"  # now both can make it: earliest deadline


def test_deadlines_come_after_priority() -> None:
    urgent = gang("ns/vip", 1, 8, priority=5)
    assert first(EarliestDueDate(), [HOPELESS, urgent]) == "ns/vip"
    assert first(ModifiedDueDate(), [FEASIBLE, urgent]) == "ns/vip"


def test_learned_ordering_follows_its_weights() -> None:
    def policy(weights: list[float]) -> LearnedPolicy:
        return LearnedPolicy(model=LearnedModel(
            "t", "0", LinearScorer.identity(PLACEMENT_FEATURES, fgd_equivalent_weights()),
            LinearScorer.identity(ORDERING_FEATURES, weights)))

    slack = [1.0 if n == "slack_hours" else 0.0 for n in ORDERING_FEATURES]
    overdue_last = [1.0 if n == "slack_hours" else 1e6 if n == "overdue" else 0.0 for n in ORDERING_FEATURES]
    work = {"ns/hopeless": 1_000.0, "ns/feasible": 100.0}
    assert [w.key for w in policy(slack).order([FEASIBLE, HOPELESS], 0.0, work)] == ["ns/hopeless", "ns/feasible"]
    assert [w.key for w in policy(overdue_last).order([HOPELESS, FEASIBLE], 0.0, work)] == ["ns/feasible", "ns/hopeless"]
    assert np.isfinite(policy(slack).model.ordering.score(np.zeros((1, len(ORDERING_FEATURES))))).all()
