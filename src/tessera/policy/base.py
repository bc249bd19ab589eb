"""The Policy protocol and the context every decision receives."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, runtime_checkable

from tessera.core import ClusterSnapshot, Plan, Workload


class Decision(StrEnum):
    """What a policy decides."""

    PLACEMENT = "placement"
    ORDERING = "ordering"
    REBALANCING = "rebalancing"
    RESIZING = "resizing"
    PREEMPTION = "preemption"


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """Everything a policy may use besides the snapshot.

    Time and randomness are injected: a policy must not read the wall clock or the
    module-level ``random``; it uses ``now_seconds`` and ``rng``, so the simulator can
    replay it exactly.
    """

    now_seconds: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    #: wall-clock budget for one decision; solvers stop and return their best by then
    time_budget_seconds: float = 1.0
    #: True in the simulator: solvers use deterministic limits (work units, one worker)
    deterministic: bool = False
    seed: int = 0
    #: free-form parameters from configuration
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@runtime_checkable
class Policy(Protocol):
    """One signature for every policy.

    ``decide`` returns the plan it wants; the engine validates it before anything is
    applied and rejects actions that would over-commit a node or break a gang.
    Pending workloads arrive in submission order; a policy may reorder them.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    decides: ClassVar[frozenset[Decision]]

    def decide(
        self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext
    ) -> Plan: ...


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    name: str
    version: str
    decides: frozenset[Decision]
    description: str
