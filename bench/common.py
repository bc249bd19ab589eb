"""Writing benchmark results: one JSON file and one markdown table per benchmark."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(
    name: str,
    records: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    *,
    command: str,
    notes: str = "",
    columns: Sequence[str] | None = None,
    out_dir: Path = RESULTS,
) -> tuple[Path, Path]:
    """Write ``<name>.json`` (all records + summary + provenance) and ``<name>.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "benchmark": name,
        "command": command,
        "commit": _commit(),
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        "written_at_unix": int(time.time()),
    }
    json_path = out_dir / f"{name}.json"
    md_path = out_dir / f"{name}.md"
    json_path.write_text(json.dumps({**meta, "summary": list(summary), "records": list(records)}, indent=1))
    md_path.write_text(
        f"# {name}\n\nCommand: `{command}` (commit {meta['commit']})\n\n"
        + markdown_table(summary, columns)
        + (f"\n{notes}\n" if notes else "")
    )
    return json_path, md_path
