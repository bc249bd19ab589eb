"""Crash points: where a test may stop the operator as a SIGKILL would.

The operator's writes follow protocols whose crash safety is the point (docs/operator.md,
"Crash points").  Each place where a crash leaves a distinct state in the cluster calls
``hooks.reached(CrashPoint.X)``.  In production the hooks do nothing (:data:`NO_FAULTS`);
tests inject others:

* :class:`ExitAfter` ends the process with ``os._exit(137)`` (no cleanup, like SIGKILL)
  when a point is reached for the N-th time: the real-cluster tests start the operator with
  ``--fault-exit-after POINT=N`` (a hidden flag, parsed in :mod:`tessera.operator.main`).
* Unit tests raise a ``BaseException`` from ``reached`` (the bulkheads catch ``Exception``
  only, so the simulated crash is never mistaken for a workload's failure) and then run a
  fresh scheduler on the same fake cluster, as a restarted operator would.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

log = logging.getLogger("tessera.operator.faults")


class CrashPoint(StrEnum):
    """A point in the operator's write protocols right after one write landed."""

    #: the desired placement (phase Binding, placement, generation) is recorded
    PLACEMENT_RECORDED = "placement-recorded"
    #: one pod of a gang was created (unbound)
    POD_CREATED = "pod-created"
    #: one pod was bound through the Binding subresource
    BIND = "bind"
    #: a preemption victim's release is recorded (its pods are not deleted yet)
    EVICTION_RECORDED = "eviction-recorded"
    #: an elastic reshard is recorded (removed pods not deleted, new ones not created)
    RESHARD_RECORDED = "reshard-recorded"
    #: a replica move is recorded (its new pod does not exist yet)
    MIGRATION_RECORDED = "migration-recorded"
    #: a move's new pod is bound (the old replica still serves)
    MIGRATION_BOUND = "migration-bound"


class FaultHooks(Protocol):
    """Called at every crash point; production hooks do nothing."""

    def reached(self, point: CrashPoint) -> None: ...


class NoFaults:
    """The production hooks."""

    def reached(self, point: CrashPoint) -> None:
        return None


NO_FAULTS: FaultHooks = NoFaults()


class ExitAfter:
    """Exit the process (``os._exit(137)``, no cleanup) when a point is reached the N-th time."""

    def __init__(self, limits: Mapping[CrashPoint, int]) -> None:
        self.limits = {point: n for point, n in limits.items() if n > 0}
        self.counts: Counter[CrashPoint] = Counter()

    @classmethod
    def parse(cls, specs: list[str]) -> ExitAfter:
        """From ``["bind=3", "eviction-recorded=1"]``; raises ValueError naming a bad entry."""
        limits: dict[CrashPoint, int] = {}
        for spec in specs:
            name, sep, count = spec.partition("=")
            try:
                limits[CrashPoint(name.strip())] = int(count) if sep else 1
            except ValueError as err:
                known = ", ".join(p.value for p in CrashPoint)
                raise ValueError(f"--fault-exit-after {spec!r}: expected POINT=N with POINT one of {known}") from err
        return cls(limits)

    def reached(self, point: CrashPoint) -> None:
        self.counts[point] += 1
        limit = self.limits.get(point)
        if limit and self.counts[point] >= limit:
            log.error("fault injection: exiting at crash point %s (#%d)", point.value, self.counts[point])
            logging.shutdown()
            os._exit(137)
