"""What moving one replica from node A to node B costs (pure, stdlib only).

A move has four parts, each estimated from the workload spec and the two nodes:

* **cold start** on the target: pod scheduling and container start, pulling the image,
  loading model weights (or a checkpoint) into device memory at a bandwidth;
* **state transfer** over the link between A and B: the in-flight KV cache of an
  inference replica (training restores from its checkpoint instead);
* **capacity lost** while the move is in flight: an inference replica moves
  make-before-break, so the source keeps serving during the cold start and only the
  cut-over (state transfer) is lost, while the reserved target idles; a training gang
  stops for the whole move;
* for training, the **restart penalty**: the restart itself plus the progress made since
  the last checkpoint, which is computed again.

Everything is expressed in one currency, *replica-seconds of lost service*
(``cost_seconds``), so a rebalancer can weigh moves against the load imbalance they cure.

Parameters come from ``Workload.attributes`` (keys ``tessera.dev/...`` below, numbers as
strings, as they arrive from a CRD annotation) and fall back to documented defaults per
workload class (:data:`DEFAULTS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from tessera.core.model import MILLI_PER_DEVICE, Node, Workload, WorkloadKind

#: bits in one GiB, in Gbit (GiB are binary, link speeds decimal)
GBIT_PER_GIB = 8 * 2**30 / 1e9

ATTR_IMAGE_GIB = "tessera.dev/image-gib"
ATTR_IMAGE_PULL_GIB_PER_SECOND = "tessera.dev/image-pull-gib-per-second"
ATTR_WEIGHTS_GIB = "tessera.dev/weights-gib"
ATTR_WEIGHTS_LOAD_GIB_PER_SECOND = "tessera.dev/weights-load-gib-per-second"
ATTR_STATE_GIB = "tessera.dev/state-gib"
ATTR_SCHEDULING_SECONDS = "tessera.dev/scheduling-seconds"
ATTR_CHECKPOINT_INTERVAL_SECONDS = "tessera.dev/checkpoint-interval-seconds"
ATTR_LAST_CHECKPOINT_AT_SECONDS = "tessera.dev/last-checkpoint-at-seconds"
#: how many replicas of one service may be moving at once (rebalancer, default 1)
ATTR_MAX_UNAVAILABLE = "tessera.dev/max-unavailable"


@dataclass(frozen=True, slots=True)
class MigrationParams:
    """Cost parameters of one workload class (any may be overridden per workload)."""

    #: pod scheduling, container creation and process start on the target
    scheduling_seconds: float
    image_gib: float
    image_pull_gib_per_second: float
    #: model weights (inference) or checkpoint (training) read into device memory
    weights_gib: float
    weights_load_gib_per_second: float
    #: live state sent from source to target: KV cache of in-flight requests
    state_gib: float
    #: True: the source serves until the target is ready (inference);
    #: False: the gang stops, moves and restarts from its last checkpoint (training)
    make_before_break: bool
    #: training: seconds between checkpoints (progress since the last one is lost)
    checkpoint_interval_seconds: float = 0.0
    #: weight of one replica-second of reserved-but-idle target capacity, relative to
    #: one replica-second of lost service (reserved room blocks other work, a little)
    reservation_weight: float = 0.1


#: Defaults per workload class. Inference: a 7-8B fp16 model (16 GiB of weights, 8 GiB
#: image) read at 2 GiB/s from local NVMe, image pulled at 0.5 GiB/s, 4 GiB of KV cache
#: in flight. Training: a 12 GiB image, a 32 GiB checkpoint, checkpoints every 30 min.
#: Trace pods: image only.
DEFAULTS: Mapping[WorkloadKind, MigrationParams] = MappingProxyType(
    {
        WorkloadKind.INFERENCE: MigrationParams(
            scheduling_seconds=5.0,
            image_gib=8.0,
            image_pull_gib_per_second=0.5,
            weights_gib=16.0,
            weights_load_gib_per_second=2.0,
            state_gib=4.0,
            make_before_break=True,
        ),
        WorkloadKind.TRAINING: MigrationParams(
            scheduling_seconds=5.0,
            image_gib=12.0,
            image_pull_gib_per_second=0.5,
            weights_gib=32.0,
            weights_load_gib_per_second=2.0,
            state_gib=0.0,
            make_before_break=False,
            checkpoint_interval_seconds=1800.0,
        ),
        WorkloadKind.POD: MigrationParams(
            scheduling_seconds=5.0,
            image_gib=4.0,
            image_pull_gib_per_second=0.5,
            weights_gib=0.0,
            weights_load_gib_per_second=2.0,
            state_gib=0.0,
            make_before_break=False,
        ),
    }
)


@dataclass(frozen=True, slots=True)
class LinkModel:
    """Bandwidth between two nodes from their topology.

    Same fast-interconnect ``domain`` (rack / NVLink / IB island) is fastest, then the
    same zone, then across zones; when the two NIC classes differ the transfer falls back
    to the common Ethernet path.
    """

    same_domain_gbit_per_second: float = 200.0
    same_zone_gbit_per_second: float = 50.0
    cross_zone_gbit_per_second: float = 10.0
    mismatched_nic_gbit_per_second: float = 25.0

    def gbit_per_second(self, source: Node, target: Node) -> float:
        a, b = source.topology, target.topology
        if a.zone != b.zone:
            speed = self.cross_zone_gbit_per_second
        elif a.domain and a.domain == b.domain:
            speed = self.same_domain_gbit_per_second
        else:
            speed = self.same_zone_gbit_per_second
        if a.nic and b.nic and a.nic != b.nic:
            speed = min(speed, self.mismatched_nic_gbit_per_second)
        return speed


@dataclass(frozen=True, slots=True)
class MigrationEstimate:
    """The parts of one move and its total cost (see the module docstring)."""

    image_pull_seconds: float
    weights_load_seconds: float
    cold_start_seconds: float
    state_transfer_seconds: float
    #: from the decision to the target serving
    in_flight_seconds: float
    restart_penalty_seconds: float
    #: replica-seconds of service lost (all replicas of a training gang stop)
    capacity_lost_replica_seconds: float
    #: replica-seconds the target is reserved but not yet serving
    reserved_replica_seconds: float
    #: the single figure a rebalancer weighs: lost + reservation_weight x reserved
    cost_seconds: float


def params_for(workload: Workload, defaults: Mapping[WorkloadKind, MigrationParams] = DEFAULTS) -> MigrationParams:
    """The class defaults of ``workload`` overridden by its ``tessera.dev/*`` attributes."""
    base = defaults[workload.kind]
    attrs = workload.attributes
    overrides: dict[str, Any] = {
        field: _number(workload, key)
        for field, key in (
            ("scheduling_seconds", ATTR_SCHEDULING_SECONDS),
            ("image_gib", ATTR_IMAGE_GIB),
            ("image_pull_gib_per_second", ATTR_IMAGE_PULL_GIB_PER_SECOND),
            ("weights_gib", ATTR_WEIGHTS_GIB),
            ("weights_load_gib_per_second", ATTR_WEIGHTS_LOAD_GIB_PER_SECOND),
            ("state_gib", ATTR_STATE_GIB),
            ("checkpoint_interval_seconds", ATTR_CHECKPOINT_INTERVAL_SECONDS),
        )
        if key in attrs
    }
    return replace(base, **overrides) if overrides else base


def _number(workload: Workload, key: str) -> float:
    raw = workload.attributes[key]
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{workload.key}: attribute {key}={raw!r} is not a number") from None
    if value < 0 or (key.endswith("per-second") and value == 0):
        raise ValueError(f"{workload.key}: attribute {key}={raw!r} must be positive")
    return value


class MigrationCostModel:
    """Estimates moves; one instance per cluster configuration (link speeds, defaults)."""

    def __init__(
        self,
        link: LinkModel | None = None,
        defaults: Mapping[WorkloadKind, MigrationParams] = DEFAULTS,
    ) -> None:
        self.link = link or LinkModel()
        self.defaults = defaults

    def estimate(
        self,
        workload: Workload,
        source: Node,
        target: Node,
        *,
        now_seconds: float = 0.0,
        gang_replicas: int = 1,
    ) -> MigrationEstimate:
        """Cost of moving one replica of ``workload`` from ``source`` to ``target``.

        ``gang_replicas`` is how many replicas stop with it (a training gang's size).
        For training, progress since the last checkpoint is ``now_seconds`` minus the
        ``tessera.dev/last-checkpoint-at-seconds`` attribute when known, else half the
        checkpoint interval (the expectation for a move at a random time).
        """
        p = params_for(workload, self.defaults)
        image_pull = p.image_gib / p.image_pull_gib_per_second
        weights_load = p.weights_gib / p.weights_load_gib_per_second
        cold_start = p.scheduling_seconds + image_pull + weights_load
        transfer = 0.0
        if p.state_gib and source.name != target.name:
            transfer = p.state_gib * GBIT_PER_GIB / self.link.gbit_per_second(source, target)
        in_flight = cold_start + transfer
        if p.make_before_break:
            restart = 0.0
            # the source keeps serving until the target is warm; only the cut-over is lost
            lost = transfer
            reserved = in_flight
        else:
            restart = workload.restart_cost_seconds + self._since_checkpoint(workload, p, now_seconds)
            lost = max(1, gang_replicas) * (in_flight + restart)
            reserved = 0.0
        return MigrationEstimate(
            image_pull_seconds=image_pull,
            weights_load_seconds=weights_load,
            cold_start_seconds=cold_start,
            state_transfer_seconds=transfer,
            in_flight_seconds=in_flight,
            restart_penalty_seconds=restart,
            capacity_lost_replica_seconds=lost,
            reserved_replica_seconds=reserved,
            cost_seconds=lost + p.reservation_weight * reserved,
        )

    @staticmethod
    def _since_checkpoint(workload: Workload, p: MigrationParams, now_seconds: float) -> float:
        if ATTR_LAST_CHECKPOINT_AT_SECONDS in workload.attributes:
            last = float(workload.attributes[ATTR_LAST_CHECKPOINT_AT_SECONDS])
            return max(0.0, now_seconds - last)
        return p.checkpoint_interval_seconds / 2


def max_unavailable(workload: Workload) -> int:
    """Replicas of ``workload`` that may be moving at once (attribute, default 1)."""
    raw = workload.attributes.get(ATTR_MAX_UNAVAILABLE)
    if raw is None:
        return 1
    value = int(raw)
    if value < 0:
        raise ValueError(f"{workload.key}: {ATTR_MAX_UNAVAILABLE} must be >= 0")
    return value


def replica_devices(workload: Workload) -> float:
    """Accelerators one replica holds (fractions for shared replicas)."""
    return workload.demand.accelerator_milli / MILLI_PER_DEVICE
