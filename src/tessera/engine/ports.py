"""The ports the engine talks through. The operator and the simulator implement each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from tessera.core import ClusterSnapshot, Workload
from tessera.engine.result import CycleResult


class Clock(Protocol):
    """Current time in seconds (wall clock in the operator, simulated time in the simulator)."""

    def now(self) -> float: ...


class ClusterSource(Protocol):
    """Where the engine reads the cluster from."""

    def snapshot(self) -> ClusterSnapshot: ...

    def pending(self) -> Sequence[Workload]: ...


class LoadSource(Protocol):
    """Observed load per running workload: workload key -> requests/s (inference).

    The operator reads it from Prometheus, the simulator from its load model. Workloads
    without a value are left unmeasured; rebalancers then treat them as idle.
    """

    def load(self) -> Mapping[str, float]: ...


def with_load(snapshot: ClusterSnapshot, load: Mapping[str, float]) -> ClusterSnapshot:
    """``snapshot`` with ``Allocation.observed_load_per_second`` set from ``load``."""
    allocations = [
        replace(a, observed_load_per_second=load[key]) if key in load else a
        for key, a in snapshot.allocations.items()
    ]
    return snapshot.with_changes(allocations=allocations)


class Actuator(Protocol):
    """Carries out an accepted plan (pods and Bindings, or simulator state)."""

    def apply(self, result: CycleResult) -> None: ...


class MetricsSink(Protocol):
    """Receives one record per scheduling cycle."""

    def record_cycle(self, result: CycleResult) -> None: ...


class NullMetrics:
    def record_cycle(self, result: CycleResult) -> None:
        return None
