"""The scheduling loop's timing: the real clock, the cyclic GC paused during a cycle, and
when a round-based policy's next round is due (no watch event reports that)."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tessera.policy import DecidesInRounds

__all__ = ["ROUND_WAKE_SLACK_SECONDS", "WallClock", "gc_paused", "round_wait_seconds"]


class WallClock:
    """The operator's Clock port: real time."""

    def now(self) -> float:
        return time.time()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for the block (if it was on), and turn it
    back on afterwards, also when the block raises.

    A scheduling cycle builds millions of small objects at once (the JSON of every pod and
    node, then the state).  The collector's passes keep re-walking them while they are
    alive, which makes the cycle grow faster than the cluster: at 2,000 nodes / 8,000 pods
    parsing and build_state took 4.1 s and 1.9 s with it and 0.6 s each with it paused
    (``bench operator_scale``).  These objects are freed by reference counting; the
    collector runs again as soon as it is back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: how far past a round boundary the loop wakes, so the decision's clock reads the round due
ROUND_WAKE_SLACK_SECONDS = 0.05


def round_wait_seconds(policy: object, now_seconds: float, default: float) -> float:
    """How long the loop may sleep before a round-based policy's next round is due.

    A policy deciding in rounds (:class:`~tessera.policy.DecidesInRounds`, e.g. CP-SAT with
    ``round_seconds`` > 0) says when its next round is due.  A round re-decides running
    work although nothing changed, so no watch event would wake the loop for it.  A round
    already due (or none decided yet: the next cycle decides one) leaves ``default``.
    """
    due = policy.next_round_seconds() if isinstance(policy, DecidesInRounds) else None
    if not isinstance(due, int | float) or not math.isfinite(due) or due <= now_seconds:
        return default
    return max(ROUND_WAKE_SLACK_SECONDS, min(default, due - now_seconds + ROUND_WAKE_SLACK_SECONDS))
