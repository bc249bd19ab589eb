"""examples/torch/train.py in place, without a cluster: a plan directory swapped like kubelet would.

Four local processes train under plan generation 1 (replicas 0-3).  Replica 0 (the master,
hosting the store) is killed mid-run and generation 2 (replicas 1-3, master 1) is written;
then a new replica 0 is started and generation 3 (0-3, master 0 again, on the same port)
is written.  The survivors re-form their group twice and keep their state in memory; the
new replica receives it by broadcast.  Every step must run exactly once and match an
uninterrupted 4-replica run.  The operator-driven version is
tests/operator/test_torch_elastic.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None and os.environ.get("TESSERA_REQUIRE_CLUSTER") != "1",
                       reason="PyTorch is not installed (pip install -e '.[torch]', or make torch)"),
]

STEPS = 24


def write_plan(plan_dir: Path, generation: int, replicas: list[int], port: int) -> None:
    per_rank = 48 // 4 // len(replicas)
    plan = {"generation": generation, "dp": len(replicas), "tp": 1, "pp": 1, "micro_batch": 4,
            "grad_accum_steps": per_rank, "global_batch_size": 48, "devices_per_replica": 1, "replicas": replicas,
            "rank_micro_batches": [per_rank] * len(replicas), "master_addr": "127.0.0.1", "master_port": port,
            "nnodes": len(replicas), "world_size": len(replicas)}
    (plan_dir / ".plan.json").write_text(json.dumps(plan))
    os.replace(plan_dir / ".plan.json", plan_dir / "plan.json")
    (plan_dir / ".generation").write_text(str(generation))
    os.replace(plan_dir / ".generation", plan_dir / "generation")


def test_in_place_reshard_keeps_state_and_loss_curve(tmp_path: Path) -> None:
    import torch_elastic_scenario as scenario

    reference = scenario.baseline(tmp_path / "baseline", STEPS)
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    ports = {0: scenario.free_port(), 1: scenario.free_port()}
    write_plan(plan_dir, 1, [0, 1, 2, 3], ports[0])
    loss_log = tmp_path / "loss.jsonl"

    def start(replica: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "TESSERA_PLAN_DIR": str(plan_dir), "TESSERA_REPLICA_INDEX": str(replica),
               "LOCAL_WORLD_SIZE": "1"}
        out = (tmp_path / f"replica-{replica}-{time.monotonic_ns()}.log").open("wb")
        return subprocess.Popen([sys.executable, *scenario.script_args(STEPS, tmp_path / "ckpt.pt", loss_log, 0.15)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)

    def steps() -> list[dict]:
        return scenario.steps_of(scenario.read_log(loss_log))

    procs = {r: start(r) for r in range(4)}
    try:
        scenario.wait(lambda: any(r["step"] >= 5 for r in steps()), 120, "step 5")
        procs.pop(0).kill()  # the master and its store
        write_plan(plan_dir, 2, [1, 2, 3], ports[1])
        scenario.wait(lambda: any(r["world_size"] == 3 for r in steps()), 60, "a step on 3 replicas")
        procs[0] = start(0)
        write_plan(plan_dir, 3, [0, 1, 2, 3], ports[0])  # the old master's port, now the new replica's
        for proc in procs.values():
            proc.wait(timeout=180)
    finally:
        for proc in procs.values():
            proc.kill()
    logs = "\n".join(p.read_text()[-1500:] for p in sorted(tmp_path.glob("replica-*.log")))
    assert all(p.returncode == 0 for p in procs.values()), logs
    records = steps()
    assert [r["step"] for r in records] == list(range(STEPS)), logs
    sizes = [r["world_size"] for r in records]
    assert sizes[0] == 4 and 3 in sizes and sizes[-1] == 4
    assert [r["generation"] for r in records][-1] == 3
    for record in records:
        assert abs(record["loss"] - reference[record["step"]]) <= 1e-9 * abs(reference[record["step"]]), record
