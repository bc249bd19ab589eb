"""Learned dispatcher on the openb FGD protocol: GPU allocation at 130% demand and decision latency.

    python -m bench learned [--seeds 42 43 44] [--workloads default ...]

For every openb pod list, the full 1,523-node cluster, one pod at a time (batch 1), arrival order
of the protocol (name sort, shuffle with the seed, inflation to 130%), it reports the GPU allocation
ratio reached at 130% arrived demand for:

* ``learned`` - the trained artifact (``policies/learned/openb-dispatch-v1``);
* ``fgd-equivalent`` - the same scorer with FGD's single weight (fragmentation delta), same run;
* the FGD authors' published mean over their 10 seeds (``fgd-atc23-results``), for reference
  (their random generator differs: compare means, not single runs).

Latency: scoring per decision (features + model, per pod, median) in the protocol runs, and the
policy's whole ``decide`` on a core snapshot of the full cluster (snapshot -> arrays included) for
the first pods of the default list.

The runs use the training environment's protocol replay (``tessera.policies.learned.env``);
once ``tessera.sim.fgd`` is merged the same table comes from that runner with the FGD policy
measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import write_results
from tessera.core import (
    AcceleratorOption,
    Allocation,
    ClusterSnapshot,
    Node,
    ReplicaDemand,
    ReplicaPlacement,
    Workload,
    WorkloadKind,
)
from tessera.policies.learned.env import arrival_sequence, read_nodes, read_pods, run_episode
from tessera.policies.learned.features import PLACEMENT_FEATURES, Demand, NodeArrays, target_workload
from tessera.policies.learned.model import LinearScorer, fgd_equivalent_weights, load_model
from tessera.policies.learned.policy import LearnedPolicy
from tessera.policies.learned.train import TEST_WORKLOADS, TRAIN_WORKLOADS, default_data_dir
from tessera.policy import PolicyContext

ALL = (*TRAIN_WORKLOADS, *TEST_WORKLOADS)


def published_fgd(results: Path) -> dict[str, float]:
    """Mean FGD GPU allocation % at 130% per workload in the authors' released results."""
    values: dict[str, list[float]] = {}
    path = results / "analysis_allo_discrete.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["sc_policy"].endswith("FGD"):
                values.setdefault(row["workload"].removeprefix("openb_pod_list_"), []).append(float(row["130"]))
    return {k: statistics.mean(v) for k, v in values.items()}


def core_nodes(arrays: NodeArrays) -> list[Node]:
    return [Node(n, arrays.type_names[t] if t >= 0 else None, int(c), cpu_milli=int(cpu), memory_mib=int(mem))
            for n, t, c, cpu, mem in zip(arrays.names, arrays.type_index, arrays.gpu_count, arrays.cpu_total,
                                         arrays.mem_total, strict=True)]


def as_workload(key: str, d: Demand) -> Workload:
    replica = ReplicaDemand(accelerators=d.num_gpu if d.gpu_milli >= 1000 else 0,
                            shared_milli=d.gpu_milli if d.shared else 0, cpu_milli=d.cpu_milli, memory_mib=d.memory_mib)
    return Workload(key, WorkloadKind.POD, replica, options=tuple(AcceleratorOption(t) for t in d.types))


def decide_latency(policy: LearnedPolicy, nodes: NodeArrays, sequence: Sequence[Demand], n: int) -> list[float]:
    """Seconds per ``decide`` on core snapshots of the full cluster, for the first ``n`` pods."""
    core = core_nodes(nodes)
    allocations: list[Allocation] = []
    out = []
    for i, d in enumerate(sequence[:n]):
        snap = ClusterSnapshot(core, allocations)
        w = as_workload(f"pod-{i}", d)
        started = time.perf_counter()
        plan = policy.decide(snap, [w], PolicyContext())
        out.append(time.perf_counter() - started)
        if plan.placements:
            a = plan.placements[0].replicas[0]
            allocations.append(Allocation(w, (ReplicaPlacement(0, a.node, snap.nodes[a.node].accelerator_type, a.devices),)))
    return out


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench learned")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--workloads", nargs="+", default=list(ALL))
    parser.add_argument("--latency-pods", type=int, default=150)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args(argv)
    data = default_data_dir()
    if not (data / "openb_node_list_all_node.csv").is_file():
        print(f"skipped: openb traces not found in {data} (set TESSERA_DATA)")
        return 0
    model = load_model(args.weights)
    nodes = read_nodes(data / "openb_node_list_all_node.csv")
    published = published_fgd(data.parents[1] / "fgd-atc23-results")
    fgd_scorer = LinearScorer.identity(PLACEMENT_FEATURES, fgd_equivalent_weights())
    records = []
    summary = []
    for workload in args.workloads:
        pods = read_pods(data / f"openb_pod_list_{workload}.csv")
        target = target_workload([p.demand for p in pods], nodes.type_names)
        learned_runs, fgd_runs, per_pod = [], [], []
        for seed in args.seeds:
            sequence = arrival_sequence(pods, int(nodes.gpu_count.sum()) * 1000, seed)
            started = time.perf_counter()
            learned = run_episode(nodes, sequence, target, model.placement.score)
            per_pod.append((time.perf_counter() - started) / len(sequence))
            fgd = run_episode(nodes, sequence, target, fgd_scorer.score)
            learned_runs.append(100 * learned.gpu_allocation)
            fgd_runs.append(100 * fgd.gpu_allocation)
            records.append({"workload": workload, "seed": seed, "pods": len(sequence),
                            "learned_alloc_pct": learned_runs[-1], "fgd_equivalent_alloc_pct": fgd_runs[-1],
                            "learned_seconds_per_pod": per_pod[-1]})
            print(f"{workload:11s} seed {seed}: learned {learned_runs[-1]:.2f}%  fgd-equivalent {fgd_runs[-1]:.2f}%",
                  flush=True)
        summary.append({
            "workload": workload,
            "split": "train" if workload in TRAIN_WORKLOADS else "test",
            "learned_pct": float(np.mean(learned_runs)),
            "fgd_equiv_pct": float(np.mean(fgd_runs)),
            "published_fgd_pct": published.get(workload, float("nan")),
            "learned_minus_fgd_equiv": float(np.mean(learned_runs) - np.mean(fgd_runs)),
            "learned_minus_published": float(np.mean(learned_runs) - published.get(workload, float("nan"))),
            "scoring_us_per_pod": 1e6 * float(np.median(per_pod)),
        })
    pods = read_pods(data / "openb_pod_list_default.csv")
    policy = LearnedPolicy(model=model, target=[p.demand for p in pods])
    latency = decide_latency(policy, nodes, arrival_sequence(pods, int(nodes.gpu_count.sum()) * 1000, 42),
                             args.latency_pods)
    decide_us = 1e6 * float(np.median(latency))
    notes = (
        f"Artifact {model.artifact}. Full openb cluster (1,523 nodes), batch 1, seeds {args.seeds}. "
        f"learned/fgd-equivalent: mean GPU allocation % at 130% arrived demand in the same runs; "
        f"published_fgd: mean of the FGD authors' 10 seeds (different random generator). "
        f"Train lists: {', '.join(TRAIN_WORKLOADS)}; test lists (never used in training): {', '.join(TEST_WORKLOADS)}. "
        f"Policy.decide on a core snapshot of the full cluster (snapshot to arrays included): median "
        f"{decide_us:.0f} us over the first {len(latency)} pods of default/seed 42."
    )
    write_results("learned_fgd", records, summary, command="python -m bench learned " + " ".join(argv), notes=notes)
    print(notes)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
