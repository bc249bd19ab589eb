"""The domain model: nodes, workloads and a point-in-time view of the cluster.

Everything here is immutable and stdlib-only so that the operator, the simulator and
every policy share one vocabulary.  Capacity is tracked per device in milli-units
(1000 = one whole accelerator) so that fractional sharing (a pod asking for 0.3 of a
GPU, as in the Alibaba traces) and whole-device gangs use the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

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
