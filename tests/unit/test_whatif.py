"""`tessera whatif` on a saved snapshot: the operator's own state builder, each policy's plan, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_kube import elasticjob, gpu_node

from tessera.cli import main
from tessera.operator.whatif import decide, load_snapshot

T = 1_800_000_000.0


def bound_pod(job: dict[str, Any], replica: int, node: str, gpus: int) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "metadata": {"name": f"{meta['name']}-{replica}", "namespace": meta["namespace"], "uid": f"pod-{meta['name']}-{replica}",
                     "labels": {"tessera.dev/workload": meta["name"], "tessera.dev/workload-uid": meta["uid"],
                                "tessera.dev/workload-kind": "ElasticJob", "tessera.dev/replica": str(replica),
                                "tessera.dev/placement-generation": "1"},
                     "ownerReferences": [{"kind": "ElasticJob", "name": meta["name"], "uid": meta["uid"]}]},
        "spec": {"nodeName": node, "schedulerName": "tessera",
                 "containers": [{"name": "trainer", "image": "trainer:1",
                                 "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": "Running"},
    }


def snapshot() -> dict[str, Any]:
    running = elasticjob("running", replicas=1, accelerators=8, types=("H100",))
    running["status"] = {"phase": "Running", "startTime": "2027-01-15T07:00:00Z", "placementGeneration": 1,
                         "replicas": 1, "placement": [{"replica": 0, "pod": "running-0", "node": "h0",
                                                       "acceleratorType": "H100", "generation": 1}]}
    return {"version": 1, "takenAt": T,
            "nodes": [gpu_node("h0"), gpu_node("a0", product="NVIDIA-A100-SXM4-80GB")],
            "pods": [bound_pod(running, 0, "h0", 8)],
            "workloads": [["ElasticJob", running],
                          ["ElasticJob", elasticjob("train", types=("H100", "A100"))],
                          ["ElasticJob", elasticjob("other", namespace="elsewhere", types=("A100",))]]}


def test_each_policy_plans_around_what_runs() -> None:
    records = decide(snapshot(), ["cpsat", "best-fit"], {})
    assert [r["policy"] for r in records] == ["cpsat", "best-fit"]
    for record in records:
        assert record["running"] == 1 and record["pending"] == 2
        # h0 is full (the running job's pod holds its 8 GPUs): the waiting jobs go to a0
        placed = {p["workload"]: p["replicas"] for p in record["placements"]}
        assert set(placed) | set(record["waiting"]) == {"ns/train", "elsewhere/other"}
        assert all(r.startswith("a0 (A100)") for replicas in placed.values() for r in replicas), placed


def test_a_namespace_filter_keeps_other_pods_counted() -> None:
    (record,) = decide(snapshot(), ["best-fit"], {}, namespaces=frozenset({"ns"}))
    assert record["pending"] == 1 and [p["workload"] for p in record["placements"]] == ["ns/train"]


def test_the_command_saves_and_reads_a_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "snap.json"
    saved.write_text(json.dumps(snapshot()))
    out = tmp_path / "plans.json"
    assert main(["whatif", "--snapshot", str(saved), "--policy", "best-fit", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "-> a0 (A100), a0 (A100)" in printed and "waits   " in printed  # a0 holds one of the two
    assert json.loads(out.read_text())[0]["policy"] == "best-fit"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a tessera whatif snapshot"):
        load_snapshot(bad)
    assert main(["whatif", "--snapshot", str(bad)]) == 2
    assert main(["whatif", "--snapshot", str(saved), "--policy", "no-such-policy"]) == 2


def test_the_snapshot_s_queues_limit_the_plans_as_in_the_operator() -> None:
    from fake_kube import queue

    data = snapshot()
    for _kind, raw in data["workloads"][1:]:
        raw["spec"]["queueName"] = "small"
    data["queues"] = [queue("small", A100=2)]  # 2 A100: neither 4-GPU x 2 job fits its quota
    (record,) = decide(data, ["best-fit"], {})
    assert not record["placements"]
    assert all(why.startswith("over quota") for why in record["waiting"].values()), record["waiting"]
