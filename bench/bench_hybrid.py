"""Hybrid (learned plan as CP-SAT's hint and fallback) against CP-SAT with twice its budget.

On ``tessera sim scale`` instances (1,000 nodes / 500 pending gangs, and 200 / 100;
instances depend only on the seed and the decision index), the same instances are decided by

* ``cpsat`` with budget B, ``cpsat`` with B/2 and ``hybrid`` with B/2, and
* ``learned`` alone (the seed, for reference),

once with deterministic solver limits (B in CP-SAT deterministic seconds, one worker: the
fair, reproducible comparison; the learned step is not charged) and once with wall-clock
limits (B in seconds, two workers; the learned step's time counts against the hybrid's
budget).  Quality: the kept plan's score under the placement model's objective
(``score``) and the normalised throughput of the gangs started.  Target: hybrid at B/2
matches cpsat at B — mean score and mean normalised throughput within 0.5 %.

``python -m bench.bench_hybrid [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.common import write_results
from tessera.sim.scale_cli import measure

#: (nodes, pending gangs, mode, B): B in deterministic seconds for the deterministic mode,
#: wall seconds otherwise.  At 1,000 nodes CP-SAT's packed plan mostly loses to its own
#: greedy fallback; the 200-node instances show the regime where the solver's plan is kept.
CASES = [(1_000, 500, "deterministic", 1.0), (1_000, 500, "wall", 0.8),
         (200, 100, "deterministic", 1.0), (200, 100, "deterministic", 0.1)]
#: within this relative loss, hybrid at B/2 "matches" cpsat at B
TOLERANCE = 0.005


def run_config(policy: str, nodes: int, pending: int, budget: float, deterministic: bool,
               decisions: int) -> dict[str, Any]:
    record = measure(policy, nodes, pending, decisions=decisions, seed=0, time_budget_seconds=budget,
                     deterministic=deterministic)
    scores = [r["score"] for r in record["per_decision"] if "score" in r]
    record["score_mean"] = sum(scores) / len(scores) if scores else float("nan")
    record["chosen"] = [r.get("chosen", "") for r in record["per_decision"]]
    print(f"  {policy:>8} {nodes}/{pending} B={budget:g} {'det' if deterministic else 'wall'}: p50 {record['p50_seconds']:.3f}s "
          f"p95 {record['p95_seconds']:.3f}s score {record['score_mean']:.1f} "
          f"norm.tput {record['normalised_throughput_mean']:.2f} started {record['started_mean']:.1f} "
          f"chosen {record['chosen']} (load {record['load_average']:.1f})", flush=True)
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_hybrid")
    parser.add_argument("--quick", action="store_true", help="2 instances instead of 5")
    args = parser.parse_args(argv)
    command = "python -m bench.bench_hybrid" + "".join(f" {a}" for a in argv)
    decisions = 2 if args.quick else 5
    records: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for nodes, pending, mode, budget in CASES:
        deterministic = mode == "deterministic"
        print(f"{nodes} nodes / {pending} pending, {mode} limits, B = {budget:g}", flush=True)
        configs = [("cpsat", budget, "cpsat @ B"), ("cpsat", budget / 2, "cpsat @ B/2"),
                   ("hybrid", budget / 2, "hybrid @ B/2"), ("learned", budget / 2, "learned")]
        by_label: dict[str, dict[str, Any]] = {}
        for policy, b, label in configs:
            record = run_config(policy, nodes, pending, b, deterministic, decisions)
            record.update(bench="hybrid", mode=mode, label=label)
            records.append(record)
            by_label[label] = record
        reference = by_label["cpsat @ B"]
        # the learned plan's score on the model objective, as the hybrid scored its seed
        # (the learned policy is deterministic: the same plan as the `learned` row)
        for mine, hybrid_row in zip(by_label["learned"]["per_decision"], by_label["hybrid @ B/2"]["per_decision"],
                                    strict=True):
            mine["score"] = hybrid_row["seed_score"]
        learned_scores = [r["score"] for r in by_label["learned"]["per_decision"]]
        by_label["learned"]["score_mean"] = sum(learned_scores) / len(learned_scores)
        for label, record in by_label.items():
            pairs = list(zip(record["per_decision"], reference["per_decision"], strict=True))
            score_ratios = [a["score"] / b["score"] for a, b in pairs if "score" in a and b.get("score")]
            summary.append({
                "nodes": nodes, "pending": pending, "mode": mode, "B": budget, "config": label, "budget": record["time_budget_seconds"],
                "decisions": record["decisions"], "p50_s": record["p50_seconds"], "p95_s": record["p95_seconds"],
                "score": record["score_mean"], "norm_throughput": record["normalised_throughput_mean"],
                "started": record["started_mean"],
                "score_vs_cpsat_B": (record["score_mean"] / reference["score_mean"]) if "score" in
                record["per_decision"][0] else float("nan"),
                "min_instance_score_vs_cpsat_B": min(score_ratios) if score_ratios else float("nan"),
                "tput_vs_cpsat_B": record["normalised_throughput_mean"] / reference["normalised_throughput_mean"],
                "chosen": " ".join(f"{c}:{record['chosen'].count(c)}" for c in sorted(set(record["chosen"])) if c),
                "load": record["load_average"],
            })
        hybrid = summary[-2]
        matched = (hybrid["score_vs_cpsat_B"] >= 1 - TOLERANCE and hybrid["tput_vs_cpsat_B"] >= 1 - TOLERANCE)
        hybrid["matches_cpsat_B"] = matched
        print(f"  hybrid @ B/2 vs cpsat @ B: score x{hybrid['score_vs_cpsat_B']:.4f}, "
              f"norm.tput x{hybrid['tput_vs_cpsat_B']:.4f} -> {'matches' if matched else 'does not match'}",
              flush=True)
        _write(records, summary, command)
    return 0


def _write(records: list[dict[str, Any]], summary: list[dict[str, Any]], command: str) -> None:
    notes = (
        "Instances: `tessera sim scale` synthetic clusters (nodes / pending gangs per row), seed 0, "
        "decisions 0..n-1 (the same instances for every row of a mode). `score`: the kept plan's value under the "
        "placement model's objective (priority-weighted normalised throughput minus fragmentation and "
        "cross-domain charges; `score_placements`), mean over instances; `norm_throughput`: sum over started "
        "gangs of throughput on the chosen type / best allowed type. Ratios are against `cpsat @ B` on the "
        "same instances; `min_instance_score_vs_cpsat_B` is the worst instance. `chosen`: which plan each "
        "decision kept (cpsat = the solver's packed plan, learned = the learned seed, greedy = cpsat's "
        "greedy fallback); the `learned` row's score is the hybrid's score of its seed (the same plan). Deterministic mode: B is CP-SAT deterministic "
        "time, one worker, reproducible; the learned step (deterministic; ~0.1 s at 200 nodes, ~0.65 s at 1,000 nodes / 500 gangs) is not charged. Wall mode: "
        "B is wall seconds with two workers and the learned step counts against the hybrid's budget; the machine "
        f"is shared (`load` = 1-minute load average), so wall figures are noisy. 'Matches' = mean score and mean "
        f"normalised throughput within {TOLERANCE:.1%} of cpsat @ B."
    )
    write_results("hybrid", records, summary, command=command, notes=notes,
                  columns=["nodes", "pending", "mode", "B", "config", "budget", "decisions", "p50_s", "p95_s", "score", "norm_throughput",
                           "started", "score_vs_cpsat_B", "min_instance_score_vs_cpsat_B", "tput_vs_cpsat_B",
                           "chosen", "matches_cpsat_B", "load"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
