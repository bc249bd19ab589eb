"""Capabilities are declared protocols, checked at load, and compose with any policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tessera.core import ClusterSnapshot, Plan, Workload
from tessera.engine import Engine
from tessera.policy import (
    BackedByArtifact,
    DecidesInRounds,
    Decision,
    PolicyContext,
    ReportsDecisionStats,
    ReshardsOnFailure,
    capabilities_of,
    load_policy,
    with_failure_handling,
)
from tessera.policy.capabilities import capability_problems
from tessera.testing import gang, node


class Clock:
    def now(self) -> float:
        return 0.0


def test_failure_handling_composes_with_cpsat_and_keeps_its_name_rounds_and_stats() -> None:
    cpsat = load_policy("cpsat", round_seconds=60)
    composed = with_failure_handling(cpsat)
    assert isinstance(composed, ReshardsOnFailure)
    assert composed.name == "cpsat" and composed.version == cpsat.version
    assert Decision.RESIZING in composed.decides and Decision.PLACEMENT in composed.decides
    assert isinstance(composed, DecidesInRounds) and composed.round_seconds == 60
    assert composed.next_round_seconds() == cpsat.next_round_seconds()  # type: ignore[attr-defined]
    assert isinstance(composed, ReportsDecisionStats) and isinstance(composed, BackedByArtifact)
    assert capability_problems(composed) == []
    # a policy that already reshards is not wrapped twice
    elastic = load_policy("elastic")
    assert with_failure_handling(elastic) is elastic


def test_plain_policies_claim_nothing_they_do_not_have() -> None:
    assert capabilities_of(load_policy("best-fit")) == ()
    assert "ReshardsOnFailure" not in capabilities_of(load_policy("cpsat"))
    assert capabilities_of(load_policy("learned")) == ("BackedByArtifact",)


class BadRounds:
    name: ClassVar[str] = "bad-rounds"
    version: ClassVar[str] = "0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT})
    round_seconds = -5.0

    def next_round_seconds(self) -> float | None:
        return float("nan")

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        return Plan()


def test_a_claim_that_does_not_hold_is_reported() -> None:
    problems = capability_problems(BadRounds())
    assert any("round_seconds" in p for p in problems) and any("next_round_seconds" in p for p in problems)


class Picky:
    """Places everything best-fit, but raises on any workload whose key contains 'poison'."""

    name: ClassVar[str] = "picky"
    version: ClassVar[str] = "0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT})

    def __init__(self) -> None:
        self.inner = load_policy("best-fit")

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        if any("poison" in w.key for w in pending):
            raise OverflowError("cannot convert float infinity to integer")
        return self.inner.decide(snapshot, pending, ctx)


def test_one_workload_that_breaks_the_policy_does_not_block_the_others() -> None:
    snapshot = ClusterSnapshot([node("n0", "H100", 8)], [], 0.0)
    pending = [gang("ns/poison", 1, 4, types=("H100",)), gang("ns/fine", 1, 4, types=("H100",))]
    result = Engine(Picky(), Clock()).decide(snapshot, pending)
    assert [p.workload for p in result.plan.placements] == ["ns/fine"]
    assert "failed on this workload" in result.waiting["ns/poison"] and "OverflowError" in result.waiting["ns/poison"]
    assert not result.error
