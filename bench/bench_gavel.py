"""Average JCT of heterogeneity-agnostic FIFO vs the Gavel-style LAS policy on Gavel's cluster.

Gavel's setup (OSDI'20, continuous multi-GPU traces): 36 V100 + 36 P100 + 36 K80,
Poisson arrivals at several rates, job types and durations from Gavel's generator,
throughputs from Gavel's measured ``simulation_throughputs.json``.  JCT is averaged over
a window of jobs (the steady state), per seed; the ratio FIFO / gavel is computed per
(load, seed) in the same run and averaged per load.  Published: Gavel's LAS improves
average JCT by up to 3.5x over its heterogeneity-agnostic baseline.

    python -m bench gavel                     # loads 1-6 jobs/h, seeds 0-2
    python -m bench.bench_gavel --loads 2,4 --seeds 0 --jobs 400
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

from bench.common import write_results
from tessera.sim.run_cli import run_scenario
from tessera.sim.scenario import ScenarioError, scenario_from_dict

SCENARIO = Path(__file__).resolve().parents[1] / "sim" / "scenarios" / "gavel-36x3.yaml"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_gavel", description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default="1,2,3,4,5,6", help="arrival rates, jobs/hour")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=600, help="jobs per run (JCT measured on the middle 2/3)")
    args = parser.parse_args(argv)
    raw = yaml.safe_load(SCENARIO.read_text())
    loads = [float(x) for x in args.loads.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    records = []
    summary = []
    started = time.perf_counter()
    for load in loads:
        training = raw["workload"]["training"]
        training.update(jobs=args.jobs, jobs_per_hour=load, measure_window=[args.jobs // 6, args.jobs * 5 // 6])
        try:
            scenario = scenario_from_dict(raw, SCENARIO)
            results, _ = run_scenario(scenario, ["fifo", "gavel"], seeds)
        except ScenarioError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        ratios = []
        for seed in seeds:
            by_policy = {r["policy"]: r for r in results if r["seed"] == seed}
            ratio = by_policy["fifo"]["avg_jct_seconds"] / by_policy["gavel"]["avg_jct_seconds"]
            ratios.append(ratio)
            for r in by_policy.values():
                records.append({"jobs_per_hour": load, **{k: v for k, v in r.items() if k != "policy_errors"}})
            print(f"load {load:g}/h seed {seed}: fifo {by_policy['fifo']['avg_jct_seconds'] / 3600:.1f} h, "
                  f"gavel {by_policy['gavel']['avg_jct_seconds'] / 3600:.1f} h, ratio {ratio:.2f}", flush=True)
        fifo = [r["avg_jct_seconds"] / 3600 for r in results if r["policy"] == "fifo"]
        gav = [r["avg_jct_seconds"] / 3600 for r in results if r["policy"] == "gavel"]
        summary.append({
            "jobs_per_hour": load,
            "fifo_avg_jct_h": statistics.mean(fifo),
            "gavel_avg_jct_h": statistics.mean(gav),
            "ratio_mean": statistics.mean(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "gavel_preemptions_mean": statistics.mean(r["preemptions"] for r in results if r["policy"] == "gavel"),
        })
    elapsed = time.perf_counter() - started
    command = "python -m bench.bench_gavel " + " ".join(argv) if argv else "python -m bench gavel"
    write_results(
        "gavel",
        records,
        summary,
        command=command,
        notes=(
            f"Cluster 36 V100 + 36 P100 + 36 K80 (4 GPUs/server); {args.jobs} jobs per run, JCT over jobs "
            f"[{args.jobs // 6}, {args.jobs * 5 // 6}); seeds {seeds}; restart cost 30 s; rounds 360 s. "
            f"Ratio = FIFO avg JCT / gavel avg JCT per seed, then averaged. Total {elapsed:.0f} s."
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
