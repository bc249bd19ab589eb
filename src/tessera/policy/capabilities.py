"""Capabilities a policy may declare beyond ``decide``, as protocols.

The operator and the simulator ask ``isinstance(policy, Capability)``, never for hidden
attributes, and the registry (:func:`tessera.policy.registry.load_policy`) and the
conformance suite check that a policy claiming a capability honours its types.

* :class:`ReshardsOnFailure`: the policy reshards around lost replicas itself (shrink
  within min..max keeping the global batch, requeue below min, grow back after a
  hysteresis).  The operator then keeps lost replicas in the snapshot and applies its
  failure grace.  Any placement policy gains it through
  :func:`tessera.policy.registry.with_failure_handling` (the operator's default).
* :class:`DecidesInRounds`: the policy re-decides running work every ``round_seconds``
  (> 0; 0 means off); ``next_round_seconds()`` says when the next round is due (None: not
  yet known), so the loop wakes for it although no watch event arrives.
* :class:`ResumesRounds`: ``resume_rounds(last_round_seconds)`` continues another
  instance's round clock: a newly elected operator runs the next round when the old
  leader would have (the operator keeps the clock on its Lease), not at once.
* :class:`ReportsDecisionStats`: ``last_stats`` describes the last decision (solver status,
  objective, gap, which plan was kept); the engine passes it to the metrics.
* :class:`BackedByArtifact`: ``artifact`` names the trained weights (``name@version``)
  that decide, reported in cycle stats and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ReshardsOnFailure(Protocol):
    def growth_hysteresis_seconds(self, params: Mapping[str, Any]) -> float:
        """Seconds a job's replica set must stay unchanged before it may grow (after ``params``)."""
        ...


@runtime_checkable
class DecidesInRounds(Protocol):
    round_seconds: float

    def next_round_seconds(self) -> float | None:
        """When the next round is due (the policy's clock, seconds; -inf: at once), or None."""
        ...


@runtime_checkable
class ResumesRounds(Protocol):
    def resume_rounds(self, last_round_seconds: float) -> None:
        """Continue a round clock whose last round was at ``last_round_seconds``."""
        ...


@runtime_checkable
class ReportsDecisionStats(Protocol):
    last_stats: Mapping[str, Any]


@runtime_checkable
class BackedByArtifact(Protocol):
    @property
    def artifact(self) -> str: ...


CAPABILITIES: tuple[type, ...] = (ReshardsOnFailure, DecidesInRounds, ResumesRounds, ReportsDecisionStats,
                                  BackedByArtifact)


def capabilities_of(policy: object) -> tuple[str, ...]:
    """Names of the capability protocols ``policy`` implements."""
    return tuple(c.__name__ for c in CAPABILITIES if isinstance(policy, c))


def capability_problems(policy: object) -> list[str]:
    """What is wrong with the capabilities ``policy`` claims (empty when all is well)."""
    problems: list[str] = []
    if isinstance(policy, DecidesInRounds):
        rounds = policy.round_seconds
        if not isinstance(rounds, int | float) or not math.isfinite(rounds) or rounds < 0:
            problems.append(f"DecidesInRounds: round_seconds must be a finite number >= 0, got {rounds!r}")
        due = policy.next_round_seconds()
        if due is not None and (not isinstance(due, int | float) or math.isnan(due)):
            problems.append(f"DecidesInRounds: next_round_seconds() must return a number or None, got {due!r}")
    if isinstance(policy, ResumesRounds) and not isinstance(policy, DecidesInRounds):
        problems.append("ResumesRounds: a policy that resumes a round clock must decide in rounds (DecidesInRounds)")
    if isinstance(policy, ReportsDecisionStats) and not isinstance(policy.last_stats, Mapping):
        problems.append(f"ReportsDecisionStats: last_stats must be a mapping, got {type(policy.last_stats).__name__}")
    if isinstance(policy, ReshardsOnFailure):
        try:
            hysteresis = float(policy.growth_hysteresis_seconds({}))
        except Exception as err:  # a claim it cannot honour
            problems.append(f"ReshardsOnFailure: growth_hysteresis_seconds failed: {type(err).__name__}: {err}")
        else:
            if not math.isfinite(hysteresis) or hysteresis < 0:
                problems.append(f"ReshardsOnFailure: growth_hysteresis_seconds must be >= 0, got {hysteresis!r}")
    if isinstance(policy, BackedByArtifact):
        try:
            str(policy.artifact)
        except Exception as err:
            problems.append(f"BackedByArtifact: artifact failed: {type(err).__name__}: {err}")
    return problems
