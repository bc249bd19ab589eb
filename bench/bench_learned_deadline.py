"""Learned queue ordering vs EDD and MDD on deadline episodes built from Gavel's Philly traces.

    python -m bench.bench_learned_deadline

Episodes: ``tessera.policies.learned.deadline_env`` (first 120 jobs of five virtual clusters per
Gavel seed, drawn deadlines, 8-GPU nodes at ~90% offered load, non-preemptive best fit with
backfilling). The learned ordering was trained on Gavel seeds 0-1; seed 2 is the test split.
Reports tardy jobs, total tardiness, on-time share and mean JCT per policy and split, and the
ordering model's per-decision latency (scoring one queue).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from bench.common import write_results
from tessera.policies.learned.deadline_env import (
    edd_order,
    features_for,
    gavel_episodes,
    mdd_order,
    scored_order,
    simulate,
)
from tessera.policies.learned.model import load_model
from tessera.policies.learned.train import ORDERING_TEST_SEEDS, ORDERING_TRAIN_SEEDS, default_data_dir


def main(argv: Sequence[str]) -> int:
    data = default_data_dir().parents[1]
    if not (data / "gavel" / "traces" / "msr").is_dir():
        print(f"skipped: Gavel traces not found in {data / 'gavel'} (set TESSERA_DATA)")
        return 0
    model = load_model(None)
    policies = {"edd": edd_order, "mdd": mdd_order, "learned": scored_order(model.ordering.score)}
    records = []
    summary = []
    for split, seeds in (("train", ORDERING_TRAIN_SEEDS), ("test", ORDERING_TEST_SEEDS)):
        episodes = gavel_episodes(data, seeds, per_seed=5)
        totals: dict[str, dict[str, float]] = {p: {"tardy": 0, "tardiness_h": 0.0, "jobs": 0, "jct_h": 0.0} for p in policies}
        for e in episodes:
            for name, order in policies.items():
                r = simulate(e, order)
                records.append({"split": split, "episode": e.name, "policy": name, "jobs": r.jobs, "tardy": r.tardy,
                                "total_tardiness_h": r.total_tardiness_hours, "mean_jct_h": r.mean_jct_hours})
                t = totals[name]
                t["tardy"] += r.tardy
                t["tardiness_h"] += r.total_tardiness_hours
                t["jobs"] += r.jobs
                t["jct_h"] += r.mean_jct_hours * r.jobs
        for name, t in totals.items():
            summary.append({"split": split, "policy": name, "episodes": len(episodes), "jobs": int(t["jobs"]),
                            "tardy_jobs": int(t["tardy"]), "total_tardiness_h": t["tardiness_h"],
                            "on_time_pct": 100 * (1 - t["tardy"] / t["jobs"]), "mean_jct_h": t["jct_h"] / t["jobs"]})
    # latency: order a queue of 64 jobs with the learned scorer
    e = gavel_episodes(data, ORDERING_TEST_SEEDS, per_seed=1)[0]
    rows = np.arange(min(64, len(e.jobs)))
    started = time.perf_counter()
    for _ in range(2_000):
        model.ordering.score(features_for(0.0, e.jobs, rows))
    ordering_us = (time.perf_counter() - started) / 2_000 * 1e6
    notes = (f"Artifact {model.artifact}. Train: Gavel seeds {list(ORDERING_TRAIN_SEEDS)}; test (never used in "
             f"training): seed {list(ORDERING_TEST_SEEDS)}. Learned ordering: features + score of a 64-job queue in "
             f"{ordering_us:.0f} us per decision.")
    write_results("learned_deadline", records, summary, command="python -m bench.bench_learned_deadline", notes=notes)
    print(notes)
    for row in summary:
        print(row)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
