"""Performance models of the simulator: what a workload is and how fast it progresses.

A :class:`SimWorkload` wraps the core :class:`~tessera.core.Workload` a policy sees with
the facts only the simulator knows: how much work a training job must do, and how fast
it goes on each accelerator type at each replica count (:class:`ThroughputModel`); for an
inference service, the request rate it must serve over time (:class:`LoadSeries`).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from tessera.core import Workload, WorkloadKind

_NO_TABLE: Mapping[tuple[str, int], float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ScalingModel:
    """Data-parallel scaling efficiency: ``n`` replicas run ``n / (1 + serial * (n - 1))`` times one.

    ``serial`` = 0 is perfect linear scaling; 0.05 loses about a quarter at 8 replicas
    (Amdahl's law with a serial fraction).
    """

    serial_fraction: float = 0.0

    def speedup(self, replicas: int) -> float:
        if replicas <= 1:
            return float(max(replicas, 0))
        return replicas / (1.0 + self.serial_fraction * (replicas - 1))


LINEAR = ScalingModel(0.0)


@dataclass(frozen=True, slots=True)
class ThroughputModel:
    """Whole-job progress rate (work units per second) on an accelerator type.

    ``table`` holds measured rates for (type, replica count) pairs (e.g. Gavel's
    throughput JSON); any other pair is derived from the per-replica throughput in the
    workload's options times the scaling model's speedup.
    """

    per_replica: Mapping[str, float]
    scaling: ScalingModel = LINEAR
    table: Mapping[tuple[str, int], float] = field(default_factory=lambda: _NO_TABLE)
    #: throughput when a type is not listed (a workload allowed on any type)
    default_per_replica: float = 1.0

    def rate(self, accelerator_type: str | None, replicas: int) -> float:
        measured = self.table.get((accelerator_type or "", replicas))
        if measured is not None:
            return measured
        base = self.per_replica.get(accelerator_type or "", self.default_per_replica)
        return base * self.scaling.speedup(replicas)


@dataclass(frozen=True, slots=True)
class LoadSeries:
    """A piecewise-constant request rate: ``rates[i]`` requests/s from ``times[i]`` on."""

    times_seconds: tuple[float, ...]
    rates_per_second: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.times_seconds) != len(self.rates_per_second) or not self.times_seconds:
            raise ValueError("a load series needs as many rates as times, at least one")
        if any(b < a for a, b in zip(self.times_seconds, self.times_seconds[1:], strict=False)):
            raise ValueError("load series times must not decrease")
        if any(r < 0 for r in self.rates_per_second):
            raise ValueError("request rates must not be negative")

    @classmethod
    def constant(cls, rate_per_second: float) -> LoadSeries:
        return cls((0.0,), (rate_per_second,))

    def at(self, time_seconds: float) -> float:
        i = bisect.bisect_right(self.times_seconds, time_seconds) - 1
        return self.rates_per_second[i] if i >= 0 else 0.0


@dataclass(frozen=True, slots=True)
class SimWorkload:
    """One workload of a simulated run: the core workload plus its performance model.

    ``work`` is in the throughput model's units (e.g. iterations); ``None`` means the
    workload runs until the end of the run (an inference service).  ``arrival_seconds``
    is the submission time (``workload.submitted_at_seconds`` carries the same value).
    """

    workload: Workload
    model: ThroughputModel
    work: float | None = None
    load: LoadSeries | None = None
    #: the run's reference duration (on the reference type, for reports), if known
    reference_duration_seconds: float | None = None

    @property
    def key(self) -> str:
        return self.workload.key

    @property
    def arrival_seconds(self) -> float:
        return self.workload.submitted_at_seconds

    @property
    def is_service(self) -> bool:
        return self.work is None or self.workload.kind is WorkloadKind.INFERENCE


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """A scripted failure (``up=False``) or recovery (``up=True``) of one node."""

    time_seconds: float
    node: str
    up: bool


def sorted_by_arrival(workloads: Sequence[SimWorkload]) -> list[SimWorkload]:
    """Submission order; ties keep the input order (a stable, deterministic sort)."""
    return sorted(workloads, key=lambda w: w.arrival_seconds)
