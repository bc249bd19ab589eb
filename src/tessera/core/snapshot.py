"""The cluster at one instant (:class:`ClusterSnapshot`) and the free capacity plans are
checked against (:class:`CapacityLedger`, with volcano-style :class:`Statement` commit or
discard).  Pure: stdlib only."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from tessera.core.model import MILLI_PER_DEVICE, Allocation, Node, ReplicaDemand
from tessera.core.quota import QuotaTree


@dataclass(frozen=True, slots=True)
class NodeFree:
    """Free capacity of one node."""

    devices_milli: tuple[int, ...]
    cpu_milli: int
    memory_mib: int

    @property
    def whole_devices(self) -> int:
        return sum(1 for d in self.devices_milli if d == MILLI_PER_DEVICE)

    @property
    def accelerator_milli(self) -> int:
        return sum(self.devices_milli)

    def replicas_fitting(self, demand: ReplicaDemand) -> int | None:
        """How many replicas of ``demand`` fit in this free capacity, exact per dimension.

        ``None`` when the demand asks for nothing (it fits without bound).
        """
        counts = []
        if demand.accelerators:
            counts.append(self.whole_devices // demand.accelerators)
        elif demand.shared_milli:
            counts.append(sum(d // demand.shared_milli for d in self.devices_milli))
        if demand.cpu_milli:
            counts.append(self.cpu_milli // demand.cpu_milli)
        if demand.memory_mib:
            counts.append(self.memory_mib // demand.memory_mib)
        return max(0, min(counts)) if counts else None


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


class CapacityError(Exception):
    """A reservation that does not fit."""


class CapacityLedger:
    """Mutable free capacity per node: reserve and release replicas as a plan is built."""

    __slots__ = ("_cpu", "_devices", "_mem", "_statements", "nodes")

    def __init__(self, nodes: Mapping[str, Node], free: Mapping[str, NodeFree]) -> None:
        self.nodes = nodes
        self._devices = {name: list(f.devices_milli) for name, f in free.items()}
        self._cpu = {name: f.cpu_milli for name, f in free.items()}
        self._mem = {name: f.memory_mib for name, f in free.items()}
        #: open statements, innermost last (see ``statement``)
        self._statements: list[Statement] = []

    @classmethod
    def empty(cls, nodes: Iterable[Node]) -> CapacityLedger:
        node_map = {n.name: n for n in nodes}
        free = {
            n.name: NodeFree((MILLI_PER_DEVICE,) * n.accelerator_count, n.cpu_milli, n.memory_mib)
            for n in node_map.values()
        }
        return cls(node_map, free)

    def freeze(self) -> dict[str, NodeFree]:
        return {
            name: NodeFree(tuple(devs), self._cpu[name], self._mem[name])
            for name, devs in self._devices.items()
        }

    def free(self, node: str) -> NodeFree:
        return NodeFree(tuple(self._devices[node]), self._cpu[node], self._mem[node])

    def whole_free(self, node: str) -> int:
        return sum(1 for d in self._devices[node] if d == MILLI_PER_DEVICE)

    def cpu_free(self, node: str) -> int:
        return self._cpu[node]

    def memory_free(self, node: str) -> int:
        return self._mem[node]

    def device_free(self, node: str) -> list[int]:
        """Free milli per device (a copy)."""
        return list(self._devices[node])

    def _choose(self, node: str, demand: ReplicaDemand) -> tuple[int, ...] | None:
        devs = self._devices[node]
        if demand.accelerators:
            idx = [i for i, d in enumerate(devs) if d == MILLI_PER_DEVICE]
            return tuple(idx[: demand.accelerators]) if len(idx) >= demand.accelerators else None
        if demand.shared_milli:
            # best fit: the fullest device that still has room, lowest index on ties
            best = None
            for i, d in enumerate(devs):
                if d >= demand.shared_milli and (best is None or d < devs[best]):
                    best = i
            return None if best is None else (best,)
        return ()

    def fits(self, node: str, demand: ReplicaDemand) -> bool:
        return (
            self._cpu[node] >= demand.cpu_milli
            and self._mem[node] >= demand.memory_mib
            and self._choose(node, demand) is not None
        )

    def statement(self) -> Statement:
        """Open a statement: the takes and gives that follow are committed or discarded together.

        Statements nest; they close innermost first.  See ``Statement``.
        """
        statement = Statement(self)
        self._statements.append(statement)
        return statement

    def _remember(self, node: str) -> None:
        # the innermost open statement keeps the node's state from before its first change
        saved = self._statements[-1]._saved
        if node not in saved:
            saved[node] = (tuple(self._devices[node]), self._cpu[node], self._mem[node])

    def take(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...] = ()) -> tuple[int, ...]:
        """Reserve one replica on ``node``; returns the device indices used.

        Raises ``CapacityError`` and changes nothing when the replica does not fit.
        """
        devs = self._devices[node]
        if not devices:
            chosen = self._choose(node, demand)
            if chosen is None:
                raise CapacityError(f"{node}: not enough free accelerators for {_describe(demand)}")
            devices = chosen
        per_device = MILLI_PER_DEVICE if demand.accelerators else demand.shared_milli
        expected = demand.accelerators if demand.accelerators else (1 if demand.shared_milli else 0)
        if len(devices) != expected or len(set(devices)) != len(devices):
            raise CapacityError(f"{node}: {_describe(demand)} needs {expected} device(s), got {list(devices)}")
        for i in devices:
            if not 0 <= i < len(devs):
                raise CapacityError(f"{node}: no device {i}")
            if devs[i] < per_device:
                raise CapacityError(f"{node}: device {i} has {devs[i]} milli free, needs {per_device}")
        if self._cpu[node] < demand.cpu_milli:
            raise CapacityError(f"{node}: needs {demand.cpu_milli} cpu milli, {self._cpu[node]} free")
        if self._mem[node] < demand.memory_mib:
            raise CapacityError(f"{node}: needs {demand.memory_mib} MiB memory, {self._mem[node]} free")
        return self._reserve(node, demand, devices)

    def hold(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...] = ()) -> tuple[int, ...]:
        """Record a replica that already runs on ``node`` (replaying the cluster); returns its devices.

        Never refuses: what runs holds its room whether or not it fits, so capacity may go
        negative and an over-committed cluster stays visible.  Deciding anything new goes
        through ``take``, which refuses; undoing a decision goes through a ``Statement``.
        """
        if not devices:
            chosen = self._choose(node, demand)
            if chosen is None:
                n = len(self._devices[node])
                chosen = tuple(range(min(n, demand.accelerators or 1))) if demand.needs_accelerator else ()
            devices = chosen
        return self._reserve(node, demand, tuple(devices))

    def _reserve(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...]) -> tuple[int, ...]:
        if self._statements:
            self._remember(node)
        devs = self._devices[node]
        per_device = MILLI_PER_DEVICE if demand.accelerators else demand.shared_milli
        for i in devices:
            if 0 <= i < len(devs):
                devs[i] -= per_device
        self._cpu[node] -= demand.cpu_milli
        self._mem[node] -= demand.memory_mib
        return tuple(devices)

    def give_back(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...]) -> None:
        """Release one replica's reservation."""
        if node not in self._devices:
            return  # the node is gone; nothing to give back
        if self._statements:
            self._remember(node)
        devs = self._devices[node]
        per_device = MILLI_PER_DEVICE if demand.accelerators else demand.shared_milli
        for i in devices:
            if 0 <= i < len(devs):
                devs[i] = min(MILLI_PER_DEVICE, devs[i] + per_device)
        self._cpu[node] += demand.cpu_milli
        self._mem[node] += demand.memory_mib


class Statement:
    """Changes to a ``CapacityLedger`` that stand or fall together (volcano's Statement).

    Every ``take``, ``hold`` and ``give_back`` on the ledger while the statement is the
    innermost open one belongs to it.  ``commit`` keeps them (inside an enclosing
    statement they become part of it); ``discard`` puts every node it touched back
    exactly as it was when the statement opened, so nothing is ever "put back" over
    room that someone else took meanwhile.  Statements close innermost first, which is
    what makes the rollback exact.  As a context manager a statement that was neither
    committed nor discarded is discarded on exit.
    """

    __slots__ = ("_ledger", "_open", "_saved")

    def __init__(self, ledger: CapacityLedger) -> None:
        self._ledger = ledger
        #: node -> (devices milli, cpu milli, memory MiB) before this statement first changed it
        self._saved: dict[str, tuple[tuple[int, ...], int, int]] = {}
        self._open = True

    @property
    def ledger(self) -> CapacityLedger:
        return self._ledger

    @property
    def open(self) -> bool:
        return self._open

    def take(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...] = ()) -> tuple[int, ...]:
        self._check_innermost()
        return self._ledger.take(node, demand, devices)

    def give_back(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...]) -> None:
        self._check_innermost()
        self._ledger.give_back(node, demand, devices)

    def commit(self) -> None:
        """Keep every change; an enclosing statement can still discard them."""
        self._close()
        stack = self._ledger._statements
        if stack:
            outer = stack[-1]._saved
            for node, before in self._saved.items():
                outer.setdefault(node, before)

    def discard(self) -> None:
        """Undo every change made since the statement opened, exactly."""
        self._close()
        ledger = self._ledger
        for node, (devices, cpu, memory) in self._saved.items():
            ledger._devices[node][:] = devices
            ledger._cpu[node] = cpu
            ledger._mem[node] = memory

    def _check_innermost(self) -> None:
        if not self._open:
            raise RuntimeError("statement already closed")
        if self._ledger._statements[-1] is not self:
            raise RuntimeError("an inner statement is still open")

    def _close(self) -> None:
        self._check_innermost()
        self._ledger._statements.pop()
        self._open = False

    def __enter__(self) -> Statement:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:
            self.discard()


def _describe(demand: ReplicaDemand) -> str:
    if demand.accelerators:
        return f"{demand.accelerators} accelerator(s)"
    if demand.shared_milli:
        return f"{demand.shared_milli / MILLI_PER_DEVICE:.2f} of an accelerator"
    return "no accelerators"
