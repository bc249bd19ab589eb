"""The conformance suite every policy (built-in or plugin) must pass.

Run it as a function::

    from tessera.testing.conformance import check_policy
    report = check_policy(MyPolicy)          # any zero-argument callable returning a policy
    assert report.ok, report.summary()

or as a pytest class in your plugin's tests::

    from tessera.testing.conformance import PolicyConformance

    class TestMyPolicy(PolicyConformance):
        policy_factory = MyPolicy

What is checked, on seeded generated clusters (:mod:`tessera.testing.generate`):

``metadata``
    ``name`` (lower-case, dashes), ``version`` and a non-empty ``decides`` of known decisions.
``valid-plan``
    ``decide`` returns a :class:`~tessera.core.Plan` that the engine accepts whole
    (:func:`~tessera.core.validate_plan` rejects nothing: no over-commit, gangs all or nothing,
    allowed types, spread, only pending workloads placed), ``unplaced`` names only pending
    workloads that were not placed, and the pending list is not mutated.
``determinism``
    a fresh instance given the same snapshot, queue and context (same seed) returns the same
    plan, even when the process-wide ``random`` (and numpy) state differs: a policy must draw
    only from ``ctx.rng``.
``time-budget``
    with ``ctx.deterministic=False`` (operator mode) ``decide`` returns within
    ``ctx.time_budget_seconds`` plus a tolerance.
``progress``
    a policy that decides placement (and is not a rebalancer, which places only what its moves
    unblock) places something on an empty cluster with room for all.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tessera.core import ClusterSnapshot, Plan, Workload, validate_plan
from tessera.policy.base import Decision, PolicyContext
from tessera.policy.capabilities import capability_problems
from tessera.testing.generate import Scenario, random_scenario, roomy_scenario

PolicyFactory = Callable[[], Any]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

CHECKS = ("metadata", "valid-plan", "determinism", "time-budget", "progress")


@dataclass(frozen=True, slots=True)
class Finding:
    """One way a policy failed the suite."""

    check: str
    message: str
    #: the scenario seed that shows it (None for metadata)
    seed: int | None = None

    def __str__(self) -> str:
        where = f" (scenario seed {self.seed})" if self.seed is not None else ""
        return f"[{self.check}]{where} {self.message}"


class ConformanceError(AssertionError):
    """Raised by :meth:`ConformanceReport.raise_if_failed`; an AssertionError so pytest shows it as a failure."""


@dataclass(slots=True)
class ConformanceReport:
    """What :func:`check_policy` found."""

    policy: str
    checks_run: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    #: slowest decide() seen in the time-budget check
    max_decision_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        if self.ok:
            return f"policy {self.policy!r} passed {', '.join(self.checks_run)}"
        lines = [f"policy {self.policy!r} failed {len(self.findings)} conformance check(s):"]
        lines += [f"  - {f}" for f in self.findings]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise ConformanceError(self.summary())


def _context(scenario: Scenario, *, budget_seconds: float, deterministic: bool) -> PolicyContext:
    return PolicyContext(
        now_seconds=scenario.snapshot.now_seconds,
        rng=random.Random(scenario.seed),
        time_budget_seconds=budget_seconds,
        deterministic=deterministic,
        seed=scenario.seed,
    )


def canonical_plan(plan: Plan) -> tuple[Any, ...]:
    """A comparable form of a plan (mappings become sorted tuples)."""
    return (
        plan.placements,
        plan.preemptions,
        plan.resizes,
        plan.migrations,
        tuple(sorted(dict(plan.unplaced).items())),
    )


def check_metadata(policy: Any) -> list[Finding]:
    """``name``, ``version``, ``decides`` and ``decide`` are present and well formed."""
    out: list[Finding] = []
    name = getattr(policy, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        out.append(Finding("metadata", f"name must be a lower-case identifier like 'my-policy', got {name!r}"))
    version = getattr(policy, "version", None)
    if not isinstance(version, str) or not version.strip():
        out.append(Finding("metadata", f"version must be a non-empty string, got {version!r}"))
    decides = getattr(policy, "decides", None)
    try:
        values = {Decision(d) for d in decides} if decides is not None else set()
    except (TypeError, ValueError) as err:
        out.append(Finding("metadata", f"decides must hold {[d.value for d in Decision]}: {err}"))
    else:
        if not values:
            out.append(Finding("metadata", "decides must name at least one decision"))
    if not callable(getattr(policy, "decide", None)):
        out.append(Finding("metadata", "no decide(snapshot, pending, ctx) method"))
    # capabilities it claims (tessera.policy.capabilities) must hold their types
    out.extend(Finding("metadata", problem) for problem in capability_problems(policy))
    return out


def _run(policy: Any, scenario: Scenario, ctx: PolicyContext) -> tuple[Plan | None, list[Finding], float]:
    """Call decide once; return the plan (None on failure), findings and elapsed seconds."""
    pending = list(scenario.pending)
    started = time.perf_counter()
    try:
        plan = policy.decide(scenario.snapshot, pending, ctx)
    except Exception as err:  # the suite reports any failure rather than stopping
        return None, [Finding("valid-plan", f"decide raised {type(err).__name__}: {err}", scenario.seed)], 0.0
    elapsed = time.perf_counter() - started
    findings: list[Finding] = []
    if pending != list(scenario.pending):
        findings.append(Finding("valid-plan", "decide mutated the pending list it was given", scenario.seed))
    if not isinstance(plan, Plan):
        findings.append(Finding("valid-plan", f"decide returned {type(plan).__name__}, not a Plan", scenario.seed))
        return None, findings, elapsed
    return plan, findings, elapsed


def check_plan(snapshot: ClusterSnapshot, pending: Sequence[Workload], plan: Plan, seed: int | None = None) -> list[Finding]:
    """Findings for one plan: engine rejections and inconsistent ``unplaced`` entries."""
    out: list[Finding] = []
    validated = validate_plan(snapshot, pending, plan)
    for rejection in validated.rejected:
        action = type(rejection.action).__name__.lower()
        out.append(Finding("valid-plan", f"engine rejects {action} of {rejection.action.workload}: {rejection.reason}", seed))
    keys = {w.key for w in pending}
    placed = {p.workload for p in plan.placements}
    for key in plan.unplaced:
        if key not in keys:
            out.append(Finding("valid-plan", f"unplaced names {key}, which is not pending", seed))
        elif key in placed:
            out.append(Finding("valid-plan", f"{key} is both placed and listed as unplaced", seed))
    return out


def check_policy(
    factory: PolicyFactory,
    *,
    seeds: Iterable[int] = range(6),
    time_budget_seconds: float = 1.0,
    budget_tolerance: float = 0.25,
    budget_slack_seconds: float = 0.5,
    checks: Iterable[str] = CHECKS,
    scenario: Callable[[int], Scenario] = random_scenario,
) -> ConformanceReport:
    """Run the conformance checks on the policy ``factory()`` builds; never raises for a policy bug.

    ``factory`` is called for every scenario and again for every determinism comparison, so
    each decision starts from a fresh instance.  A decision may take up to ``time_budget_seconds * (1 + budget_tolerance) +
    budget_slack_seconds`` of wall time (the slack covers interpreter warm-up on shared CI).
    """
    wanted = list(checks)
    unknown = set(wanted) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    try:
        policy = factory()
    except Exception as err:
        name = getattr(factory, "name", getattr(factory, "__name__", repr(factory)))
        return ConformanceReport(
            str(name), ["metadata"], [Finding("metadata", f"constructing the policy raised {type(err).__name__}: {err}")]
        )
    report = ConformanceReport(str(getattr(policy, "name", policy)))
    seed_list = list(seeds)
    scenarios = [scenario(s) for s in seed_list]

    if "metadata" in wanted:
        report.checks_run.append("metadata")
        report.findings += check_metadata(policy)
        if report.findings:
            return report  # nothing else is meaningful without decide()/decides

    plans: dict[int, Plan] = {}
    if "valid-plan" in wanted or "determinism" in wanted:
        for sc in scenarios:
            # a fresh instance per scenario: the scenarios are unrelated clusters, and a policy
            # with memory across decisions (rounds, attained service) must not carry one
            # cluster's history into another's decision
            plan, findings, _ = _run(factory(), sc, _context(sc, budget_seconds=time_budget_seconds, deterministic=True))
            if "valid-plan" in wanted:
                report.findings += findings
                if plan is not None:
                    report.findings += check_plan(sc.snapshot, sc.pending, plan, sc.seed)
            if plan is not None:
                plans[sc.seed] = plan
        if "valid-plan" in wanted:
            report.checks_run.append("valid-plan")

    if "determinism" in wanted:
        report.checks_run.append("determinism")
        saved = _perturb_global_random(12345)
        for sc in scenarios:
            if sc.seed not in plans:
                continue
            again, findings, _ = _run(factory(), sc, _context(sc, budget_seconds=time_budget_seconds, deterministic=True))
            if again is None:
                report.findings += [Finding("determinism", f.message, f.seed) for f in findings]
            elif canonical_plan(again) != canonical_plan(plans[sc.seed]):
                report.findings.append(Finding(
                    "determinism",
                    "same snapshot, queue and seed gave a different plan (use ctx.rng, not random/numpy globals "
                    "or the wall clock, and iterate in a fixed order)",
                    sc.seed,
                ))
        _restore_global_random(saved)

    if "time-budget" in wanted:
        report.checks_run.append("time-budget")
        limit = time_budget_seconds * (1 + budget_tolerance) + budget_slack_seconds
        for sc in scenarios:
            plan, findings, elapsed = _run(policy, sc, _context(sc, budget_seconds=time_budget_seconds, deterministic=False))
            report.max_decision_seconds = max(report.max_decision_seconds, elapsed)
            if plan is not None and elapsed > limit:
                report.findings.append(Finding(
                    "time-budget",
                    f"decide took {elapsed:.3f}s with a budget of {time_budget_seconds:.3f}s (limit {limit:.3f}s)",
                    sc.seed,
                ))

    if "progress" in wanted:
        report.checks_run.append("progress")
        decides = {Decision(d) for d in getattr(policy, "decides", ())}
        # a rebalancer that also places (defragmentation) places only the gangs its moves unblock
        if Decision.PLACEMENT in decides and Decision.REBALANCING not in decides:
            sc = roomy_scenario(seed_list[0] if seed_list else 0)
            plan, findings, _ = _run(policy, sc, _context(sc, budget_seconds=time_budget_seconds, deterministic=True))
            if plan is not None and not plan.placements:
                report.findings.append(Finding(
                    "progress",
                    f"decides placement but placed none of {len(sc.pending)} small workloads on an empty cluster",
                    sc.seed,
                ))
    return report


def _perturb_global_random(seed: int) -> tuple[Any, Any]:
    """Put the process-wide generators in another state so hidden use of them shows up.

    Returns the previous states for :func:`_restore_global_random`.
    """
    saved_random = random.getstate()
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:  # numpy is optional for plugin authors
        return saved_random, None
    saved_numpy = np.random.get_state()
    np.random.seed(seed)
    return saved_random, saved_numpy


def _restore_global_random(saved: tuple[Any, Any]) -> None:
    random.setstate(saved[0])
    if saved[1] is not None:
        import numpy as np

        np.random.set_state(saved[1])


class PolicyConformance:
    """Subclass in a test module (name it ``Test...``) and set ``policy_factory``.

    ``policy_factory`` is a zero-argument callable returning a fresh policy (the class itself
    when its constructor needs no arguments). Override ``seeds`` or ``time_budget_seconds``
    for slow policies.
    """

    policy_factory: ClassVar[PolicyFactory]
    seeds: ClassVar[Sequence[int]] = tuple(range(6))
    time_budget_seconds: ClassVar[float] = 1.0

    def _check(self, name: str) -> None:
        report = check_policy(
            type(self).policy_factory, seeds=self.seeds, time_budget_seconds=self.time_budget_seconds,
            checks=("metadata", name) if name != "metadata" else ("metadata",),
        )
        report.raise_if_failed()

    def test_metadata(self) -> None:
        self._check("metadata")

    def test_valid_plans(self) -> None:
        self._check("valid-plan")

    def test_determinism(self) -> None:
        self._check("determinism")

    def test_time_budget(self) -> None:
        self._check("time-budget")

    def test_progress(self) -> None:
        self._check("progress")

