"""Free capacity per node (:class:`NodeFree`) and the mutable ledger plans are checked
against (:class:`CapacityLedger`, with volcano-style :class:`Statement` commit or discard).
Pure: stdlib only."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tessera.core.model import MILLI_PER_DEVICE, Node, ReplicaDemand


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


class CapacityError(Exception):
    """A reservation that does not fit."""


class CapacityLedger:
    """Mutable free capacity per node: reserve and release replicas as a plan is built.

    Copy-on-write: the ledger reads the frozen ``free`` it was made from and copies a
    node's state only when it first changes it, so making one costs nothing per node
    (a policy or ``validate_plan`` that touches three nodes of 1,500 copies three).
    """

    __slots__ = ("_base", "_cpu", "_devices", "_mem", "_statements", "nodes")

    def __init__(self, nodes: Mapping[str, Node], free: Mapping[str, NodeFree]) -> None:
        self.nodes = nodes
        #: the free capacity this ledger started from (never changed); nodes not yet written read it
        self._base = free
        #: the nodes written so far: their current state
        self._devices: dict[str, list[int]] = {}
        self._cpu: dict[str, int] = {}
        self._mem: dict[str, int] = {}
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

    def _write(self, node: str) -> list[int]:
        """The node's devices, copied from the base on first write (KeyError: unknown node)."""
        devs = self._devices.get(node)
        if devs is None:
            base = self._base[node]
            devs = self._devices[node] = list(base.devices_milli)
            self._cpu[node] = base.cpu_milli
            self._mem[node] = base.memory_mib
        return devs

    def _read(self, node: str) -> Sequence[int]:
        devs = self._devices.get(node)
        return self._base[node].devices_milli if devs is None else devs

    def freeze(self) -> dict[str, NodeFree]:
        return {name: self.free(name) for name in self._base}

    def free(self, node: str) -> NodeFree:
        devs = self._devices.get(node)
        if devs is None:
            return self._base[node]
        return NodeFree(tuple(devs), self._cpu[node], self._mem[node])

    def whole_free(self, node: str) -> int:
        return sum(1 for d in self._read(node) if d == MILLI_PER_DEVICE)

    def cpu_free(self, node: str) -> int:
        cpu = self._cpu.get(node)
        return self._base[node].cpu_milli if cpu is None else cpu

    def memory_free(self, node: str) -> int:
        mem = self._mem.get(node)
        return self._base[node].memory_mib if mem is None else mem

    def device_free(self, node: str) -> list[int]:
        """Free milli per device (a copy)."""
        return list(self._read(node))

    def _choose(self, node: str, demand: ReplicaDemand) -> tuple[int, ...] | None:
        devs = self._read(node)
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
            self.cpu_free(node) >= demand.cpu_milli
            and self.memory_free(node) >= demand.memory_mib
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
            devs = self._write(node)
            saved[node] = (tuple(devs), self._cpu[node], self._mem[node])

    def take(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...] = ()) -> tuple[int, ...]:
        """Reserve one replica on ``node``; returns the device indices used.

        Raises ``CapacityError`` and changes nothing when the replica does not fit.
        """
        devs = self._read(node)
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
        cpu, mem = self.cpu_free(node), self.memory_free(node)
        if cpu < demand.cpu_milli:
            raise CapacityError(f"{node}: needs {demand.cpu_milli} cpu milli, {cpu} free")
        if mem < demand.memory_mib:
            raise CapacityError(f"{node}: needs {demand.memory_mib} MiB memory, {mem} free")
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
                n = len(self._read(node))
                chosen = tuple(range(min(n, demand.accelerators or 1))) if demand.needs_accelerator else ()
            devices = chosen
        return self._reserve(node, demand, tuple(devices))

    def _reserve(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...]) -> tuple[int, ...]:
        if self._statements:
            self._remember(node)
        devs = self._write(node)
        per_device = MILLI_PER_DEVICE if demand.accelerators else demand.shared_milli
        for i in devices:
            if 0 <= i < len(devs):
                devs[i] -= per_device
        self._cpu[node] -= demand.cpu_milli
        self._mem[node] -= demand.memory_mib
        return tuple(devices)

    def give_back(self, node: str, demand: ReplicaDemand, devices: tuple[int, ...]) -> None:
        """Release one replica's reservation."""
        if node not in self._base:
            return  # the node is gone; nothing to give back
        if self._statements:
            self._remember(node)
        devs = self._write(node)
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
