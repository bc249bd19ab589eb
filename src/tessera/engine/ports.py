"""The ports the engine talks through. The operator and the simulator implement each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from tessera.core import ClusterSnapshot, Workload

if TYPE_CHECKING:
    from tessera.engine.cycle import CycleResult


class Clock(Protocol):
    """Current time in seconds (wall clock in the operator, simulated time in the simulator)."""

    def now(self) -> float: ...


class ClusterSource(Protocol):
    """Where the engine reads the cluster from."""

    def snapshot(self) -> ClusterSnapshot: ...

    def pending(self) -> Sequence[Workload]: ...


class Actuator(Protocol):
    """Carries out an accepted plan (pods and Bindings, or simulator state)."""

    def apply(self, result: CycleResult) -> None: ...


class MetricsSink(Protocol):
    """Receives one record per scheduling cycle."""

    def record_cycle(self, result: CycleResult) -> None: ...


class NullMetrics:
    def record_cycle(self, result: CycleResult) -> None:
        return None
