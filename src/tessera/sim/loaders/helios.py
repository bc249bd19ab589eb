"""Node availability from the Helios artifact's Philly node sequence.

``helios-artifact/framework/CES Service/data/philly_node_sequence.csv`` (SC'21 HeliosArtifact,
MIT) has one row per minute, 2017-10-03 to 2017-12-15: ``time, active, total`` where
``total`` is the number of nodes in Philly's GPU cluster and ``active`` the nodes running
jobs (the Cluster Energy Saving service predicts it to power idle nodes down).  The
snapshot has no per-node failure log, so two availability signals are derived from it:

* ``"idle"`` (default): ``(total - active) / total``, the share of the cluster that is
  free.  This is the capacity an opportunistic elastic job can hold on a shared cluster:
  when other work arrives its nodes are taken back (to the job, the same as a failure),
  when work drains it can grow.  Rows with ``active == 0`` are treated as telemetry gaps
  and carry the last value forward: the file has three such runs (1081, 10 and 40
  minutes), and a cluster of 420 nodes with no busy node for 18 hours contradicts every
  surrounding hour.
* ``"total"``: ``total / max(total)``, cluster membership (4 changes: nodes added for two
  days in November and a one-hour drop to 174 nodes).

:func:`availability_series` resamples the minute series to ``resample_seconds`` windows,
taking each window's *minimum* (a node counts as available only if it was for the whole
window) and scales it to a scenario's node count.  Feed the result to
:func:`tessera.sim.failures.availability_transitions`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: the file, relative to the public data folder (``$TESSERA_DATA``)
PHILLY_NODE_SEQUENCE = Path("helios-artifact") / "framework" / "CES Service" / "data" / "philly_node_sequence.csv"
SIGNALS = ("idle", "total")


@dataclass(frozen=True, slots=True)
class NodeSequencePoint:
    """One minute of the Philly node sequence (time relative to the first row)."""

    time_seconds: float
    active: int
    total: int


def load_philly_node_sequence(path: str | Path) -> list[NodeSequencePoint]:
    """Parse the CSV; malformed rows raise ``ValueError`` naming the file and line."""
    path = Path(path)
    points: list[NodeSequencePoint] = []
    start: datetime | None = None
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if header[:3] != ["time", "active", "total"]:
            raise ValueError(f"{path}:1: expected header 'time,active,total', got {header}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                stamp = datetime.strptime(row[0].strip(), "%Y-%m-%d %H:%M:%S")
                active = int(float(row[1]))
                total = int(float(row[2]))
            except (ValueError, IndexError) as err:
                raise ValueError(f"{path}:{line_no}: expected 'YYYY-MM-DD HH:MM:SS,<int>,<int>', got {row}") from err
            if active < 0 or total <= 0 or active > total:
                raise ValueError(f"{path}:{line_no}: need 0 <= active <= total and total > 0, got {row}")
            if start is None:
                start = stamp
            seconds = (stamp - start).total_seconds()
            if points and seconds <= points[-1].time_seconds:
                raise ValueError(f"{path}:{line_no}: time does not increase ({row[0]})")
            points.append(NodeSequencePoint(seconds, active, total))
    if not points:
        raise ValueError(f"{path}: no data rows")
    return points


def available_fraction(points: Sequence[NodeSequencePoint], signal: str = "idle") -> list[tuple[float, float]]:
    """``(time_seconds, fraction of nodes available)`` per point for ``signal``."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    if signal == "total":
        peak = max(p.total for p in points)
        return [(p.time_seconds, p.total / peak) for p in points]
    out: list[tuple[float, float]] = []
    last = 1.0
    for p in points:
        if p.active > 0:  # active == 0: a telemetry gap, keep the last value
            last = (p.total - p.active) / p.total
        out.append((p.time_seconds, last))
    return out


def availability_series(
    points: Sequence[NodeSequencePoint],
    node_count: int,
    *,
    signal: str = "idle",
    resample_seconds: float = 600.0,
    start_seconds: float = 0.0,
    duration_seconds: float | None = None,
    scale_to_peak: bool = False,
) -> list[tuple[float, int]]:
    """Available nodes (out of ``node_count``) per window, times relative to ``start_seconds``.

    ``scale_to_peak`` divides by the largest fraction in the chosen span, so the emptiest
    moment of the trace makes every scenario node available (useful with ``idle``, whose
    raw level is about a quarter of the cluster).  Only changes are emitted, plus the first
    window.
    """
    if node_count < 1 or resample_seconds <= 0:
        raise ValueError("node_count and resample_seconds must be positive")
    end = math.inf if duration_seconds is None else start_seconds + duration_seconds
    fractions = [(t, f) for t, f in available_fraction(points, signal) if start_seconds <= t < end]
    if not fractions:
        raise ValueError(f"no points between {start_seconds}s and {end}s")
    windows: dict[int, float] = {}
    for t, f in fractions:
        index = int((t - start_seconds) // resample_seconds)
        windows[index] = min(f, windows.get(index, f))
    peak = max(windows.values()) if scale_to_peak else 1.0
    out: list[tuple[float, int]] = []
    for index in sorted(windows):
        fraction = windows[index] / peak if peak > 0 else 0.0
        available = min(node_count, max(0, round(node_count * fraction)))
        if not out or out[-1][1] != available:
            out.append((index * resample_seconds, available))
    return out
