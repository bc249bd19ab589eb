"""Inference load and capacity models for the rebalancing experiments (pure, no I/O in the models).

* :func:`skewed_service_rates`: one request-rate series per service from a request trace
  (the Azure LLM 2023 code trace), scaled, and skewed across services with the hot
  service rotating every phase, so the best placement keeps changing;
* :class:`PerfModel`: per-request latency and per-replica capacity (requests/s) for each
  accelerator type from SplitwiseSim's measured prefill/decode times;
* :class:`SeriesLoadSource`: the :class:`~tessera.engine.ports.LoadSource` port over those
  series and a simulated clock (a windowed mean, as ``rate(...[1m])`` gives in Prometheus).

Rows and requests come from the simulator's loaders (:mod:`tessera.sim.loaders.splitwise`,
:mod:`tessera.sim.loaders.azure_llm`).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class PerfPoint(Protocol):
    """One SplitwiseSim measurement (times in milliseconds), e.g. ``splitwise.PerfRow``."""

    @property
    def model(self) -> str: ...
    @property
    def hardware(self) -> str: ...
    @property
    def tensor_parallel(self) -> int: ...
    @property
    def prompt_size(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def token_size(self) -> int: ...
    @property
    def prompt_time_ms(self) -> float: ...
    @property
    def token_time_ms(self) -> float: ...


# ---- load series --------------------------------------------------------------------------


def rate_series(arrivals: Sequence[float], bin_seconds: float, duration_seconds: float) -> list[float]:
    """Requests/s in consecutive bins of ``bin_seconds`` covering ``duration_seconds``."""
    bins = max(1, math.ceil(duration_seconds / bin_seconds))
    counts = [0] * bins
    for t in arrivals:
        i = int(t // bin_seconds)
        if 0 <= i < bins:
            counts[i] += 1
    return [c / bin_seconds for c in counts]


def skewed_service_rates(
    arrivals: Sequence[float],
    services: Sequence[str],
    *,
    bin_seconds: float,
    duration_seconds: float,
    total_requests_per_second: float,
    hot_share: float,
    phase_seconds: float,
    copies: int | None = None,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Per-service request rates from one trace, scaled and skewed.

    Scaling superposes ``copies`` copies of the trace, each shifted in time by a seeded
    random offset (many independent users: bursts average out as they would in a bigger
    service), rather than multiplying one copy's rate, which would blow every burst up by
    the scale factor. The superposition is normalised to ``total_requests_per_second`` on
    average. Service ``s`` gets ``hot_share`` of it while it is the hot service (phase
    ``k`` makes ``services[k % n]`` hot) and an equal part of the rest otherwise. Each
    service has its own offsets; the trace repeats when ``duration_seconds`` is longer.
    """
    if not services:
        return {}
    if not 0.0 <= hot_share <= 1.0:
        raise ValueError("hot_share must lie in [0, 1]")
    if not arrivals:
        raise ValueError("the trace has no requests")
    # bins up to the one holding the last request (no empty bin after the trace's end)
    span = (math.floor(max(arrivals) / bin_seconds) + 1) * bin_seconds
    base = rate_series(arrivals, bin_seconds, span)
    trace_mean = sum(base) / len(base)
    if copies is None:
        copies = max(1, math.ceil(total_requests_per_second / trace_mean))
    n = len(services)
    cold_share = (1.0 - hot_share) / (n - 1) if n > 1 else 0.0
    bins = max(1, math.ceil(duration_seconds / bin_seconds))
    rng = random.Random(seed)
    out: dict[str, list[float]] = {}
    for s, name in enumerate(services):
        shifts = [rng.randrange(len(base)) for _ in range(copies)]
        series = []
        for i in range(bins):
            phase = int((i * bin_seconds) // phase_seconds)
            share = 1.0 if n == 1 else hot_share if phase % n == s else cold_share
            superposed = sum(base[(i + shift) % len(base)] for shift in shifts) / copies
            series.append(total_requests_per_second * share * superposed / trace_mean)
        out[name] = series
    return out


class SeriesLoadSource:
    """LoadSource over precomputed rate series: the mean of the last ``window_seconds``."""

    def __init__(
        self,
        series: Mapping[str, Sequence[float]],
        bin_seconds: float,
        now: Callable[[], float],
        window_seconds: float = 60.0,
    ) -> None:
        self.series = series
        self.bin_seconds = bin_seconds
        self.now = now
        self.window_seconds = window_seconds

    def rate_at(self, key: str, t_seconds: float) -> float:
        values = self.series[key]
        i = int(t_seconds // self.bin_seconds)
        return values[i] if 0 <= i < len(values) else 0.0

    def load(self) -> Mapping[str, float]:
        t = self.now()
        first = max(0, int((t - self.window_seconds) // self.bin_seconds))
        last = max(first, int(t // self.bin_seconds) - 1)  # bins fully observed so far
        out = {}
        for key, values in self.series.items():
            window = values[first : last + 1]
            out[key] = sum(window) / len(window) if window else 0.0
        return out


# ---- performance model -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one replica sustains for a request shape under a latency bound."""

    requests_per_second: float
    batch_size: int
    #: end-to-end latency of one request at that batch size
    latency_seconds: float
    #: latency of a request served alone (batch 1): the floor at low load
    unloaded_latency_seconds: float


class PerfModel:
    """Latency and capacity per (model, hardware, tensor parallelism) from SplitwiseSim rows.

    SplitwiseSim measures three sweeps: prompt size at batch 1, batch size at prompt 512,
    and output length at batch 1. We take the median of repeated runs and assume prefill
    time separates into prompt-size and batch-size factors (prefill is compute-bound and
    grows with ``prompt x batch``); decode time per token depends on the batch only.
    A request of ``prompt`` tokens producing ``tokens`` tokens at batch ``b`` takes
    ``prefill(prompt, b) + (tokens - 1) x decode(b)``, as SplitwiseSim's ``e2e_time``.
    """

    def __init__(self, rows: Sequence[PerfPoint]) -> None:
        groups: dict[tuple[str, str, int], list[PerfPoint]] = {}
        for row in rows:
            groups.setdefault((row.model, row.hardware, row.tensor_parallel), []).append(row)
        self._prefill_by_prompt: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
        self._prefill_by_batch: dict[tuple[str, str, int], dict[int, float]] = {}
        self._decode_by_batch: dict[tuple[str, str, int], dict[int, float]] = {}
        for key, group in groups.items():
            by_prompt: dict[int, list[float]] = {}
            by_batch_prefill: dict[int, list[float]] = {}
            by_batch_decode: dict[int, list[float]] = {}
            for r in group:
                if r.batch_size == 1:
                    by_prompt.setdefault(r.prompt_size, []).append(r.prompt_time_ms)
                if r.prompt_size == 512:
                    by_batch_prefill.setdefault(r.batch_size, []).append(r.prompt_time_ms)
                    by_batch_decode.setdefault(r.batch_size, []).append(r.token_time_ms)
            if 1 not in by_batch_prefill or not by_prompt:
                continue  # not the three sweeps: cannot separate the factors
            self._prefill_by_prompt[key] = sorted((p, statistics.median(v)) for p, v in by_prompt.items())
            self._prefill_by_batch[key] = {b: statistics.median(v) for b, v in by_batch_prefill.items()}
            self._decode_by_batch[key] = {b: statistics.median(v) for b, v in by_batch_decode.items()}

    def configurations(self) -> list[tuple[str, str, int]]:
        return sorted(self._prefill_by_prompt)

    def _key(self, model: str, hardware: str, tensor_parallel: int) -> tuple[str, str, int]:
        key = (model, hardware, tensor_parallel)
        if key not in self._prefill_by_prompt:
            raise KeyError(f"no SplitwiseSim profile for {model} on {hardware} at TP{tensor_parallel}")
        return key

    def prefill_ms(self, model: str, hardware: str, tensor_parallel: int, prompt: int, batch: int) -> float:
        key = self._key(model, hardware, tensor_parallel)
        at_batch1 = _interpolate_log(self._prefill_by_prompt[key], prompt)
        by_batch = self._prefill_by_batch[key]
        return at_batch1 * by_batch[batch] / by_batch[1]

    def decode_ms(self, model: str, hardware: str, tensor_parallel: int, batch: int) -> float:
        return self._decode_by_batch[self._key(model, hardware, tensor_parallel)][batch]

    def latency_seconds(self, model: str, hardware: str, tensor_parallel: int, prompt: int, tokens: int, batch: int) -> float:
        ms = self.prefill_ms(model, hardware, tensor_parallel, prompt, batch) + max(0, tokens - 1) * self.decode_ms(
            model, hardware, tensor_parallel, batch
        )
        return ms / 1000.0

    def capacity(
        self, model: str, hardware: str, tensor_parallel: int, *, prompt: int, tokens: int, max_latency_seconds: float
    ) -> Capacity:
        """The highest throughput over measured batch sizes whose latency stays within the bound."""
        key = self._key(model, hardware, tensor_parallel)
        unloaded = self.latency_seconds(model, hardware, tensor_parallel, prompt, tokens, 1)
        best = Capacity(1.0 / unloaded, 1, unloaded, unloaded)
        for batch in sorted(self._decode_by_batch[key]):
            if batch not in self._prefill_by_batch[key]:
                continue
            latency = self.latency_seconds(model, hardware, tensor_parallel, prompt, tokens, batch)
            if latency <= max_latency_seconds and batch / latency > best.requests_per_second:
                best = Capacity(batch / latency, batch, latency, unloaded)
        return best


def _interpolate_log(points: Sequence[tuple[int, float]], x: float) -> float:
    """Piecewise-linear in log2(x) between measured points; clamped at the ends."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        # beyond the largest prompt measured: prefill grows linearly with the prompt
        return points[-1][1] * x / points[-1][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            f = (math.log2(x) - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
            return y0 + f * (y1 - y0)
    return points[-1][1]
