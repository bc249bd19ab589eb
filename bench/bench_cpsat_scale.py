"""CP-SAT decision latency at scale, and what the pool decomposition costs.

1. Latency: ``tessera sim scale`` instances (synthetic heterogeneous cluster, pending
   gangs of every shape) at 1,000 nodes / 500 pending gangs and 10,000 nodes / 2,000
   pending gangs; ``cpsat`` and the ``best-fit`` greedy on the same instances, in the
   same run.  Targets: cpsat p95 under 1 s and under 5 s.
2. Decomposition: on instances small enough for the monolithic (one pool per node) model
   to be solved to optimality, the pool-level plan's objective (evaluated on the packed
   node-level plan) against the monolithic plan's.  Target: loss under 2 %.

``python -m bench cpsat_scale`` (or ``python -m bench.bench_cpsat_scale [--quick]``).
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from bench.common import write_results
from tessera.core import ClusterSnapshot
from tessera.policies.cpsat import CpSat
from tessera.policy import PolicyContext
from tessera.sim.scale_cli import measure, synthetic_cluster, synthetic_pending

#: (nodes, pending gangs, time budget given to the policy in seconds, decisions timed)
SCALES = [(1_000, 500, 0.8, 6), (10_000, 2_000, 3.5, 4)]
#: best-fit scans every node per replica (minutes per decision at 10,000 nodes on a
#: shared machine): timed on fewer decisions there, and last
GREEDY_DECISIONS = {1_000: 6, 10_000: 1}
#: (nodes, pending) of the decomposition instances, seeds 0..4 each
SMALL = [(24, 14), (48, 24), (64, 40), (96, 60)]


def latency_record(policy: str, nodes: int, pending: int, budget: float, decisions: int) -> dict[str, Any]:
    record = measure(policy, nodes, pending, decisions=decisions, seed=0, time_budget_seconds=budget,
                     deterministic=False)
    record["bench"] = "latency"
    print(f"  {record['policy']:>9} {nodes}/{pending}: p50 {record['p50_seconds']:.3f}s "
          f"p95 {record['p95_seconds']:.3f}s (cpu p95 {record['p95_cpu_seconds']:.3f}s, load "
          f"{record['load_average']:.1f}) started {record['started_mean']:.1f} "
          f"norm.tput {record['normalised_throughput_mean']:.1f} {record['status_counts']}", flush=True)
    return record


def decomposition(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for nodes, pending in SMALL[:1] if quick else SMALL:
        for seed in range(2 if quick else 5):
            rng = random.Random(f"decomposition/{nodes}/{pending}/{seed}")
            cluster, running = synthetic_cluster(nodes, rng)
            gangs = synthetic_pending(pending, rng, 7_200.0)
            snapshot = ClusterSnapshot(cluster, running, now_seconds=7_200.0)
            row: dict[str, Any] = {"bench": "decomposition", "nodes": nodes, "pending": pending, "seed": seed}
            variants = (("pools", CpSat()), ("restricted", CpSat(max_unit_vars=0)),
                        ("monolithic", CpSat(monolithic=True)))
            for label, policy in variants:
                ctx = PolicyContext(now_seconds=7_200.0, time_budget_seconds=20.0, deterministic=True, seed=seed)
                policy.decide(snapshot, gangs, ctx)
                stats = policy.last_stats
                row[f"{label}_score"] = stats.get("cpsat_score", stats.get("greedy_score"))
                row[f"{label}_status"] = stats["status"]
                row[f"{label}_gap"] = stats["gap"]
                row[f"{label}_pools"] = stats["pools"]
                row[f"{label}_placed"] = stats["placed"]
            row["loss"] = 1 - row["pools_score"] / row["monolithic_score"]
            row["restricted_loss"] = 1 - row["restricted_score"] / row["monolithic_score"]
            print(f"  {nodes}/{pending} seed {seed}: loss {row['loss']:.4%} "
                  f"(candidates always restricted: {row['restricted_loss']:.4%}) "
                  f"({row['pools_pools']} pools vs {row['monolithic_pools']} nodes, "
                  f"{row['pools_status']}/{row['monolithic_status']})", flush=True)
            rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_cpsat_scale")
    parser.add_argument("--quick", action="store_true", help="fewer decisions and instances")
    parser.add_argument("--no-greedy-10k", action="store_true", help="skip best-fit at 10,000 nodes")
    args = parser.parse_args(argv)
    command = "python -m bench.bench_cpsat_scale" + "".join(f" {a}" for a in argv)
    lat: list[dict[str, Any]] = []
    dec: list[dict[str, Any]] = []
    # stages, slowest last; results are written after each so a long run keeps what it has
    stages: list[tuple[str, Any]] = []
    for nodes, pending, budget, decisions in SCALES:
        n = min(decisions, 2) if args.quick else decisions
        stages.append((f"cpsat {nodes}", lambda n=n, a=(nodes, pending, budget): lat.append(
            latency_record("cpsat", *a, n))))
        if nodes < 10_000 or not args.no_greedy_10k:
            g = min(n, GREEDY_DECISIONS[nodes])
            stage = (f"best-fit {nodes}", lambda g=g, a=(nodes, pending, budget): lat.append(
                latency_record("best-fit", *a, g)))
            if nodes < 10_000:
                stages.append(stage)
            else:
                greedy_10k = stage
    stages.append(("decomposition", lambda: dec.extend(decomposition(args.quick))))
    if not args.no_greedy_10k:
        stages.append(greedy_10k)
    for name, stage in stages:
        print(name, flush=True)
        stage()
        _write(lat, dec, command)
    return 0


def _write(lat: list[dict[str, Any]], dec: list[dict[str, Any]], command: str) -> None:
    summary: list[dict[str, Any]] = []
    for record in lat:
        summary.append({
            "measure": f"latency {record['policy']}", "nodes": record["nodes"], "pending": record["pending"],
            "budget_s": record["time_budget_seconds"], "decisions": record["decisions"],
            "p50_s": record["p50_seconds"], "p95_s": record["p95_seconds"], "p99_s": record["p99_seconds"],
            "p95_cpu_s": record["p95_cpu_seconds"], "load": record["load_average"],
            "started": record["started_mean"], "norm_throughput": record["normalised_throughput_mean"],
            "status": " ".join(f"{k}:{v}" for k, v in sorted(record["status_counts"].items())),
            "gap_mean": record["gap_mean"], "gap_max": record["gap_max"],
        })
    by_policy = {(r["policy"], r["nodes"]): r for r in lat}
    for nodes, _, _, _ in SCALES:
        if ("cpsat", nodes) not in by_policy or ("best-fit", nodes) not in by_policy:
            continue
        c, g = by_policy[("cpsat", nodes)], by_policy[("best-fit", nodes)]
        summary.append({
            "measure": "cpsat / best-fit", "nodes": nodes, "pending": c["pending"],
            "p50_s": c["p50_seconds"] / g["p50_seconds"], "p95_s": c["p95_seconds"] / g["p95_seconds"],
            "p95_cpu_s": c["p95_cpu_seconds"] / g["p95_cpu_seconds"],
            "started": c["started_mean"] / g["started_mean"],
            "norm_throughput": c["normalised_throughput_mean"] / g["normalised_throughput_mean"],
        })
    if dec:
        for key, label in (("loss", "decomposition loss vs monolithic"),
                           ("restricted_loss", "same, candidate pools always restricted")):
            losses = [r[key] for r in dec]
            summary.append({
                "measure": label, "nodes": "/".join(str(n) for n, _ in SMALL), "decisions": len(dec),
                "status": f"max {max(losses):.4%} mean {sum(losses) / len(losses):.4%}",
            })
    notes = (
        "Latency is `Engine.decide` wall time (model build + solve + packing + preemption + moves + reasons). "
        "`started`/`norm_throughput`: gangs started and the sum of their normalised throughput "
        "(throughput on the chosen type / best allowed type, per replica / target). best-fit ignores "
        "tensor-parallel grouping and network domains, so it can start gangs cpsat refuses to split. `gap`: "
        "CP-SAT's proven relative gap between its objective and its best bound (0 = optimal). Ratio rows are "
        "cpsat / best-fit on the same instances. Decomposition rows compare the packed node-level plans of the "
        "pool model and of the monolithic model (one pool per node), all deterministic with 20 s budgets; "
        "'restricted' forces the candidate-pool shortlist that large instances use (default: only above 4,000 "
        "(gang, pool) variables).\n\n"
        "Decomposition per instance:\n\n"
        + "\n".join(f"- {r['nodes']} nodes / {r['pending']} gangs seed {r['seed']}: loss {r['loss']:.4%} "
                    f"(restricted candidates {r['restricted_loss']:.4%}), "
                    f"pools {r['pools_status']} ({r['pools_pools']} pools, {r['pools_placed']} started), "
                    f"monolithic {r['monolithic_status']} ({r['monolithic_placed']} started)" for r in dec)
        + "\n\nThe machine is shared (2 cores, many concurrent jobs; `load` is the 1-minute load average "
        "during the measurement): wall seconds measure the neighbours as much as the policy. `p95_cpu_s` is "
        "the CPU time of the process (all threads; CP-SAT runs 2 workers) per decision."
    )
    write_results("cpsat_scale", [*lat, *dec], summary, command=command, notes=notes,
                  columns=["measure", "nodes", "pending", "budget_s", "decisions", "p50_s", "p95_s", "p99_s",
                           "p95_cpu_s", "load", "started", "norm_throughput", "status", "gap_mean", "gap_max"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
