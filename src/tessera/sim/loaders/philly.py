"""Philly-style job lists: CSV rows of (submit time, duration, GPUs).

Accepts the common spellings of the three columns, so it reads the Sia artifact's
``philly.csv`` (``timestamp, duration, num_gpus, gpu_time, cluster``, timestamps as
``2017-10-09 07:01:55``), Gavel's ``philly_job_distribution`` CSV (``duration_s, num_gpus``,
no time column: every job arrives at 0 unless arrivals are generated) and plain
``time, duration, gpus`` lists with times in seconds.  Submit times are made relative
to the earliest job.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from tessera.core import AcceleratorOption, ReplicaDemand, Workload, WorkloadKind
from tessera.sim.loaders.errors import TraceFormatError
from tessera.sim.models import SimWorkload, ThroughputModel

TIME_COLUMNS = ("timestamp", "time", "submit_time", "submitted_time", "arrival_time", "arrival")
DURATION_COLUMNS = ("duration", "duration_s", "duration_seconds", "runtime", "run_time")
GPU_COLUMNS = ("num_gpus", "gpus", "gpu_num", "num_gpu")


@dataclass(frozen=True, slots=True)
class PhillyJob:
    submit_seconds: float
    duration_seconds: float
    gpus: int
    cluster: str = ""


@dataclass(frozen=True, slots=True)
class PhillyTrace:
    jobs: tuple[PhillyJob, ...]
    #: rows not turned into jobs, by reason (e.g. zero GPUs), never silently dropped
    skipped: dict[str, int]


def _pick(path: Path, header: Sequence[str], names: Sequence[str], what: str, required: bool) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    for name in names:
        if name in lowered:
            return lowered[name]
    if required:
        raise TraceFormatError(path, 1, None, f"a {what} column (one of {', '.join(names)})", list(header))
    return None


def _time(path: Path, line: int, column: str, text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise TraceFormatError(path, line, column, "seconds or a time like 2017-10-09 07:01:55", text)


def load(path: str | Path, *, skip_zero_gpu: bool = True) -> PhillyTrace:
    """Read a Philly-style CSV. Jobs asking for 0 GPUs are skipped and counted (``skip_zero_gpu``)."""
    path = Path(path)
    rows: list[tuple[float, float, int, str]] = []
    skipped: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(path, 1, None, "a header row", "an empty file")
        time_col = _pick(path, header, TIME_COLUMNS, "submit time", required=False)
        duration_col = _pick(path, header, DURATION_COLUMNS, "duration", required=True)
        gpu_col = _pick(path, header, GPU_COLUMNS, "GPU count", required=True)
        cluster_col = _pick(path, header, ("cluster", "vc"), "cluster", required=False)
        index = {h: i for i, h in enumerate(header)}
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise TraceFormatError(path, line_no, None, f"{len(header)} comma-separated fields", f"{len(row)} fields")
            assert duration_col is not None and gpu_col is not None
            submit = _time(path, line_no, time_col, row[index[time_col]]) if time_col else 0.0
            try:
                duration = float(row[index[duration_col]])
            except ValueError:
                raise TraceFormatError(path, line_no, duration_col, "a duration in seconds", row[index[duration_col]]) from None
            if duration < 0:
                raise TraceFormatError(path, line_no, duration_col, "a non-negative duration", row[index[duration_col]])
            try:
                gpus = int(float(row[index[gpu_col]]))
            except ValueError:
                raise TraceFormatError(path, line_no, gpu_col, "an integer GPU count", row[index[gpu_col]]) from None
            if gpus < 0:
                raise TraceFormatError(path, line_no, gpu_col, "a non-negative GPU count", row[index[gpu_col]])
            if gpus == 0 and skip_zero_gpu:
                skipped["zero GPUs"] = skipped.get("zero GPUs", 0) + 1
                continue
            if duration == 0:
                skipped["zero duration"] = skipped.get("zero duration", 0) + 1
                continue
            rows.append((submit, duration, gpus, row[index[cluster_col]] if cluster_col else ""))
    origin = min((r[0] for r in rows), default=0.0)
    jobs = tuple(PhillyJob(s - origin, d, g, c) for s, d, g, c in sorted(rows, key=lambda r: r[0]))
    return PhillyTrace(jobs, skipped)


_MODELS: dict[int, ThroughputModel] = {}


def _model(gpus: int) -> ThroughputModel:
    # one shared model per GPU count: a whole gang of ``gpus`` replicas makes 1 unit of progress per second
    model = _MODELS.get(gpus)
    if model is None:
        model = _MODELS[gpus] = ThroughputModel({}, default_per_replica=1.0 / gpus)
    return model


def job_workload(
    key: str,
    submit_seconds: float,
    duration_seconds: float,
    gpus: int,
    *,
    accelerator_types: Sequence[str] = (),
    restart_cost_seconds: float = 60.0,
) -> SimWorkload:
    """A Philly job as a gang of ``gpus`` single-GPU replicas whose work is its duration.

    Philly records no GPU model, so the job runs equally fast on every allowed type.
    """
    workload = Workload(
        key=key,
        kind=WorkloadKind.TRAINING,
        demand=ReplicaDemand(accelerators=1),
        min_replicas=gpus,
        max_replicas=gpus,
        options=tuple(AcceleratorOption(t, 1.0) for t in accelerator_types),
        submitted_at_seconds=submit_seconds,
        restart_cost_seconds=restart_cost_seconds,
        attributes=MappingProxyType({}),
    )
    return SimWorkload(workload, _model(gpus), work=duration_seconds, reference_duration_seconds=duration_seconds)


def trace_workloads(trace: PhillyTrace, **kw: object) -> list[SimWorkload]:
    return [
        job_workload(f"philly-{i:06d}", j.submit_seconds, j.duration_seconds, j.gpus, **kw)  # type: ignore[arg-type]
        for i, j in enumerate(trace.jobs)
    ]
