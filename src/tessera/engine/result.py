"""What one engine cycle decided (shared by the engine and its ports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tessera.core import ClusterSnapshot, Plan, Rejection


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one cycle decided."""

    policy: str
    policy_version: str
    snapshot: ClusterSnapshot
    plan: Plan
    rejected: tuple[Rejection, ...]
    #: pending workloads left waiting -> why, in words a user can act on
    waiting: Mapping[str, str]
    decision_seconds: float
    cycle: int
    error: str = ""
    stats: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
