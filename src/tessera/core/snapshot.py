"""The cluster at one instant (:class:`ClusterSnapshot`); the free capacity plans are
checked against lives in :mod:`tessera.core.ledger`.  Pure: stdlib only."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from tessera.core.ledger import CapacityError, CapacityLedger, NodeFree, Statement
from tessera.core.model import MILLI_PER_DEVICE, Allocation, Node, ReplicaPlacement
from tessera.core.overlay import changed
from tessera.core.quota import QuotaTree

__all__ = ["CapacityError", "CapacityLedger", "ClusterSnapshot", "NodeFree", "SnapshotDelta", "Statement"]

_VERSIONS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class SnapshotDelta:
    """How a snapshot differs from the one it was built from (its ``parent``).

    What a consumer that converted the parent (into arrays, counts, ...) needs to update
    its conversion instead of redoing it: the nodes whose free capacity may differ, the
    allocations that are new or replaced (look them up in the child) and the parent's
    allocations that are gone or replaced (their old, counted values).  ``nodes_same``:
    the node set and every Node are the parent's (else a consumer should start afresh).
    """

    parent: int
    nodes_same: bool
    nodes: frozenset[str]
    added: tuple[str, ...]
    removed: tuple[Allocation, ...]


class ClusterSnapshot:
    """An immutable view of the cluster at one instant, built once per scheduling cycle.

    Free capacity is derived from the nodes and the running allocations.  Allocations
    on nodes that are no longer known (a deleted node) are kept, so the engine can see
    that their replicas are lost.
    """

    __slots__ = ("_allocations", "_delta", "_free", "_inputs", "_nodes", "_on_node", "_version", "now_seconds",
                 "quotas")

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
        self._on_node: Mapping[str, tuple[str, ...]] | None = {name: tuple(keys) for name, keys in on_node.items()}
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
        if all(alloc_map[key] is allocation for key, allocation in inputs.items()):
            self._inputs = self._allocations  # nothing was filled in: one mapping serves both (derive keeps it so)
        free = ledger.freeze()
        if previous is not None:
            free = {name: free[name] if name in dirty else previous._free[name] for name in node_map}
        self._free: Mapping[str, NodeFree] = MappingProxyType(free)
        self._version = next(_VERSIONS)
        self._delta: SnapshotDelta | None = None
        if previous is not None:
            nodes_same = len(node_map) == len(previous._nodes) and all(
                (old := previous._nodes.get(name)) is node or old == node for name, node in node_map.items())
            self._delta = SnapshotDelta(
                previous.version, nodes_same, frozenset(dirty), tuple(k for k in inputs if k not in same),
                tuple(a for k, a in previous._allocations.items() if k not in same))

    @property
    def version(self) -> int:
        """A number no other snapshot of this process has: what a consumer's cache is keyed by."""
        try:
            return self._version
        except AttributeError:  # a subclass's own constructor
            self._version = next(_VERSIONS)
            return self._version

    @property
    def delta(self) -> SnapshotDelta | None:
        """How this snapshot differs from the one it was built from (None: built from scratch)."""
        return getattr(self, "_delta", None)

    def derive(
        self, added: Iterable[Allocation] = (), removed: Iterable[str] = (), now_seconds: float | None = None,
    ) -> ClusterSnapshot:
        """This snapshot with the allocations keyed ``removed`` taken out and ``added`` appended
        (an added key already present replaces it), copy-on-write.

        The result equals ``ClusterSnapshot(nodes, kept + added, now_seconds, quotas)`` where
        ``kept`` is this snapshot's allocations in order without the removed or replaced
        ones; it costs what changed: the untouched mappings are copied at C speed and only
        the nodes the changed allocations are on are counted again.  Its ``delta`` says
        what changed, for consumers that keep a conversion of this snapshot.
        """
        if self._on_node is None:  # built without the index this needs (a subclass's own constructor)
            kept = [a for k, a in self._inputs.items() if k not in set(removed)]
            return ClusterSnapshot(self._nodes.values(), [*kept, *added],
                                   self.now_seconds if now_seconds is None else now_seconds, self.quotas)
        return _derive(self, list(added), set(removed), self.now_seconds if now_seconds is None else now_seconds)

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


def _derive(parent: ClusterSnapshot, added: list[Allocation], removed: set[str], now_seconds: float) -> ClusterSnapshot:
    """See :meth:`ClusterSnapshot.derive`.  The child's mappings are overlays on the parent's
    (:mod:`tessera.core.overlay`): the parent is never changed and the child costs the change."""
    assert parent._on_node is not None
    nodes = parent._nodes
    seen: set[str] = set()
    for allocation in added:
        if allocation.key in seen:
            raise ValueError(f"workload {allocation.key} allocated twice")
        seen.add(allocation.key)
    if not removed and not any(key in parent._inputs for key in seen):
        return _append(parent, added, now_seconds)
    gone = sorted(k for k in removed | seen if k in parent._inputs)
    touched: set[str] = set()
    for key in gone:
        touched.update(rp.node for rp in parent._inputs[key].replicas if rp.node in nodes)
    lost = set(touched)  # nodes that lost an allocation
    node_keys: dict[str, tuple[str, ...]] = {
        name: tuple(k for k in parent._on_node[name] if k not in removed and k not in seen) for name in touched}
    for allocation in added:
        for rp in allocation.replicas:
            if rp.node in nodes:
                touched.add(rp.node)
                node_keys[rp.node] = (*node_keys.get(rp.node, parent._on_node.get(rp.node, ())), allocation.key)
    for name in touched:
        node_keys.setdefault(name, ())
    staged = changed(parent._allocations, remove=gone, append=[(a.key, a) for a in added])
    shared = parent._inputs is parent._allocations
    inputs = staged if shared else changed(parent._inputs, remove=gone, append=[(a.key, a) for a in added])
    on_node = changed(parent._on_node, remove=[n for n, keys in node_keys.items() if not keys],
                      update=[(n, keys) for n, keys in node_keys.items() if keys and n in parent._on_node],
                      append=[(n, keys) for n, keys in node_keys.items() if keys and n not in parent._on_node])
    # count every touched node again as the constructor does: from empty, its allocations in
    # order.  A node that only gained allocations starts from the parent's count instead (the
    # same state: its earlier allocations come first in the order) and counts just the new ones.
    emptied = lost
    start = {name: NodeFree((MILLI_PER_DEVICE,) * nodes[name].accelerator_count, nodes[name].cpu_milli,
                            nodes[name].memory_mib) if name in emptied else parent._free[name] for name in touched}
    ledger = CapacityLedger(nodes, start)
    counted: dict[str, dict[int, tuple[int, ...]]] = {}
    fresh = {a.key for a in added}
    for name in touched:
        keys = node_keys[name] if name in emptied else [k for k in node_keys[name] if k in fresh]
        for key in dict.fromkeys(keys):
            allocation = inputs[key]
            for i, rp in enumerate(allocation.replicas):
                if rp.node == name:
                    counted.setdefault(key, {})[i] = ledger.hold(name, allocation.workload.demand, rp.devices)
    updates = []
    for key, devices in counted.items():
        allocation = inputs[key]
        before = staged[key].replicas  # counted on the nodes not touched now
        replicas = tuple(
            rp if (d := devices.get(i, before[i].devices)) == rp.devices else replace(rp, devices=d)
            for i, rp in enumerate(allocation.replicas))
        value = allocation if replicas == allocation.replicas else replace(allocation, replicas=replicas)
        if value is not staged[key]:
            updates.append((key, value))
    child = object.__new__(ClusterSnapshot)
    child._nodes = nodes
    child.now_seconds = now_seconds
    child.quotas = parent.quotas
    child._inputs = inputs
    child._on_node = on_node
    child._allocations = changed(staged, update=updates) if updates else staged
    child._free = changed(parent._free, update=[(name, ledger.free(name)) for name in touched])
    child._version = next(_VERSIONS)
    child._delta = SnapshotDelta(parent.version, True, frozenset(touched), tuple(a.key for a in added),
                                 tuple(parent._allocations[k] for k in gone))
    return child


def _append(parent: ClusterSnapshot, added: list[Allocation], now_seconds: float) -> ClusterSnapshot:
    """:func:`_derive` when allocations are only appended (the simulator's common case): each
    touched node starts from the parent's count and holds just the new replicas, in order."""
    assert parent._on_node is not None
    nodes = parent._nodes
    on_node = parent._on_node
    if not added:  # nothing changed but the time: share every mapping (they are never mutated)
        child = object.__new__(ClusterSnapshot)
        child._nodes, child._inputs, child._on_node = nodes, parent._inputs, on_node
        child._allocations, child._free = parent._allocations, parent._free
        child.now_seconds, child.quotas = now_seconds, parent.quotas
        child._version = next(_VERSIONS)
        child._delta = SnapshotDelta(parent.version, True, frozenset(), (), ())
        return child
    per_node: dict[str, list[tuple[Allocation, int, ReplicaPlacement]]] = {}
    for allocation in added:
        for i, rp in enumerate(allocation.replicas):
            if rp.node in nodes:
                per_node.setdefault(rp.node, []).append((allocation, i, rp))
    ledger = CapacityLedger(nodes, {name: parent._free[name] for name in per_node})
    filled: dict[str, dict[int, tuple[int, ...]]] = {}
    for name, items in per_node.items():
        for allocation, i, rp in items:
            devices = ledger.hold(name, allocation.workload.demand, rp.devices)
            if devices != rp.devices:
                filled.setdefault(allocation.key, {})[i] = devices
    values = added
    if filled:
        values = [a if (f := filled.get(a.key)) is None else replace(a, replicas=tuple(
            replace(rp, devices=f[i]) if i in f else rp for i, rp in enumerate(a.replicas))) for a in added]
    allocations = changed(parent._allocations, append=[(a.key, a) for a in values])
    inputs = allocations if parent._inputs is parent._allocations and not filled \
        else changed(parent._inputs, append=[(a.key, a) for a in added])
    keys = {name: (*on_node.get(name, ()), *(a.key for a, _, _ in items)) for name, items in per_node.items()}
    child = object.__new__(ClusterSnapshot)
    child._nodes = nodes
    child.now_seconds = now_seconds
    child.quotas = parent.quotas
    child._inputs = inputs
    child._on_node = changed(on_node, update=[(n, k) for n, k in keys.items() if n in on_node],
                             append=[(n, k) for n, k in keys.items() if n not in on_node])
    child._allocations = allocations
    child._free = changed(parent._free, update=[(name, ledger.free(name)) for name in per_node])
    child._version = next(_VERSIONS)
    child._delta = SnapshotDelta(parent.version, True, frozenset(per_node), tuple(a.key for a in added), ())
    return child
