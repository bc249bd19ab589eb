"""The domain model: nodes, workloads and a point-in-time view of the cluster.

Everything here is immutable and stdlib-only so that the operator, the simulator and
every policy share one vocabulary.  Capacity is tracked per device in milli-units
(1000 = one whole accelerator) so that fractional sharing (a pod asking for 0.3 of a
GPU, as in the Alibaba traces) and whole-device gangs use the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from tessera.core.quota import QuotaTree

MILLI_PER_DEVICE = 1000

_EMPTY: Mapping[str, str] = MappingProxyType({})


class WorkloadKind(StrEnum):
    TRAINING = "training"
    INFERENCE = "inference"
    #: a single pod from a trace (no gang semantics beyond one replica)
    POD = "pod"


class Spread(StrEnum):
    """How replicas of one workload must be spread (inference anti-affinity)."""

    NONE = "none"
    NODE = "node"
    ZONE = "zone"


@dataclass(frozen=True, slots=True)
class Topology:
    """Where a node sits. Replicas of one gang prefer one ``domain``."""

    zone: str = ""
    #: rack, NVLink or NIC domain: the unit of fast interconnect
    domain: str = ""
    #: NIC class (e.g. "ib-400g", "roce-200g"); nodes with different NICs talk slower
    nic: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    """A schedulable machine and its total (not free) capacity."""

    name: str
    accelerator_type: str | None
    accelerator_count: int
    cpu_milli: int = 0
    memory_mib: int = 0
    topology: Topology = Topology()
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False)
    ready: bool = True
    #: False when cordoned or tainted NoSchedule/NoExecute
    schedulable: bool = True

    def __post_init__(self) -> None:
        if self.accelerator_count < 0:
            raise ValueError(f"node {self.name}: accelerator_count must be >= 0")
        if self.accelerator_count and not self.accelerator_type:
            raise ValueError(f"node {self.name}: accelerators without an accelerator_type")

    @property
    def usable(self) -> bool:
        return self.ready and self.schedulable


@dataclass(frozen=True, slots=True)
class ReplicaDemand:
    """What one replica (one pod) of a workload needs.

    ``accelerators`` whole devices, or, when ``shared_milli`` is set, a fraction of a
    single device that other replicas may share (0 < shared_milli < 1000).
    """

    accelerators: int = 1
    shared_milli: int = 0
    cpu_milli: int = 0
    memory_mib: int = 0

    def __post_init__(self) -> None:
        if self.accelerators < 0 or self.cpu_milli < 0 or self.memory_mib < 0:
            raise ValueError("replica demand must not be negative")
        if self.shared_milli:
            if self.accelerators:
                raise ValueError("a replica asks for whole accelerators or a shared fraction, not both")
            if not 0 < self.shared_milli < MILLI_PER_DEVICE:
                raise ValueError("shared_milli must be between 1 and 999")

    @property
    def accelerator_milli(self) -> int:
        """Total accelerator milli-units one replica consumes."""
        return self.accelerators * MILLI_PER_DEVICE + self.shared_milli

    @property
    def needs_accelerator(self) -> bool:
        return self.accelerators > 0 or self.shared_milli > 0


@dataclass(frozen=True, slots=True)
class AcceleratorOption:
    """An accelerator type a workload may run on, with its per-replica throughput there.

    Throughput is relative (any unit, but one unit per workload): samples/s of one
    training replica, or requests/s one inference replica sustains.
    ``gang_throughput``: measured throughput of the whole gang at given replica counts
    ((replicas, throughput) pairs, same unit), for elastic jobs that scale sub-linearly
    (Sia's per-count profiles); other counts scale ``throughput`` linearly.
    """

    accelerator_type: str
    throughput: float = 1.0
    gang_throughput: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class RestartIntent:
    """Where a scheduling round wants a workload it stopped (to move it) to restart.

    Decision state: it travels with the workload (the operator keeps it in
    ``status.restartIntent``), so whichever leader makes the follow-up decision places the
    workload as the round meant. A round's intent holds until the next round has decided.
    """

    accelerator_type: str
    #: replica count to restart with; None = the workload's target
    replicas: int | None = None
    decided_at_seconds: float = 0.0

    def holds_at(self, now_seconds: float, round_seconds: float) -> bool:
        """Whether the intent still holds (made by the current round or the one before now)."""
        return now_seconds <= self.decided_at_seconds + round_seconds + 1e-6


@dataclass(frozen=True, slots=True)
class Workload:
    """A schedulable unit: a gang of identical replicas (training) or a service (inference).

    ``key`` is unique in a cluster ("namespace/name" in the operator).
    """

    key: str
    kind: WorkloadKind
    demand: ReplicaDemand
    min_replicas: int = 1
    max_replicas: int = 1
    #: inference: the replica count asked for (``kubectl scale``); None = max_replicas
    desired_replicas: int | None = None
    #: allowed accelerator types; empty = any type (or none, for CPU-only demand)
    options: tuple[AcceleratorOption, ...] = ()
    allow_mixed_types: bool = False
    priority: int = 0
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    global_batch_size: int | None = None
    micro_batch_size: int | None = None
    submitted_at_seconds: float = 0.0
    spread: Spread = Spread.NONE
    preemptible: bool = True
    deadline_seconds: float | None = None
    #: work lost and time spent when the workload is restarted or resharded
    restart_cost_seconds: float = 60.0
    #: service earned by earlier runs (see tessera.core.service); decision state kept with
    #: the workload (the operator: status.attainedService) so a restart or new leader has it
    attained_service_seconds: float = 0.0
    #: where the last scheduling round wanted this stopped workload to restart; kept in
    #: status.restartIntent by the operator, so the follow-up decision of any leader honours it
    restart_intent: RestartIntent | None = None
    #: free-form facts for models (e.g. the model name a simulator profiles)
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False)
    #: the leaf queue it is admitted through (tessera.core.quota); "" = no quota applies
    queue: str = ""
    #: whether it may preempt others (a PriorityClass with preemptionPolicy: Never: no)
    preempts: bool = True

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise ValueError(
                f"{self.key}: replicas must satisfy 0 <= min <= max and max >= 1 "
                f"(got min={self.min_replicas}, max={self.max_replicas})"
            )
        if self.desired_replicas is not None and not (
            self.min_replicas <= self.desired_replicas <= self.max_replicas
        ):
            raise ValueError(f"{self.key}: desired replicas must lie within [min, max]")
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ValueError(f"{self.key}: parallel degrees must be >= 1")
        types = [o.accelerator_type for o in self.options]
        if len(set(types)) != len(types):
            raise ValueError(f"{self.key}: accelerator types listed twice")

    @property
    def target_replicas(self) -> int:
        """How many replicas the workload wants when capacity allows."""
        return self.desired_replicas if self.desired_replicas is not None else self.max_replicas

    @property
    def gang_min(self) -> int:
        """The fewest replicas that may be started together (never zero)."""
        return max(1, self.min_replicas)

    def allows(self, accelerator_type: str | None) -> bool:
        if not self.demand.needs_accelerator:
            return True
        if accelerator_type is None:
            return False
        return not self.options or any(o.accelerator_type == accelerator_type for o in self.options)

    def throughput_on(self, accelerator_type: str | None) -> float:
        """Per-replica throughput on ``accelerator_type`` (1.0 when unspecified)."""
        for option in self.options:
            if option.accelerator_type == accelerator_type:
                return option.throughput
        return 1.0

    def gang_throughput_on(self, accelerator_type: str | None, replicas: int) -> float:
        """Whole-gang throughput of ``replicas`` replicas on the type: measured when the
        option lists that count, else per-replica throughput x replicas."""
        for option in self.options:
            if option.accelerator_type == accelerator_type:
                measured = dict(option.gang_throughput).get(replicas)
                return measured if measured is not None else option.throughput * replicas
        return 1.0 * replicas

    @property
    def allowed_types(self) -> tuple[str, ...]:
        return tuple(o.accelerator_type for o in self.options)


@dataclass(frozen=True, slots=True)
class ReplicaPlacement:
    """Where one running replica sits."""

    replica: int
    node: str
    accelerator_type: str | None
    #: device indices on the node (whole devices), or the one shared device
    devices: tuple[int, ...] = ()
    #: when this replica landed on ``node`` (start or last migration); None = unknown.
    #: Rebalancers use it for cooldowns, so history lives in the cluster, not in a policy.
    since_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    """A running workload and the placement of each of its replicas."""

    workload: Workload
    replicas: tuple[ReplicaPlacement, ...]
    started_at_seconds: float = 0.0
    #: observed load of the whole workload (requests/s for inference), from a LoadSource;
    #: None = not measured. Rebalancers split it evenly over replicas, as a Service does.
    observed_load_per_second: float | None = None
    #: when the replica set last changed (elastic resize); None = never since the start.
    #: Kept in the workload's status by the operator so resize hysteresis survives restarts.
    resized_at_seconds: float | None = None
    #: since when the run's service is not yet in ``workload.attained_service_seconds``;
    #: None = ``stable_since_seconds`` (see tessera.core.service)
    service_since_seconds: float | None = None

    @property
    def key(self) -> str:
        return self.workload.key

    @property
    def stable_since_seconds(self) -> float:
        """Since when the replica set has been unchanged (start or last resize)."""
        return self.started_at_seconds if self.resized_at_seconds is None else self.resized_at_seconds

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(r.node for r in self.replicas)


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

    __slots__ = ("_allocations", "_free", "_nodes", "now_seconds", "quotas")

    def __init__(
        self,
        nodes: Iterable[Node],
        allocations: Iterable[Allocation] = (),
        now_seconds: float = 0.0,
        quotas: QuotaTree | None = None,
    ) -> None:
        node_map: dict[str, Node] = {}
        for node in nodes:
            if node.name in node_map:
                raise ValueError(f"node {node.name} listed twice")
            node_map[node.name] = node
        alloc_map: dict[str, Allocation] = {}
        for allocation in allocations:
            if allocation.key in alloc_map:
                raise ValueError(f"workload {allocation.key} allocated twice")
            alloc_map[allocation.key] = allocation
        self._nodes: Mapping[str, Node] = MappingProxyType(node_map)
        self._allocations: Mapping[str, Allocation] = MappingProxyType(alloc_map)
        self.now_seconds = now_seconds
        #: the queues and their quotas (None: no queues, nothing is limited by quota)
        self.quotas = quotas
        ledger = CapacityLedger.empty(node_map.values())
        for key, allocation in alloc_map.items():
            replicas = []
            for rp in allocation.replicas:
                if rp.node in node_map:
                    devices = ledger.hold(rp.node, allocation.workload.demand, rp.devices)
                    if devices != rp.devices:
                        # a source that cannot see devices (the operator: a device plugin picks
                        # them) gets them assigned here, so releasing the replica later gives
                        # back exactly what was taken
                        rp = replace(rp, devices=devices)
                replicas.append(rp)
            if tuple(replicas) != allocation.replicas:
                alloc_map[key] = replace(allocation, replicas=tuple(replicas))
        self._free: Mapping[str, NodeFree] = MappingProxyType(ledger.freeze())

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
        )


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
