"""A small event-driven queue environment for *training* the deadline-aware ordering.

Jobs come from Gavel's Philly-derived traces (``gavel/traces/msr/seed=N/<vc>.trace``): arrival
time, GPUs (scale factor, jobs above one 8-GPU node dropped) and duration = total steps /
isolated V100 throughput (``simulation_throughputs.json``; for a (job, scale) pair missing there,
the 1-GPU throughput x scale x 0.8). Deadlines are drawn per job as arrival + U(1.2, 3.0) x
duration with the trace seed (no public trace carries deadlines; this is the usual construction).

The cluster is a set of 8-GPU nodes sized so that the window's offered load is ~90% of capacity (at least two nodes).
At every arrival and completion the queue is ordered (by the scorer, or a baseline key) and each
job in turn starts on the fullest node with room (best fit; later jobs may backfill). Jobs are not
preempted. Outputs: tardy jobs and total tardiness.

The ordering features come from :func:`tessera.policies.learned.features.ordering_matrix`, the
function the serving policy uses.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tessera.policies.learned.features import ordering_matrix

GPUS_PER_NODE = 8
#: order(now, queue rows) -> queue rows in dispatch order
OrderFn = Callable[[float, "Jobs", npt.NDArray[np.int64]], npt.NDArray[np.int64]]


@dataclass(frozen=True, slots=True)
class Jobs:
    arrival: npt.NDArray[np.float64]
    duration: npt.NDArray[np.float64]
    gpus: npt.NDArray[np.int64]
    deadline: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.arrival)


@dataclass(frozen=True, slots=True)
class DeadlineEpisode:
    name: str
    jobs: Jobs
    nodes: int


@dataclass(frozen=True, slots=True)
class DeadlineResult:
    jobs: int
    tardy: int
    total_tardiness_hours: float
    mean_jct_hours: float

    @property
    def on_time_share(self) -> float:
        return 1.0 - self.tardy / max(self.jobs, 1)


def _throughput(table: dict[str, dict[str, object]], job: str, scale: int) -> float:
    entry = table.get(str((job, scale)))
    if entry is not None:
        return float(entry["null"])  # type: ignore[arg-type]
    return float(table[str((job, 1))]["null"]) * scale * 0.8  # type: ignore[arg-type]


def read_gavel_episode(trace: Path, throughputs: Path, seed: int, max_jobs: int = 120,
                       load: float = 0.9) -> DeadlineEpisode:
    """The first ``max_jobs`` jobs (of at most 8 GPUs) of one Gavel trace, with drawn deadlines."""
    table = json.loads(throughputs.read_text())["v100"]
    rows = [line.rstrip("\n").split("\t") for line in trace.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if int(r[6]) <= GPUS_PER_NODE][:max_jobs]
    arrival = np.array([float(r[5]) for r in rows])
    arrival -= arrival.min()
    gpus = np.array([int(r[6]) for r in rows], dtype=np.int64)
    duration = np.array([float(r[4]) / _throughput(table, r[0], int(r[6])) for r in rows])
    rng = random.Random(f"{seed}/{trace.stem}")
    deadline = arrival + duration * np.array([rng.uniform(1.2, 3.0) for _ in rows])
    window = arrival.max() + float(np.median(duration))
    nodes = max(2, round(float((duration * gpus).sum()) / window / load / GPUS_PER_NODE))
    return DeadlineEpisode(f"seed={seed}/{trace.stem}", Jobs(arrival, duration, gpus, deadline), nodes)


def gavel_episodes(data: Path, seeds: Sequence[int], per_seed: int = 3, min_jobs: int = 120) -> list[DeadlineEpisode]:
    """``per_seed`` traces per Gavel seed (those with at least ``min_jobs`` jobs, in name order)."""
    out = []
    throughputs = data / "gavel" / "simulation_throughputs.json"
    for seed in seeds:
        traces = sorted((data / "gavel" / "traces" / "msr" / f"seed={seed}").glob("*.trace"))
        big = [t for t in traces if sum(1 for _ in t.open()) >= min_jobs][:per_seed]
        out += [read_gavel_episode(t, throughputs, seed, max_jobs=min_jobs) for t in big]
    return out


def simulate(episode: DeadlineEpisode, order: OrderFn) -> DeadlineResult:
    """Run the episode under ``order``; deterministic."""
    jobs = episode.jobs
    free = np.full(episode.nodes, GPUS_PER_NODE, dtype=np.int64)
    events: list[tuple[float, int, int, int]] = []  # (time, kind 0=finish 1=arrive, job, node)
    for j in range(len(jobs)):
        heapq.heappush(events, (float(jobs.arrival[j]), 1, j, -1))
    queue: list[int] = []
    finish = np.zeros(len(jobs))
    while events:
        now = events[0][0]
        while events and events[0][0] == now:  # every event at this instant, then one dispatch
            _, kind, j, node = heapq.heappop(events)
            if kind == 1:
                queue.append(j)
            else:
                free[node] += jobs.gpus[j]
        if not queue:
            continue
        started = []
        for j in order(now, jobs, np.array(queue, dtype=np.int64)):
            room = np.flatnonzero(free >= jobs.gpus[j])
            if not len(room):
                continue
            node = int(room[np.argmin(free[room])])  # best fit, lowest index on ties
            free[node] -= jobs.gpus[j]
            finish[j] = now + jobs.duration[j]
            heapq.heappush(events, (float(finish[j]), 0, int(j), node))
            started.append(int(j))
        if started:
            gone = set(started)
            queue = [j for j in queue if j not in gone]
    late = np.maximum(finish - jobs.deadline, 0.0)
    return DeadlineResult(len(jobs), int((late > 1e-9).sum()), float(late.sum() / 3_600.0),
                          float((finish - jobs.arrival).mean() / 3_600.0))


def features_for(now: float, jobs: Jobs, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The serving policy's ordering features for the queued ``rows``."""
    return ordering_matrix(now, jobs.deadline[rows], jobs.duration[rows], jobs.arrival[rows],
                           jobs.gpus[rows].astype(np.float64), np.zeros(len(rows)))


def scored_order(score: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]) -> OrderFn:
    """Lowest score first; ties by arrival then index (a total order)."""
    def order(now: float, jobs: Jobs, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        s = score(features_for(now, jobs, rows))
        return rows[np.lexsort((rows, jobs.arrival[rows], s))]
    return order


def edd_order(now: float, jobs: Jobs, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Earliest deadline first (as :func:`tessera.policies.ordering.edd_key`)."""
    return rows[np.lexsort((rows, jobs.arrival[rows], jobs.deadline[rows]))]


def mdd_order(now: float, jobs: Jobs, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Smallest max(deadline, now + remaining) first (as :func:`tessera.policies.ordering.mdd_key`)."""
    finish = now + jobs.duration[rows]
    return rows[np.lexsort((rows, jobs.arrival[rows], finish, np.maximum(jobs.deadline[rows], finish)))]
