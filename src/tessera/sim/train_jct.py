"""Train the learned JCT dispatcher: ``python -m tessera.sim.train_jct`` (= ``make train-jct``).

Direct policy search with CMA-ES (the ``cma`` package, training extra) on the simulator's
objective: the average job completion time of the measured jobs in Gavel's setting
(``sim/scenarios/gavel-36x3.yaml``: 36 V100 + 36 P100 + 36 K80, Gavel's throughputs, 600
Poisson arrivals, jobs 100-500 measured).  Each candidate is the very ``learned-jct`` policy
that serves (:class:`tessera.policies.learned.jct_policy.LearnedJct`) run through the
simulator, so training and serving share every feature function.

Split: Gavel seeds 0 and 1 train; seed 2 is the test (never seen in training).  The search
starts at a hand-written rule (FIFO order, fastest type with room, move to a type at least 20%
faster when it has room: :func:`~tessera.policies.learned.jct_policy.start_weights`).  Everything is seeded; the same
command writes the same artifact.  This module lives in ``tessera.sim`` because policies may
not import the simulator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tessera.policy import Policy
from tessera.sim import failures
from tessera.sim.report import summarize
from tessera.sim.scenario import Scenario, scenario_from_dict
from tessera.sim.simulator import FAILURE_MODES, Simulator

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = ROOT / "sim" / "scenarios" / "gavel-36x3.yaml"
TRAIN_SEEDS = (0, 1)
TEST_SEEDS = (2,)


def gavel_scenario(path: Path = SCENARIO) -> Scenario:
    """Gavel's setting, as the CP-SAT JCT benchmark runs it."""
    os.environ.setdefault("TESSERA_DATA", str(ROOT.parent / "shared" / "data"))
    return scenario_from_dict(yaml.safe_load(path.read_text()), path)


def simulate(scenario: Scenario, policy: Policy, seed: int, *, time_budget_seconds: float | None = None) -> dict[str, Any]:
    """One run of ``policy`` (an instance) on ``scenario``/``seed``; the simulator's summary record.

    ``time_budget_seconds`` overrides the decision budget (deterministic solver work in the simulator).
    """
    import dataclasses

    workloads, window = scenario.workloads(seed)
    config = scenario.config(seed)
    if time_budget_seconds is not None:
        config = dataclasses.replace(config, time_budget_seconds=time_budget_seconds)
    mode = scenario.failure_modes[0]
    sim = Simulator(scenario.nodes, failures.workloads_for_mode(mode, workloads, rigid_baselines=False),
                    failures.policy_for_mode(mode, policy), config, node_events=scenario.node_events_for(seed),
                    failure_process=scenario.failure_process, failure_handler=FAILURE_MODES[mode]())
    sim.run()
    record = summarize(sim, measure_keys=window)
    record["policy"] = policy.name
    return record


def main(argv: Sequence[str] | None = None) -> int:
    from tessera.policies.learned.jct_features import QUEUE_FEATURES, TYPE_FEATURES
    from tessera.policies.learned.jct_policy import DEFAULT_JCT_ARTIFACT, LearnedJct, jct_model, start_weights
    from tessera.policies.learned.model import ARTIFACTS, CARD_FILE

    parser = argparse.ArgumentParser(prog="python -m tessera.sim.train_jct", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ARTIFACTS / DEFAULT_JCT_ARTIFACT)
    parser.add_argument("--generations", type=int, default=12)
    parser.add_argument("--popsize", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--cma-seed", type=int, default=7)
    parser.add_argument("--version", default="1")
    args = parser.parse_args(argv)
    import cma  # the training extra; serving never needs it
    from tqdm import tqdm

    scenario = gavel_scenario()
    nq, nt = len(QUEUE_FEATURES), len(TYPE_FEATURES)
    started = time.time()

    def policy(x: Any) -> LearnedJct:
        return LearnedJct(model=jct_model(x[:nq], x[nq:nq + nt], x[nq + nt:]))

    def runs(x: Any, seeds: Sequence[int]) -> list[dict[str, Any]]:
        return [simulate(scenario, policy(x), s) for s in seeds]

    def jct_hours(x: Any, seeds: Sequence[int]) -> list[float]:
        return [r["avg_jct_seconds"] / 3600 for r in runs(x, seeds)]

    x0 = np.concatenate(start_weights())
    start_train = jct_hours(x0, TRAIN_SEEDS)

    def objective(x: Any) -> float:
        """Mean over the training seeds of average JCT relative to the start policy's; a job left
        unfinished costs as much as doubling everyone's JCT (average JCT counts finished jobs only)."""
        tick = time.time()
        records = runs(x, TRAIN_SEEDS)
        value = float(np.mean([r["avg_jct_seconds"] / 3600 / b + 2.0 * r["jobs_unfinished"]
                               for r, b in zip(records, start_train, strict=True)]))
        print(f"  candidate {value:.4f} in {time.time() - tick:.1f} s", flush=True)
        return value

    es = cma.CMAEvolutionStrategy(list(x0), args.sigma, {
        "seed": args.cma_seed, "popsize": args.popsize, "maxiter": args.generations, "verbose": -9})
    best_x, best_value = x0, 1.0
    history: list[dict[str, float]] = []
    with tqdm(total=args.generations, desc="CMA-ES JCT", unit="gen") as bar:
        while not es.stop():
            candidates = es.ask()
            values = [objective(c) for c in candidates]
            es.tell(candidates, values)
            i = int(np.argmin(values))
            if values[i] < best_value - 1e-9:
                best_x, best_value = np.asarray(candidates[i]), values[i]
            history.append({"generation": len(history) + 1, "best_in_generation": values[i], "best_so_far": best_value})
            bar.set_postfix(best=f"{best_value:.4f}")
            bar.update(1)

    rows = []
    for split, seeds in (("train", TRAIN_SEEDS), ("test", TEST_SEEDS)):
        for seed, learned, start in zip(seeds, jct_hours(best_x, seeds), jct_hours(x0, seeds), strict=True):
            rows.append({"split": split, "seed": seed, "learned_jct_h": learned, "start_jct_h": start})
    meta = {
        "objective": "mean over Gavel seeds 0-1 of average JCT (jobs 100-500 of 600) relative to the start policy",
        "search": f"CMA-ES (cma {cma.__version__}), popsize {args.popsize}, {len(history)} generations, sigma0 "
                  f"{args.sigma}, seed {args.cma_seed}, start = hand-written rule (FIFO, fastest type with room, "
                  "move when >= 20% faster)",
        "scenario": str(SCENARIO.relative_to(ROOT)),
        "train_seeds": list(TRAIN_SEEDS), "test_seeds": list(TEST_SEEDS),
        "per_seed": rows, "history": history, "training_seconds": round(time.time() - started, 1),
    }
    model = jct_model(best_x[:nq], best_x[nq:nq + nt], best_x[nq + nt:], name=args.out.name.rsplit("-v", 1)[0], version=args.version,
                      metadata=meta)
    path = model.save(args.out)
    (args.out / CARD_FILE).write_text(model_card(model, args))
    print(f"wrote {path} and {args.out / CARD_FILE}")
    print(json.dumps(rows, indent=1))
    return 0


def model_card(model: Any, args: argparse.Namespace) -> str:
    meta = model.metadata
    rows = "\n".join(f"| {r['split']} | {r['seed']} | {r['learned_jct_h']:.3f} | {r['start_jct_h']:.3f} | "
                     f"{r['learned_jct_h'] / r['start_jct_h']:.3f} |" for r in meta["per_seed"])

    def weights(scorer: Any) -> str:
        return "\n".join(f"| {n} | {w:+.4f} |" for n, w in zip(scorer.feature_names, scorer.weights, strict=True))

    return f"""# Model card: {model.name} v{model.version}

Learned JCT dispatcher of Tessera (`learned-jct` policy, `tessera/policies/learned/jct_policy.py`):
three linear scorers (queue, type, move) over the features of `tessera/policies/learned/jct_features.py`. Waiting jobs are
taken by priority, then lowest queue score; each job starts on the accelerator type with room whose
type score is lowest, or waits for a faster type when that score is above 0; a running job moves to a
faster type with room when its move score is below 0 (restart cost charged). No solver.

- **Objective**: {meta['objective']}.
- **Search**: {meta['search']}.
- **Data**: `{meta['scenario']}` (Gavel OSDI'20: 36 V100 + 36 P100 + 36 K80 in 4-GPU servers, Gavel's
  measured per-model throughputs `gavel/simulation_throughputs.json` from `$TESSERA_DATA`, 600 jobs with
  Poisson arrivals at 2/h, multi-GPU sizes, lognormal durations; the policy never sees durations).
- **Train**: Gavel seeds {meta['train_seeds']}. **Test** (never seen in training): seed {meta['test_seeds']}.
- **Reproduce**: `make train-jct` (= `python -m tessera.sim.train_jct`), {meta['training_seconds']} s here.
- **Against CP-SAT and the hybrid**: `bench/results/learned_jct.md` from `python -m bench.bench_learned_jct`.

## Metrics (average JCT of jobs 100-500, hours)

start = the search's starting point, a hand-written rule: FIFO order, fastest type with room, never
waits, moves a running job to a type with room that is at least 20% faster.

| split | seed | learned | start | learned / start |
|---|---|---|---|---|
{rows}

## Weights (raw features; score = x . w, lowest first; a job waits when its best type score is > 0)

Queue:

| feature | weight |
|---|---|
{weights(model.queue)}

Type choice:

| feature | weight |
|---|---|
{weights(model.types)}

Moves to a faster type (a job moves when its lowest score is < 0):

| feature | weight |
|---|---|
{weights(model.moves)}

## Limits

Fitted to one cluster shape and one arrival process (Gavel's); on other clusters the features still
apply but nothing guarantees the gain carries over. It never preempts for priority (only to move a
gang to a faster type). The engine validates every plan.
"""


if __name__ == "__main__":
    sys.exit(main())
