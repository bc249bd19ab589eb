"""Figures of one simulated run: JCT percentiles, makespan, utilization, SLO attainment."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tessera.core import MILLI_PER_DEVICE
from tessera.sim.simulator import DONE, Simulator


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(sim: Simulator, *, measure_keys: frozenset[str] | None = None) -> dict[str, Any]:
    """One record of a run. ``measure_keys`` restricts JCT figures to those jobs (a measurement window)."""
    training = [j for j in sim.jobs.values() if not j.is_service]
    done = [j for j in training if j.state == DONE and j.finish is not None]
    measured = [j for j in done if measure_keys is None or j.key in measure_keys]
    jct = [j.finish - j.arrival for j in measured if j.finish is not None]
    waits = [
        (j.first_start if j.first_start is not None else sim.end_seconds) - j.arrival
        for j in training
        if measure_keys is None or j.key in measure_keys
    ]
    services = [j for j in sim.jobs.values() if j.is_service]
    offered = sum(j.offered for j in services)
    served = sum(j.served for j in services)
    utilization = {
        t: (sim.busy_milli_seconds[t] / cap if cap > 0 else 0.0) for t, cap in sorted(sim.capacity_milli_seconds.items())
    }
    device_hours = {t: sim.busy_milli_seconds[t] / MILLI_PER_DEVICE / 3600.0 for t in sorted(sim.busy_milli_seconds)}
    decision = sim.decision_seconds
    makespan = max((j.finish for j in done if j.finish is not None), default=sim.end_seconds)
    record: dict[str, Any] = {
        "policy": sim.policy.name,
        "seed": sim.config.seed,
        "jobs": len(training),
        "jobs_finished": len(done),
        "jobs_unfinished": len(training) - len(done),
        "jobs_measured": len(jct),
        "avg_jct_seconds": _mean(jct),
        "p50_jct_seconds": percentile(jct, 50),
        "p95_jct_seconds": percentile(jct, 95),
        "p99_jct_seconds": percentile(jct, 99),
        "makespan_seconds": makespan,
        "avg_queueing_delay_seconds": _mean(waits),
        "p95_queueing_delay_seconds": percentile(waits, 95),
        "utilization": utilization,
        "device_hours": device_hours,
        "services": len(services),
        "slo_attainment": (served / offered) if offered > 0 else math.nan,
        "slo_time_fraction": _mean(
            [j.slo_seconds / max(1e-9, sim.end_seconds - j.arrival) for j in services if sim.end_seconds > j.arrival]
        ),
        "preemptions": sim.preemptions,
        "migrations": sim.migrations,
        "reshards": sim.reshards,
        "restarts": sum(j.restarts for j in sim.jobs.values()),
        "node_failures": sim.node_failures,
        "lost_run_seconds": sum(j.lost_seconds for j in training),
        "cycles": sim.cycles,
        "rejected_actions": sim.rejected_actions,
        "policy_errors": list(sim.policy_errors),
        "decision_p50_ms": percentile(decision, 50) * 1e3,
        "decision_p95_ms": percentile(decision, 95) * 1e3,
        "decision_p99_ms": percentile(decision, 99) * 1e3,
        "simulated_seconds": sim.end_seconds,
        "events": sim.queue.popped,
        "wall_seconds": sim.wall_seconds,
        "events_per_second": sim.queue.popped / sim.wall_seconds if sim.wall_seconds > 0 else math.nan,
    }
    for obs in sim.observers:
        record.update(obs.report(sim))
    return record


def job_records(sim: Simulator) -> list[dict[str, Any]]:
    """Per-workload outcome (for plots and further analysis)."""
    out = []
    for job in sim.jobs.values():
        out.append(
            {
                "key": job.key,
                "kind": str(job.workload.kind),
                "arrival_seconds": job.arrival,
                "first_start_seconds": job.first_start,
                "finish_seconds": job.finish,
                "jct_seconds": (job.finish - job.arrival) if job.finish is not None else None,
                "queued_seconds": job.queued_seconds,
                "preemptions": job.preemptions,
                "migrations": job.migrations,
                "reshards": job.reshards,
                "restarts": job.restarts,
                "failures": job.failures,
                "offered_requests": job.offered if job.is_service else None,
                "served_requests": job.served if job.is_service else None,
            }
        )
    return out


COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("policy", "POLICY", "{}"),
    ("jobs_finished", "DONE", "{}"),
    ("avg_jct_seconds", "AVG JCT h", "h"),
    ("p50_jct_seconds", "P50 h", "h"),
    ("p95_jct_seconds", "P95 h", "h"),
    ("p99_jct_seconds", "P99 h", "h"),
    ("makespan_seconds", "MAKESPAN h", "h"),
    ("avg_queueing_delay_seconds", "QUEUE h", "h"),
    ("slo_attainment", "SLO", "{:.3f}"),
    ("preemptions", "PREEMPT", "{}"),
    ("migrations", "MIGR", "{}"),
    ("reshards", "RESHARD", "{}"),
    ("decision_p99_ms", "DEC P99 ms", "{:.2f}"),
)


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """One row per record, plus utilization per accelerator type."""

    def cell(value: Any, fmt: str) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "-"
        if fmt == "h":
            return f"{value / 3600.0:.2f}"
        return fmt.format(value)

    types = sorted({t for r in records for t in r.get("utilization", {})})
    header = [title for _, title, _ in COLUMNS] + [f"UTIL {t}" for t in types]
    rows = [header]
    for r in records:
        row = [cell(r.get(key, math.nan), fmt) for key, _, fmt in COLUMNS]
        row += [f"{r['utilization'].get(t, 0.0):.2f}" for t in types]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in rows)
