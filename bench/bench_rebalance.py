"""Rebalancing under skewed inference load: off vs cost-blind vs cost-aware.

Runs ``sim/scenarios/skewed-inference.yaml`` (Azure LLM code trace, SplitwiseSim
capacities) over its seeds, and a sensitivity sweep of the cost-aware policy's net-gain
threshold (the hysteresis knob) so the chosen value is not the only one reported.

    python -m bench rebalance                   # or: python -m bench.bench_rebalance --seeds 0 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.common import write_results
from tessera.sim.rebalance_sim import Experiment, run_experiment
from tessera.sim.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "sim" / "scenarios" / "skewed-inference.yaml"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_rebalance", description=__doc__)
    parser.add_argument("--scenario", type=Path, default=SCENARIO)
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="default: the scenario's seeds")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[30.0, 60.0, 240.0],
                        help="extra cost-aware net-gain thresholds (replica-seconds) for the sweep")
    args = parser.parse_args(argv)
    try:
        experiment = Experiment.from_scenario(load_scenario(args.scenario))
    except FileNotFoundError as err:
        print(f"bench rebalance: public data missing ({err}); set TESSERA_DATA")
        return 1
    seeds = args.seeds or list(experiment.seeds)
    report = run_experiment(experiment, seeds=seeds)
    records = []
    for mode, r in report["modes"].items():
        for seed, one in zip(seeds, r["per_seed"], strict=True):
            records.append({"mode": mode, "seed": seed, **{k: v for k, v in one.items() if k != "per_service_slo"}})
    modes = report["modes"]
    off, blind, aware = modes["off"], modes["cost-blind"], modes["cost-aware"]

    def row(mode: str, r: dict[str, Any]) -> dict[str, Any]:
        return {
            "mode": mode,
            "slo_attainment": r["slo_attainment"],
            "slo_vs_off_points": 100 * (r["slo_attainment"] - off["slo_attainment"]),
            "p99_latency_seconds": r["p99_latency_seconds"],
            "mean_latency_seconds": r["mean_latency_seconds"],
            "migrations": r["migrations"],
            "migrations_vs_cost_blind": r["migrations"] / blind["migrations"] if blind["migrations"] else float("nan"),
            "refused_migrations": r["refused_migrations"],
            "mean_decision_seconds": r["mean_decision_seconds"],
        }

    summary = [row(mode, r) for mode, r in modes.items()]
    base_params = dict(experiment.policy_params.get("rebalance-cost-aware", {}))
    for threshold in args.thresholds:
        params = {**experiment.policy_params, "rebalance-cost-aware": {**base_params, "net_gain_threshold_seconds": threshold}}
        variant = Experiment(**{**{f: getattr(experiment, f) for f in experiment.__dataclass_fields__}, "policy_params": params})
        r = run_experiment(variant, modes=["rebalance-cost-aware"], seeds=seeds)["modes"]["cost-aware"]
        summary.append(row(f"cost-aware threshold={threshold:g}s", r))
    seeds_text = " ".join(map(str, seeds))
    command = "python -m bench rebalance" + (f" --seeds {seeds_text}" if args.seeds else "")
    spread = statistics.pstdev(o["slo_attainment"] for o in aware["per_seed"]) if len(seeds) > 1 else 0.0
    write_results(
        "rebalance",
        records,
        summary,
        command=command,
        notes=(
            f"Scenario {report['scenario']}, seeds {seeds_text} (means over seeds; cost-aware SLO std over seeds "
            f"{spread:.3f}). Capacity per replica (req/s): {report['capacity_requests_per_second']}. "
            "Targets (issue 6): cost-aware vs off >= +10 SLO points; cost-aware migrations <= 0.5 x cost-blind "
            f"with SLO at most 1 point lower. Scenario's cost-aware threshold: {base_params.get('net_gain_threshold_seconds')} s."
        ),
    )
    for row in summary:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
