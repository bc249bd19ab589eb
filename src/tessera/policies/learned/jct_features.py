"""Features of the learned JCT dispatcher (``learned-jct``), shared by training and serving.

The dispatcher makes two kinds of choices for training gangs on a cluster of several
accelerator types (Gavel's setting: V100, P100, K80 with per-model throughputs):

* **queue order**: which waiting job is considered first (:data:`QUEUE_FEATURES`, one row per
  waiting job, lowest score first after priority);
* **type choice**: on which accelerator type with room a job starts, or whether it waits for
  a faster type (:data:`TYPE_FEATURES`, one row per (job, type with room); the lowest score
  wins and the job waits when even that score is above zero);
* **upgrade**: whether a running job moves to a faster type that has room, paying its
  restart cost (:data:`MOVE_FEATURES`, one row per (running job, faster type with room);
  it moves when the lowest score is below zero).

Nothing here knows a job's duration: only what the operator also knows (arrival time,
gang size, per-type throughput from the spec, free room per type, the queue).  Training
(:mod:`tessera.sim.train_jct`) drives the very policy that serves, so both compute these
rows with these functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.core import Workload

#: bump when a feature's meaning changes: artifacts trained on another version are refused
JCT_FEATURE_VERSION = "1"

QUEUE_FEATURES: tuple[str, ...] = (
    "wait_hours",            # now - submission, hours (FIFO = weight -1)
    "log2_gang_gpus",        # log2 of accelerators the gang needs
    "log2_speedup",          # log2(best / worst throughput over the allowed types present)
    "best_type_room",        # free share of the job's fastest type (can it start fast right now?)
)

TYPE_FEATURES: tuple[str, ...] = (
    "bias",                  # 1: with the others at 0, the threshold above which a job waits
    "slowdown",              # 1 - throughput on this type / best throughput
    "slowdown_x_wait",       # slowdown x min(wait, 24 h) / 24 h: long waits accept slower types
    "gang_share",            # accelerators of the gang / accelerators of the type
    "room_left_share",       # free share of the type left after this gang
    "queue_pressure",        # accelerators waiting jobs want on this type (their fastest) / type size
)

MOVE_FEATURES: tuple[str, ...] = (
    "bias",                  # 1: the threshold (start weights: never move)
    "speed_gain",            # 1 - throughput now / throughput on the faster type
    "run_share",             # min(time in this placement, 24 h) / 24 h
    "gang_share",            # accelerators of the gang / accelerators of the faster type
    "queue_pressure",        # waiting demand for the faster type (as in TYPE_FEATURES)
)

#: cap of the wait interaction, hours
_WAIT_CAP_HOURS = 24.0


@dataclass(frozen=True, slots=True)
class TypeState:
    """Free and total accelerators per type at the start of a decision (whole devices)."""

    free: Mapping[str, float]
    total: Mapping[str, float]


def throughputs(workload: Workload, present: Sequence[str]) -> dict[str, float]:
    """Throughput per allowed type present in the cluster (1.0 for a type without an option)."""
    return {t: workload.throughput_on(t) or 0.0 for t in present if workload.allows(t)}


def gang_gpus(workload: Workload) -> float:
    """Whole accelerators a gang needs at its minimum size."""
    return workload.gang_min * workload.demand.accelerator_milli / 1000.0


def fastest_type(rates: Mapping[str, float]) -> str | None:
    """The allowed type with the highest throughput (name order on ties), None when nothing is allowed."""
    return min(rates, key=lambda t: (-rates[t], t)) if rates else None


@dataclass(frozen=True, slots=True)
class JobStatics:
    """What a job's features need that does not change while it waits (cached per job by the policy)."""

    rates: Mapping[str, float]
    gang_gpus: float
    fastest: str | None
    log2_gang_gpus: float
    log2_speedup: float


def job_statics(workload: Workload, present: Sequence[str]) -> JobStatics:
    rates = throughputs(workload, present)
    positive = [r for r in rates.values() if r > 0]
    speedup = max(positive) / min(positive) if positive else 1.0
    gang = gang_gpus(workload)
    return JobStatics(rates, gang, fastest_type(rates), math.log2(max(gang, 1.0)), math.log2(speedup))


def queue_rows(
    statics: Sequence[JobStatics], submitted_seconds: Sequence[float], now_seconds: float, types: TypeState,
) -> npt.NDArray[np.float64]:
    """The :data:`QUEUE_FEATURES` of the waiting jobs, one row each."""
    room = {t: types.free.get(t, 0.0) / n if n else 0.0 for t, n in types.total.items()}
    out = np.empty((len(statics), len(QUEUE_FEATURES)))
    out[:, 0] = np.maximum(0.0, now_seconds - np.asarray(submitted_seconds, dtype=np.float64)) / 3600.0
    out[:, 1] = [j.log2_gang_gpus for j in statics]
    out[:, 2] = [j.log2_speedup for j in statics]
    out[:, 3] = [room.get(j.fastest, 0.0) if j.fastest is not None else 0.0 for j in statics]
    return out


def move_row(
    job: JobStatics, source: str, target: str, run_seconds: float, total: float, pressure: float,
) -> tuple[float, ...]:
    """The :data:`MOVE_FEATURES` of moving a running job from ``source`` to the faster ``target``."""
    gain = 1.0 - job.rates[source] / job.rates[target] if job.rates.get(target, 0.0) > 0 else 0.0
    run = min(max(0.0, run_seconds) / 3600.0, _WAIT_CAP_HOURS) / _WAIT_CAP_HOURS
    return (1.0, gain, run, job.gang_gpus / total, pressure)


def queue_pressure(statics: Sequence[JobStatics], types: TypeState) -> dict[str, float]:
    """Accelerators the waiting jobs want on each type (their fastest one), per accelerator of the type."""
    want = dict.fromkeys(types.total, 0.0)
    for j in statics:
        if j.fastest is not None and j.fastest in want:
            want[j.fastest] += j.gang_gpus
    return {t: want[t] / types.total[t] if types.total[t] else 0.0 for t in want}


def type_row(
    job: JobStatics, accelerator_type: str, wait_seconds: float, free: float, total: float, pressure: float,
) -> tuple[float, ...]:
    """The :data:`TYPE_FEATURES` of starting a job that has waited ``wait_seconds`` on ``accelerator_type`` now."""
    best = job.rates[job.fastest] if job.fastest is not None else 0.0
    slowdown = 1.0 - job.rates[accelerator_type] / best if best > 0 else 0.0
    wait = min(max(0.0, wait_seconds) / 3600.0, _WAIT_CAP_HOURS) / _WAIT_CAP_HOURS
    need = job.gang_gpus
    return (1.0, slowdown, slowdown * wait, need / total, (free - need) / total, pressure)


__all__ = [
    "JCT_FEATURE_VERSION",
    "MOVE_FEATURES",
    "QUEUE_FEATURES",
    "TYPE_FEATURES",
    "JobStatics",
    "TypeState",
    "fastest_type",
    "gang_gpus",
    "job_statics",
    "move_row",
    "queue_pressure",
    "queue_rows",
    "throughputs",
    "type_row",
]
