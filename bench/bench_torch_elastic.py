"""Real PyTorch elastic training resharded by the operator: recovery time and the loss curve.

Starts a private local cluster (etcd + kube-apiserver + kwok, ``hack/cluster-up.sh``), the
CRDs and ``tessera operator --policy elastic --failure-grace-seconds 0``, then runs the
scenario of ``tests/operator/test_torch_elastic.py`` (``tests/operator/torch_elastic_scenario.py``)
for each trial and each path, the paths alternating within a trial so that both see the same
machine: a 4-replica ElasticJob of ``examples/torch/train.py`` (DDP, gloo, CPU) run as local
processes by ``tests/operator/pod_runner.py``; mid-run the node of replica 1 turns NotReady,
the job shrinks to 3, the node comes back and the job grows back to 4.

Per record: ``path`` (``in_memory``: the script re-forms its group in place and keeps its
state; ``torchrun``: torchrun restarts the workers, state from the last checkpoint),
``recovery_seconds`` (node NotReady -> first optimiser step on the 3 survivors, from the
loss log's wall-clock stamps), ``regrow_seconds`` (node Ready again -> first step on 4),
``loss_max_rel_diff`` (largest relative difference of any logged step's loss from an
uninterrupted 4-replica run on the same data order), ``redone_steps`` and, for torchrun,
where the recovery went (``until_worker_started``: failed collective, agents notice, c10d
round without the dead agent; ``worker_start``: Python + torch import + gloo + checkpoint).
The summary has ``recovery_seconds_median`` per path.  A trial that does not recover is
recorded with its error and counted in ``trials`` but not in ``recovered``.

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
            reference = scenario.baseline(tmp / "baseline", max(scenario.STEPS[p] for p in paths))
            with log_path.open("ab") as log:
                operator = subprocess.Popen(
                    [sys.executable, "-m", "tessera", "operator", "--kubeconfig", str(kubeconfig), "--policy",
                     "elastic", "--metrics-port", "0", "--interval-seconds", "0.5", "--lease-duration-seconds",
                     "3", "--failure-grace-seconds=0", "--policy-param",
                     f"elastic_hysteresis_seconds={scenario.HYSTERESIS_SECONDS}", "--log-level", "WARNING"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                    env={**os.environ, "KUBECONFIG": str(kubeconfig)})
            for trial in range(args.trials):
                for path in paths:
                    records.append(one_trial(scenario, kubeconfig, tmp, path, trial, reference))
        except Exception as err:
            print(f"bench_torch_elastic failed: {err}\n{log_path.read_text()[-4000:] if log_path.exists() else ''}")
            return 1
        finally:
            if operator is not None:
                stop(operator)
            subprocess.run(["bash", str(ROOT / "hack" / "cluster-down.sh")], env=env, capture_output=True, timeout=60)
    return report(records, paths, args)


def one_trial(scenario: Any, kubeconfig: Path, tmp: Path, path: str, trial: int,
              reference: list[float]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        run = scenario.run_job(kubeconfig, NAMESPACE, path, tmp / f"{path}-{trial}", steps=scenario.STEPS[path],
                               step_delay=scenario.STEP_DELAY_SECONDS[path], fail_after_step=scenario.FAIL_AFTER_STEP,
                               name=f"torch-{trial}-{path.replace('_', '-')}")
    except AssertionError as err:  # a trial that did not recover is a result, not a crash
        print(f"trial {trial} {path}: FAILED: {err}", flush=True)
        return {"trial": trial, "path": path, "recovery_seconds": float("nan"), "loss_max_rel_diff": float("nan"),
                "error": str(err)[:300], "wall_seconds": round(time.monotonic() - started, 1)}
    steps = [r["step"] for r in scenario.steps_of(run.records)]
    record = {
        "trial": trial, "path": path,
        "recovery_seconds": round(run.recovery_seconds, 3),
        "regrow_seconds": round(run.regrow_seconds, 3),
        **run.restart_split(),
        "loss_max_rel_diff": scenario.max_rel_diff(run, reference),
        "redone_steps": len(steps) - len(set(steps)),
        "shrink_generation": run.shrink_generation, "grow_generation": run.grow_generation,
        "node_blips": run.node_blips,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(f"trial {trial} {path}: recovery {record['recovery_seconds']:.2f} s {run.restart_split()}, regrow "
          f"{record['regrow_seconds']:.2f} s, loss max rel diff {record['loss_max_rel_diff']:.3g}, redone steps "
          f"{record['redone_steps']}", flush=True)
    return record


def stop(operator: subprocess.Popen[bytes]) -> None:
    operator.terminate()
    try:
        operator.wait(timeout=15)
    except subprocess.TimeoutExpired:
        operator.kill()
        operator.wait()


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # NaN (a step that never came) out
    return round(statistics.median(values), 3) if values else float("nan")


def report(records: list[dict[str, Any]], paths: list[str], args: argparse.Namespace) -> int:
    import torch_elastic_scenario as scenario

    summary = []
    for path in paths:
        mine = [r for r in records if r["path"] == path]
        ok = [r for r in mine if "error" not in r]
        recovery = [r["recovery_seconds"] for r in ok]
        nan = float("nan")
        summary.append({
            "path": path, "trials": len(mine), "recovered": len(ok),
            "recovery_seconds_median": _median(recovery),
            "recovery_seconds_min": min(recovery) if ok else nan,
            "recovery_seconds_max": max(recovery) if ok else nan,
            "until_worker_started_median": _median([r["until_worker_started"] for r in ok if "until_worker_started" in r]),
            "worker_start_median": _median([r["worker_start"] for r in ok if "worker_start" in r]),
            "regrow_seconds_median": _median([r["regrow_seconds"] for r in ok]),
            "loss_max_rel_diff": max(r["loss_max_rel_diff"] for r in ok) if ok else nan,
            "redone_steps_median": _median([r["redone_steps"] for r in ok]),
        })
    command = f".venv/bin/python -m bench torch_elastic --trials {args.trials} --paths {args.paths}"
    if args.name != "torch_elastic":
        command += f" --name {args.name}"
    settings = "; ".join(f"{p}: {scenario.STEPS[p]} steps, {scenario.STEP_DELAY_SECONDS[p]} s pause per step"
                         for p in paths)
    notes = (f"{len(records)} runs on a local kube-apiserver + kwok, the paths alternating within each trial; a "
             f"4-replica ElasticJob (min 2, 1 A100 each, one per node) of examples/torch/train.py (3-layer MLP, float64, "
             f"DDP over gloo, CPU, global batch {scenario.GLOBAL_BATCH} in micro-batches of {scenario.MICRO_BATCH}; "
             f"{settings}; node failed after step {scenario.FAIL_AFTER_STEP}) run as local processes by "
             f"tests/operator/pod_runner.py; operator --policy elastic --failure-grace-seconds 0, hysteresis "
             f"{scenario.HYSTERESIS_SECONDS:g} s; torchrun with PET_RDZV_CONF "
             f"{scenario.TORCHRUN_ENV['PET_RDZV_CONF']}. Recovery: node NotReady patch -> first optimiser step on the 3 "
             f"survivors (wall-clock stamps of the loss log); for torchrun split into until_worker_started (failed "
             f"collective, agents notice, c10d round without the dead agent) and worker_start (Python, import torch, "
             f"gloo, checkpoint). Regrow: node Ready again -> first step on 4. Loss: largest relative difference of any "
             f"logged step (redone ones too) from an uninterrupted 4-replica run. Shared 2-core machine (other builds "
             f"ran beside it).")
    write_results(args.name, records, summary, command=command, notes=notes,
                  columns=["path", "trials", "recovered", "recovery_seconds_median", "recovery_seconds_min",
                           "recovery_seconds_max", "until_worker_started_median", "worker_start_median",
                           "regrow_seconds_median", "loss_max_rel_diff", "redone_steps_median"])
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "summary": summary, "records": records}, indent=1))
    for row in summary:
        print(f"{row['path']}: {row['recovered']}/{row['trials']} recovered, recovery median "
              f"{row['recovery_seconds_median']:.2f} s (max {row['recovery_seconds_max']:.2f}), loss max rel diff "
              f"{row['loss_max_rel_diff']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
