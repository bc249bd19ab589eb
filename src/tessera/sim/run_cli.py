"""``tessera sim run``: run a scenario under one or more policies and compare them."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from tessera.policy import PolicyLoadError, load_policy
from tessera.sim import failures
from tessera.sim.loaders.errors import TraceFormatError
from tessera.sim.report import Timeline, format_table, job_records, summarize
from tessera.sim.scenario import Scenario, ScenarioError, load_scenario
from tessera.sim.simulator import FAILURE_MODES, Simulator
from tessera.sim.tenancy import QueueObserver


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", required=True, help="scenario YAML (see sim/README.md)")
    parser.add_argument("--policy", help="comma-separated policy names (default: the scenario's list)")
    parser.add_argument("--seed", type=int, action="append", help="seed (repeatable; default: the scenario's)")
    parser.add_argument("--json", dest="json_path", help="write the records to this JSON file")
    parser.add_argument("--per-job", action="store_true", help="include one record per workload in the JSON")
    parser.add_argument("--plot", dest="plot_dir", help="write PNG charts (JCT CDF, utilization, SLO) here")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run_scenario(
    scenario: Scenario,
    policies: list[str],
    seeds: list[int],
    *,
    progress: bool = False,
    keep_sims: bool = False,
    timeline: bool = False,
) -> tuple[list[dict[str, Any]], list[Simulator]]:
    """Run every (policy, seed); returns the summary records (and the simulators if asked).

    ``timeline`` attaches a :class:`~tessera.sim.report.Timeline` (for the allocation-vs-demand chart).
    """
    records: list[dict[str, Any]] = []
    sims: list[Simulator] = []
    modes = scenario.failure_modes
    for mode in modes:
        if mode not in FAILURE_MODES:
            raise ScenarioError(f"failures.mode: unknown mode {mode!r}; known: {', '.join(sorted(FAILURE_MODES))}")
    rigid = scenario.spec.failures.rigid_baselines if scenario.spec.failures else False
    for seed, mode, name in ((s, m, n) for s in seeds for m in modes for n in policies):
        all_workloads, window = scenario.workloads(seed)
        workloads = failures.workloads_for_mode(
            mode, all_workloads, rigid_baselines=rigid, reshard_pause_seconds=scenario.reshard_pause_seconds
        )
        policy = failures.policy_for_mode(
            mode, load_policy(name, **scenario.spec.policy_params.get(name, {})), scenario.elastic_settings
        )
        bar = None
        callback = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(workloads), desc=f"{name} seed {seed}", unit="job", file=sys.stderr, leave=False)

            def callback(done: int, total: int, bar: Any = bar) -> None:
                bar.n = done
                bar.refresh()

        sim = Simulator(
            scenario.nodes,
            workloads,
            policy,
            scenario.config(seed),
            node_events=scenario.node_events_for(seed),
            failure_process=scenario.failure_process,
            failure_handler=FAILURE_MODES[mode](),
            observers=[failures.GoodputObserver(), *([Timeline()] if timeline else []),
                       *([QueueObserver(quotas)] if (quotas := scenario.quotas) is not None else [])],
            progress=callback,
        )
        sim.run()
        if bar is not None:
            bar.close()
        record = summarize(sim, measure_keys=window)
        record["scenario"] = scenario.spec.name
        record["policy"] = name  # the wrapped policy in elastic mode reports the inner name
        record["failure_mode"] = mode
        # how the run's elastic reshards recovered state; restart and none always reload
        record["rollback"] = scenario.elastic_rollback if mode == "elastic" else "checkpoint"
        records.append(record)
        if keep_sims:
            sims.append(sim)
    return records, sims


def run(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
        if scenario.spec.rebalance is not None:  # the serving model of the rebalancing experiments
            from tessera.sim import rebalance_sim

            return rebalance_sim.run_cli(scenario, args)
        policies = [p.strip() for p in args.policy.split(",") if p.strip()] if args.policy else scenario.spec.policies
        seeds = args.seed or scenario.spec.seeds or [scenario.spec.seed]
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        records, sims = run_scenario(
            scenario, policies, seeds, progress=progress, keep_sims=bool(args.plot_dir or args.per_job),
            timeline=bool(args.plot_dir),
        )
    except (ScenarioError, TraceFormatError, PolicyLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"scenario {scenario.spec.name}: {len(scenario.nodes)} nodes, seeds {seeds}")
    for note in dict.fromkeys(scenario.notes):
        print(f"note: {note}")
    print(format_table(records))
    if args.json_path:
        out: dict[str, Any] = {
            "scenario": scenario.spec.name,
            "scenario_file": str(args.scenario),
            "notes": list(dict.fromkeys(scenario.notes)),
            "records": records,
        }
        if args.per_job:
            out["jobs"] = {f"{s.policy.name}/seed{s.config.seed}": job_records(s) for s in sims}
        Path(args.json_path).write_text(json.dumps(_clean(out), indent=1))
        print(f"records written to {args.json_path}")
    if args.plot_dir:
        from tessera.sim.plots import write_plots

        for path in write_plots(sims, Path(args.plot_dir)):
            print(f"plot written to {path}")
    return 0
