"""The event queue of the discrete-event simulator.

Events are plain tuples ``(time_seconds, order, sequence, kind, payload)`` on a binary
heap: no object per event beyond the tuple, and a total order that makes every run
deterministic.  ``order`` ranks kinds that happen at the same instant (a node fails
before a scheduling cycle looks at it; completions free capacity before arrivals are
considered), and ``sequence`` breaks the remaining ties in insertion order.

Kinds are small integers.  The built-in ones are listed here; extensions (elastic
resharding, rebalancing, custom load models) allocate their own with
:func:`new_event_kind` and register a handler on the simulator.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

#: a completion (payload: (job key, version)); stale versions are ignored
COMPLETION = 0
#: a node fails (payload: node name)
NODE_FAILURE = 1
#: a failed node comes back (payload: node name)
NODE_RECOVERY = 2
#: an inference service's request rate changes (payload: (service key, requests/s))
LOAD_CHANGE = 3
#: the next workload of the trace arrives (payload: None; the simulator keeps a cursor)
ARRIVAL = 4
#: a paused job (restart/reshard penalty) starts making progress again; bookkeeping only
RESUME = 5
#: a round boundary for round-based policies (payload: None)
ROUND = 6
#: a scheduling cycle (payload: None); runs after everything else at the same instant
SCHEDULE = 9
#: the end of the simulated horizon
HORIZON = 10

_BUILTIN_ORDER = {
    COMPLETION: 0,
    NODE_FAILURE: 1,
    NODE_RECOVERY: 2,
    LOAD_CHANGE: 3,
    ARRIVAL: 4,
    RESUME: 5,
    ROUND: 6,
    SCHEDULE: 90,
    HORIZON: 100,
}
_next_kind = [100]


def new_event_kind(order: int = 50) -> int:
    """Allocate a kind number for an extension's events.

    ``order`` places it among the built-in kinds at the same instant (lower first;
    completions are 0, scheduling cycles 90).
    """
    _next_kind[0] += 1
    kind = _next_kind[0]
    _BUILTIN_ORDER[kind] = order
    return kind


def event_order(kind: int) -> int:
    return _BUILTIN_ORDER.get(kind, 50)


class EventQueue:
    """A deterministic priority queue of events."""

    __slots__ = ("_heap", "_seq", "popped")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = 0
        #: events handed out so far (the simulator reports events/s from this)
        self.popped = 0

    def push(self, time_seconds: float, kind: int, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time_seconds, _BUILTIN_ORDER.get(kind, 50), self._seq, kind, payload))

    def pop(self) -> tuple[float, int, int, int, Any]:
        self.popped += 1
        return heapq.heappop(self._heap)

    def peek_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def drain(self) -> Iterator[tuple[float, int, Any]]:
        """Pop every event in order as (time, kind, payload) (for tests and tools)."""
        while self._heap:
            time_seconds, _, _, kind, payload = self.pop()
            yield time_seconds, kind, payload
