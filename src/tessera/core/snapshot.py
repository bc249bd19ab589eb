"""The cluster at one instant (:class:`ClusterSnapshot`); the free capacity plans are
checked against lives in :mod:`tessera.core.ledger`.  Pure: stdlib only."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

from tessera.core.ledger import CapacityError, CapacityLedger, NodeFree, Statement
from tessera.core.model import Allocation, Node
from tessera.core.quota import QuotaTree

__all__ = ["CapacityError", "CapacityLedger", "ClusterSnapshot", "NodeFree", "Statement"]


class ClusterSnapshot:
    """An immutable view of the cluster at one instant, built once per scheduling cycle.

    Free capacity is derived from the nodes and the running allocations.  Allocations
    on nodes that are no longer known (a deleted node) are kept, so the engine can see
    that their replicas are lost.
    """

    __slots__ = ("_allocations", "_free", "_inputs", "_nodes", "_on_node", "now_seconds", "quotas")

    def __init__(
        self,
        nodes: Iterable[Node],
        allocations: Iterable[Allocation] = (),
        now_seconds: float = 0.0,
        quotas: QuotaTree | None = None,
        *,
        previous: ClusterSnapshot | None = None,
    ) -> None:
        """``previous``: a snapshot to reuse the work of.  The result is the same as without
        it; only the nodes whose Node or whose allocations (in order, by value) differ from
        ``previous`` are counted again, so a snapshot of a cluster that changed a little
        costs what changed (the operator builds one every cycle from its watch cache)."""
        if previous is not None and previous._on_node is None:
            previous = None  # built without the index this needs (a subclass's own constructor)
        node_map: dict[str, Node] = {}
        for node in nodes:
            if node.name in node_map:
                raise ValueError(f"node {node.name} listed twice")
            node_map[node.name] = node
        inputs: dict[str, Allocation] = {}
        for allocation in allocations:
            if allocation.key in inputs:
                raise ValueError(f"workload {allocation.key} allocated twice")
            inputs[allocation.key] = allocation
        # node -> the keys of the allocations with a replica there, in order (one per replica)
        on_node: dict[str, list[str]] = {}
        for key, allocation in inputs.items():
            for rp in allocation.replicas:
                if rp.node in node_map:
                    on_node.setdefault(rp.node, []).append(key)
        self._nodes: Mapping[str, Node] = MappingProxyType(node_map)
        self.now_seconds = now_seconds
        #: the queues and their quotas (None: no queues, nothing is limited by quota)
        self.quotas = quotas
        #: the allocations as given, and node -> their keys in order: what a later snapshot
        #: built with ``previous=self`` compares against (None: not kept)
        self._inputs: Mapping[str, Allocation] = inputs
        self._on_node: dict[str, tuple[str, ...]] | None = {name: tuple(keys) for name, keys in on_node.items()}
        same = _unchanged_inputs(inputs, previous)
        dirty = _dirty_nodes(node_map, self._on_node, same, previous)
        ledger = CapacityLedger.empty(node_map[name] for name in dirty)
        alloc_map: dict[str, Allocation] = {}
        for key, allocation in inputs.items():
            if previous is not None and key in same and all(
                    (rp.node in node_map and rp.node not in dirty) if rp.node in previous._nodes
                    else rp.node not in node_map for rp in allocation.replicas):
                alloc_map[key] = previous._allocations[key]  # nothing it touches changed
                continue
            before = previous._allocations[key].replicas if previous is not None and key in same else None
            replicas = []
            for i, rp in enumerate(allocation.replicas):
                if rp.node in dirty:
                    devices = ledger.hold(rp.node, allocation.workload.demand, rp.devices)
                elif rp.node in node_map and before is not None:
                    devices = before[i].devices  # counted on a node that did not change
                else:
                    devices = rp.devices
                if devices != rp.devices:
                    # a source that cannot see devices (the operator: a device plugin picks
                    # them) gets them assigned here, so releasing the replica later gives
                    # back exactly what was taken
                    rp = replace(rp, devices=devices)
                replicas.append(rp)
            alloc_map[key] = allocation if tuple(replicas) == allocation.replicas \
                else replace(allocation, replicas=tuple(replicas))
        self._allocations: Mapping[str, Allocation] = MappingProxyType(alloc_map)
        free = ledger.freeze()
        if previous is not None:
            free = {name: free[name] if name in dirty else previous._free[name] for name in node_map}
        self._free: Mapping[str, NodeFree] = MappingProxyType(free)

    @property
    def nodes(self) -> Mapping[str, Node]:
        return self._nodes

    @property
    def allocations(self) -> Mapping[str, Allocation]:
        return self._allocations

    def free(self, node_name: str) -> NodeFree:
        return self._free[node_name]

    def accelerator_types(self) -> frozenset[str]:
        return frozenset(n.accelerator_type for n in self._nodes.values() if n.accelerator_type)

    def ledger(self) -> CapacityLedger:
        """A mutable copy of the free capacity, for policies and plan validation."""
        return CapacityLedger(self._nodes, self._free)

    def with_changes(
        self,
        nodes: Iterable[Node] | None = None,
        allocations: Iterable[Allocation] | None = None,
        now_seconds: float | None = None,
    ) -> ClusterSnapshot:
        return ClusterSnapshot(
            self._nodes.values() if nodes is None else nodes,
            self._allocations.values() if allocations is None else allocations,
            self.now_seconds if now_seconds is None else now_seconds,
            self.quotas,
            previous=self,
        )


def _unchanged_inputs(inputs: Mapping[str, Allocation], previous: ClusterSnapshot | None) -> set[str]:
    """The allocations given to ``previous`` as they are now (same object or equal)."""
    if previous is None:
        return set()
    before = previous._inputs
    return {key for key, a in inputs.items() if (b := before.get(key)) is not None and (b is a or b == a)}


def _dirty_nodes(nodes: Mapping[str, Node], on_node: Mapping[str, tuple[str, ...]], same: set[str],
                 previous: ClusterSnapshot | None) -> set[str]:
    """The nodes whose free capacity must be counted again: all without ``previous``, else
    those whose Node changed or whose allocations differ (in order, by value)."""
    if previous is None:
        return set(nodes)
    dirty = set()
    for name, node in nodes.items():
        old = previous._nodes.get(name)
        keys = on_node.get(name, ())
        if old is None or (old is not node and old != node) or (previous._on_node or {}).get(name, ()) != keys \
                or not same.issuperset(keys):
            dirty.add(name)
    return dirty
