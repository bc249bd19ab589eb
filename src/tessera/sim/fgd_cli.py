"""``tessera sim fgd``: the FGD (ATC'23) placement protocol on openb node and pod lists.

    tessera sim fgd --nodes openb_node_list_gpu_node.csv --pods openb_pod_list_default.csv \\
        --policy random,fgd --seeds 42-51 --max-demand 130 --json out.json

Prints GPU allocation at 100/110/120/130% arrived demand per policy (mean ± standard
deviation over seeds) and writes one record per policy, seed and whole percent of arrived
demand: ``{policy, seed, demand_pct, gpu_alloc_pct, frag_gpu_pct}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tessera.policy import PolicyLoadError, available_policies, load_policy
from tessera.sim.fgd import DEFAULT_MAX_DEMAND_PCT, DEFAULT_POPULARITY, RunResult, parse_seeds, run_protocol
from tessera.sim.loaders.errors import TraceFormatError
from tessera.sim.loaders.openb import OnError, OpenbNode, OpenbPod, load_openb_nodes, load_openb_pods

DEFAULT_POLICIES = "random,dot-product,gpu-clustering,gpu-packing,resource-best-fit,fgd"
#: the FGD paper's names for its baselines -> registered policy names
PAPER_NAMES = {
    "random": "random",
    "dotprod": "dot-product",
    "dotproduct": "dot-product",
    "gpuclustering": "gpu-clustering",
    "gpupacking": "gpu-packing",
    "bestfit": "resource-best-fit",
    "fgd": "fgd",
}
REPORT_POINTS = (100, 110, 120, 130)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", required=True, type=Path, help="openb node list CSV (sn,cpu_milli,memory_mib,gpu,model)")
    parser.add_argument("--pods", required=True, type=Path, help="openb pod list CSV")
    parser.add_argument("--policy", default=DEFAULT_POLICIES,
                        help="comma-separated policy names (registered names or the paper's: Random, DotProd, "
                             f"GpuClustering, GpuPacking, BestFit, FGD); default: {DEFAULT_POLICIES}")
    parser.add_argument("--seeds", default="42", help="e.g. 42-51 or 42,45 (default 42)")
    parser.add_argument("--max-demand", type=float, default=DEFAULT_MAX_DEMAND_PCT,
                        help="inflate (or thin) the pod list to this %% of the cluster's GPUs (default 130)")
    parser.add_argument("--batch", type=int, default=1,
                        help="pods per decision: policies get K arrived pods as their pending list (default 1)")
    parser.add_argument("--tie-break", choices=("ordered", "random"), default="ordered",
                        help="equal scores: a seeded node order fixed per run (the authors' behaviour) or uniform")
    parser.add_argument("--popularity", type=float, default=DEFAULT_POPULARITY,
                        help="share of pods the target workload's most frequent shapes must cover (default 0.95)")
    parser.add_argument("--json", type=Path, help="write records and run summaries here")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNGs of allocation and fragmentation vs demand")
    parser.add_argument("--workers", type=int, default=1, help="processes for (policy, seed) runs (default 1)")
    parser.add_argument("--skip-malformed", action="store_true",
                        help="skip malformed CSV rows (counted and reported) instead of stopping at the first")


def resolve_policy_name(name: str, registered: set[str]) -> str:
    """A registered name as is; otherwise the FGD paper's name for a baseline (any case)."""
    key = name.strip()
    if key in registered:
        return key
    return PAPER_NAMES.get(key.lower().replace("-", "").replace("_", ""), key)


@functools.lru_cache(maxsize=4)
def _load(nodes: Path, pods: Path, skip: bool) -> tuple[tuple[OpenbNode, ...], tuple[OpenbPod, ...], tuple[str, ...]]:
    on_error: OnError = "skip" if skip else "raise"
    node_list = load_openb_nodes(nodes, on_error=on_error)
    pod_list = load_openb_pods(pods, on_error=on_error)
    notes = tuple(r.summary() for r in (node_list.report, pod_list.report) if r.rows_skipped)
    return node_list.nodes, pod_list.pods, notes


def _run_task(task: tuple[Path, Path, bool, str, int, float, int, str, float]) -> RunResult:
    nodes_path, pods_path, skip, policy_name, seed, max_demand, batch, tie_break, popularity = task
    nodes, pods, _ = _load(nodes_path, pods_path, skip)
    return run_protocol(
        nodes, pods, load_policy(policy_name), seed, policy_name=policy_name, max_demand_pct=max_demand,
        batch=batch, tie_break=tie_break, popularity=popularity,  # type: ignore[arg-type]
    )


def run(args: argparse.Namespace) -> int:
    try:
        seeds = parse_seeds(args.seeds)
        registered = {p.name for p in available_policies()}
        policies = [resolve_policy_name(p, registered) for p in args.policy.split(",") if p.strip()]
        for name in policies:
            load_policy(name)  # fail before any long run
        if args.batch < 1 or args.workers < 1:
            raise ValueError("--batch and --workers must be >= 1")
        _nodes, _pods, notes = _load(args.nodes, args.pods, args.skip_malformed)
    except (TraceFormatError, PolicyLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    from tqdm import tqdm

    tasks = [(args.nodes, args.pods, args.skip_malformed, p, s, args.max_demand, args.batch, args.tie_break, args.popularity)
             for p in policies for s in seeds]
    results: list[RunResult] = []
    if args.workers > 1 and len(tasks) > 1:
        with get_context("spawn").Pool(min(args.workers, len(tasks))) as pool:
            results = list(tqdm(pool.imap(_run_task, tasks), total=len(tasks), file=sys.stderr, desc="fgd runs"))
    else:
        results = [_run_task(t) for t in tqdm(tasks, file=sys.stderr, desc="fgd runs")]

    records = [r for result in results for r in result.records(args.max_demand)]
    print(format_table(policies, results, records))
    never_fit = max((r.pods_never_fit for r in results), default=0)
    if never_fit:
        print(f"note: up to {never_fit} arrived pods per run fit no node even in the empty cluster "
              "(they count as arrived demand and stay unscheduled)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "nodes": str(args.nodes), "pods": str(args.pods), "policies": policies, "seeds": seeds,
            "max_demand_pct": args.max_demand, "batch": args.batch, "tie_break": args.tie_break,
            "popularity": args.popularity, "runs": [r.summary() for r in results], "records": records,
        }, indent=1))
        print(f"wrote {len(records)} records to {args.json}")
    if args.plot:
        for path in write_plots(records, policies, args.plot):
            print(f"wrote {path}")
    return 0


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_table(policies: Sequence[str], results: Sequence[RunResult], records: Sequence[dict[str, Any]]) -> str:
    """Policy x GPU allocation (%) at 100/110/120/130% arrived demand, mean ± sd over seeds."""
    header = ["policy", *[f"alloc@{p}%" for p in REPORT_POINTS], "unscheduled", "s/run"]
    rows = [header]
    for policy in policies:
        mine = [r for r in records if r["policy"] == policy]
        cells = [policy]
        for point in REPORT_POINTS:
            cells.append(_mean_sd([r["gpu_alloc_pct"] for r in mine if r["demand_pct"] == point]))
        runs = [r for r in results if r.policy == policy]
        cells.append(f"{statistics.mean(r.pods_unscheduled for r in runs):.0f}" if runs else "-")
        cells.append(f"{statistics.mean(r.seconds for r in runs):.2f}" if runs else "-")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def write_plots(records: Sequence[dict[str, Any]], policies: Sequence[str], out_dir: Path) -> list[Path]:
    """Mean GPU allocation and fragmentation vs arrived demand, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, label, filename in (("gpu_alloc_pct", "GPU allocation (%)", "fgd_alloc.png"),
                                    ("frag_gpu_pct", "fragmented GPU (% of capacity)", "fgd_frag.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for policy in policies:
            by_pct: dict[int, list[float]] = {}
            for r in records:
                if r["policy"] == policy:
                    by_pct.setdefault(r["demand_pct"], []).append(r[metric])
            xs = sorted(by_pct)
            ax.plot(xs, [statistics.mean(by_pct[x]) for x in xs], label=policy)
        ax.set_xlabel("arrived GPU demand (% of cluster GPUs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
