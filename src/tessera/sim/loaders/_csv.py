"""Small CSV helpers shared by the loaders: typed cells with file/line/column errors."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from tessera.sim.loaders.errors import TraceFormatError


def rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for each data row; checks the header and the field count."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(path, 1, None, f"a header with {', '.join(required)}", "an empty file")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceFormatError(path, 1, missing[0], f"a header with columns {', '.join(required)}", header)
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise TraceFormatError(path, line_no, None, f"{len(header)} comma-separated fields", f"{len(row)} fields")
            yield line_no, dict(zip(header, row, strict=True))


def number(path: Path, line: int, row: dict[str, str], column: str, *, minimum: float | None = 0.0) -> float:
    text = row[column]
    try:
        value = float(text)
    except ValueError:
        raise TraceFormatError(path, line, column, "a number", text) from None
    if minimum is not None and value < minimum:
        raise TraceFormatError(path, line, column, f"a number >= {minimum:g}", text)
    return value


def integer(path: Path, line: int, row: dict[str, str], column: str, *, minimum: int = 0) -> int:
    text = row[column]
    try:
        value = int(text)
    except ValueError:
        raise TraceFormatError(path, line, column, "an integer", text) from None
    if value < minimum:
        raise TraceFormatError(path, line, column, f"an integer >= {minimum}", text)
    return value
