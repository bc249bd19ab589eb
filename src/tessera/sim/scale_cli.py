"""``tessera sim scale``: decision latency of a policy on a synthetic cluster.

Generates, from a seed, a heterogeneous cluster of N nodes (five accelerator types in
racks, four zones, two NIC classes; a third of the nodes idle, the others each running
one low-priority job) and M pending gangs (single pods, multi-node gangs, elastic
ranges, tensor-parallel groups, node- and zone-spread inference services, three
priority levels), then times ``Engine.decide`` for each policy on ``--decisions``
independent instances.  Writes one JSON record per (policy, N, M) with latency
percentiles in seconds (``p50_seconds``, ``p95_seconds``, ``p99_seconds``), solver status
counts, objective, proven gap, CPU seconds per decision, the machine's load average, and plan quality (gangs started, accelerators allocated,
normalised throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera.core import (
    AcceleratorOption,
    Allocation,
    ClusterSnapshot,
    Node,
    ReplicaDemand,
    ReplicaPlacement,
    Spread,
    Topology,
    Workload,
    WorkloadKind,
)
from tessera.engine import CycleResult, Engine
from tessera.policy import load_policy

#: accelerator type -> (devices per node, share of racks, relative speed)
CLUSTER_MIX: dict[str, tuple[int, float, float]] = {
    "H100": (8, 0.15, 3.0),
    "A100": (8, 0.30, 2.0),
    "V100": (8, 0.25, 1.0),
    "T4": (4, 0.20, 0.4),
    "Ascend910B": (8, 0.10, 1.8),
}
NODES_PER_RACK = 32
ZONES = 4


class _FixedClock:
    def __init__(self, now_seconds: float) -> None:
        self.now_seconds = now_seconds

    def now(self) -> float:
        return self.now_seconds


def synthetic_cluster(n_nodes: int, rng: random.Random, idle_share: float = 0.35) -> tuple[list[Node], list[Allocation]]:
    """Racks of one accelerator type; ``idle_share`` of the nodes idle, each other node
    running one job of 1 to all of its devices."""
    types = list(CLUSTER_MIX)
    shares = [CLUSTER_MIX[t][1] for t in types]
    nodes: list[Node] = []
    allocations: list[Allocation] = []
    rack = 0
    while len(nodes) < n_nodes:
        accelerator_type = rng.choices(types, shares)[0]
        count = CLUSTER_MIX[accelerator_type][0]
        zone = f"zone-{rack % ZONES}"
        nic = "ib-400g" if accelerator_type in ("H100", "A100") or rng.random() < 0.3 else "roce-100g"
        for _ in range(min(NODES_PER_RACK, n_nodes - len(nodes))):
            name = f"node-{len(nodes):05d}"
            nodes.append(Node(name, accelerator_type, count, cpu_milli=128_000, memory_mib=1_000_000,
                              topology=Topology(zone=zone, domain=f"rack-{rack:04d}", nic=nic)))
            # a third of the nodes idle, the others run one job of 1..all devices
            busy = 0 if rng.random() < idle_share else min(count, rng.choice([1, 2, 4, 4, 6, 8]))
            if busy:
                job = Workload(f"running/{name}", WorkloadKind.TRAINING, ReplicaDemand(accelerators=busy),
                               priority=0, restart_cost_seconds=rng.choice([60.0, 300.0]))
                allocations.append(Allocation(job, (ReplicaPlacement(0, name, accelerator_type, tuple(range(busy))),),
                                              started_at_seconds=rng.uniform(0, 3_600)))
        rack += 1
    return nodes, allocations


def synthetic_pending(m: int, rng: random.Random, now_seconds: float) -> list[Workload]:
    """A mix of gangs a shared ML cluster sees, with per-type throughputs."""
    out = []
    types = list(CLUSTER_MIX)
    for i in range(m):
        shape = rng.choices(
            ["pod", "pair", "quad", "node", "2x8", "4x8", "elastic", "tp", "infer-node", "infer-zone"],
            [25, 10, 10, 15, 10, 5, 5, 5, 10, 5],
        )[0]
        accelerators, replicas, lo = {"pod": (1, 1, 1), "pair": (2, 1, 1), "quad": (4, 1, 1), "node": (8, 1, 1),
                                      "2x8": (8, 2, 2), "4x8": (8, 4, 4), "elastic": (8, 4, 1), "tp": (4, 4, 4),
                                      "infer-node": (1, 3, 3), "infer-zone": (1, 3, 3)}[shape]
        allowed = rng.sample(types, rng.randint(2, len(types)))
        if accelerators == 8:  # T4 nodes have 4 devices: 8-device replicas cannot use them
            allowed = [t for t in allowed if CLUSTER_MIX[t][0] >= 8] or ["A100"]
        options = tuple(AcceleratorOption(t, round(CLUSTER_MIX[t][2] * rng.uniform(0.7, 1.3), 3)) for t in sorted(allowed))
        inference = shape.startswith("infer")
        out.append(Workload(
            key=f"pending/{shape}-{i:05d}",
            kind=WorkloadKind.INFERENCE if inference else WorkloadKind.TRAINING,
            demand=ReplicaDemand(accelerators=accelerators),
            min_replicas=lo, max_replicas=replicas, options=options,
            priority=rng.choices([0, 1, 2], [70, 20, 10])[0],
            tensor_parallel=8 if shape == "tp" else 1,
            spread={"infer-node": Spread.NODE, "infer-zone": Spread.ZONE}.get(shape, Spread.NONE),
            submitted_at_seconds=now_seconds - rng.uniform(0, 3_600),
            restart_cost_seconds=rng.choice([60.0, 300.0]),
        ))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def quality(result: CycleResult, pending: Sequence[Workload]) -> dict[str, float]:
    """Gangs started, accelerators allocated and normalised throughput of an accepted plan."""
    by_key = {w.key: w for w in pending}
    accelerators = 0.0
    throughput = 0.0
    for placement in result.plan.placements:
        workload = by_key[placement.workload]
        best = max((o.throughput for o in workload.options), default=1.0) or 1.0
        for replica in placement.replicas:
            node = result.snapshot.nodes[replica.node]
            accelerators += workload.demand.accelerator_milli / 1000
            throughput += workload.throughput_on(node.accelerator_type) / best / workload.target_replicas
    return {"started": len(result.plan.placements), "accelerators": accelerators, "normalised_throughput": throughput,
            "rejected": len(result.rejected), "preempted": len(result.plan.preemptions)}


def measure(
    policy_name: str, n_nodes: int, m_pending: int, *, decisions: int, seed: int, time_budget_seconds: float,
    deterministic: bool, params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time ``decisions`` decisions of one policy; instances depend only on (seed, N, M, i)."""
    policy = load_policy(policy_name, **(params or {}))
    now = 7_200.0
    latencies: list[float] = []
    #: CPU seconds of this process (all threads) per decision: on a shared, loaded
    #: machine this is closer than wall time to the latency on an idle one
    cpu_seconds: list[float] = []
    load_before = os.getloadavg()[0]
    statuses: Counter[str] = Counter()
    per_decision: list[dict[str, Any]] = []
    for i in range(decisions):
        rng = random.Random(f"{seed}/{n_nodes}/{m_pending}/{i}")
        nodes, allocations = synthetic_cluster(n_nodes, rng)
        pending = synthetic_pending(m_pending, rng, now)
        snapshot = ClusterSnapshot(nodes, allocations, now_seconds=now)
        engine = Engine(policy, _FixedClock(now), seed=seed, time_budget_seconds=time_budget_seconds,
                        deterministic=deterministic)
        cpu_before = time.process_time()
        result = engine.decide(snapshot, pending)
        cpu_seconds.append(time.process_time() - cpu_before)
        latencies.append(result.decision_seconds)
        stats = dict(result.stats)
        statuses[str(stats.get("status", "n/a"))] += 1
        row: dict[str, Any] = {"decision": i, "seconds": result.decision_seconds, **quality(result, pending)}
        for key in ("objective", "best_bound", "gap", "hint_objective", "chosen", "score", "seed_score", "pools", "unit_vars",
                    "solve_seconds", "deterministic_time"):
            if key in stats:
                row[key] = stats[key]
        if result.error:
            row["error"] = result.error
        per_decision.append(row)

    def mean(key: str) -> float:
        values = [float(r[key]) for r in per_decision if key in r and r[key] == r[key]]
        return sum(values) / len(values) if values else float("nan")

    return {
        "policy": policy_name, "nodes": n_nodes, "pending": m_pending, "decisions": decisions, "seed": seed,
        "time_budget_seconds": time_budget_seconds, "deterministic": deterministic,
        "p50_seconds": percentile(latencies, 50), "p95_seconds": percentile(latencies, 95),
        "p99_seconds": percentile(latencies, 99), "max_seconds": max(latencies),
        "mean_seconds": sum(latencies) / len(latencies),
        "p50_cpu_seconds": percentile(cpu_seconds, 50), "p95_cpu_seconds": percentile(cpu_seconds, 95),
        "load_average": (load_before + os.getloadavg()[0]) / 2, "cpus": os.cpu_count(),
        "status_counts": dict(statuses), "objective_mean": mean("objective"), "gap_mean": mean("gap"),
        "objective_over_hint_mean": _mean([r["objective"] / r["hint_objective"] for r in per_decision
                                           if r.get("hint_objective") and r.get("objective") == r.get("objective")
                                           and "objective" in r]),
        "gap_max": max((float(r["gap"]) for r in per_decision if "gap" in r and r["gap"] == r["gap"]), default=float("nan")),
        "started_mean": mean("started"), "accelerators_mean": mean("accelerators"),
        "normalised_throughput_mean": mean("normalised_throughput"), "rejected_total": sum(r["rejected"] for r in per_decision),
        "per_decision": per_decision,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, required=True, help="nodes in the synthetic cluster")
    parser.add_argument("--pending", type=int, required=True, help="pending gangs per decision")
    parser.add_argument("--policy", action="append", required=True,
                        help="policy name (repeat to compare policies on the same instances)")
    parser.add_argument("--decisions", type=int, default=10, help="independent instances to time (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=1.0, help="seconds per decision given to the policy")
    parser.add_argument("--deterministic", action="store_true", help="deterministic solver limits (simulator mode)")
    parser.add_argument("--json", type=Path, help="write the records (a JSON list) to this file")


def run(args: argparse.Namespace) -> int:
    records = []
    for name in args.policy:
        record = measure(name, args.nodes, args.pending, decisions=args.decisions, seed=args.seed,
                         time_budget_seconds=args.time_budget, deterministic=args.deterministic)
        records.append(record)
        print(f"{name:>10}  nodes={args.nodes} pending={args.pending}  p50={record['p50_seconds']:.3f}s "
              f"p95={record['p95_seconds']:.3f}s p99={record['p99_seconds']:.3f}s (cpu p95 {record['p95_cpu_seconds']:.3f}s, "
              f"load {record['load_average']:.1f})  started={record['started_mean']:.1f} "
              f"norm.throughput={record['normalised_throughput_mean']:.1f}  status={record['status_counts']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))
    return 0
