"""`make demo-torch`: a real PyTorch training job resharded by Tessera on a local control plane.

A private cluster (etcd + kube-apiserver + kwok, in .local-cluster/torch-demo, stopped at the
end), Tessera's CRDs, ``tessera operator --policy elastic --failure-grace-seconds 0``, and
``tests/operator/pod_runner.py`` running the pods of the A100 nodes as local processes.  A
4-replica ElasticJob trains ``examples/torch/train.py`` (DDP over gloo, CPU); one node fails
mid-run, the job shrinks to 3 and grows back to 4, and the loss of every step is printed
beside an uninterrupted 4-replica run on the same data.

``--path torchrun`` runs the pods under torchrun (restart on membership change, state from
the checkpoint) instead of the in-place reshard (state kept in memory).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))
BIN = Path(os.environ.get("TESSERA_BIN_DIR", ROOT / ".local-cluster" / "bin"))

import torch_elastic_scenario as scenario  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=scenario.PATHS, default="in_memory")
    parser.add_argument("--steps", type=int, default=0, help="default: the scenario's for the path (36 in place, 60 torchrun)")
    args = parser.parse_args(argv)
    args.steps = args.steps or scenario.STEPS[args.path]
    state = ROOT / ".local-cluster" / "torch-demo"
    env = {**os.environ, "TESSERA_CLUSTER_DIR": str(state), "TESSERA_BIN_DIR": str(BIN)}
    env.pop("TESSERA_PORT_BASE", None)
    kubeconfig = state / "kubeconfig"
    namespace = "torch-demo"

    def kubectl(*a: str, check: bool = True) -> None:
        subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), *a], check=check, capture_output=True,
                       timeout=120)

    print("== starting a private control plane (hack/cluster-up.sh)", flush=True)
    subprocess.run(["bash", str(ROOT / "hack" / "cluster-up.sh")], env=env, check=True, capture_output=True, timeout=300)
    operator = None
    try:
        kubectl("apply", "-f", str(ROOT / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/elasticjobs.tessera.dev", "--timeout=60s")
        kubectl("create", "namespace", namespace, check=False)
        kubectl("create", "serviceaccount", "default", "-n", namespace, check=False)
        log_path = state / "operator.log"
        print(f"== operator --policy elastic --failure-grace-seconds 0 (log: {log_path})", flush=True)
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "tessera", "operator", "--kubeconfig", str(kubeconfig), "--policy", "elastic",
                 "--metrics-port", "0", "--interval-seconds", "0.5", "--failure-grace-seconds=0", "--policy-param",
                 f"elastic_hysteresis_seconds={scenario.HYSTERESIS_SECONDS}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "KUBECONFIG": str(kubeconfig)})
        work = state / f"run-{args.path}"
        with contextlib.suppress(FileNotFoundError):
            for f in sorted(work.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
        print("== the uninterrupted 4-replica run (local processes, one plan)", flush=True)
        reference = scenario.baseline(state / "baseline", args.steps)
        print(f"== the ElasticJob ({args.path}); pods run by tests/operator/pod_runner.py (output: {work}/pods)",
              flush=True)
        run = scenario.run_job(kubeconfig, namespace, args.path, work, steps=args.steps,
                               step_delay=scenario.STEP_DELAY_SECONDS[args.path],
                               fail_after_step=scenario.FAIL_AFTER_STEP, log=lambda m: print("   " + m, flush=True))
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=15)
        subprocess.run(["bash", str(ROOT / "hack" / "cluster-down.sh")], env=env, capture_output=True, timeout=60)
    print(f"\n{'step':>4} {'world':>5} {'plan gen':>8} {'loss':>14} {'uninterrupted':>14} {'rel diff':>9}")
    for record in scenario.steps_of(run.records):
        ref = reference[record["step"]]
        print(f"{record['step']:>4} {record['world_size']:>5} {record['generation']:>8} {record['loss']:>14.10f} "
              f"{ref:>14.10f} {abs(record['loss'] - ref) / abs(ref):>9.1e}")
    print(f"\nnode NotReady -> first step on 3 replicas: {run.recovery_seconds:.2f} s; plan generations "
          f"{run.shrink_generation} (shrink), {run.grow_generation} (grow); loss max rel diff "
          f"{scenario.max_rel_diff(run, reference):.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
