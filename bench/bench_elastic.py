"""Goodput of elastic resharding vs restart vs none under node failures (simulator).

Runs ``sim/scenarios/node-failures.yaml`` (seeded per-node MTBF/MTTR) and
``sim/scenarios/node-failures-helios.yaml`` (availability from the Helios artifact's Philly
node sequence; skipped when the public data is absent) for each seed under the modes
``elastic``, ``restart`` (rigid jobs, killed and requeued at full size), ``none`` (stall until
the nodes return), plus ``restart-any`` (kill and requeue, but the job may come back smaller;
nothing grows it back) for reference.  Every mode of a seed sees the same failures, so the
ratios are paired.  A sweep over the per-node MTBF shows how the ratio depends on the failure
rate.

    nice -n 10 .venv/bin/python -m bench elastic
    .venv/bin/python bench/bench_elastic.py --seeds 0 --no-sweep      # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.common import write_results
from tessera.sim.run_cli import run_scenario
from tessera.sim.scenario import Scenario, ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("node-failures", "node-failures-helios")
MODES = ("elastic", "restart", "none", "restart-any")
SWEEP_MTBF_HOURS = (24.0, 48.0, 96.0, 192.0)


def _with_failures(scenario: Scenario, **changes: Any) -> Scenario:
    assert scenario.spec.failures is not None
    failures = scenario.spec.failures.model_copy(update=changes)
    return dataclasses.replace(scenario, spec=scenario.spec.model_copy(update={"failures": failures}))


def run_modes(scenario: Scenario, seeds: list[int], label: str) -> list[dict[str, Any]]:
    """One record per (seed, mode), ``restart-any`` included."""
    records, _ = run_scenario(scenario, ["best-fit"], seeds)
    extra, _ = run_scenario(_with_failures(scenario, modes=["restart"], rigid_baselines=False), ["best-fit"], seeds)
    for record in extra:
        record["failure_mode"] = "restart-any"
    out = []
    for record in [*records, *extra]:
        out.append(
            {
                "scenario": label,
                "seed": record["seed"],
                "mode": record["failure_mode"],
                "goodput_acc_h": record["goodput"],
                "goodput_fraction": record["goodput_fraction"],
                "lost_work_acc_h": record["lost_work_accelerator_hours"],
                "jobs_finished": record["jobs_finished"],
                "avg_jct_h": record["avg_jct_seconds"] / 3600.0,
                "p95_jct_h": record["p95_jct_seconds"] / 3600.0,
                "avg_queue_h": record["avg_queueing_delay_seconds"] / 3600.0,
                "reshards": record["reshards"],
                "restarts": record["restarts"],
                "node_failures": record["node_failures"],
                "rejected_actions": record["rejected_actions"],
            }
        )
    return out


def summarize_modes(rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    by = {(r["seed"], r["mode"]): r for r in rows if r["scenario"] == label}
    seeds = sorted({s for s, _ in by})
    out = []
    for mode in MODES:
        mine = [by[(s, mode)] for s in seeds if (s, mode) in by]
        if not mine:
            continue
        ratios = [by[(s, "elastic")]["goodput_acc_h"] / by[(s, mode)]["goodput_acc_h"] for s in seeds]
        out.append(
            {
                "scenario": label,
                "mode": mode,
                "seeds": len(mine),
                "goodput_acc_h": statistics.fmean(r["goodput_acc_h"] for r in mine),
                "goodput_fraction": statistics.fmean(r["goodput_fraction"] for r in mine),
                "elastic_over_this": statistics.fmean(ratios),
                "elastic_over_this_min": min(ratios),
                "lost_work_acc_h": statistics.fmean(r["lost_work_acc_h"] for r in mine),
                "jobs_finished": statistics.fmean(r["jobs_finished"] for r in mine),
                "avg_jct_h": statistics.fmean(r["avg_jct_h"] for r in mine),
                "reshards": statistics.fmean(r["reshards"] for r in mine),
                "restarts": statistics.fmean(r["restarts"] for r in mine),
            }
        )
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--no-sweep", action="store_true", help="skip the MTBF sweep")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    notes = []
    for name in SCENARIOS:
        try:
            scenario = load_scenario(ROOT / "sim" / "scenarios" / f"{name}.yaml")
            scenario.node_events_for(seeds[0])  # fails early when the data is missing
        except ScenarioError as err:
            notes.append(f"{name} skipped: {err}")
            print(f"skip {name}: {err}", file=sys.stderr)
            continue
        rows += run_modes(scenario, seeds, name)
        summary += summarize_modes(rows, name)
        print(f"{name}: done", flush=True)
    if not args.no_sweep:
        base = load_scenario(ROOT / "sim" / "scenarios" / "node-failures.yaml")
        assert base.spec.failures is not None
        mttr = base.spec.failures.classes[0].mttr_hours
        for mtbf in SWEEP_MTBF_HOURS:
            label = f"node-failures mtbf={mtbf:g}h"
            klass = base.spec.failures.classes[0].model_copy(update={"mtbf_hours": mtbf})
            scenario = _with_failures(base, classes=[klass], modes=["elastic", "restart", "none"])
            records, _ = run_scenario(scenario, ["best-fit"], seeds[:1])
            sweep_rows = [
                {"scenario": label, "seed": r["seed"], "mode": r["failure_mode"], "goodput_acc_h": r["goodput"],
                 "goodput_fraction": r["goodput_fraction"], "lost_work_acc_h": r["lost_work_accelerator_hours"],
                 "jobs_finished": r["jobs_finished"], "avg_jct_h": r["avg_jct_seconds"] / 3600.0,
                 "reshards": r["reshards"], "restarts": r["restarts"]}
                for r in records
            ]
            rows += sweep_rows
            summary += summarize_modes(sweep_rows, label)
            print(f"{label} (MTTR {mttr:g} h): done", flush=True)
    # control: the same workload without failures (how much is elastic scheduling alone)
    base = load_scenario(ROOT / "sim" / "scenarios" / "node-failures.yaml")
    control = _with_failures(base, classes=[], modes=["elastic", "restart"])
    records, _ = run_scenario(control, ["best-fit"], seeds[:1])
    control_rows = [
        {"scenario": "node-failures without failures", "seed": r["seed"], "mode": r["failure_mode"],
         "goodput_acc_h": r["goodput"], "goodput_fraction": r["goodput_fraction"],
         "lost_work_acc_h": r["lost_work_accelerator_hours"], "jobs_finished": r["jobs_finished"],
         "avg_jct_h": r["avg_jct_seconds"] / 3600.0, "reshards": r["reshards"], "restarts": r["restarts"]}
        for r in records
    ]
    rows += control_rows
    summary += summarize_modes(control_rows, "node-failures without failures")
    notes.append(
        "goodput = useful accelerator-hours (kept progress at linear scaling); elastic_over_this = "
        "mean over seeds of goodput(elastic)/goodput(mode), paired by seed (same failures)."
    )
    columns = ["scenario", "mode", "seeds", "goodput_acc_h", "goodput_fraction", "elastic_over_this",
               "elastic_over_this_min", "lost_work_acc_h", "jobs_finished", "avg_jct_h", "reshards", "restarts"]
    json_path, md_path = write_results(
        "elastic",
        rows,
        summary,
        command=f"python -m bench elastic  (argv: {' '.join(argv) or '-'})",
        notes=" ".join(notes),
        columns=columns,
    )
    print(md_path.read_text())
    print(f"written {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
