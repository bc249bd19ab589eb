"""Generalization of the learned placement: leave-one-out across the openb pod lists.

    nice -n 10 python -m bench.bench_learned_generalization [--holdout default cpu050 ...]

For each held-out pod list: the placement scorer is trained with CMA-ES (the same search as
``make train``, :func:`tessera.policies.learned.train.placement_search`, starting from the
FGD-equivalent weights) on the *other eight* lists only, then evaluated on the held-out list
with the simulator's FGD protocol runner (full 1,523-node cluster, ``--batch 1``, protocol
seeds 42 and 43) against FGD measured in the same run on the same arrivals.

The training budget is small so the folds fit a shared 2-core machine (~5-10 min per fold
there): 1/16-subsampled clusters, one training seed per list (8 episodes per candidate),
popsize 6, 3 generations, CMA-ES seed 7 (``make train`` uses 1/8 clusters, 10 episodes,
popsize 8, 14 generations).  Results are written after every fold.
Everything is seeded: the same command gives the same table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from bench.common import write_results
from tessera.policies.learned.env import read_pods
from tessera.policies.learned.model import LearnedModel, LinearScorer, load_model
from tessera.policies.learned.protocol import LearnedPlacement
from tessera.policies.learned.train import (
    TEST_WORKLOADS,
    TRAIN_WORKLOADS,
    default_data_dir,
    make_episodes,
    placement_search,
)
from tessera.policy import load_policy

ALL = (*TRAIN_WORKLOADS, *TEST_WORKLOADS)
#: fold order: the lists the fixed split held out first (its weakest, gpushare80, leading), so a
#: run cut short still covers them
FOLDS = ("gpushare80", "cpu200", "multigpu40", "gpuspec25", *TRAIN_WORKLOADS)
assert sorted(FOLDS) == sorted(ALL)


def main(argv: Sequence[str]) -> int:
    from tessera.sim.fgd import run_protocol
    from tessera.sim.loaders.openb import load_openb_nodes, load_openb_pods

    parser = argparse.ArgumentParser(prog="python -m bench.bench_learned_generalization")
    parser.add_argument("--holdout", nargs="+", default=list(FOLDS), help="pod lists to hold out, one fold each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43], help="protocol seeds of the evaluation")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--keep-every", type=int, default=16)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--popsize", type=int, default=6)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--cma-seed", type=int, default=7)
    parser.add_argument("--tag", default="", help="suffix of the results' name (a second budget next to the default)")
    args = parser.parse_args(list(argv))
    data = default_data_dir()
    if not (data / "openb_node_list_all_node.csv").is_file():
        print(f"skipped: openb traces not found in {data} (set TESSERA_DATA)")
        return 0
    import cma  # the training extra

    ordering = load_model().ordering  # placement-only evaluation; the ordering scorer is not used
    nodes = load_openb_nodes(data / "openb_node_list_all_node.csv").nodes
    records: list[dict[str, object]] = []
    summary: list[dict[str, object]] = []
    for held in args.holdout:
        others = [w for w in ALL if w != held]
        started = time.perf_counter()
        episodes = make_episodes(data, others, args.train_seeds, args.keep_every)
        best, _start, baseline, history = placement_search(
            episodes, cma, generations=args.generations, popsize=args.popsize, sigma=args.sigma,
            cma_seed=args.cma_seed, desc=f"LOO {held}")
        train_seconds = time.perf_counter() - started
        model = LearnedModel(f"loo-{held}", "0", best, ordering)
        pods = load_openb_pods(data / f"openb_pod_list_{held}.csv").pods
        demands = [p.demand for p in read_pods(data / f"openb_pod_list_{held}.csv")]
        runs: dict[str, list[float]] = {"fgd": [], "learned": []}
        for seed in args.seeds:
            for name, policy in (("fgd", load_policy("fgd")), ("learned", LearnedPlacement(model, target=demands))):
                result = run_protocol(nodes, pods, policy, seed)  # type: ignore[arg-type]
                alloc = {r["demand_pct"]: r for r in result.records(130)}[130]["gpu_alloc_pct"]
                runs[name].append(alloc)
                records.append({"holdout": held, "seed": seed, "policy": name, "alloc_130_pct": alloc,
                                "seconds": result.seconds, "decisions": result.decisions})
                print(f"{held:11s} seed {seed} {name:8s} {alloc:.2f}%", flush=True)
        summary.append({
            "holdout": held,
            "learned_pct": float(np.mean(runs["learned"])),
            "fgd_pct": float(np.mean(runs["fgd"])),
            "learned_minus_fgd": float(np.mean(runs["learned"]) - np.mean(runs["fgd"])),
            "min_seed_delta": min(a - b for a, b in zip(runs["learned"], runs["fgd"], strict=True)),
            "train_gain_subsampled": 100 * (history[-1]["best_so_far"] - float(np.mean(baseline))) if history else 0.0,
            "train_seconds": train_seconds,
        })
        records.append({"holdout": held, "policy": "weights", **_weights(best)})
        # after every fold, so a long run interrupted on a shared machine keeps what it measured
        _write(args, argv, records, summary)
    return 0


def _write(args: argparse.Namespace, argv: Sequence[str], records: list[dict[str, object]],
           summary: list[dict[str, object]]) -> None:
    wins = sum(1 for r in summary if float(r["learned_minus_fgd"]) >= 0)  # type: ignore[arg-type]
    notes = (
        f"Leave-one-out over the openb pod lists: each row's scorer was trained on the other "
        f"{len(ALL) - 1} lists only (never on the held-out one). Training budget per fold: 1/{args.keep_every} "
        f"subsampled clusters, training seeds {args.train_seeds} ({(len(ALL) - 1) * len(args.train_seeds)} episodes "
        f"per candidate), CMA-ES popsize {args.popsize}, {args.generations} generations, sigma0 {args.sigma}, seed "
        f"{args.cma_seed}, start = FGD-equivalent weights. Evaluation: FGD protocol runner (tessera.sim.fgd), full "
        f"1,523-node cluster, batch 1, seeds {args.seeds}, GPU allocation % at 130% arrived demand, FGD in the same "
        f"run on the same arrivals. Folds done: {len(summary)} of {len(args.holdout)}; learned >= FGD on {wins}/{len(summary)} held-out lists (mean over seeds). "
        f"train_gain_subsampled: best training objective minus the FGD-equivalent start, points of allocation on "
        f"the subsampled training episodes. Weights per fold are in the JSON."
    )
    write_results("learned_generalization" + (f"_{args.tag}" if args.tag else ""), records, summary,
                  command="python -m bench.bench_learned_generalization " + " ".join(argv), notes=notes,
                  columns=["holdout", "learned_pct", "fgd_pct", "learned_minus_fgd", "min_seed_delta",
                           "train_gain_subsampled", "train_seconds"])
    print(notes, flush=True)


def _weights(scorer: LinearScorer) -> dict[str, float]:
    return {f"w_{n}": float(w) for n, w in zip(scorer.feature_names, scorer.weights, strict=True)}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
