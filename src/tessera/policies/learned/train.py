"""Train the learned dispatcher: ``python -m tessera.policies.learned.train`` (= ``make train``).

Direct policy search with CMA-ES (the ``cma`` package) on the simulator's objective: the GPU
allocation ratio reached when arrived demand hits 130% in the FGD protocol on the Alibaba openb
traces. Search starts at the weights under which the scorer ranks nodes exactly like FGD, so
it can only move to something better on the training episodes.

Split (nothing of the test side is seen in training):

* train: pod lists ``default, cpu050, gpushare40, multigpu20, gpuspec10`` on stratified 1/k
  subsamples of the node list (node offsets and pod subsets vary by training seed), seeds 0..n-1;
* test:  pod lists ``cpu200, gpushare80, multigpu40, gpuspec25`` (never used in training), on
  the same kind of subsampled clusters with seeds 100.. (reported in the model card); the
  full-size FGD-protocol figures on all nine lists come from ``bench/bench_learned.py``.

Everything is seeded; the same command writes the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.policies.learned.env import Pod, arrival_sequence, read_nodes, read_pods, run_episode, subsample
from tessera.policies.learned.features import (
    FEATURE_VERSION,
    ORDERING_FEATURES,
    PLACEMENT_FEATURES,
    NodeArrays,
    TargetWorkload,
    target_workload,
)
from tessera.policies.learned.model import (
    ARTIFACTS,
    CARD_FILE,
    DEFAULT_ARTIFACT,
    WEIGHTS_FILE,
    LearnedModel,
    LinearScorer,
    edd_ordering_weights,
    fgd_equivalent_weights,
    mdd_ordering_weights,
)

TRAIN_WORKLOADS = ("default", "cpu050", "gpushare40", "multigpu20", "gpuspec10")
TEST_WORKLOADS = ("cpu200", "gpushare80", "multigpu40", "gpuspec25")
#: Gavel trace seeds for the deadline ordering: 0-1 train, 2 test
ORDERING_TRAIN_SEEDS = (0, 1)
ORDERING_TEST_SEEDS = (2,)


@dataclass(frozen=True, slots=True)
class Episode:
    workload: str
    seed: int
    nodes: NodeArrays
    sequence: list[object]
    target: TargetWorkload


def default_data_dir() -> Path:
    root = Path(os.environ.get("TESSERA_DATA", Path(__file__).resolve().parents[5] / "shared" / "data"))
    return root / "alibaba-gpu-v2023" / "csv"


def make_episodes(data: Path, workloads: Sequence[str], seeds: Sequence[int], keep_every: int) -> list[Episode]:
    """Subsampled protocol episodes: 1/``keep_every`` of the nodes and of the (name-sorted) pods."""
    nodes = read_nodes(data / "openb_node_list_all_node.csv")
    out = []
    for workload in workloads:
        pods = read_pods(data / f"openb_pod_list_{workload}.csv")
        target = target_workload([p.demand for p in pods], nodes.type_names)
        for seed in seeds:
            cluster = subsample(nodes, keep_every, offset=seed)
            some: list[Pod] = pods[seed % keep_every :: keep_every]
            sequence = arrival_sequence(some, int(cluster.gpu_count.sum()) * 1000, seed)
            out.append(Episode(workload, seed, cluster, list(sequence), target))
    return out


def evaluate(scorer: LinearScorer, episodes: Sequence[Episode]) -> list[float]:
    return [run_episode(e.nodes, e.sequence, e.target, scorer.score).gpu_allocation for e in episodes]  # type: ignore[arg-type]


def feature_scale(episodes: Sequence[Episode]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Mean and spread of the placement features seen along FGD-equivalent episodes (standardisation)."""
    seen: list[npt.NDArray[np.float64]] = []
    w = fgd_equivalent_weights()

    def record(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        seen.append(x)
        return np.asarray(x @ w)

    for e in episodes[:: max(1, len(episodes) // 3)]:
        run_episode(e.nodes, e.sequence, e.target, record)  # type: ignore[arg-type]
    stacked = np.vstack(seen)
    scale = stacked.std(axis=0)
    return stacked.mean(axis=0), np.where(scale > 1e-9, scale, 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.policies.learned.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="openb csv folder")
    parser.add_argument("--out", type=Path, default=ARTIFACTS / DEFAULT_ARTIFACT)
    parser.add_argument("--generations", type=int, default=14)
    parser.add_argument("--popsize", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=0.5, help="CMA-ES initial step (standardised units)")
    parser.add_argument("--keep-every", type=int, default=8, help="train on 1/k of the nodes and pods")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--cma-seed", type=int, default=7)
    parser.add_argument("--version", default="1")
    parser.add_argument("--stage", choices=("all", "placement", "ordering"), default="all",
                        help="train both scorers, or one (the other is kept from the existing artifact)")
    parser.add_argument("--ordering-generations", type=int, default=12)
    args = parser.parse_args(argv)

    import cma  # the training extra; serving never needs it

    started = time.time()
    if args.stage in ("all", "placement"):
        if not (args.data / "openb_node_list_all_node.csv").is_file():
            print(f"error: openb traces not found in {args.data} (set TESSERA_DATA)", file=sys.stderr)
            return 2
        model = train_placement(args, cma)
    else:
        model = load_placement_only(args.out)
    if args.stage in ("all", "ordering"):
        gavel = args.data.parents[1]
        if not (gavel / "gavel" / "traces" / "msr").is_dir():
            print(f"error: Gavel traces not found in {gavel / 'gavel'} (set TESSERA_DATA)", file=sys.stderr)
            return 2
        model = train_ordering(args, cma, model, gavel)
    model = LearnedModel(model.name, model.version, model.placement, model.ordering,
                         {**model.metadata, "training_seconds": round(time.time() - started, 1)})
    path = model.save(args.out)
    (args.out / CARD_FILE).write_text(model_card(model, args))
    print(f"wrote {path} and {args.out / CARD_FILE}")
    print(json.dumps(model.metadata.get("per_workload", []), indent=1))
    return 0


def load_placement_only(folder: Path) -> LearnedModel:
    """The artifact's placement scorer (its ordering part may predate the current ordering features)."""
    path = folder / WEIGHTS_FILE
    data = json.loads(path.read_text())
    placement = LinearScorer.from_json(data["placement"], PLACEMENT_FEATURES, f"{path} placement")
    n = len(ORDERING_FEATURES)
    ordering = LinearScorer(ORDERING_FEATURES, edd_ordering_weights(), np.zeros(n), np.ones(n))
    meta = {k: v for k, v in data.get("metadata", {}).items() if k != "ordering"}
    return LearnedModel(str(data["name"]), str(data["version"]), placement, ordering, meta)


def placement_search(
    train: Sequence[Episode], cma: Any, *, generations: int, popsize: int, sigma: float, cma_seed: int,
    desc: str = "CMA-ES",
) -> tuple[LinearScorer, LinearScorer, list[float], list[dict[str, float]]]:
    """CMA-ES over the placement weights on ``train``, from the FGD-equivalent weights.

    Returns (best scorer, FGD-equivalent scorer, the latter's scores on ``train``, history).
    Shared by ``make train`` and the leave-one-out benchmark (``bench/bench_learned_generalization.py``).
    """
    from tqdm import tqdm

    mean, scale = feature_scale(train)
    x0 = fgd_equivalent_weights() * scale  # the same ranking as FGD, in standardised units

    def scorer(x: npt.NDArray[np.float64]) -> LinearScorer:
        return LinearScorer(PLACEMENT_FEATURES, np.asarray(x, dtype=np.float64), mean, scale)

    baseline_train = evaluate(scorer(x0), train)
    es = cma.CMAEvolutionStrategy(list(x0), sigma, {
        "seed": cma_seed, "popsize": popsize, "maxiter": generations, "verbose": -9,
    })
    best_x, best_value = np.asarray(x0), float(np.mean(baseline_train))
    history: list[dict[str, float]] = []
    with tqdm(total=generations, desc=desc, unit="gen") as bar:
        while not es.stop():
            candidates = es.ask()
            values = [float(np.mean(evaluate(scorer(np.asarray(c)), train))) for c in candidates]
            es.tell(candidates, [-v for v in values])
            i = int(np.argmax(values))
            if values[i] > best_value + 1e-9:
                best_x, best_value = np.asarray(candidates[i]), values[i]
            history.append({"generation": len(history) + 1, "best_in_generation": values[i], "best_so_far": best_value})
            bar.set_postfix(best=f"{best_value:.4f}", start=f"{np.mean(baseline_train):.4f}")
            bar.update(1)
    return scorer(best_x), scorer(x0), baseline_train, history


def train_placement(args: argparse.Namespace, cma: Any) -> LearnedModel:
    """CMA-ES on the FGD protocol objective; returns a model with the default (EDD-like) ordering."""
    train = make_episodes(args.data, TRAIN_WORKLOADS, args.train_seeds, args.keep_every)
    test = make_episodes(args.data, TEST_WORKLOADS, args.test_seeds, args.keep_every)
    final, start, baseline_train, history = placement_search(
        train, cma, generations=args.generations, popsize=args.popsize, sigma=args.sigma, cma_seed=args.cma_seed)
    train_scores = evaluate(final, train)
    test_scores = evaluate(final, test)
    baseline_test = evaluate(start, test)
    per_workload = []
    for label, episodes, learned, fgd in (("train", train, train_scores, baseline_train),
                                          ("test", test, test_scores, baseline_test)):
        for w in dict.fromkeys(e.workload for e in episodes):
            idx = [i for i, e in enumerate(episodes) if e.workload == w]
            per_workload.append({"split": label, "workload": w,
                                 "learned_alloc_pct": 100 * float(np.mean([learned[i] for i in idx])),
                                 "fgd_equivalent_alloc_pct": 100 * float(np.mean([fgd[i] for i in idx]))})
    n = len(ORDERING_FEATURES)
    return LearnedModel(
        name=args.out.name.rsplit("-v", 1)[0],
        version=args.version,
        placement=final,
        ordering=LinearScorer(ORDERING_FEATURES, edd_ordering_weights(), np.zeros(n), np.ones(n)),
        metadata={
            "objective": "GPU allocation ratio at 130% arrived demand, FGD protocol (maximised)",
            "search": f"CMA-ES (cma {cma.__version__}), popsize {args.popsize}, {len(history)} generations, "
                      f"sigma0 {args.sigma}, seed {args.cma_seed}, start = FGD-equivalent weights",
            "train": {"workloads": list(TRAIN_WORKLOADS), "seeds": args.train_seeds, "keep_every": args.keep_every},
            "test": {"workloads": list(TEST_WORKLOADS), "seeds": args.test_seeds, "keep_every": args.keep_every},
            "feature_version": FEATURE_VERSION,
            "per_workload": per_workload,
            "history": history,
        },
    )


def train_ordering(args: argparse.Namespace, cma: Any, model: LearnedModel, data: Path) -> LearnedModel:
    """CMA-ES on the deadline objective in the Gavel queue environment; returns ``model`` with new ordering."""
    from tqdm import tqdm

    from tessera.policies.learned.deadline_env import (
        edd_order,
        gavel_episodes,
        mdd_order,
        scored_order,
        simulate,
    )

    train = gavel_episodes(data, ORDERING_TRAIN_SEEDS, per_seed=5)
    test = gavel_episodes(data, ORDERING_TEST_SEEDS, per_seed=5)
    n = len(ORDERING_FEATURES)

    def baselines(episodes: Sequence[Any]) -> list[tuple[Any, Any]]:
        return [(simulate(e, edd_order), simulate(e, mdd_order)) for e in episodes]

    base_train = baselines(train)

    best_tardy = min(sum(b[0].tardy for b in base_train), sum(b[1].tardy for b in base_train))
    best_hours = min(sum(b[0].total_tardiness_hours for b in base_train), sum(b[1].total_tardiness_hours for b in base_train))

    def objective(weights: npt.NDArray[np.float64]) -> float:
        """Tardy jobs and total tardiness over all training episodes, each relative to the better of EDD and MDD."""
        order = scored_order(LinearScorer(ORDERING_FEATURES, weights, np.zeros(n), np.ones(n)).score)
        results = [simulate(e, order) for e in train]
        tardy = sum(r.tardy for r in results)
        hours = sum(r.total_tardiness_hours for r in results)
        return (tardy / max(best_tardy, 1) + hours / max(best_hours, 1e-6)) / 2

    x0 = mdd_ordering_weights()  # ranks exactly like MDD; the search improves from there
    best_x, best_value = x0, objective(x0)
    start_value = best_value
    es = cma.CMAEvolutionStrategy(list(x0), 0.5, {
        "seed": args.cma_seed, "popsize": args.popsize, "maxiter": args.ordering_generations, "verbose": -9,
    })
    history: list[dict[str, float]] = []
    with tqdm(total=args.ordering_generations, desc="CMA-ES ordering", unit="gen") as bar:
        while not es.stop():
            candidates = es.ask()
            values = [objective(np.asarray(c)) for c in candidates]
            es.tell(candidates, values)
            i = int(np.argmin(values))
            if values[i] < best_value - 1e-9:
                best_x, best_value = np.asarray(candidates[i]), values[i]
            history.append({"generation": len(history) + 1, "best_so_far": best_value})
            bar.set_postfix(best=f"{best_value:.4f}", start=f"{start_value:.4f}")
            bar.update(1)
    ordering = LinearScorer(ORDERING_FEATURES, np.asarray(best_x, dtype=np.float64), np.zeros(n), np.ones(n))
    rows = []
    for split, episodes in (("train", train), ("test", test)):
        for e, (edd, mdd) in zip(episodes, baselines(episodes), strict=True):
            learned = simulate(e, scored_order(ordering.score))
            rows.append({"split": split, "episode": e.name, "jobs": learned.jobs, "nodes": e.nodes,
                         "learned_tardy": learned.tardy, "edd_tardy": edd.tardy, "mdd_tardy": mdd.tardy,
                         "learned_tardiness_h": learned.total_tardiness_hours,
                         "edd_tardiness_h": edd.total_tardiness_hours, "mdd_tardiness_h": mdd.total_tardiness_hours})
    meta = {**model.metadata, "ordering": {
        "objective": "mean of (tardy jobs, total tardiness) over all training episodes, each relative to the better of EDD and MDD",
        "search": f"CMA-ES popsize {args.popsize}, {len(history)} generations, sigma0 0.5, seed {args.cma_seed}, "
                  "start = MDD-equivalent weights",
        "train_seeds": list(ORDERING_TRAIN_SEEDS), "test_seeds": list(ORDERING_TEST_SEEDS),
        "per_episode": rows, "history": history,
    }}
    return LearnedModel(model.name, model.version, model.placement, ordering, meta)


def model_card(model: LearnedModel, args: argparse.Namespace) -> str:
    meta = model.metadata
    rows = "\n".join(
        f"| {r['split']} | {r['workload']} | {r['learned_alloc_pct']:.2f} | {r['fgd_equivalent_alloc_pct']:.2f} | "
        f"{r['learned_alloc_pct'] - r['fgd_equivalent_alloc_pct']:+.2f} |"
        for r in meta["per_workload"]
    )
    ordering = meta.get("ordering")
    if ordering:
        orows = "\n".join(
            f"| {r['split']} | {r['episode']} | {r['jobs']} | {r['nodes']} | {r['learned_tardy']} | {r['edd_tardy']} | "
            f"{r['mdd_tardy']} | {r['learned_tardiness_h']:.1f} | {r['edd_tardiness_h']:.1f} | {r['mdd_tardiness_h']:.1f} |"
            for r in ordering["per_episode"])
        tot = {k: sum(r[k] for r in ordering["per_episode"] if r["split"] == "test") for k in (
            "learned_tardy", "edd_tardy", "mdd_tardy", "learned_tardiness_h", "edd_tardiness_h", "mdd_tardiness_h")}
        ordering_text = f"""
## Queue ordering (deadlines)

- **Objective**: {ordering['objective']}.
- **Search**: {ordering['search']}.
- **Data**: Gavel (OSDI'20) Philly-derived traces `gavel/traces/msr/seed=N/<vc>.trace`, first 120 jobs of
  the first five virtual clusters with at least 120 jobs; durations from V100 throughputs; deadlines
  arrival + U(1.2, 3.0) x duration (seeded); 8-GPU nodes sized for ~90% offered load; non-preemptive,
  best-fit node, backfilling (`tessera/policies/learned/deadline_env.py`).
- **Train**: Gavel seeds {ordering['train_seeds']}. **Test** (never used in training): seed {ordering['test_seeds']}.
- **Test totals**: tardy jobs learned {tot['learned_tardy']} / EDD {tot['edd_tardy']} / MDD {tot['mdd_tardy']};
  total tardiness (h) learned {tot['learned_tardiness_h']:.1f} / EDD {tot['edd_tardiness_h']:.1f} / MDD {tot['mdd_tardiness_h']:.1f}.

| split | episode | jobs | nodes | learned tardy | EDD tardy | MDD tardy | learned tardiness h | EDD h | MDD h |
|---|---|---|---|---|---|---|---|---|---|
{orows}

Ordering weights (raw features, score = x . w, lowest first): """ + ", ".join(
            f"{n} {w:+.3f}" for n, w in zip(model.ordering.feature_names, model.ordering.weights, strict=True)) + "\n"
    else:
        ordering_text = "\nQueue ordering: least slack first (EDD-equivalent), not trained.\n"
    weights = "\n".join(f"| {n} | {w:+.4f} | {m:.4g} | {s:.4g} |" for n, w, m, s in zip(
        model.placement.feature_names, model.placement.weights, model.placement.mean, model.placement.scale, strict=True))
    return f"""# Model card: {model.name} v{model.version}

Learned dispatcher of Tessera (`learned` policy): a linear scorer over the placement features of
`tessera/policies/learned/features.py` (feature version {FEATURE_VERSION}); the node with the lowest
score gets the replica. Queue order: priority first, then the ordering scorer (section below).

- **Objective**: {meta['objective']}.
- **Search**: {meta['search']}.
- **Data**: Alibaba cluster-trace-gpu-v2023 ("openb", FGD ATC'23): node list `openb_node_list_all_node.csv`
  (1,523 nodes) and pod lists `openb_pod_list_<name>.csv`, read from `$TESSERA_DATA` (not shipped).
  Training clusters are stratified 1/{args.keep_every} subsamples of the node list (offset = seed) with
  1/{args.keep_every} of the name-sorted pods; the arrival order is the protocol's (shuffle with the
  seed, inflate to 130% of GPU-milli by uniform draws).
- **Train**: pod lists {', '.join(meta['train']['workloads'])}; seeds {meta['train']['seeds']}.
- **Test** (never seen in training): pod lists {', '.join(meta['test']['workloads'])}; seeds {meta['test']['seeds']}.
- **Reproduce**: `make train` (= `python -m tessera.policies.learned.train`), {meta['training_seconds']} s here.
- **Full-size protocol figures** (all nine lists, protocol seeds, vs FGD and per-decision latency):
  `bench/results/learned_fgd.md` from `python -m bench learned`.

## Metrics (subsampled protocol, GPU allocation % at 130% arrived demand)

FGD-equivalent = the same scorer with only the FGD fragmentation-delta weight (the search's start).

| split | workload | learned | FGD-equivalent | delta |
|---|---|---|---|---|
{rows}

## Weights (standardised: score = ((x - mean) / scale) . w)

| feature | weight | mean | scale |
|---|---|---|---|
{weights}

{ordering_text}
## Limits

Trained for one-pod-at-a-time placement on the openb cluster mix; on other clusters it falls back
to the same features but nothing guarantees the gain carries over. It never bypasses the engine's
plan validation.
"""


if __name__ == "__main__":
    raise SystemExit(main())
