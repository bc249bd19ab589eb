"""Trace loaders: the public files (marked ``data``) and malformed inline samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessera.sim.loaders import azure_llm, gavel, philly, sia, splitwise
from tessera.sim.loaders.errors import TraceFormatError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----- Gavel --------------------------------------------------------------------------------
@pytest.mark.data
def test_gavel_throughputs_and_traces(shared_data: Path):
    table = gavel.load_throughputs(shared_data / "gavel" / "simulation_throughputs.json")
    assert set(table.by_type) == {"V100", "P100", "K80"}
    assert table.throughput("V100", "ResNet-50 (batch size 64)", 1) == pytest.approx(4.39, abs=0.01)
    assert table.throughput("K80", "ResNet-50 (batch size 64)", 1) == pytest.approx(0.62, abs=0.01)
    assert table.skipped == {"v100_unconsolidated": 83, "p100_unconsolidated": 83, "k80_unconsolidated": 77}
    assert len(table.job_types) == 26
    jobs = gavel.load_trace(shared_data / "gavel" / "traces" / "msr" / "seed=0" / "0e4a51.trace")
    assert jobs[0].job_type == "Transformer (batch size 128)" and jobs[0].total_steps == 95121
    workloads, derived = gavel.trace_workloads(jobs[:20], table)
    assert isinstance(derived, dict)
    first = workloads[0]
    assert first.model.rate("V100", 1) == table.throughput("V100", "Transformer (batch size 128)", 1)
    assert first.reference_duration_seconds == pytest.approx(95121 / first.model.rate("V100", 1))


def test_gavel_malformed(tmp_path: Path):
    bad_key = write(tmp_path, "t.json", json.dumps({"v100": {"ResNet": {"null": 1.0}}}))
    with pytest.raises(TraceFormatError, match=r"t.json column 'v100/ResNet': expected a key like"):
        gavel.load_throughputs(bad_key)
    bad_value = write(tmp_path, "u.json", json.dumps({"v100": {"('A3C', 1)": {"null": "fast"}}}))
    with pytest.raises(TraceFormatError, match=r"null.*non-negative number"):
        gavel.load_throughputs(bad_value)
    with pytest.raises(TraceFormatError, match=r"v.json:1"):
        gavel.load_throughputs(write(tmp_path, "v.json", "{not json"))
    ok = "A3C\tcmd\t-n\t1\t100\t0.5\t1\n"
    trace = write(tmp_path, "x.trace", ok + "A3C\tcmd\t-n\t1\tmany\t0.5\t1\n")
    with pytest.raises(TraceFormatError) as err:
        gavel.load_trace(trace)
    assert (err.value.line, err.value.column) == (2, "total_steps")
    with pytest.raises(TraceFormatError, match=r"y.trace:1: expected 7 tab-separated fields"):
        gavel.load_trace(write(tmp_path, "y.trace", "A3C\tcmd\n"))


# ----- Philly --------------------------------------------------------------------------------
@pytest.mark.data
def test_philly_lists(shared_data: Path):
    trace = philly.load(shared_data / "sia-sosp23" / "traces" / "philly.csv")
    assert len(trace.jobs) + sum(trace.skipped.values()) == 82247
    assert trace.jobs[0].submit_seconds == 0.0
    assert all(a.submit_seconds <= b.submit_seconds for a, b in zip(trace.jobs, trace.jobs[1:], strict=False))
    dist = philly.load(shared_data / "gavel" / "philly_job_distribution.derived.csv")
    assert len(dist.jobs) == 33192 and {j.gpus for j in dist.jobs} == {1, 2, 4, 8}


def test_philly_counts_what_it_skips_and_names_bad_cells(tmp_path: Path):
    path = write(tmp_path, "p.csv", "time,duration,gpus\n10,100,1\n5,50,0\n20,0,2\n30,60,4\n")
    trace = philly.load(path)
    assert [(j.submit_seconds, j.gpus) for j in trace.jobs] == [(0.0, 1), (20.0, 4)]
    assert trace.skipped == {"zero GPUs": 1, "zero duration": 1}
    w = philly.trace_workloads(trace)
    assert w[1].workload.min_replicas == 4 and w[1].model.rate("A100", 4) == pytest.approx(1.0)
    with pytest.raises(TraceFormatError) as err:
        philly.load(write(tmp_path, "q.csv", "time,duration,gpus\n10,long,1\n"))
    assert (err.value.line, err.value.column, err.value.got) == (2, "duration", "long")
    with pytest.raises(TraceFormatError, match="GPU count column"):
        philly.load(write(tmp_path, "r.csv", "time,duration\n1,2\n"))
    with pytest.raises(TraceFormatError, match=r"s.csv:3: expected 3 comma-separated fields"):
        philly.load(write(tmp_path, "s.csv", "time,duration,gpus\n1,2,1\n1,2\n"))


# ----- Sia --------------------------------------------------------------------------------------
@pytest.mark.data
def test_sia_workload_and_profiles(shared_data: Path):
    workloads = sia.workloads(
        shared_data / "sia-sosp23" / "workloads" / "philly" / "workload-1.csv", shared_data / "sia-sosp23" / "traces"
    )
    assert len(workloads) == 160
    first = workloads[0]
    assert first.key == "cifar10-0" and first.workload.min_replicas == 6
    assert {o.accelerator_type for o in first.workload.options} >= {"A100", "T4", "V100"}
    assert first.model.rate("A100", 6) > first.model.rate("T4", 6) > 0
    assert first.work and first.work > 0


@pytest.mark.data
def test_sia_adaptive_jobs_range_from_one_replica_with_profiled_rates(shared_data: Path):
    folder = shared_data / "sia-sosp23"
    rigid, adaptive = (sia.workloads(folder / "workloads" / "philly" / "workload-1.csv", folder / "traces",
                                     adaptive=a)[0] for a in (False, True))
    w = adaptive.workload
    assert (w.min_replicas, w.target_replicas, w.max_replicas) == (1, 6, 12)
    # same per-replica throughputs at the trace's count; the adaptive job also lists every count
    assert [(o.accelerator_type, o.throughput) for o in adaptive.workload.options] == [
        (o.accelerator_type, o.throughput) for o in rigid.workload.options]
    assert adaptive.work == rigid.work and all(not o.gang_throughput for o in rigid.workload.options)
    assert adaptive.workload.gang_throughput_on("A100", 3) == adaptive.model.rate("A100", 3)
    assert adaptive.model.rate("A100", 6) == rigid.model.rate("A100", 6)
    assert 0 < adaptive.model.rate("A100", 1) < adaptive.model.rate("A100", 3) < adaptive.model.rate("A100", 6)
    # A100 is profiled up to 16 replicas; no speedup is assumed past the largest profiled count
    slow = sia.job_workload(sia.SiaJob("j", 0.0, "cifar10", 12, 2048), sia.load_profile(folder / "traces" / "cifar10"),
                            adaptive=True, max_factor=2.0)
    assert slow.model.rate("A100", 24) == slow.model.rate("A100", 16) > slow.model.rate("A100", 12)


def test_sia_malformed(tmp_path: Path):
    with pytest.raises(TraceFormatError) as err:
        sia.load_workload(write(tmp_path, "w.csv", "name,time,application,num_replicas,batch_size\nj,1,cifar10,0,64\n"))
    assert (err.value.line, err.value.column) == (2, "num_replicas")
    with pytest.raises(TraceFormatError, match="header with columns"):
        sia.load_workload(write(tmp_path, "v.csv", "name,time\nj,1\n"))
    prof = tmp_path / "app"
    prof.mkdir()
    write(prof, "scalability-aws.csv", "num_nodes,num_replicas,local_bsz,step_time,sync_time\n1,2,32,0,0\n")
    write(prof, "validation-64.csv", "progress,iteration\n1,10\n")
    with pytest.raises(TraceFormatError, match="positive step time"):
        sia.load_profile(prof)


# ----- Azure LLM ---------------------------------------------------------------------------------
@pytest.mark.data
def test_azure_llm_trace(shared_data: Path):
    requests = azure_llm.load(shared_data / "llm-inference" / "AzureLLMInferenceTrace_code.csv")
    assert len(requests) == 8819
    series = azure_llm.request_rate(requests, 60.0)
    total = sum(r * 60.0 for r in series.rates_per_second)
    assert total == pytest.approx(8819)


def test_azure_llm_malformed(tmp_path: Path):
    good = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,10,2\n2023-11-16 18:17:04.5,5,1\n"
    requests = azure_llm.load(write(tmp_path, "a.csv", good))
    assert requests[1].arrival_seconds == pytest.approx(0.52004)
    with pytest.raises(TraceFormatError) as err:
        azure_llm.load(write(tmp_path, "b.csv", good + "yesterday,1,1\n"))
    assert (err.value.line, err.value.column) == (4, "TIMESTAMP")
    with pytest.raises(TraceFormatError, match="ContextTokens"):
        azure_llm.load(write(tmp_path, "c.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,-1,1\n"))


# ----- SplitwiseSim ---------------------------------------------------------------------------------
@pytest.mark.data
def test_splitwise_perf_model(shared_data: Path):
    rows = splitwise.load(shared_data / "llm-inference" / "splitwise" / "data" / "perf_model.csv")
    assert len(rows) == 1260
    h100 = splitwise.replica_capacity(rows, "llama2-70b", "h100-80gb", prompt_size=1024, token_size=128)
    a100 = splitwise.replica_capacity(rows, "llama2-70b", "a100-80gb", prompt_size=1024, token_size=128)
    assert h100 > a100 > 0


def test_splitwise_malformed(tmp_path: Path):
    header = ",".join(splitwise.COLUMNS) + "\n"
    with pytest.raises(TraceFormatError) as err:
        splitwise.load(write(tmp_path, "p.csv", header + "llama,a100-80gb,512,1,128,fast,1,2,2\n"))
    assert (err.value.line, err.value.column) == (2, "prompt_time")
    rows = splitwise.load(write(tmp_path, "q.csv", header + "llama,a100-80gb,512,4,128,100,10,2000,2\n"))
    assert splitwise.replica_capacity(rows, "llama", "a100-80gb", prompt_size=512, token_size=128) == pytest.approx(2.0)


def test_gavel_trace_jobs_at_unmeasured_scale_are_derived_and_counted(tmp_path: Path):
    table = gavel.load_throughputs(write(tmp_path, "t.json", json.dumps(
        {"v100": {"('Rec', 1)": {"null": 10.0}}, "k80": {"('Rec', 1)": {"null": 2.0}}})))
    trace = write(tmp_path, "x.trace", "Rec\tcmd\t-n\t1\t100\t0\t1\nRec\tcmd\t-n\t1\t100\t5\t4\n")
    workloads, derived = gavel.trace_workloads(gavel.load_trace(trace), table)
    assert derived == {"Rec x4": 1}
    assert workloads[1].model.rate("V100", 4) == 40.0 and workloads[1].model.rate("K80", 4) == 8.0
    with pytest.raises(ValueError, match="no throughput for job type 'Other'"):
        gavel.trace_workloads(gavel.load_trace(write(tmp_path, "y.trace", "Other\tcmd\t-n\t1\t100\t0\t1\n")), table)


@pytest.mark.data
def test_philly_jobs_get_gavel_job_types_with_their_measured_speeds(shared_data: Path):
    table = gavel.load_throughputs(shared_data / "gavel" / "simulation_throughputs.json")
    jobs = [(0.0, 3600.0, 1), (10.0, 7200.0, 4), (20.0, 600.0, 16)]
    first, derived = gavel.typed_jobs(jobs, table, seed=0)
    again, _ = gavel.typed_jobs(jobs, table, seed=0)
    assert [w.workload.attributes for w in first] == [w.workload.attributes for w in again]  # seeded
    assert derived == {"16 GPUs": 1}  # Gavel measured 1-8 GPUs: 16 scales the 1-GPU rate
    for w, (_, duration, gpus) in zip(first, jobs, strict=True):
        assert w.workload.min_replicas == gpus
        # the trace's duration is the time on V100 at that GPU count
        assert w.work / w.model.rate("V100", gpus) == pytest.approx(duration)
    job_type = first[0].workload.attributes["job_type"]
    assert first[0].model.rate("K80", 1) == pytest.approx(table.throughput("K80", job_type, 1))
