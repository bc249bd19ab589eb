"""Per-workload backoff: a workload whose handling keeps failing is retried later, alone.

As kube-scheduler backs off a pod that keeps failing, a workload whose action raised (a
bind the API server keeps refusing, a template the client cannot send, a status write
that conflicts) waits ``initial_seconds``, doubling up to ``max_seconds`` (60 s), before the loop
tries it again; meanwhile every other workload is scheduled as usual.  A new
``metadata.generation`` (the user changed the spec) or a success clears it.  The state is
a retry timer, not a decision: a restarted operator simply tries once more.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    generation: int
    failures: int
    retry_at: float
    why: str


class Backoff:
    def __init__(self, clock: Callable[[], float], *, initial_seconds: float = 1.0, max_seconds: float = 60.0,
                 memory: int = 4096) -> None:
        self.clock = clock
        self.initial_seconds = initial_seconds
        self.max_seconds = max_seconds
        self.memory = memory
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # workloads are acted on by a pool of threads

    def failed(self, uid: str, generation: int, why: str) -> float:
        """Record a failure; returns the delay before the next try."""
        with self._lock:
            entry = self._entries.get(uid)
            failures = entry.failures + 1 if entry is not None and entry.generation == generation else 1
            delay = min(self.max_seconds, self.initial_seconds * 2 ** (failures - 1))
            self._entries[uid] = _Entry(generation, failures, self.clock() + delay, why)
            self._entries.move_to_end(uid)
            while len(self._entries) > self.memory:
                self._entries.popitem(last=False)
        return delay

    def succeeded(self, uid: str) -> None:
        with self._lock:
            self._entries.pop(uid, None)

    def waiting(self, uid: str, generation: int) -> str:
        """Why ``uid`` is not tried now ("" when it may be)."""
        with self._lock:
            entry = self._entries.get(uid)
            if entry is not None and entry.generation != generation:  # a new spec: try it at once
                del self._entries[uid]
                entry = None
        if entry is None:
            return ""
        left = entry.retry_at - self.clock()
        if left <= 0:
            return ""
        return f"{entry.why}; retrying in {left:.0f}s (attempt {entry.failures + 1})"

    def failures(self, uid: str) -> int:
        entry = self._entries.get(uid)
        return entry.failures if entry is not None else 0

    def next_retry(self) -> float | None:
        """The earliest retry time still ahead, for the loop's wake-up."""
        now = self.clock()
        with self._lock:
            ahead = [e.retry_at for e in self._entries.values() if e.retry_at > now]
        return min(ahead) if ahead else None
