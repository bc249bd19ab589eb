"""Inference load series, the SplitwiseSim capacity model and the simulated LoadSource."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pytest

from tessera.sim.inference_load import PerfModel, SeriesLoadSource, rate_series, skewed_service_rates


def test_rate_series_counts_per_bin():
    assert rate_series([0.1, 0.2, 4.9, 5.0, 12.0], bin_seconds=5, duration_seconds=15) == [0.6, 0.2, 0.2]


def test_skew_rotates_the_hot_service_and_keeps_the_total():
    arrivals = [i * 0.5 for i in range(200)]  # 2 req/s, steady, 100 s long
    rates = skewed_service_rates(
        arrivals, ["a", "b", "c"], bin_seconds=10, duration_seconds=60, total_requests_per_second=12,
        hot_share=0.5, phase_seconds=20, copies=1, seed=0,
    )
    # phase 0 (0-20 s): a hot; phase 1: b; phase 2: c; cold services split the other half
    assert rates["a"][:2] == pytest.approx([6.0, 6.0])
    assert rates["b"][:2] == pytest.approx([3.0, 3.0])
    assert rates["b"][2:4] == pytest.approx([6.0, 6.0])
    assert rates["c"][4:6] == pytest.approx([6.0, 6.0])
    totals = [sum(r[i] for r in rates.values()) for i in range(6)]
    assert totals == pytest.approx([12.0] * 6)


def test_superposed_copies_smooth_bursts():
    # one burst of 50 requests in an otherwise quiet 500 s trace
    arrivals = [100.0 + i * 0.01 for i in range(50)] + [float(t) for t in range(0, 500, 10)]
    one = skewed_service_rates(arrivals, ["s"], bin_seconds=5, duration_seconds=500, total_requests_per_second=10,
                               hot_share=1.0, phase_seconds=500, copies=1, seed=1)["s"]
    many = skewed_service_rates(arrivals, ["s"], bin_seconds=5, duration_seconds=500, total_requests_per_second=10,
                                hot_share=1.0, phase_seconds=500, copies=20, seed=1)["s"]
    assert statistics.mean(one) == pytest.approx(statistics.mean(many), rel=0.05)
    assert max(many) < max(one) / 3


def test_series_load_source_is_a_windowed_mean():
    now = {"t": 0.0}
    source = SeriesLoadSource({"s": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}, bin_seconds=10, now=lambda: now["t"], window_seconds=30)
    now["t"] = 40.0  # bins 0-3 complete; the window covers bins 1..3
    assert source.load() == {"s": pytest.approx(3.0)}
    now["t"] = 10.0
    assert source.load() == {"s": pytest.approx(1.0)}


@dataclass(frozen=True)
class Row:
    model: str
    hardware: str
    tensor_parallel: int
    prompt_size: int
    batch_size: int
    token_size: int
    prompt_time_ms: float
    token_time_ms: float


def synthetic_rows() -> list[Row]:
    rows = [Row("m", "gpu", 4, p, 1, 128, t, 50.0) for p, t in ((256, 100.0), (512, 200.0), (1024, 400.0))]
    # batch sweep at prompt 512: prefill grows with the batch, decode a little
    rows += [Row("m", "gpu", 4, 512, b, 128, 200.0 * b, d) for b, d in ((2, 55.0), (4, 60.0), (8, 80.0))]
    return rows


def test_perf_model_separates_prompt_and_batch():
    perf = PerfModel(synthetic_rows())
    # prefill(1024, 4) = prefill(1024, 1) x prefill(512, 4) / prefill(512, 1) = 400 x 4
    assert perf.prefill_ms("m", "gpu", 4, 1024, 4) == pytest.approx(1600.0)
    # interpolated in log2 between 512 and 1024: 724 tokens is halfway
    assert perf.prefill_ms("m", "gpu", 4, 724, 1) == pytest.approx(300.0, rel=0.01)
    # latency of a 1024-token prompt with 11 output tokens at batch 4: 1.6 s + 10 x 60 ms
    assert perf.latency_seconds("m", "gpu", 4, 1024, 11, 4) == pytest.approx(2.2)


def test_capacity_is_the_best_batch_within_the_latency_bound():
    perf = PerfModel(synthetic_rows())
    # batch b: latency = 0.4 b + 10 x decode(b); b=1: 0.9 s, b=2: 1.35, b=4: 2.2, b=8: 4.0
    cap = perf.capacity("m", "gpu", 4, prompt=1024, tokens=11, max_latency_seconds=3.0)
    assert cap.batch_size == 4
    assert cap.requests_per_second == pytest.approx(4 / 2.2)
    assert cap.unloaded_latency_seconds == pytest.approx(0.9)
    assert perf.capacity("m", "gpu", 4, prompt=1024, tokens=11, max_latency_seconds=5.0).batch_size == 8
    with pytest.raises(KeyError, match="no SplitwiseSim profile"):
        perf.capacity("m", "tpu", 4, prompt=1, tokens=1, max_latency_seconds=1)


@pytest.mark.data
def test_perf_model_reproduces_measured_points(shared_data):
    from tessera.sim.loaders import splitwise

    rows = splitwise.load(shared_data / "llm-inference" / "splitwise" / "data" / "perf_model.csv")
    perf = PerfModel(rows)
    for hardware in ("a100-80gb", "h100-80gb"):
        measured = [r for r in rows if r.model == "llama2-70b" and r.hardware == hardware and r.tensor_parallel == 4
                    and r.prompt_size == 512 and r.batch_size == 8 and r.token_size == 128]
        e2e = statistics.median(r.e2e_time_ms for r in measured) / 1000
        assert perf.latency_seconds("llama2-70b", hardware, 4, 512, 128, 8) == pytest.approx(e2e, rel=0.03)
    h100 = perf.capacity("llama2-70b", "h100-80gb", 4, prompt=2048, tokens=28, max_latency_seconds=5)
    a100 = perf.capacity("llama2-70b", "a100-80gb", 4, prompt=2048, tokens=28, max_latency_seconds=5)
    assert h100.requests_per_second > 2.5 * a100.requests_per_second
