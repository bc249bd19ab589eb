"""Errors shared by the trace loaders.

A loader never silently guesses around a malformed row: it raises
:class:`TraceFormatError` naming the file, the 1-based line, the column and what was
expected, so a user can open the file at that spot and fix it.
"""

from __future__ import annotations

from pathlib import Path


class TraceFormatError(ValueError):
    """A row or field of a trace file does not match the documented format."""

    def __init__(
        self,
        file: str | Path,
        line: int | None,
        column: str | None,
        expected: str,
        got: object = None,
    ) -> None:
        self.file = str(file)
        #: 1-based line number in the file (the header is line 1), None for whole-file problems
        self.line = line
        #: column name (or key path) the problem is in, None when it concerns the whole row
        self.column = column
        self.expected = expected
        self.got = got
        where = self.file
        if line is not None:
            where += f":{line}"
        if column:
            where += f" column {column!r}"
        message = f"{where}: expected {expected}"
        if got is not None:
            shown = repr(got)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            message += f", got {shown}"
        super().__init__(message)
