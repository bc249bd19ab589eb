"""examples/train_elastic.py honours the contract: same model under any plan, resumes on a plan change."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tessera.api.elastic_contract import configmap_data, pod_env
from tessera.core.sharding import ShardingPlan, plan_sharding

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_elastic.py"
BATCH = 48


def script_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_elastic", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(replica_types, indices, generation, **kw) -> ShardingPlan:
    result = plan_sharding(replica_types, replica_indices=indices, global_batch_size=BATCH, max_micro_batch=4,
                           generation=generation, **kw)
    assert isinstance(result, ShardingPlan), result
    return result


def publish(plan_dir: Path, data: dict[str, str], version: int) -> None:
    """Write ConfigMap data the way kubelet does: a new timestamped dir, then swap ``..data``."""
    payload = plan_dir / f"..{version}"
    payload.mkdir()
    for key, value in data.items():
        (payload / key).write_text(value)
    tmp_link = plan_dir / "..data_tmp"
    tmp_link.symlink_to(payload.name)
    os.replace(tmp_link, plan_dir / "..data")
    for key in data:
        link = plan_dir / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")


def reference(steps: int, lr: float = 0.5) -> tuple[float, float]:
    """The model after ``steps`` under one fixed plan (dp=1)."""
    module = script_module()
    only = plan(1, [0], 1).to_dict()
    w = b = 0.0
    for step in range(steps):
        w, b, _ = module.train_step(step, w, b, only, lr)
    return w, b


def run(tmp_path: Path, plan_dir: Path, env_plan: ShardingPlan, replica: int, *args: str) -> subprocess.Popen:
    env = {**os.environ, **pod_env("demo", "ns", env_plan, replica), "TESSERA_PLAN_DIR": str(plan_dir)}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--checkpoint", str(tmp_path / "ckpt.json"), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_update_is_identical_under_every_plan():
    module = script_module()
    plans = [
        plan(1, [0], 1),
        plan(4, [0, 1, 2, 3], 2),
        plan(["H100", "A100", "A100"], [0, 1, 2], 3, throughput={"H100": 2.0}),
        plan(5, [0, 1, 2, 3, 4], 4, allow_uneven=True),
    ]
    results = []
    for p in plans:
        w = b = 0.0
        for step in range(3):
            w, b, _ = module.train_step(step, w, b, p.to_dict(), 0.5)
        results.append((w, b))
    for w, b in results[1:]:
        assert w == pytest.approx(results[0][0], abs=1e-12) and b == pytest.approx(results[0][1], abs=1e-12)


def test_reshard_in_place_on_generation_change(tmp_path):
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    first = plan(4, [0, 1, 2, 3], 1)
    publish(plan_dir, configmap_data("demo", "ns", first), 1)
    proc = run(tmp_path, plan_dir, first, 0, "--steps", "40", "--step-seconds", "0.03")
    checkpoint = tmp_path / "ckpt.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if checkpoint.exists() and json.loads(checkpoint.read_text())["step"] >= 5:
            break
        time.sleep(0.01)
    # replica 3's node failed: the operator publishes generation 2 on three survivors, mixed types
    second = plan(["A100", "A100", "H100"], [0, 1, 2], 2, throughput={"H100": 2.0})
    publish(plan_dir, configmap_data("demo", "ns", second), 2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    log = events(out)
    (reshard,) = [e for e in log if e["event"] == "reshard"]
    assert (reshard["generation_from"], reshard["generation_to"]) == (1, 2)
    assert reshard["step"] >= 5 and reshard["rank_micro_batches"] == list(second.rank_micro_batches)
    steps = [e["step"] for e in log if e["event"] == "step"]
    assert steps == list(range(1, 41))  # no step lost or repeated
    done = log[-1]
    w, b = reference(40)
    assert done["event"] == "done" and done["w"] == pytest.approx(w, abs=1e-12) and done["b"] == pytest.approx(b)


def _reshard_after(tmp_path: Path, step: int, *args: str) -> list[dict]:
    """Run 20 steps with rare checkpoints; swap the plan (4 -> 3 replicas) after ``step``."""
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    first = plan(4, [0, 1, 2, 3], 1)
    publish(plan_dir, configmap_data("demo", "ns", first), 1)
    proc = run(tmp_path, plan_dir, first, 0, "--steps", "20", "--step-seconds", "0.05",
               "--checkpoint-every", "1000", *args)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        event = json.loads(line)
        if event["event"] == "step" and event["step"] >= step:
            break
    second = plan(3, [0, 1, 2], 2)
    publish(plan_dir, configmap_data("demo", "ns", second), 2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return events("".join(seen) + out)


def test_in_memory_reshard_keeps_progress_without_a_checkpoint(tmp_path):
    log = _reshard_after(tmp_path, 5)
    (reshard,) = [e for e in log if e["event"] == "reshard"]
    assert reshard["state_from"] == "memory" and reshard["step"] >= 5  # no checkpoint was written yet
    steps = [e["step"] for e in log if e["event"] == "step"]
    assert steps == list(range(1, 21))  # no step lost or repeated
    w, b = reference(20)
    assert log[-1]["w"] == pytest.approx(w, abs=1e-12) and log[-1]["b"] == pytest.approx(b, abs=1e-12)


def test_checkpoint_reshard_rolls_back_to_the_last_checkpoint(tmp_path):
    log = _reshard_after(tmp_path, 5, "--reshard-from", "checkpoint")
    (reshard,) = [e for e in log if e["event"] == "reshard"]
    assert reshard["state_from"] == "checkpoint" and reshard["step"] == 0  # nothing checkpointed: from scratch
    steps = [e["step"] for e in log if e["event"] == "step"]
    assert len(steps) > 20 and steps[-20:] == list(range(1, 21))  # the steps before the reshard are redone
    w, b = reference(20)
    assert log[-1]["w"] == pytest.approx(w, abs=1e-12) and log[-1]["b"] == pytest.approx(b, abs=1e-12)


def test_restarted_pod_resumes_from_checkpoint_under_new_plan(tmp_path):
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    first = plan(2, [0, 1], 1)
    publish(plan_dir, configmap_data("demo", "ns", first), 1)
    proc = run(tmp_path, plan_dir, first, 0, "--steps", "6")
    assert proc.wait(timeout=60) == 0
    grown = plan(4, [0, 1, 2, 3], 2)
    publish(plan_dir, configmap_data("demo", "ns", grown), 2)
    proc = run(tmp_path, plan_dir, grown, 0, "--steps", "12")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    log = events(out)
    assert log[0] == {"event": "start", "step": 6, "generation": 2, "dp": 4, "micro_batch": 4,
                      "rank_micro_batches": [3, 3, 3, 3]}
    w, b = reference(12)
    assert log[-1]["w"] == pytest.approx(w, abs=1e-12) and log[-1]["b"] == pytest.approx(b, abs=1e-12)


def test_replica_outside_the_plan_leaves(tmp_path):
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    survivors = plan(2, [0, 2], 3)
    publish(plan_dir, configmap_data("demo", "ns", survivors), 1)
    env_plan = plan(3, [0, 1, 2], 2)  # the pod was started under the older plan
    proc = run(tmp_path, plan_dir, env_plan, 1, "--steps", "5")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert events(out) == [{"event": "leave", "replica": 1, "generation": 3}]
