"""The conformance suite: every installed policy passes it, and it catches broken ones."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import ClassVar

import pytest

from tessera.core import ClusterSnapshot, Placement, Plan, ReplicaAssignment, Workload
from tessera.policies.greedy import BestFit
from tessera.policy import Decision, PolicyContext, available_policies, load_policy
from tessera.testing import PolicyConformance, check_policy, random_scenario
from tessera.testing.conformance import ConformanceError

#: conformance failures found in policies, reported to their owners. strict=True: the test
#: fails as soon as one is fixed, so the entry is removed rather than forgotten.
KNOWN_FAILURES: dict[str, str] = {}

REGISTERED = [
    pytest.param(p.name, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[p.name], strict=True))
    if p.name in KNOWN_FAILURES else p.name
    for p in available_policies()
]


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_policy_conforms(name: str) -> None:
    report = check_policy(lambda: load_policy(name), seeds=range(4))
    assert report.ok, report.summary()
    assert report.checks_run == ["metadata", "valid-plan", "determinism", "time-budget", "progress"]


class TestBestFitAsAPluginAuthorWould(PolicyConformance):
    policy_factory = BestFit
    seeds: ClassVar[Sequence[int]] = (0, 1, 2)


def test_generated_scenarios_are_reproducible_and_varied() -> None:
    a, b = random_scenario(7), random_scenario(7)
    assert [n for n in a.snapshot.nodes.values()] == [n for n in b.snapshot.nodes.values()]
    assert a.pending == b.pending
    kinds = set()
    shared = elastic = spread = running = 0
    for seed in range(10):
        sc = random_scenario(seed)
        running += len(sc.snapshot.allocations)
        for w in sc.pending:
            kinds.add(w.kind)
            shared += w.demand.shared_milli > 0
            elastic += w.min_replicas < w.max_replicas
            spread += w.spread.value != "none"
    assert len(kinds) == 3 and shared and elastic and spread and running


# --- deliberately broken policies: the suite must catch each ---------------------------------


class _Base:
    name: ClassVar[str] = "broken"
    version: ClassVar[str] = "0.0.1"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT})


class OverCommit(_Base):
    """Puts every pending workload on the first node, whether it fits or not."""

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        first = sorted(snapshot.nodes)[0]
        return Plan(placements=tuple(
            Placement(w.key, tuple(ReplicaAssignment(first) for _ in range(w.gang_min))) for w in pending
        ))


class GlobalRandom(_Base):
    """Best fit, then drops a random workload drawn from the module-level generator."""

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        plan = BestFit().decide(snapshot, pending, ctx)
        keep = [p for p in plan.placements if random.random() < 0.5]  # the bug under test
        return Plan(placements=tuple(keep))


class Slow(_Base):
    """Ignores its time budget."""

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        time.sleep(ctx.time_budget_seconds * 3)
        return BestFit().decide(snapshot, pending, ctx)


class Idle(_Base):
    """Claims to place but never does."""

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        return Plan()


class Ghost(_Base):
    """Places a workload that is not pending."""

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        return Plan(placements=(Placement("nobody/ghost", (ReplicaAssignment(sorted(snapshot.nodes)[0]),)),))


class Mutator(_Base):
    """Sorts the caller's pending list in place."""

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        pending.sort(key=lambda w: w.key, reverse=True)  # type: ignore[attr-defined]
        return BestFit().decide(snapshot, pending, ctx)


class BadMetadata:
    name: ClassVar[str] = "Bad Name"
    version: ClassVar[str] = ""
    decides: ClassVar[frozenset[str]] = frozenset({"teleport"})

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        return Plan()


def _checks(factory: object, **kw: object) -> set[str]:
    report = check_policy(factory, seeds=range(3), **kw)  # type: ignore[arg-type]
    assert not report.ok
    return {f.check for f in report.findings}


def test_catches_over_commit() -> None:
    report = check_policy(OverCommit, seeds=range(3), checks=("metadata", "valid-plan"))
    assert {f.check for f in report.findings} == {"valid-plan"}
    assert any("engine rejects placement" in f.message for f in report.findings)


def test_catches_module_level_randomness() -> None:
    assert _checks(GlobalRandom, checks=("determinism",)) == {"determinism"}


def test_catches_a_blown_time_budget() -> None:
    report = check_policy(Slow, seeds=[0], checks=("time-budget",), time_budget_seconds=0.1, budget_slack_seconds=0.05)
    assert [f.check for f in report.findings] == ["time-budget"]
    assert report.max_decision_seconds >= 0.3


def test_catches_no_progress_ghosts_mutation_and_metadata() -> None:
    assert _checks(Idle, checks=("progress",)) == {"progress"}
    assert _checks(Ghost, checks=("valid-plan",)) == {"valid-plan"}
    assert _checks(Mutator, checks=("valid-plan",)) == {"valid-plan"}
    report = check_policy(BadMetadata)
    assert {f.check for f in report.findings} == {"metadata"} and len(report.findings) == 3


def test_report_raises_as_assertion_for_pytest() -> None:
    with pytest.raises(ConformanceError, match="engine rejects"):
        check_policy(OverCommit, seeds=[0], checks=("valid-plan",)).raise_if_failed()


def test_a_factory_that_raises_is_a_finding_not_a_crash() -> None:
    def boom() -> object:
        raise FileNotFoundError("weights.json")

    report = check_policy(boom)
    assert not report.ok and "FileNotFoundError: weights.json" in report.summary()
