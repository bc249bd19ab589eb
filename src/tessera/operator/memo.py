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
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from tessera.api.dra import DraPool
from tessera.core import Allocation, ReplicaDemand, ReplicaPlacement, Workload, WorkloadKind
from tessera.operator.views import (
    NodeView,
    ParsedWorkload,
    PodView,
    WorkloadView,
    external_demand,
    node_fingerprint,
    node_view,
    parse_workload,
    pod_view,
    workload_view,
)

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


class Derive:
    """Views and allocations of listed objects, through a :class:`StateMemo` (what
    :func:`tessera.operator.state.build_state` derives from each object)."""

    def __init__(self, memo: StateMemo) -> None:
        self.memo = memo

    def node(self, raw: Mapping[str, Any], pools: Mapping[str, DraPool]) -> NodeView:
        pool = pools.get((raw.get("metadata") or {}).get("name", ""))
        return self.memo.nodes.get(_uid(raw), (*node_fingerprint(raw), pool), lambda: node_view(raw, pool),
                                   by_value=True)

    def pod(self, raw: Mapping[str, Any]) -> PodView:
        return self.memo.pods.get(_uid(raw), (raw,), lambda: pod_view(raw))

    def workload(self, kind: str, raw: Mapping[str, Any]) -> WorkloadView:
        return workload_view(kind, raw, self.memo.workloads.get(_uid(raw), (raw,), lambda: parse_workload(kind, raw)))

    def demand(self, pod: PodView, nv: NodeView | None) -> ReplicaDemand:
        """What ``pod`` takes from its node ``nv``, as Kubernetes counts it."""
        resource = nv.discovery.resource_name if nv else None
        return self.memo.demands.get(f"{pod.uid}/{resource}", (pod.raw,), lambda: external_demand(pod.raw, resource))

    def held(self, pod: PodView, nodes: Mapping[str, NodeView]) -> Allocation:
        """What a bound pod outside every live Tessera allocation takes from its node."""
        nv = nodes.get(pod.node_name)
        accel = nv.node.accelerator_type if nv else None

        def allocation() -> Allocation:
            workload = Workload(key=f"pod:{pod.namespace}/{pod.name}", kind=WorkloadKind.POD,
                                demand=self.demand(pod, nv), preemptible=False)
            return Allocation(workload, (ReplicaPlacement(0, pod.node_name, accel),))

        return self.memo.held.get(f"{pod.uid}/{accel}/{nv.discovery.resource_name if nv else None}", (pod,),
                                  allocation)


def _uid(raw: Mapping[str, Any]) -> str:
    return str((raw.get("metadata") or {}).get("uid") or "")
