"""Defragmentation: CP-SAT cheapest moves vs the greedy "move the smallest aside" rule.

Each instance is a seeded fragmented cluster: nodes of 8 A100s filled to about 75% with
1-, 2- and 4-GPU pods placed on random nodes, and a pending gang of whole 8-GPU replicas
that fits the total free capacity but no node. Both methods may move the same work (pods
smaller than a gang replica); we count instances admitted, moves and migration cost.

    python -m bench defrag            # or: python -m bench.bench_defrag --instances 30
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys

from bench.common import write_results
from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement, WorkloadKind
from tessera.policies.defrag import (
    fragmentation_blocked,
    greedy_emptiest_nodes,
    greedy_smallest_first,
    movable_workloads,
)
from tessera.solver.rebalance import DefragModel
from tessera.testing.builders import gang, node

GPUS_PER_NODE = 8


def instance(seed: int, nodes: int, fill: float, gang_replicas: int) -> tuple[ClusterSnapshot, object] | None:
    rng = random.Random(seed)
    cluster = [node(f"n{i:02d}", "A100", GPUS_PER_NODE) for i in range(nodes)]
    free = {n.name: list(range(GPUS_PER_NODE)) for n in cluster}
    allocations = []
    target = int(fill * nodes * GPUS_PER_NODE)
    used = 0
    k = 0
    while used < target:
        size = rng.choice((1, 1, 1, 2, 2, 4))
        fits = [name for name, devs in free.items() if len(devs) >= size]
        if not fits:
            break
        name = rng.choice(fits)
        devices = tuple(free[name][:size])
        del free[name][:size]
        w = gang(f"p{k:03d}", 1, size, ("A100",), kind=WorkloadKind.POD)
        allocations.append(Allocation(w, (ReplicaPlacement(0, name, "A100", devices),)))
        used += size
        k += 1
    snapshot = ClusterSnapshot(cluster, allocations, now_seconds=10_000.0)
    big = gang("gang", gang_replicas, GPUS_PER_NODE, ("A100",))
    if not fragmentation_blocked(snapshot, big):
        return None
    return snapshot, big


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_defrag", description=__doc__)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--fill", type=float, default=0.72)
    parser.add_argument("--gang-replicas", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=5.0, help="CP-SAT deterministic time per instance")
    args = parser.parse_args(argv)
    records = []
    seed = 0
    while len(records) < args.instances and seed < args.instances * 20:
        made = instance(seed, args.nodes, args.fill, args.gang_replicas)
        seed += 1
        if made is None:
            continue
        snapshot, big = made
        movable = movable_workloads(snapshot, big, snapshot.now_seconds, 600.0)  # type: ignore[arg-type]
        greedy = greedy_smallest_first(snapshot, big, movable)  # type: ignore[arg-type]
        emptiest = greedy_emptiest_nodes(snapshot, big, movable)  # type: ignore[arg-type]
        solved = DefragModel(
            snapshot, big, now_seconds=snapshot.now_seconds, movable=movable, budget_moves=64,  # type: ignore[arg-type]
            time_limit_seconds=args.time_limit, deterministic=True,
        ).solve(hint=emptiest.moves if emptiest.admitted else ())
        records.append(
            {
                "seed": seed - 1,
                "greedy_admitted": greedy.admitted,
                "greedy_moves": len(greedy.moves),
                "greedy_cost_seconds": sum(m.cost_seconds for m in greedy.moves),
                "emptiest_admitted": emptiest.admitted,
                "emptiest_moves": len(emptiest.moves),
                "emptiest_cost_seconds": sum(m.cost_seconds for m in emptiest.moves),
                "cpsat_admitted": solved is not None,
                "cpsat_moves": len(solved.moves) if solved else 0,
                "cpsat_cost_seconds": solved.cost_seconds if solved else 0.0,
                "cpsat_status": solved.status if solved else "INFEASIBLE",
            }
        )
    methods = ("greedy", "emptiest", "cpsat")
    both = [r for r in records if all(r[f"{m}_admitted"] for m in methods)]
    summary = [
        {
            "method": method,
            "instances": len(records),
            "admitted": sum(1 for r in records if r[f"{method}_admitted"]),
            "mean_moves_when_all_admit": statistics.mean(r[f"{method}_moves"] for r in both) if both else float("nan"),
            "mean_cost_seconds_when_all_admit": statistics.mean(r[f"{method}_cost_seconds"] for r in both)
            if both
            else float("nan"),
            "instances_with_fewer_moves_than_cpsat": sum(1 for r in both if r[f"{method}_moves"] < r["cpsat_moves"]),
            "instances_with_more_moves_than_cpsat": sum(1 for r in both if r[f"{method}_moves"] > r["cpsat_moves"]),
        }
        for method in methods
    ]
    command = "python -m bench defrag " + " ".join(argv)
    write_results(
        "defrag",
        records,
        summary,
        command=command.strip(),
        notes=f"{args.nodes} nodes x {GPUS_PER_NODE} A100, filled to {args.fill:.0%} with 1/2/4-GPU pods at random; "
        f"gang of {args.gang_replicas} x {GPUS_PER_NODE} GPUs. Greedy = move the smallest pod to the fullest node "
        "where it fits until the gang fits. Emptiest = clear the nodes with most free devices first, "
        "smallest pods first, to the fullest node not being cleared. CP-SAT = DefragModel (min migration cost, +1 per move), warm-started with the emptiest-nodes plan, one worker, deterministic time limit.",
    )
    for row in summary:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
