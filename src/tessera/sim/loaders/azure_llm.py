"""Azure LLM inference trace 2023 (``TIMESTAMP, ContextTokens, GeneratedTokens``).

Timestamps look like ``2023-11-16 18:17:03.9799600`` (seven fractional digits, more than
:mod:`datetime` parses, so the fraction is read separately).  :func:`request_rate`
turns the requests into a piecewise-constant :class:`~tessera.sim.models.LoadSeries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tessera.sim.loaders import _csv
from tessera.sim.loaders.errors import TraceFormatError
from tessera.sim.models import LoadSeries


@dataclass(frozen=True, slots=True)
class Request:
    #: seconds since the first request of the file
    arrival_seconds: float
    context_tokens: int
    generated_tokens: int


def _timestamp(path: Path, line: int, text: str) -> float:
    whole, _, fraction = text.strip().partition(".")
    try:
        base = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
        return base + (float("0." + fraction) if fraction else 0.0)
    except ValueError:
        raise TraceFormatError(path, line, "TIMESTAMP", "a time like 2023-11-16 18:17:03.9799600", text) from None


def load(path: str | Path) -> list[Request]:
    path = Path(path)
    raw = []
    for line, row in _csv.rows(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens")):
        raw.append(
            (
                _timestamp(path, line, row["TIMESTAMP"]),
                _csv.integer(path, line, row, "ContextTokens"),
                _csv.integer(path, line, row, "GeneratedTokens"),
            )
        )
    if not raw:
        return []
    origin = min(r[0] for r in raw)
    return sorted((Request(t - origin, c, g) for t, c, g in raw), key=lambda r: r.arrival_seconds)


def request_rate(requests: list[Request], bin_seconds: float = 60.0, *, scale: float = 1.0, offset_seconds: float = 0.0) -> LoadSeries:
    """Requests/s per ``bin_seconds`` bin (times ``scale``), starting at ``offset_seconds``."""
    if bin_seconds <= 0:
        raise ValueError("bin_seconds must be positive")
    if not requests:
        return LoadSeries.constant(0.0)
    bins = int(requests[-1].arrival_seconds // bin_seconds) + 1
    counts = [0] * bins
    for r in requests:
        counts[int(r.arrival_seconds // bin_seconds)] += 1
    times = (*tuple(offset_seconds + i * bin_seconds for i in range(bins)), offset_seconds + bins * bin_seconds)
    rates = (*tuple(c * scale / bin_seconds for c in counts), 0.0)
    return LoadSeries(times, rates)
