"""FGD (ATC'23) faithfulness and speed: our reimplemented policies against the published runs.

For every openb pod list in ``$TESSERA_DATA/alibaba-gpu-v2023/csv`` (or ``--workloads``),
every policy and seed: the GPU allocation at 130% arrived demand, averaged over seeds, next
to the published mean over the same seeds (``fgd-atc23-results/analysis_allo_discrete.csv``).
Then the speed of one run (default list, 130%, seed 42, BestFit), with FGD cached vs
uncached scoring measured in the same invocation as the ratio.

    nice -n 10 python -m bench.bench_fgd                       # the full grid
    python -m bench.bench_fgd --workloads default --seeds 42-44 --policies fgd,resource-best-fit
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.common import write_results

#: published policy directory name -> our registered policy name
PUBLISHED_POLICIES = {
    "01-Random": "random",
    "02-DotProd": "dot-product",
    "03-GpuClustering": "gpu-clustering",
    "04-GpuPacking": "gpu-packing",
    "05-BestFit": "resource-best-fit",
    "06-FGD": "fgd",
}
ALL_POLICIES = list(PUBLISHED_POLICIES.values())
#: the node list the authors' input preparation copies next to every pod list (GPU nodes only)
DEFAULT_NODES = "openb_node_list_gpu_node.csv"
WITHIN_POINTS = 1.0


def data_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("TESSERA_DATA", root.parent / "shared" / "data"))


def published_means(results_dir: Path, seeds: Sequence[int], column: str = "130") -> dict[tuple[str, str], dict[str, float]]:
    """(workload stem, our policy) -> {"alloc": mean, "frag": mean} over ``seeds``."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for metric, name in (("alloc", "analysis_allo_discrete.csv"), ("frag", "analysis_frag_discrete.csv")):
        values: dict[tuple[str, str], list[float]] = defaultdict(list)
        with (results_dir / name).open(newline="") as handle:
            for row in csv.DictReader(handle):
                policy = PUBLISHED_POLICIES.get(row["sc_policy"])
                if policy is None or int(row["seed"]) not in seeds or not row.get(column):
                    continue
                workload = row["workload"].removeprefix("openb_pod_list_")
                values[(workload, policy)].append(float(row[column]))
        for key, vals in values.items():
            out.setdefault(key, {})[metric] = statistics.mean(vals)
            out[key][metric + "_n"] = float(len(vals))
    return out


@functools.lru_cache(maxsize=16)
def _load(nodes_path: str, pods_path: str) -> tuple[Any, Any]:
    from tessera.sim.loaders.openb import load_openb_nodes, load_openb_pods

    return load_openb_nodes(nodes_path).nodes, load_openb_pods(pods_path).pods


def _run_one(task: tuple[str, str, str, str, int, str]) -> dict[str, Any]:
    workload, nodes_path, pods_path, policy_name, seed, tie_break = task
    from tessera.policy import load_policy
    from tessera.sim.fgd import run_protocol

    nodes, pods = _load(nodes_path, pods_path)
    result = run_protocol(nodes, pods, load_policy(policy_name), seed, tie_break=tie_break)  # type: ignore[arg-type]
    at = {r["demand_pct"]: r for r in result.records(130)}
    return {
        "workload": workload, "policy": policy_name, "seed": seed,
        "alloc_130": at[130]["gpu_alloc_pct"] if 130 in at else None,
        "frag_130": at[130]["frag_gpu_pct"] if 130 in at else None,
        "alloc_100": at[100]["gpu_alloc_pct"] if 100 in at else None,
        **{k: v for k, v in result.summary().items() if k not in ("policy", "seed")},
    }


def _speed(data: Path, nodes_file: str) -> list[dict[str, Any]]:
    from tessera.policies.placement import arrays as placement_arrays
    from tessera.policy import load_policy
    from tessera.sim import fgd as protocol

    csv_dir = data / "alibaba-gpu-v2023" / "csv"
    nodes, pods = _load(str(csv_dir / nodes_file), str(csv_dir / "openb_pod_list_default.csv"))
    rows = []
    for label, name, cached in (("resource-best-fit", "resource-best-fit", True), ("fgd", "fgd", True),
                                ("fgd, scores not cached", "fgd", False)):
        original = protocol.choose_node
        if not cached:
            protocol.choose_node = functools.partial(_uncached, placement_arrays.choose_node)
        try:
            started = time.perf_counter()
            result = protocol.run_protocol(nodes, pods, load_policy(name), 42)
            seconds = time.perf_counter() - started
        finally:
            protocol.choose_node = original
        rows.append({"run": label, "seconds": round(seconds, 3), "pods": result.pods_arrived,
                     "pods_per_second": round(result.pods_arrived / seconds, 1),
                     "alloc_130": result.summary()["final_alloc_pct"]})
    base = next(r["seconds"] for r in rows if r["run"] == "fgd, scores not cached")
    for r in rows:
        r["speedup_vs_uncached_fgd"] = round(base / r["seconds"], 2)
    return rows


def _uncached(choose: Any, arrays: Any, shape: Any, scorer: Any, rng: Any, cache: Any = None, node_rank: Any = None) -> Any:
    return choose(arrays, shape, scorer, rng, None, node_rank)


def _write(
    args: argparse.Namespace, workloads: Sequence[str], policies: Sequence[str], seeds: Sequence[int],
    records: list[dict[str, Any]], data: Path, speed: list[dict[str, Any]], grid_seconds: float,
    n_tasks: int, command: str,
) -> Path:
    published = published_means(data / "fgd-atc23-results", seeds)
    summary = []
    for w in workloads:
        for p in policies:
            mine = [r for r in records if r["workload"] == w and r["policy"] == p and r["alloc_130"] is not None]
            if not mine:
                continue
            ours = statistics.mean(r["alloc_130"] for r in mine)
            ours_frag = statistics.mean(r["frag_130"] for r in mine)
            pub = published.get((w, p), {})
            row: dict[str, Any] = {"workload": w, "policy": p, "seeds": len(mine), "ours_alloc_130": round(ours, 2)}
            if "alloc" in pub:
                row["published_alloc_130"] = round(pub["alloc"], 2)
                row["diff_pts"] = round(ours - pub["alloc"], 2)
                row["within_1pt"] = abs(ours - pub["alloc"]) <= WITHIN_POINTS
            row["ours_frag_130"] = round(ours_frag, 2)
            if "frag" in pub:
                row["published_frag_130"] = round(pub["frag"], 2)
            summary.append(row)
    done = len(records)
    notes = [
        f"Grid: {done} of {n_tasks} runs in {grid_seconds:.0f} s ({args.workers} worker(s)); nodes: {args.nodes}; "
        f"tie-break: {args.tie_break}; seeds {args.seeds}.",
        "Published: mean over the same seeds of column 130 in fgd-atc23-results/analysis_{allo,frag}_discrete.csv.",
    ]
    if speed:
        from bench.common import markdown_table

        notes.append("\n## Speed (default pod list, 130%, seed 42)\n\n" + markdown_table(speed))
    _, md_path = write_results(
        args.name, records + [{"speed": s} for s in speed], summary, command=command, notes="\n".join(notes),
    )
    return md_path


def main(argv: Sequence[str]) -> int:
    from tessera.sim.fgd import parse_seeds

    parser = argparse.ArgumentParser(prog="bench_fgd", description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="", help="pod list stems, e.g. default,gpushare40 (default: all present)")
    parser.add_argument("--policies", default=",".join(ALL_POLICIES))
    parser.add_argument("--seeds", default="42-51")
    parser.add_argument("--nodes", default=DEFAULT_NODES, help="node list file in alibaba-gpu-v2023/csv")
    parser.add_argument("--tie-break", choices=("ordered", "random"), default="ordered")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-speed", action="store_true", help="skip the speed runs")
    parser.add_argument("--name", default="fgd", help="results file name in bench/results/")
    args = parser.parse_args(list(argv))

    data = data_dir()
    csv_dir = data / "alibaba-gpu-v2023" / "csv"
    if not csv_dir.is_dir():
        print(f"public traces not found at {csv_dir} (set TESSERA_DATA)")
        return 2
    available = sorted(p.stem.removeprefix("openb_pod_list_") for p in csv_dir.glob("openb_pod_list_*.csv"))
    # the default list first: it is the one every policy is compared on
    workloads = [w for w in args.workloads.split(",") if w] or sorted(available, key=lambda w: (w != "default", w))
    unknown = set(workloads) - set(available)
    if unknown:
        print(f"unknown workload(s) {sorted(unknown)}; available: {available}")
        return 2
    policies = [p for p in args.policies.split(",") if p]
    seeds = parse_seeds(args.seeds)
    tasks = [(w, str(csv_dir / args.nodes), str(csv_dir / f"openb_pod_list_{w}.csv"), p, s, args.tie_break)
             for w in workloads for p in policies for s in seeds]

    from tqdm import tqdm

    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    command = ("python -m bench.bench_fgd " + " ".join(argv)).strip()
    progress = tqdm(total=len(tasks), file=sys.stderr)
    for workload in workloads:  # results are written after each workload, so a cut-short grid still counts
        batch = [t for t in tasks if t[0] == workload]
        if args.workers > 1:
            with get_context("spawn").Pool(args.workers) as pool:
                for rec in pool.imap_unordered(_run_one, batch):
                    records.append(rec)
                    progress.update()
        else:
            for task in batch:
                records.append(_run_one(task))
                progress.update()
        _write(args, workloads, policies, seeds, records, data, [], time.perf_counter() - started, len(tasks), command)
    progress.close()
    grid_seconds = time.perf_counter() - started

    speed = [] if args.no_speed else _speed(data, args.nodes)
    md_path = _write(args, workloads, policies, seeds, records, data, speed, grid_seconds, len(tasks), command)
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
