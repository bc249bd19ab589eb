"""Crash points: where a test may stop the operator as a SIGKILL would.

The operator's writes follow protocols whose crash safety is the point (docs/operator.md,
"Crash points").  Each place where a crash leaves a distinct state in the cluster calls
``hooks.reached(CrashPoint.X)``.  In production the hooks do nothing (:data:`NO_FAULTS`);
tests inject others:

* :class:`ExitAfter` ends the process with ``os._exit(137)`` (no cleanup, like SIGKILL)
  when a point is reached for the N-th time: the real-cluster tests start the operator with
  ``--fault-exit-after POINT=N`` (a hidden flag, parsed in :mod:`tessera.operator.main`).
  ``--fault-pause-at POINT=SECONDS`` stalls the operator there once (a long GC pause, a
  frozen VM): the window in which a test restarts the API server or lets another replica
  take the Lease.
* Unit tests raise a ``BaseException`` from ``reached`` (the bulkheads catch ``Exception``
  only, so the simulated crash is never mistaken for a workload's failure) and then run a
  fresh scheduler on the same fake cluster, as a restarted operator would.
"""

from __future__ import annotations

import logging
import os
import time
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

    def __init__(self, limits: Mapping[CrashPoint, int], pauses: Mapping[CrashPoint, float] | None = None) -> None:
        self.limits = {point: n for point, n in limits.items() if n > 0}
        self.pauses = dict(pauses or {})
        self.counts: Counter[CrashPoint] = Counter()

    @classmethod
    def parse(cls, exits: list[str], pauses: list[str] | None = None) -> ExitAfter:
        """From ``["bind=3", "eviction-recorded=1"]`` (exit at the N-th time) and
        ``["reshard-recorded=8"]`` (pause that many seconds the first time); raises
        ValueError naming a bad entry."""
        return cls({p: int(v) for p, v in _points(exits, "--fault-exit-after").items()},
                   {p: float(v) for p, v in _points(pauses or [], "--fault-pause-at").items()})

    def reached(self, point: CrashPoint) -> None:
        self.counts[point] += 1
        pause = self.pauses.pop(point, 0.0)
        if pause > 0:
            log.error("fault injection: pausing %.1fs at crash point %s", pause, point.value)
            time.sleep(pause)
        limit = self.limits.get(point)
        if limit and self.counts[point] >= limit:
            log.error("fault injection: exiting at crash point %s (#%d)", point.value, self.counts[point])
            logging.shutdown()
            os._exit(137)


def _points(specs: list[str], flag: str) -> dict[CrashPoint, str]:
    out: dict[CrashPoint, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            out[CrashPoint(name.strip())] = value if sep else "1"
            float(out[CrashPoint(name.strip())])
        except ValueError as err:
            known = ", ".join(p.value for p in CrashPoint)
            raise ValueError(f"{flag} {spec!r}: expected POINT=NUMBER with POINT one of {known}") from err
    return out
