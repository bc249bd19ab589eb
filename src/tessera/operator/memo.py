"""What a cycle derives from listed objects, kept across cycles while the objects are unchanged.

The watch cache (:mod:`tessera.operator.cache`) hands every cycle the same dict for an
object until the object changes: a watch event or the operator's own write puts a new
dict in its place.  So what a cycle derives from one object -- a NodeView, a PodView, the
room a pod holds, a workload's parsed spec -- is kept under the object's uid and reused
while the dicts it came from are the very same ones (compared by identity; the memo keeps
them alive, so an identity cannot be reused by another object).  Nothing is compared by
value and nothing can go stale: a changed object is a new dict and is parsed again.
(Nodes are the exception: kubelets -- and kwok -- rewrite a node's status every few
seconds for heartbeats alone, so a node's view is kept while the fields it is derived from
are equal: name, labels, spec, allocatable, capacity and the conditions' type and status.)
Without the cache every cycle LISTs, every dict is new, nothing is reused, nothing is
wrong.  With :class:`~tessera.core.ClusterSnapshot`'s ``previous`` this makes a cycle's
state cost what changed, not the cluster's size (docs/operator.md, "Scale").
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Generic, TypeVar

from tessera.core import Allocation, ReplicaDemand
from tessera.operator.views import NodeView, ParsedWorkload, PodView

V = TypeVar("V")


class Memo(Generic[V]):
    """Values by uid, each valid while its sources are the same objects.

    Entries not asked for during a cycle are dropped at :meth:`sweep` (objects that left)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[tuple[object, ...], V]] = {}
        self._next: dict[str, tuple[tuple[object, ...], V]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, uid: str, sources: tuple[object, ...], derive: Callable[[], V], *, by_value: bool = False) -> V:
        """The value derived from ``sources`` for object ``uid``: the kept one while the
        sources are the same objects (``by_value``: equal, for small fingerprints)."""
        entry = self._next.get(uid)
        if entry is None:
            entry = self._held.get(uid)
        if entry is not None and len(entry[0]) == len(sources) and (
                entry[0] == sources if by_value else all(map(operator.is_, entry[0], sources))):
            self.hits += 1
            value = entry[1]
        else:
            self.misses += 1
            value = derive()
        if uid:
            self._next[uid] = (sources, value)
        return value

    def sweep(self) -> None:
        self._held, self._next = self._next, {}

    def __len__(self) -> int:
        return len(self._held)


class StateMemo:
    """The memos :func:`tessera.operator.state.build_state` uses, one per derivation."""

    def __init__(self) -> None:
        self.nodes: Memo[NodeView] = Memo()
        self.pods: Memo[PodView] = Memo()
        self.workloads: Memo[ParsedWorkload] = Memo()
        #: what a bound pod takes from its node (tessera.operator.views.external_demand)
        self.demands: Memo[ReplicaDemand] = Memo()
        #: a foreign (or no longer managed) pod's allocation
        self.held: Memo[Allocation] = Memo()

    def _all(self) -> tuple[Memo[NodeView], Memo[PodView], Memo[ParsedWorkload], Memo[ReplicaDemand],
                            Memo[Allocation]]:
        return self.nodes, self.pods, self.workloads, self.demands, self.held

    def sweep(self) -> None:
        for memo in self._all():
            memo.sweep()

    def hit_rate(self) -> float:
        memos = self._all()
        asked = sum(m.hits + m.misses for m in memos)
        return sum(m.hits for m in memos) / asked if asked else 0.0
