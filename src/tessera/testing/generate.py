"""Seeded random clusters and pending queues for testing policies.

The conformance suite runs every policy on these; plugin authors may use them for their own
tests.  Everything is drawn from one ``random.Random(seed)``, so a seed names a scenario.
The clusters are deliberately awkward: several accelerator types (GPUs and NPUs), CPU-only
nodes, nodes that are not ready or cordoned, zones and interconnect domains, workloads already
running (some sharing a GPU), and pending gangs of every shape the core model allows: whole-device
gangs with elastic ranges, GPU-sharing pods, CPU-only pods, type constraints with per-type
throughput, node and zone spread, priorities and deadlines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tessera.core import (
    MILLI_PER_DEVICE,
    AcceleratorOption,
    Allocation,
    CapacityError,
    ClusterSnapshot,
    Node,
    ReplicaDemand,
    ReplicaPlacement,
    Spread,
    Topology,
    Workload,
    WorkloadKind,
)

#: accelerator type -> (devices per node choices, relative speed)
_TYPES: dict[str, tuple[tuple[int, ...], float]] = {
    "H100": ((8,), 3.0),
    "A100": ((4, 8), 2.0),
    "V100": ((4, 8), 1.0),
    "T4": ((1, 2, 4), 0.5),
    "Ascend910B": ((8,), 1.8),
}


@dataclass(frozen=True, slots=True)
class Scenario:
    """One generated cluster state and pending queue."""

    seed: int
    snapshot: ClusterSnapshot
    pending: tuple[Workload, ...]


def random_nodes(rng: random.Random, n_nodes: int) -> list[Node]:
    """``n_nodes`` heterogeneous nodes in 2-3 zones; ~10% CPU-only, a few unusable."""
    zones = [f"zone-{i}" for i in range(rng.randint(2, 3))]
    types = sorted(_TYPES)
    out: list[Node] = []
    for i in range(n_nodes):
        zone = zones[i % len(zones)]
        domain = f"{zone}-rack-{(i // len(zones)) % 3}"
        if rng.random() < 0.1:
            accelerator_type: str | None = None
            count = 0
        else:
            accelerator_type = rng.choice(types)
            count = rng.choice(_TYPES[accelerator_type][0])
        roll = rng.random()
        out.append(
            Node(
                name=f"node-{i:03d}",
                accelerator_type=accelerator_type,
                accelerator_count=count,
                cpu_milli=rng.choice((32_000, 64_000, 96_000)),
                memory_mib=rng.choice((256_000, 512_000, 1_024_000)),
                topology=Topology(zone=zone, domain=domain, nic=rng.choice(("ib-400g", "roce-200g"))),
                ready=roll >= 0.04,
                schedulable=not 0.04 <= roll < 0.08,
            )
        )
    return out


def random_workload(rng: random.Random, key: str, present_types: list[str], now_seconds: float) -> Workload:
    """One workload of a random shape (see the module docstring)."""
    shape = rng.random()
    kind = WorkloadKind.TRAINING
    spread = Spread.NONE
    lo = hi = 1
    if shape < 0.25:  # a GPU-sharing pod from a trace
        demand = ReplicaDemand(accelerators=0, shared_milli=rng.choice((100, 250, 460, 500, 750)),
                               cpu_milli=rng.choice((1_000, 4_000)), memory_mib=rng.choice((4_096, 16_384)))
        kind = WorkloadKind.POD
    elif shape < 0.33:  # CPU only
        demand = ReplicaDemand(accelerators=0, cpu_milli=rng.choice((2_000, 8_000)), memory_mib=8_192)
        kind = WorkloadKind.POD
    elif shape < 0.5:  # inference service spread over nodes or zones
        demand = ReplicaDemand(accelerators=rng.choice((1, 2)), cpu_milli=4_000, memory_mib=32_768)
        kind = WorkloadKind.INFERENCE
        spread = rng.choice((Spread.NODE, Spread.ZONE))
        hi = rng.randint(1, 3)
        lo = rng.randint(1, hi)
    else:  # training gang, possibly elastic
        demand = ReplicaDemand(accelerators=rng.choice((1, 2, 4, 8)), cpu_milli=8_000, memory_mib=65_536)
        hi = rng.choice((1, 1, 2, 4))
        lo = rng.randint(1, hi) if rng.random() < 0.5 else hi
    options: tuple[AcceleratorOption, ...] = ()
    if demand.needs_accelerator and present_types and rng.random() < 0.6:
        allowed = rng.sample(present_types, rng.randint(1, min(3, len(present_types))))
        options = tuple(
            AcceleratorOption(t, round(_TYPES.get(t, ((1,), 1.0))[1] * rng.uniform(0.8, 1.2), 3))
            for t in sorted(allowed)
        )
    deadline = now_seconds + rng.uniform(600, 36_000) if rng.random() < 0.3 else None
    return Workload(
        key=key,
        kind=kind,
        demand=demand,
        min_replicas=lo,
        max_replicas=hi,
        options=options,
        allow_mixed_types=kind is WorkloadKind.TRAINING and rng.random() < 0.2,
        priority=rng.choice((0, 0, 0, 1, 5)),
        submitted_at_seconds=max(0.0, now_seconds - rng.uniform(0, 3_600)),
        spread=spread,
        preemptible=rng.random() < 0.8,
        deadline_seconds=deadline,
    )


def random_scenario(
    seed: int,
    *,
    n_nodes: int | None = None,
    n_running: int | None = None,
    n_pending: int | None = None,
    now_seconds: float = 10_000.0,
) -> Scenario:
    """A reproducible cluster with running work and a pending queue (sizes drawn when not given)."""
    rng = random.Random(seed)
    n_nodes = n_nodes if n_nodes is not None else rng.randint(6, 40)
    n_running = n_running if n_running is not None else rng.randint(0, 2 * n_nodes)
    n_pending = n_pending if n_pending is not None else rng.randint(1, 24)
    nodes = random_nodes(rng, n_nodes)
    present = sorted({n.accelerator_type for n in nodes if n.accelerator_type})
    snapshot = ClusterSnapshot(nodes, now_seconds=now_seconds)
    ledger = snapshot.ledger()
    usable = [n for n in nodes if n.usable]
    allocations: list[Allocation] = []
    for i in range(n_running):
        workload = random_workload(rng, f"running/w{i:03d}", present, now_seconds)
        want = rng.randint(workload.gang_min, workload.max_replicas)
        candidates = [n for n in usable if workload.allows(n.accelerator_type)]
        if workload.options and not workload.allow_mixed_types and candidates:
            one_type = rng.choice(sorted({str(n.accelerator_type) for n in candidates}))
            candidates = [n for n in candidates if n.accelerator_type == one_type]
        rng.shuffle(candidates)
        replicas: list[ReplicaPlacement] = []
        used_nodes: set[str] = set()
        used_zones: set[str] = set()
        for n in candidates:
            if len(replicas) == want:
                break
            if workload.spread is Spread.NODE and n.name in used_nodes:
                continue
            if workload.spread is Spread.ZONE and n.topology.zone in used_zones:
                continue
            try:
                devices = ledger.take(n.name, workload.demand)
            except CapacityError:
                continue
            replicas.append(ReplicaPlacement(len(replicas), n.name, n.accelerator_type, devices))
            used_nodes.add(n.name)
            used_zones.add(n.topology.zone)
        if len(replicas) >= workload.gang_min:
            allocations.append(Allocation(workload, tuple(replicas), started_at_seconds=now_seconds - 60))
        else:
            for r in replicas:
                ledger.give_back(r.node, workload.demand, r.devices)
    pending = tuple(random_workload(rng, f"pending/w{i:03d}", present, now_seconds) for i in range(n_pending))
    return Scenario(seed, ClusterSnapshot(nodes, allocations, now_seconds=now_seconds), pending)


def roomy_scenario(seed: int) -> Scenario:
    """An empty cluster with room for every pending workload: a placement policy must place some."""
    rng = random.Random(seed)
    nodes = [
        Node(f"node-{i:03d}", t, 8, cpu_milli=192_000, memory_mib=2_048_000,
             topology=Topology(zone=f"zone-{i % 3}", domain=f"rack-{i % 6}"))
        for i, t in enumerate(["A100", "H100", "V100"] * 4)
    ]
    pending = tuple(
        Workload(
            key=f"pending/small-{i}",
            kind=WorkloadKind.TRAINING,
            demand=ReplicaDemand(accelerators=rng.choice((1, 2)), cpu_milli=1_000, memory_mib=1_024),
            submitted_at_seconds=float(i),
        )
        for i in range(4)
    )
    return Scenario(seed, ClusterSnapshot(nodes), pending)


def total_accelerator_milli(snapshot: ClusterSnapshot) -> int:
    """Total device milli of usable nodes (a helper for utilisation metrics)."""
    return sum(n.accelerator_count * MILLI_PER_DEVICE for n in snapshot.nodes.values() if n.usable)
