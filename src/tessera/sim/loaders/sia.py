"""Sia (SOSP'23): job-arrival workloads and per-GPU-type profiles.

Workloads (``workloads/<set>/workload-N.csv``): ``name, time, application,
num_replicas, batch_size``.  Profiles (``traces/<application>/``):
``scalability-<gpu>.csv`` (``num_nodes, num_replicas, local_bsz, step_time,
sync_time``) per GPU type, and ``validation-<global batch>.csv`` (``progress,
iteration, metric, ...``) whose last row is where training reaches its target.

Model (ours, simpler than Sia's goodput model): the throughput of ``n`` replicas on a
type is the best measured ``n * local_bsz / step_time`` samples/s among rows with
``n`` replicas (per-replica rate x linear scaling from the nearest measured count when
``n`` was not profiled); the work of a job is the samples its validation curve needs
(``iteration x batch size`` of the last row of the batch size closest to the job's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from tessera.core import AcceleratorOption, ReplicaDemand, Workload, WorkloadKind
from tessera.sim.loaders import _csv
from tessera.sim.loaders.errors import TraceFormatError
from tessera.sim.models import SimWorkload, ThroughputModel

#: file suffix -> accelerator type (from the Sia artifact's README)
GPU_TYPES = {
    "aws": "T4",
    "azure": "V100",
    "dgx": "A100",
    "dgx-ext": "A100",
    "quad": "RTX6000",
    "rtx": "RTX2080Ti",
}


@dataclass(frozen=True, slots=True)
class SiaJob:
    name: str
    submit_seconds: float
    application: str
    num_replicas: int
    batch_size: int


def load_workload(path: str | Path) -> list[SiaJob]:
    path = Path(path)
    jobs = []
    for line, row in _csv.rows(path, ("name", "time", "application", "num_replicas", "batch_size")):
        if not row["name"].strip():
            raise TraceFormatError(path, line, "name", "a job name", row["name"])
        jobs.append(
            SiaJob(
                row["name"].strip(),
                _csv.number(path, line, row, "time"),
                row["application"].strip(),
                _csv.integer(path, line, row, "num_replicas", minimum=1),
                _csv.integer(path, line, row, "batch_size", minimum=1),
            )
        )
    return jobs


@dataclass(frozen=True, slots=True)
class SiaProfile:
    """One application's measured throughput per (GPU type, replicas) and samples to target per batch size."""

    application: str
    #: (accelerator type, replicas) -> samples/s
    throughput: Mapping[tuple[str, int], float]
    #: global batch size -> samples to reach the validation target
    samples_to_target: Mapping[int, float]
    #: profile files not read (no known GPU suffix), never silently
    skipped_files: tuple[str, ...] = field(default=())

    def rate(self, accelerator_type: str, replicas: int) -> float | None:
        exact = self.throughput.get((accelerator_type, replicas))
        if exact is not None:
            return exact
        measured = [(n, v) for (t, n), v in self.throughput.items() if t == accelerator_type]
        if not measured:
            return None
        n, value = min(measured, key=lambda p: (abs(p[0] - replicas), p[0]))
        return value / n * replicas

    def work(self, batch_size: int) -> float:
        size = min(self.samples_to_target, key=lambda b: (abs(b - batch_size), b))
        return self.samples_to_target[size]


def load_profile(folder: str | Path) -> SiaProfile:
    folder = Path(folder)
    if not folder.is_dir():
        raise TraceFormatError(folder, None, None, "a folder of scalability-*.csv and validation-*.csv files", "no such folder")
    throughput: dict[tuple[str, int], float] = {}
    skipped: list[str] = []
    for path in sorted(folder.glob("scalability*.csv")):
        suffix = path.stem.partition("-")[2]
        accelerator_type = GPU_TYPES.get(suffix)
        if accelerator_type is None:
            skipped.append(path.name)
            continue
        for line, row in _csv.rows(path, ("num_nodes", "num_replicas", "local_bsz", "step_time")):
            n = _csv.integer(path, line, row, "num_replicas", minimum=1)
            step = _csv.number(path, line, row, "step_time")
            if step <= 0:
                raise TraceFormatError(path, line, "step_time", "a positive step time in seconds", row["step_time"])
            value = n * _csv.number(path, line, row, "local_bsz") / step
            throughput[(accelerator_type, n)] = max(throughput.get((accelerator_type, n), 0.0), value)
    samples: dict[int, float] = {}
    for path in sorted(folder.glob("validation-*.csv")):
        try:
            batch = int(path.stem.partition("-")[2])
        except ValueError:
            skipped.append(path.name)
            continue
        last: float | None = None
        for line, row in _csv.rows(path, ("progress", "iteration")):
            last = _csv.number(path, line, row, "iteration")
        if last is not None:
            samples[batch] = last * batch
    if not throughput:
        raise TraceFormatError(folder, None, None, "at least one scalability-<gpu>.csv with a known GPU suffix", skipped)
    if not samples:
        raise TraceFormatError(folder, None, None, "at least one validation-<batch>.csv", "none")
    return SiaProfile(folder.name, MappingProxyType(throughput), MappingProxyType(samples), tuple(skipped))


def job_workload(
    job: SiaJob, profile: SiaProfile, *, restart_cost_seconds: float = 30.0, adaptive: bool = False,
    max_factor: float = 2.0,
) -> SimWorkload:
    """A Sia job: ``num_replicas`` single-GPU replicas on any profiled type (rigid), or,
    ``adaptive``, any count from 1 to ``max_factor x num_replicas`` (desired: ``num_replicas``),
    with the profile's throughput at every count in the workload's options
    (``gang_throughput``) and the simulator's table.  Sia's jobs have no fixed GPU count (the
    trace's count is what non-adaptive schedulers run); the cap keeps the model's choices
    within what the profiles measured."""
    types = sorted({t for t, _ in profile.throughput})
    table = {}
    options = []
    top = max(job.num_replicas, int(job.num_replicas * max_factor))
    counts = range(1, top + 1) if adaptive else (job.num_replicas,)
    for t in types:
        rate = profile.rate(t, job.num_replicas)
        if rate:
            # no speedup assumed beyond the largest count profiled on the type (the
            # profile's linear extrapolation would be optimistic there)
            largest = max(max(n for (u, n) in profile.throughput if u == t), job.num_replicas)
            for n in counts:
                table[(t, n)] = profile.rate(t, min(n, largest)) or 0.0
            # an adaptive job's scheduler also gets the profile at every count (as Sia
            # profiles each job per type and count); a rigid job's only at its own count
            measured = tuple((n, table[(t, n)]) for n in counts) if adaptive else ()
            options.append(AcceleratorOption(t, rate / job.num_replicas, measured))
    workload = Workload(
        key=job.name,
        kind=WorkloadKind.TRAINING,
        demand=ReplicaDemand(accelerators=1),
        min_replicas=1 if adaptive else job.num_replicas,
        max_replicas=top if adaptive else job.num_replicas,
        desired_replicas=job.num_replicas if adaptive else None,
        options=tuple(options),
        submitted_at_seconds=job.submit_seconds,
        restart_cost_seconds=restart_cost_seconds,
        attributes=MappingProxyType({"application": job.application, "batch_size": str(job.batch_size)}),
    )
    return SimWorkload(
        workload,
        ThroughputModel({o.accelerator_type: o.throughput for o in options}, table=table),
        work=profile.work(job.batch_size),
    )


def workloads(
    workload_csv: str | Path, profiles_dir: str | Path, *, adaptive: bool = False, max_factor: float = 2.0
) -> list[SimWorkload]:
    """Every job of a Sia workload file, with its application's profile from ``profiles_dir``."""
    jobs = load_workload(workload_csv)
    profiles: dict[str, SiaProfile] = {}
    out = []
    for job in jobs:
        if job.application not in profiles:
            profiles[job.application] = load_profile(Path(profiles_dir) / job.application)
        out.append(job_workload(job, profiles[job.application], adaptive=adaptive, max_factor=max_factor))
    return out
