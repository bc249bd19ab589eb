"""Rebalancer decision time and quality as the cluster grows.

Seeded random clusters: a quarter H100 nodes, the rest A100 (8 GPUs each), filled to 80%
with inference services of 4 x 2-GPU replicas at random loads (1-16 req/s per service;
a replica does 4.2 req/s on H100, 1.3 on A100). One cost-aware round (budget 8 moves,
2 stages, 4 candidate nodes per type) with a wall-clock limit.

    python -m bench rebalance_scale          # or: python -m bench.bench_rebalance_scale --nodes 40 100
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace

from bench.common import write_results
from tessera.core import Allocation, ClusterSnapshot, Node, ReplicaPlacement, WorkloadKind
from tessera.core.migration import ATTR_MAX_UNAVAILABLE
from tessera.solver.rebalance import RebalanceConfig, RebalanceModel
from tessera.testing.builders import gang


def instance(nodes: int, seed: int) -> ClusterSnapshot:
    rng = random.Random(seed)
    cluster = [Node(f"h{i}", "H100", 8) for i in range(nodes // 4)] + [
        Node(f"a{i}", "A100", 8) for i in range(nodes - nodes // 4)
    ]
    free = {n.name: list(range(8)) for n in cluster}
    types = {n.name: n.accelerator_type for n in cluster}
    allocations = []
    for s in range(int(nodes * 8 * 0.8) // 8):
        w = replace(
            gang(f"s{s}", 4, 2, (("A100", 1.3), ("H100", 4.2)), kind=WorkloadKind.INFERENCE, mixed=True),
            attributes={ATTR_MAX_UNAVAILABLE: "2"},
        )
        replicas = []
        for r in range(4):
            name = rng.choice([n for n, d in free.items() if len(d) >= 2])
            devices = tuple(free[name][:2])
            del free[name][:2]
            replicas.append(ReplicaPlacement(r, name, types[name], devices))
        allocations.append(Allocation(w, tuple(replicas), observed_load_per_second=rng.uniform(1, 16)))
    return ClusterSnapshot(cluster, allocations, now_seconds=10_000.0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_rebalance_scale", description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="*", default=[40, 100, 400])
    parser.add_argument("--time-limit", type=float, default=5.0, help="wall-clock seconds per decision")
    args = parser.parse_args(argv)
    records = []
    for nodes in args.nodes:
        snapshot = instance(nodes, seed=nodes)
        started = time.perf_counter()
        model = RebalanceModel(
            snapshot, RebalanceConfig(budget_moves=8, time_limit_seconds=args.time_limit), now_seconds=snapshot.now_seconds
        )
        built = time.perf_counter()
        result = model.solve()
        done = time.perf_counter()
        records.append(
            {
                "nodes": nodes,
                "replicas": sum(len(a.replicas) for a in snapshot.allocations.values()),
                "move_variables": len(model.move),
                "build_seconds": built - started,
                "solve_seconds": done - built,
                "status": result.status,
                "moves": len(result.moves),
                "gain_replica_seconds": result.gain_seconds,
                "gain_fraction_of_baseline": result.gain_seconds / result.baseline_seconds if result.baseline_seconds else 0.0,
            }
        )
        print(records[-1])
    write_results(
        "rebalance_scale",
        records,
        records,
        command="python -m bench rebalance_scale " + " ".join(argv),
        notes=f"2 CP-SAT workers, wall-clock limit {args.time_limit} s per decision, on a shared 2-core machine.",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
