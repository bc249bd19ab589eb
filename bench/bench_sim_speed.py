"""Simulator speed: 100k Philly-style jobs on a 1,000-GPU cluster with the greedy FIFO policy.

Reports wall seconds and events/s of the whole run (scenario ``sim/scenarios/philly-100k.yaml``),
and, as the baseline measured in the same run, the same for a 10k-job prefix.

    python -m bench sim_speed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.common import write_results
from tessera.policy import load_policy
from tessera.sim.report import summarize
from tessera.sim.scenario import load_scenario
from tessera.sim.simulator import Simulator

SCENARIO = Path(__file__).resolve().parents[1] / "sim" / "scenarios" / "philly-100k.yaml"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_sim_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="fifo")
    parser.add_argument("--sizes", default="10000,100000", help="job counts (prefixes of the scenario's trace)")
    args = parser.parse_args(argv)
    scenario = load_scenario(SCENARIO)
    generated = time.perf_counter()
    workloads, _ = scenario.workloads(scenario.spec.seed)
    generate_seconds = time.perf_counter() - generated
    gpus = sum(n.accelerator_count for n in scenario.nodes)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        sim = Simulator(scenario.nodes, workloads[:size], load_policy(args.policy), scenario.config(scenario.spec.seed))
        sim.run()
        r = summarize(sim)
        rows.append({
            "jobs": size,
            "gpus": gpus,
            "policy": args.policy,
            "wall_seconds": r["wall_seconds"],
            "events": r["events"],
            "events_per_second": r["events_per_second"],
            "cycles": r["cycles"],
            "jobs_finished": r["jobs_finished"],
            "decision_p50_ms": r["decision_p50_ms"],
            "decision_p99_ms": r["decision_p99_ms"],
            "avg_queueing_delay_s": r["avg_queueing_delay_seconds"],
            "utilization_mean": sum(r["utilization"].values()) / len(r["utilization"]),
        })
        print(f"{size} jobs on {gpus} GPUs: {r['wall_seconds']:.1f} s, {r['events']} events, "
              f"{r['events_per_second']:.0f} events/s, {r['cycles']} cycles", flush=True)
    write_results(
        "sim_speed",
        rows,
        rows,
        command="python -m bench sim_speed" + (" " + " ".join(argv) if argv else ""),
        notes=f"Generating the 100k-job workload took {generate_seconds:.1f} s (not included). Target: < 60 s for 100k jobs.",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
