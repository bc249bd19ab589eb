"""SplitwiseSim's measured performance model (``data/perf_model.csv``).

Columns: ``model, hardware, prompt_size, batch_size, token_size, peak_power,
average_power, prompt_time, token_time, e2e_time, tensor_parallel`` (times in ms).
:func:`replica_capacity` turns a row set into requests/s one replica sustains, which is
an inference service's per-replica throughput on that accelerator type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.sim.loaders import _csv
from tessera.sim.loaders.errors import TraceFormatError

#: SplitwiseSim hardware names -> accelerator types (power-capped H100 kept distinct)
HARDWARE_TYPES = {"a100-80gb": "A100", "h100-80gb": "H100", "h100-80gb-pcap": "H100-pcap"}


@dataclass(frozen=True, slots=True)
class PerfRow:
    model: str
    hardware: str
    prompt_size: int
    batch_size: int
    token_size: int
    prompt_time_ms: float
    token_time_ms: float
    e2e_time_ms: float
    tensor_parallel: int

    @property
    def accelerator_type(self) -> str:
        return HARDWARE_TYPES.get(self.hardware, self.hardware)


COLUMNS = ("model", "hardware", "prompt_size", "batch_size", "token_size", "prompt_time", "token_time", "e2e_time", "tensor_parallel")


def load(path: str | Path) -> list[PerfRow]:
    path = Path(path)
    out = []
    for line, row in _csv.rows(path, COLUMNS):
        if not row["model"].strip() or not row["hardware"].strip():
            raise TraceFormatError(path, line, "model" if not row["model"].strip() else "hardware", "a name", row["model"])
        out.append(
            PerfRow(
                row["model"].strip(),
                row["hardware"].strip(),
                _csv.integer(path, line, row, "prompt_size", minimum=1),
                _csv.integer(path, line, row, "batch_size", minimum=1),
                _csv.integer(path, line, row, "token_size", minimum=1),
                _csv.number(path, line, row, "prompt_time"),
                _csv.number(path, line, row, "token_time"),
                _csv.number(path, line, row, "e2e_time"),
                _csv.integer(path, line, row, "tensor_parallel", minimum=1),
            )
        )
    return out


def replica_capacity(
    rows: Sequence[PerfRow], model: str, hardware: str, *, prompt_size: int, token_size: int, tensor_parallel: int | None = None
) -> float:
    """Requests/s of one replica: the best ``batch_size / e2e_time`` over measured batch sizes.

    Uses the measured (prompt, token) point closest to the one asked for; repeated
    measurements of the same point are averaged.
    """
    chosen = [r for r in rows if r.model == model and r.hardware == hardware and (tensor_parallel is None or r.tensor_parallel == tensor_parallel)]
    if not chosen:
        raise ValueError(f"no SplitwiseSim measurement for {model} on {hardware}" + (f" at TP {tensor_parallel}" if tensor_parallel else ""))
    point = min({(r.prompt_size, r.token_size) for r in chosen}, key=lambda p: (abs(p[0] - prompt_size) + abs(p[1] - token_size), p))
    by_batch: dict[int, list[float]] = {}
    for r in chosen:
        if (r.prompt_size, r.token_size) == point and r.e2e_time_ms > 0:
            by_batch.setdefault(r.batch_size, []).append(r.e2e_time_ms)
    return max(b / (sum(ts) / len(ts) / 1000.0) for b, ts in by_batch.items())
