"""Gavel (OSDI'20): the throughput JSON and the job traces.

Throughputs (``simulation_throughputs.json``): ``{worker_type: {"('<job type>', <scale
factor>)": {"null": <isolated iterations/s>, "(<other job>)": [...co-located...]}}}``.
Only isolated throughputs are read; ``*_unconsolidated`` worker types are skipped and
counted.  Traces are tab-separated: 7 fields (Philly-derived ``traces/msr``: job_type,
command, num_steps_arg, needs_data_dir, total_steps, arrival_time, scale_factor) or 10
(``traces/physical_cluster``: job_type, command, working_directory, num_steps_arg,
needs_data_dir, total_steps, scale_factor, priority_weight, SLO, arrival_time).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from tessera.core import AcceleratorOption, ReplicaDemand, Workload, WorkloadKind
from tessera.sim.loaders.errors import TraceFormatError
from tessera.sim.models import SimWorkload, ThroughputModel

_KEY = re.compile(r"^\('(?P<job>.+)', (?P<scale>\d+)\)$")

#: Gavel's worker-type names -> Tessera accelerator types
WORKER_TYPES = {"v100": "V100", "p100": "P100", "k80": "K80"}


@dataclass(frozen=True, slots=True)
class GavelThroughputs:
    """Isolated throughput (iterations/s) per accelerator type and (job type, scale factor)."""

    by_type: Mapping[str, Mapping[tuple[str, int], float]]
    #: worker-type keys that were not read (e.g. ``v100_unconsolidated``), with a count of entries
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def job_types(self) -> list[str]:
        names = {job for table in self.by_type.values() for job, _ in table}
        return sorted(names)

    def throughput(self, accelerator_type: str, job_type: str, scale_factor: int) -> float | None:
        return self.by_type.get(accelerator_type, {}).get((job_type, scale_factor))

    def scale_factors(self, job_type: str, reference_type: str = "V100") -> list[int]:
        return sorted(sf for job, sf in self.by_type.get(reference_type, {}) if job == job_type)


def load_throughputs(path: str | Path) -> GavelThroughputs:
    """Read Gavel's throughput JSON (isolated throughputs only)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TraceFormatError(path, err.lineno, f"char {err.colno}", "valid JSON", err.msg) from err
    if not isinstance(raw, dict):
        raise TraceFormatError(path, None, None, "a JSON object keyed by worker type", type(raw).__name__)
    by_type: dict[str, dict[tuple[str, int], float]] = {}
    skipped: dict[str, int] = {}
    for worker, table in raw.items():
        if worker not in WORKER_TYPES and "_" in worker:
            skipped[worker] = len(table) if isinstance(table, dict) else 1
            continue
        accelerator_type = WORKER_TYPES.get(worker, worker.upper())
        if not isinstance(table, dict):
            raise TraceFormatError(path, None, worker, "an object of job-type keys", type(table).__name__)
        parsed: dict[tuple[str, int], float] = {}
        for key, entry in table.items():
            match = _KEY.match(key)
            if not match:
                raise TraceFormatError(path, None, f"{worker}/{key}", "a key like \"('ResNet-50 (batch size 64)', 1)\"", key)
            if not isinstance(entry, dict) or "null" not in entry:
                raise TraceFormatError(path, None, f"{worker}/{key}", "an object with an isolated 'null' throughput", entry)
            value = entry["null"]
            if not isinstance(value, int | float) or value < 0:
                raise TraceFormatError(path, None, f"{worker}/{key}/null", "a non-negative number", value)
            parsed[(match["job"], int(match["scale"]))] = float(value)
        by_type[accelerator_type] = parsed
    if not by_type:
        raise TraceFormatError(path, None, None, "at least one worker type (v100, p100, k80)", list(raw))
    return GavelThroughputs(
        MappingProxyType({t: MappingProxyType(v) for t, v in by_type.items()}), MappingProxyType(skipped)
    )


@dataclass(frozen=True, slots=True)
class GavelJob:
    """One job of a Gavel trace."""

    job_type: str
    total_steps: float
    arrival_seconds: float
    scale_factor: int = 1
    priority_weight: float = 1.0
    slo: float | None = None
    command: str = ""


def _number(path: Path, line: int, column: str, text: str, *, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise TraceFormatError(path, line, column, "an integer" if integer else "a number", text) from None
    if value < 0:
        raise TraceFormatError(path, line, column, "a non-negative value", text)
    return value


def load_trace(path: str | Path) -> list[GavelJob]:
    """Read a Gavel job trace (7-field Philly-derived or 10-field physical-cluster format)."""
    path = Path(path)
    jobs: list[GavelJob] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) == 7:
                job_type, command, _arg, _data, steps, arrival, scale = fields
                jobs.append(
                    GavelJob(
                        job_type,
                        _number(path, line_no, "total_steps", steps),
                        _number(path, line_no, "arrival_time", arrival),
                        int(_number(path, line_no, "scale_factor", scale, integer=True)),
                        command=command,
                    )
                )
            elif len(fields) == 10:
                job_type, command, _wd, _arg, _data, steps, scale, weight, slo, arrival = fields
                jobs.append(
                    GavelJob(
                        job_type,
                        _number(path, line_no, "total_steps", steps),
                        _number(path, line_no, "arrival_time", arrival),
                        int(_number(path, line_no, "scale_factor", scale, integer=True)),
                        _number(path, line_no, "priority_weight", weight),
                        None if slo in ("", "None", "-1") else _number(path, line_no, "SLO", slo),
                        command,
                    )
                )
            else:
                raise TraceFormatError(
                    path, line_no, None, "7 tab-separated fields (msr trace) or 10 (physical-cluster trace)", f"{len(fields)} fields"
                )
    return jobs


def job_workload(
    key: str,
    job_type: str,
    scale_factor: int,
    total_steps: float,
    arrival_seconds: float,
    throughputs: GavelThroughputs,
    *,
    restart_cost_seconds: float = 30.0,
    reference_type: str = "V100",
    priority: int = 0,
    derive_missing: bool = False,
) -> SimWorkload:
    """A Gavel job as a simulated gang of ``scale_factor`` single-accelerator replicas.

    Progress rate on a type is Gavel's measured throughput for (job type, scale factor)
    on that type; types without a measurement are not allowed.  With ``derive_missing``
    a scale factor that was never measured gets the 1-GPU throughput x scale factor.
    """
    table: dict[tuple[str, int], float] = {}
    options = []
    for accelerator_type, rates in throughputs.by_type.items():
        value = rates.get((job_type, scale_factor))
        if value is None and derive_missing:
            single = rates.get((job_type, 1))
            value = single * scale_factor if single else None
        if value is None or value <= 0:
            continue
        table[(accelerator_type, scale_factor)] = value
        options.append(AcceleratorOption(accelerator_type, value / scale_factor))
    if not options:
        raise ValueError(f"no throughput for job type {job_type!r} at scale factor {scale_factor}")
    options.sort(key=lambda o: o.accelerator_type)
    workload = Workload(
        key=key,
        kind=WorkloadKind.TRAINING,
        demand=ReplicaDemand(accelerators=1),
        min_replicas=scale_factor,
        max_replicas=scale_factor,
        options=tuple(options),
        priority=priority,
        submitted_at_seconds=arrival_seconds,
        restart_cost_seconds=restart_cost_seconds,
        attributes=MappingProxyType({"job_type": job_type}),
    )
    per_replica = {o.accelerator_type: o.throughput for o in options}
    reference = table.get((reference_type, scale_factor))
    return SimWorkload(
        workload,
        ThroughputModel(per_replica, table=table),
        work=total_steps,
        reference_duration_seconds=total_steps / reference if reference else None,
    )


def trace_workloads(
    jobs: Sequence[GavelJob], throughputs: GavelThroughputs, *, restart_cost_seconds: float = 30.0
) -> tuple[list[SimWorkload], dict[str, int]]:
    """Simulated workloads of a Gavel trace, and how many needed a derived throughput.

    Gavel's published traces contain (job type, scale factor) pairs its throughput file
    never measured (e.g. Recommendation at 4 GPUs); those get the 1-GPU throughput x scale
    factor (linear scaling) and are counted per ``"<job type> x<scale>"``.  A job type with
    no throughput at all raises ``ValueError``.
    """
    derived: dict[str, int] = {}
    out = []
    for i, j in enumerate(jobs):
        measured = throughputs.throughput("V100", j.job_type, j.scale_factor) is not None
        if not measured:
            label = f"{j.job_type} x{j.scale_factor}"
            derived[label] = derived.get(label, 0) + 1
        out.append(
            job_workload(
                f"job-{i:06d}", j.job_type, j.scale_factor, j.total_steps, j.arrival_seconds, throughputs,
                restart_cost_seconds=restart_cost_seconds, derive_missing=not measured,
            )
        )
    return out, derived


def typed_jobs(
    jobs: Sequence[tuple[float, float, int]],
    throughputs: GavelThroughputs,
    *,
    seed: int,
    key_prefix: str = "philly",
    reference_type: str = "V100",
    restart_cost_seconds: float = 30.0,
) -> tuple[list[SimWorkload], dict[str, int]]:
    """Jobs known only by (submit seconds, duration seconds, GPUs), e.g. Philly's, each given
    a Gavel job type and so a measured speed on every type, as Gavel builds its traces.

    The job type is drawn uniformly (``random.Random(seed)``, one draw per job in order)
    among the types measured on ``reference_type`` at the job's GPU count; the trace's
    duration is taken as the run time on ``reference_type`` (Gavel's convention), so the
    job's work is duration x that throughput and it runs faster or slower elsewhere as
    measured.  A GPU count no type was measured at (e.g. 16) draws among the 1-GPU types
    and scales their 1-GPU throughput linearly; those are counted per GPU count.
    """
    rng = random.Random(seed)
    measured_at: dict[int, list[str]] = {}
    for job_type, scale in throughputs.by_type.get(reference_type, {}):
        measured_at.setdefault(scale, []).append(job_type)
    for names in measured_at.values():
        names.sort()
    if 1 not in measured_at:
        raise ValueError(f"no 1-GPU throughput on {reference_type} to draw job types from")
    derived: dict[str, int] = {}
    out = []
    for i, (submit, duration, gpus) in enumerate(jobs):
        measured = gpus in measured_at
        job_type = rng.choice(measured_at[gpus] if measured else measured_at[1])
        rate = throughputs.throughput(reference_type, job_type, gpus) if measured else None
        if rate is None:
            derived[f"{gpus} GPUs"] = derived.get(f"{gpus} GPUs", 0) + 1
            rate = (throughputs.throughput(reference_type, job_type, 1) or 0.0) * gpus
        out.append(job_workload(
            f"{key_prefix}-{i:06d}", job_type, gpus, duration * rate, submit, throughputs,
            restart_cost_seconds=restart_cost_seconds, reference_type=reference_type, derive_missing=not measured,
        ))
    return out, derived
