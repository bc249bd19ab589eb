"""Real PyTorch elastic training resharded by the operator: recovery time and the loss curve.

Starts a private local cluster (etcd + kube-apiserver + kwok, ``hack/cluster-up.sh``), the
CRDs and ``tessera operator --policy elastic --failure-grace-seconds 0``, then per trial and
per path runs the scenario of ``tests/operator/test_torch_elastic.py``
(``tests/operator/torch_elastic_scenario.py``): a 4-replica ElasticJob of
``examples/torch/train.py`` (DDP, gloo, CPU) run as local processes by
``tests/operator/pod_runner.py``; mid-run the node of replica 1 turns NotReady, the job
shrinks to 3, the node comes back and the job grows back to 4.

Per record: ``path`` (``in_memory``: the script re-forms its group in place and keeps its
state; ``torchrun``: torchrun restarts the workers, state from the last checkpoint),
``recovery_seconds`` (node NotReady -> first optimiser step on the 3 survivors, from the
loss log's wall-clock stamps), ``loss_max_rel_diff`` (largest relative difference of any
logged step's loss from an uninterrupted 4-replica run on the same data order) and
``redone_steps``.  The summary has ``recovery_seconds_median`` per path.

Run: ``.venv/bin/python -m bench torch_elastic [--trials 10] [--json PATH]`` (needs
``make tools`` and ``make torch``); ``--trials 2`` for a quick look.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))
BIN = Path(os.environ.get("TESSERA_BIN_DIR", ROOT / ".local-cluster" / "bin"))
NAMESPACE = "bench-torch"
STEPS = 30
STEP_DELAY_SECONDS = 0.2
FAIL_AFTER_STEP = 6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_torch_elastic")
    parser.add_argument("--trials", type=int, default=10, help="trials per path")
    parser.add_argument("--paths", default="in_memory,torchrun")
    parser.add_argument("--json", default="", help="also write the records and summary here")
    parser.add_argument("--name", default="torch_elastic")
    args = parser.parse_args(argv)
    missing = [b for b in ("etcd", "kube-apiserver", "kubectl", "kwok") if not (BIN / b).exists()]
    try:
        import torch  # noqa: F401
    except ImportError:
        missing.append("torch (make torch)")
    if missing:
        print(f"bench_torch_elastic SKIPPED: missing {', '.join(missing)}")
        return 0
    import torch_elastic_scenario as scenario

    paths = [p for p in args.paths.split(",") if p]
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-torch-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "TESSERA_CLUSTER_DIR": str(tmp / "cluster"), "TESSERA_BIN_DIR": str(BIN)}
        env.pop("TESSERA_PORT_BASE", None)
        kubeconfig = tmp / "cluster" / "kubeconfig"
        operator: subprocess.Popen[bytes] | None = None
        log_path = tmp / "operator.log"

        def kubectl(*a: str) -> None:
            subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), *a], check=True,
                           capture_output=True, timeout=120)

        try:
            subprocess.run(["bash", str(ROOT / "hack" / "cluster-up.sh")], env=env, check=True, capture_output=True,
                           timeout=300)
            kubectl("apply", "-f", str(ROOT / "crds"))
            kubectl("wait", "--for=condition=Established", "crd/elasticjobs.tessera.dev", "--timeout=60s")
            kubectl("create", "namespace", NAMESPACE)
            with contextlib.suppress(subprocess.CalledProcessError):
                kubectl("create", "serviceaccount", "default", "-n", NAMESPACE)
            reference = scenario.baseline(tmp / "baseline", STEPS)
            for path in paths:
                # one operator per path: the growth hysteresis differs (scenario.HYSTERESIS_SECONDS)
                with log_path.open("ab") as log:
                    operator = subprocess.Popen(
                        [sys.executable, "-m", "tessera", "operator", "--kubeconfig", str(kubeconfig), "--policy",
                         "elastic", "--metrics-port", "0", "--interval-seconds", "0.5", "--lease-duration-seconds",
                         "3", "--failure-grace-seconds=0", "--policy-param",
                         f"elastic_hysteresis_seconds={scenario.HYSTERESIS_SECONDS[path]}", "--log-level", "WARNING"],
                        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                        env={**os.environ, "KUBECONFIG": str(kubeconfig)})
                for trial in range(args.trials):
                    started = time.monotonic()
                    try:
                        run = scenario.run_job(kubeconfig, NAMESPACE, path, tmp / f"{path}-{trial}", steps=STEPS,
                                               step_delay=STEP_DELAY_SECONDS, fail_after_step=FAIL_AFTER_STEP,
                                               name=f"torch-{trial}-{path.replace('_', '-')}")
                    except AssertionError as err:  # a trial that did not recover is a result, not a crash
                        records.append({"trial": trial, "path": path, "recovery_seconds": float("nan"),
                                        "loss_max_rel_diff": float("nan"), "error": str(err)[:300],
                                        "wall_seconds": round(time.monotonic() - started, 1)})
                        print(f"trial {trial} {path}: FAILED: {err}", flush=True)
                        continue
                    steps = [r["step"] for r in scenario.steps_of(run.records)]
                    record = {
                        "trial": trial, "path": path,
                        "recovery_seconds": round(run.recovery_seconds, 3),
                        "loss_max_rel_diff": scenario.max_rel_diff(run, reference),
                        "redone_steps": len(steps) - len(set(steps)),
                        "shrink_generation": run.shrink_generation, "grow_generation": run.grow_generation,
                        "node_blips": run.node_blips,
                        "wall_seconds": round(time.monotonic() - started, 1),
                    }
                    records.append(record)
                    print(f"trial {trial} {path}: recovery {record['recovery_seconds']:.2f} s, loss max rel diff "
                          f"{record['loss_max_rel_diff']:.3g}, redone steps {record['redone_steps']}", flush=True)
                stop(operator)
                operator = None
        except Exception as err:
            print(f"bench_torch_elastic failed: {err}\n{log_path.read_text()[-4000:] if log_path.exists() else ''}")
            return 1
        finally:
            if operator is not None:
                stop(operator)
            subprocess.run(["bash", str(ROOT / "hack" / "cluster-down.sh")], env=env, capture_output=True, timeout=60)
    return report(records, paths, args)


def stop(operator: subprocess.Popen[bytes]) -> None:
    operator.terminate()
    try:
        operator.wait(timeout=15)
    except subprocess.TimeoutExpired:
        operator.kill()
        operator.wait()


def report(records: list[dict[str, Any]], paths: list[str], args: argparse.Namespace) -> int:
    summary = []
    for path in paths:
        mine = [r for r in records if r["path"] == path]
        ok = [r for r in mine if "error" not in r]
        recovery = [r["recovery_seconds"] for r in ok]
        nan = float("nan")
        summary.append({
            "path": path, "trials": len(mine), "recovered": len(ok),
            "recovery_seconds_median": statistics.median(recovery) if ok else nan,
            "recovery_seconds_max": max(recovery) if ok else nan,
            "loss_max_rel_diff": max(r["loss_max_rel_diff"] for r in ok) if ok else nan,
            "redone_steps_median": statistics.median(r["redone_steps"] for r in ok) if ok else nan,
        })
    command = f".venv/bin/python -m bench torch_elastic --trials {args.trials} --paths {args.paths}"
    if args.name != "torch_elastic":
        command += f" --name {args.name}"
    notes = (f"{len(records)} runs on a local kube-apiserver + kwok; a 4-replica ElasticJob (min 2, 1 A100 each, one "
             f"per node) of examples/torch/train.py (3-layer MLP, float64, DDP over gloo, CPU, global batch "
             f"{scenario_constants()}, {STEPS} steps, {STEP_DELAY_SECONDS} s pause per step) run as local processes "
             f"by tests/operator/pod_runner.py; operator --policy elastic --failure-grace-seconds 0. Recovery: node "
             f"NotReady patch -> first optimiser step on the 3 survivors (wall-clock stamps of the loss log). Loss: "
             f"largest relative difference of any logged step from an uninterrupted 4-replica run. Shared 2-core "
             f"machine (other builds ran beside it).")
    write_results(args.name, records, summary, command=command, notes=notes,
                  columns=["path", "trials", "recovered", "recovery_seconds_median", "recovery_seconds_max", "loss_max_rel_diff",
                           "redone_steps_median"])
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "summary": summary, "records": records}, indent=1))
    for row in summary:
        print(f"{row['path']}: recovery median {row['recovery_seconds_median']:.2f} s (max "
              f"{row['recovery_seconds_max']:.2f}), loss max rel diff {row['loss_max_rel_diff']:.3g}")
    return 0


def scenario_constants() -> str:
    import torch_elastic_scenario as scenario

    return f"{scenario.GLOBAL_BATCH} in micro-batches of {scenario.MICRO_BATCH}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
