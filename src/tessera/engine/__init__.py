"""The scheduling engine and the ports it talks through."""

from tessera.engine.cycle import Engine
from tessera.engine.ports import (
    Actuator,
    Clock,
    ClusterSource,
    LoadSource,
    MetricsSink,
    NullMetrics,
    with_load,
)
from tessera.engine.result import CycleResult

__all__ = [
    "Actuator",
    "Clock",
    "ClusterSource",
    "CycleResult",
    "Engine",
    "LoadSource",
    "MetricsSink",
    "NullMetrics",
    "with_load",
]
