"""Scenario files and ``tessera sim run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tessera.cli import main
from tessera.sim.scenario import ScenarioError, load_scenario, scenario_from_dict

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "sim" / "scenarios"


def test_every_shipped_scenario_validates():
    files = sorted(SCENARIOS.glob("*.yaml"))
    assert {f.name for f in files} >= {"hetero-small.yaml", "gavel-36x3.yaml", "philly-100k.yaml"}
    for f in files:
        if f.name == "gavel-36x3.yaml":
            continue  # needs the public data for workloads, but its schema is checked below
        scenario = load_scenario(f)
        assert scenario.nodes


def test_hetero_small_is_heterogeneous_and_mixed():
    scenario = load_scenario(SCENARIOS / "hetero-small.yaml")
    assert {n.accelerator_type for n in scenario.nodes} == {"H100", "A100", "Ascend910B"}
    workloads, _ = scenario.workloads(0)
    kinds = {str(w.workload.kind) for w in workloads}
    assert kinds == {"training", "inference"}


def test_errors_name_the_field():
    raw = yaml.safe_load((SCENARIOS / "hetero-small.yaml").read_text())
    raw["cluster"]["nodes"][0]["count"] = 0
    with pytest.raises(ScenarioError, match=r"cluster\.nodes\.0\.count"):
        scenario_from_dict(raw)
    raw = yaml.safe_load((SCENARIOS / "hetero-small.yaml").read_text())
    raw["workload"]["training"]["jobz"] = 3
    with pytest.raises(ScenarioError, match="jobz"):
        scenario_from_dict(raw)
    raw = yaml.safe_load((SCENARIOS / "hetero-small.yaml").read_text())
    raw["failures"] = {"events": [{"time_seconds": 5, "node": "nope"}]}
    with pytest.raises(ScenarioError, match="node 'nope' is not in the cluster"):
        scenario_from_dict(raw)


def test_missing_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TESSERA_DATA", str(tmp_path / "absent"))
    scenario = load_scenario(SCENARIOS / "gavel-36x3.yaml")
    with pytest.raises(ScenarioError, match="set TESSERA_DATA"):
        scenario.workloads(0)


def test_cli_runs_a_scenario_and_writes_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    raw = yaml.safe_load((SCENARIOS / "hetero-small.yaml").read_text())
    raw["workload"]["training"]["jobs"] = 30
    raw["failures"] = {"events": [{"time_seconds": 3600, "node": "h100-0"}, {"time_seconds": 7200, "node": "h100-0", "up": True}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out.json"
    assert main(["sim", "run", "--scenario", str(path), "--policy", "fifo,gavel", "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "fifo" in printed and "gavel" in printed and "UTIL H100" in printed
    records = json.loads(out.read_text())["records"]
    assert [r["policy"] for r in records] == ["fifo", "gavel"]
    for r in records:
        assert r["jobs_finished"] == 30
        assert r["node_failures"] == 1
        assert 0 < r["slo_attainment"] <= 1
        assert set(r["utilization"]) == {"H100", "A100", "Ascend910B"}
        assert r["decision_p99_ms"] >= r["decision_p50_ms"] >= 0


def test_cli_reports_bad_scenarios(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ncluster: {nodes: []}\n")
    assert main(["sim", "run", "--scenario", str(path)]) == 2
    assert "workload" in capsys.readouterr().err


def test_plots_are_written(tmp_path: Path):
    pytest.importorskip("matplotlib")
    raw = yaml.safe_load((SCENARIOS / "hetero-small.yaml").read_text())
    raw["workload"]["training"]["jobs"] = 10
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["sim", "run", "--scenario", str(path), "--policy", "fifo", "--plot", str(tmp_path / "plots"), "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == ["jct_cdf.png", "slo_attainment.png", "utilization.png"]


@pytest.mark.data
def test_services_from_public_traces(shared_data: Path):
    raw = yaml.safe_load((SCENARIOS / "hetero-small.yaml").read_text())
    raw["cluster"]["nodes"] = [{"type": "H100", "count": 1, "accelerators": 8}, {"type": "A100", "count": 1, "accelerators": 8}]
    raw["workload"] = {"inference": [{
        "name": "llm",
        "splitwise": {"model": "llama2-70b", "prompt_size": 1500, "token_size": 30},
        "max_replicas": 4,
        "spread": "none",
        "load": {"kind": "azure", "path": "$TESSERA_DATA/llm-inference/AzureLLMInferenceTrace_code.csv", "scale": 0.2},
    }]}
    raw["sim"] = {"horizon_hours": 2}
    scenario = scenario_from_dict(raw)
    (service,), _ = scenario.workloads(0)
    throughput = {o.accelerator_type: o.throughput for o in service.workload.options}
    assert throughput["H100"] > throughput["A100"] > 0
    assert service.load is not None and max(service.load.rates_per_second) > 0
    raw["workload"]["inference"][0]["throughput"] = {"H100": 1.0}
    with pytest.raises(ScenarioError, match="exactly one of 'throughput'"):
        scenario_from_dict(raw)
