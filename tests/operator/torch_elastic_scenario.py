"""Real PyTorch elastic training under the operator: the scenario shared by the test, the bench and the demo.

A 4-replica ElasticJob (min 2, 1 A100 each, one replica per node: each asks for 60 of a
node's 96 CPUs) runs ``examples/torch/train.py`` through :mod:`pod_runner`, either in place
(the container command is the script: it re-forms its process group on each new plan and
keeps its state in memory) or under ``torchrun`` (restart on membership change, resume from
the checkpoint).  Mid-run the node of one replica is made NotReady (taken from kwok, Ready
False, as tests/operator/test_elastic.py does); the operator shrinks the job to 3; the node
comes back and, after the hysteresis, the job grows back to 4.  The loss curve is compared
with an uninterrupted 4-replica run of the same script on the same data order, run locally
with a fixed plan (:func:`baseline`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "torch" / "train.py"
RUNNER = Path(__file__).resolve().parent / "pod_runner.py"
GROUP, VERSION, PLURAL = "tessera.dev", "v1alpha1", "elasticjobs"
GLOBAL_BATCH, MICRO_BATCH = 48, 4  # dp 4 -> 3 micro-batches per rank, dp 3 -> 4: both exact
#: the operator's elastic_hysteresis_seconds (both paths): growth waits for it after the
#: shrink.  The failed node comes back only once the survivors have stepped on the new plan,
#: and NodeDown keeps it NotReady and cordoned until then (kwok's stray Ready moments), so the
#: grow can neither overtake the shrink nor land on the failed node; it follows the node's
#: return at once
HYSTERESIS_SECONDS = 4.0
PATHS = ("in_memory", "torchrun")
#: steps and the pause after each, per path (test, bench and demo): torchrun restarts the
#: workers on the shrink and on the grow (~10-25 s each on a loaded 2-core machine), so its
#: run is longer and slower, leaving steps for 3 and then for 4 replicas
STEPS = {"in_memory": 36, "torchrun": 60}
STEP_DELAY_SECONDS = {"in_memory": 0.2, "torchrun": 0.5}
#: the node fails once the job is past this step (a checkpoint every 5 steps: 5 is the last)
FAIL_AFTER_STEP = 7
#: torchrun's c10d rendezvous: close a round 3 s after min nodes joined (default 30 s) and
#: notice a dead agent after 5 s without a heartbeat (keep_alive_interval x keep_alive_max_attempt;
#: default 5 s x 3).  The expiry must stay well above the longest gap between two heartbeats of
#: a *live* agent, which c10d itself makes ~2 intervals long at the end of every round: the last
#: heartbeat written while waiting in the round, up to 1 s of polling until the agent sees the
#: round complete, then 1 interval until its keep-alive timer first fires (measured: 2.0-2.1 s,
#: also with two busy loops beside).  An agent whose own heartbeat has expired when it first
#: syncs removes itself from the rendezvous state and never heartbeats again; with
#: keep_alive_max_attempt=2 (a 2 s expiry) that happened to nearly every agent after every
#: round, a joining agent then found a round with no participants, waited there alone, and the
#: running agents (which restart only for nodes on the *wait list*) never re-formed: the grow
#: hung until join_timeout.  Workers get a fresh store per round
#: (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1): on the agent's shared store, agents whose restart
#: counts differ (a failed worker counts, a membership change does not) read each other's stale
#: keys and time out connecting to dead workers.
TORCHRUN_ENV = {"PET_RDZV_CONF": "last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=5,join_timeout=120",
                "PET_MONITOR_INTERVAL": "0.2", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "LOGLEVEL": "INFO"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script_args(steps: int, checkpoint: Path, loss_log: Path, step_delay: float, extra: tuple[str, ...] = ()) -> list[str]:
    return [str(SCRIPT), "--steps", str(steps), "--checkpoint", str(checkpoint), "--checkpoint-every", "5",
            "--loss-log", str(loss_log), "--step-delay-seconds", str(step_delay), *extra]


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


def steps_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "step" in r and "loss" in r]


def baseline(work_dir: Path, steps: int, replicas: int = 4, timeout: float = 180) -> list[float]:
    """Losses of an uninterrupted ``replicas``-replica run (local processes, one fixed plan)."""
    plan_dir = work_dir / "plan"
    plan_dir.mkdir(parents=True, exist_ok=True)
    micro = GLOBAL_BATCH // MICRO_BATCH // replicas
    plan = {"generation": 1, "dp": replicas, "tp": 1, "pp": 1, "micro_batch": MICRO_BATCH,
            "grad_accum_steps": micro, "global_batch_size": GLOBAL_BATCH, "devices_per_replica": 1,
            "replicas": list(range(replicas)), "rank_micro_batches": [micro] * replicas,
            "master_addr": "127.0.0.1", "master_port": free_port(), "nnodes": replicas, "world_size": replicas}
    (plan_dir / "plan.json").write_text(json.dumps(plan))
    (plan_dir / "generation").write_text("1")
    loss_log = work_dir / "loss.jsonl"
    procs = []
    for replica in range(replicas):
        env = {**os.environ, "TESSERA_PLAN_DIR": str(plan_dir), "TESSERA_REPLICA_INDEX": str(replica),
               "TESSERA_PLAN": json.dumps(plan), "LOCAL_WORLD_SIZE": "1"}
        with (work_dir / f"replica-{replica}.log").open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, *script_args(steps, work_dir / "ckpt.pt", loss_log, 0.0)],
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    codes = [p.returncode for p in procs]
    if any(codes):
        logs = "\n".join((work_dir / f"replica-{r}.log").read_text()[-2000:] for r in range(replicas))
        raise AssertionError(f"baseline run failed {codes}:\n{logs}")
    losses = {r["step"]: r["loss"] for r in steps_of(read_log(loss_log))}
    assert sorted(losses) == list(range(steps)), f"baseline logged steps {sorted(losses)}"
    return [losses[s] for s in range(steps)]


def elasticjob(name: str, namespace: str, path: str, steps: int, work_dir: Path, step_delay: float) -> dict[str, Any]:
    args = script_args(steps, work_dir / "ckpt.pt", work_dir / "loss.jsonl", step_delay, ("--hold",))
    if path == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", *args]
        env = dict(TORCHRUN_ENV)
    else:
        command = [sys.executable, *args]
        env = {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": {"min": 2, "max": 4}, "acceleratorsPerReplica": 1, "acceleratorTypes": [{"name": "A100"}],
            "globalBatchSize": GLOBAL_BATCH, "microBatchSize": MICRO_BATCH,
            "template": {"spec": {"containers": [{
                "name": "trainer", "image": "local", "command": command, "workingDir": str(ROOT),
                "env": [{"name": k, "value": v} for k, v in env.items()],
                # 60 of a node's 96 CPUs: one replica per node, so a node failure costs one replica
                "resources": {"requests": {"cpu": "60", "memory": "1Gi"}}}]}},
        },
    }


def api_clients(kubeconfig: Path) -> tuple[client.CoreV1Api, client.CustomObjectsApi]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    api = client.ApiClient(configuration)
    return client.CoreV1Api(api), client.CustomObjectsApi(api)


def set_ready(core: client.CoreV1Api, node: str, ready: bool, since: str | None = None) -> str:
    """Fail a kwok node (kwok stops managing its status) or bring it back (as test_elastic.py).

    Returns the Ready condition's ``lastTransitionTime`` (``since`` keeps an earlier one)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if not ready:
        core.patch_node(node, {"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}})
    cond = {"type": "Ready", "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady", "message": "torch_elastic_scenario",
            "lastHeartbeatTime": now, "lastTransitionTime": since or now}
    core.patch_node_status(node, {"status": {"conditions": [cond]}})
    if ready:
        core.patch_node(node, {"metadata": {"annotations": {"kwok.x-k8s.io/status": None}}})
    return since or now


class NodeDown:
    """Keeps ``node`` NotReady until :meth:`restore`.

    kwok plays a heartbeat it had already queued before the node was taken from it (seen
    ~13 s after the annotation with kwok v0.7.0): the node turns Ready again for a moment.
    test_elastic.py's failures are shorter than that; here a watcher puts NotReady back at
    once, keeping the original transition time (a dead kubelet does not come back), and the
    node is cordoned meanwhile so that nothing is bound there during such a moment."""

    def __init__(self, core: client.CoreV1Api, node: str) -> None:
        self.core, self.node = core, node
        self.since = set_ready(core, node, False)
        # and cordoned: the operator once bound a replacement in the few ms a blip lasted
        core.patch_node(node, {"spec": {"unschedulable": True}})
        self.blips = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(0.05):
            try:
                conditions = self.core.read_node_status(self.node).status.conditions or []
                if any(c.type == "Ready" and c.status == "True" for c in conditions) and not self._stop.is_set():
                    self.blips += 1
                    set_ready(self.core, self.node, False, since=self.since)
            except client.ApiException:
                continue

    def restore(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        set_ready(self.core, self.node, True)
        self.core.patch_node(self.node, {"spec": {"unschedulable": None}})


def a100_nodes(core: client.CoreV1Api) -> list[str]:
    return sorted(n.metadata.name for n in core.list_node().items
                  if "A100" in (n.metadata.labels or {}).get("nvidia.com/gpu.product", ""))


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


@dataclass
class Run:
    """One job's life: records of its loss log and the moments that matter."""

    path: str
    records: list[dict[str, Any]] = field(default_factory=list)
    failed_at: float = 0.0  # wall clock: the node patched NotReady
    victim_replica: int = -1
    shrink_generation: int = 0
    grow_generation: int = 0
    back_at: float = 0.0  # the node Ready again
    node_blips: int = 0  # kwok's stray heartbeats put back to NotReady

    def first_step_after(self, t: float, world_size: int) -> dict[str, Any] | None:
        return next((r for r in steps_of(self.records) if r["t"] > t and r["world_size"] == world_size), None)

    @property
    def recovery_seconds(self) -> float:
        """Node NotReady -> first optimiser step of the job on the 3 survivors."""
        first = self.first_step_after(self.failed_at, 3)
        return float("nan") if first is None else first["t"] - self.failed_at

    @property
    def regrow_seconds(self) -> float:
        """Node Ready again -> first optimiser step on 4 replicas (includes the operator's hysteresis
        left after the shrink, if any)."""
        first = self.first_step_after(self.back_at, 4) if self.back_at else None
        return float("nan") if first is None else first["t"] - self.back_at

    def restart_split(self) -> dict[str, float]:
        """torchrun: where the recovery went.  ``until_worker_started``: NotReady -> the restarted
        worker process started (failed collective, agent notices, c10d round without the dead
        agent); ``worker_start``: that process -> its group formed on the plan (Python, import
        torch, gloo, checkpoint).  Empty for the in-place path (nothing restarts)."""
        formed = next((r for r in self.records if r.get("event") == "formed" and r["t"] > self.failed_at
                       and r.get("world_size") == 3 and "process_started_at" in r), None)
        if formed is None:
            return {}
        return {"until_worker_started": round(formed["process_started_at"] - self.failed_at, 3),
                "worker_start": round(formed["t"] - formed["process_started_at"], 3),
                "import": formed["import_seconds"]}


def job_status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return dict(obj.get("status") or {})


def running(custom: client.CustomObjectsApi, namespace: str, name: str, count: int, min_generation: int) -> Any:
    status = job_status(custom, namespace, name)
    plan = status.get("plan") or {}
    if status.get("phase") == "Running" and len(status.get("placement") or []) == count \
            and int(plan.get("generation") or 0) >= min_generation:
        return status
    return None


def run_job(kubeconfig: Path, namespace: str, path: str, work_dir: Path, *, steps: int, step_delay: float,
            fail_after_step: int, victim_replica: int = 1, name: str = "torch",
            log: Callable[[str], None] = print) -> Run:
    """Start the job and the pod runner, fail a node mid-run, let it shrink and grow back, wait
    for every step; returns the loss log.  The caller runs the operator (``--policy elastic
    --failure-grace-seconds 0``, hysteresis :data:`HYSTERESIS_SECONDS`)."""
    core, custom = api_clients(kubeconfig)
    nodes = a100_nodes(core)
    work_dir.mkdir(parents=True, exist_ok=True)
    loss_log = work_dir / "loss.jsonl"
    runner_log = (work_dir / "pod_runner.log").open("ab")
    runner = subprocess.Popen(
        [sys.executable, str(RUNNER), "--kubeconfig", str(kubeconfig), "--namespace", namespace,
         "--nodes", ",".join(nodes), "--work-dir", str(work_dir / "pods"), "--port-base", str(20000 + free_port() % 20000)],
        stdout=runner_log, stderr=subprocess.STDOUT)
    runner_log.close()
    run = Run(path)
    down: NodeDown | None = None
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                               elasticjob(name, namespace, path, steps, work_dir, step_delay))
        status = wait(lambda: running(custom, namespace, name, 4, 1), 60, "the job running on 4 replicas")
        placement = {r["replica"]: r["node"] for r in status["placement"]}
        assert len(set(placement.values())) == 4, f"replicas share nodes: {placement}"
        wait(lambda: any(r["step"] >= fail_after_step for r in steps_of(read_log(loss_log))), 120,
             f"training past step {fail_after_step}")
        generation = int(status["plan"]["generation"])
        victim = placement[victim_replica]
        run.victim_replica = victim_replica
        run.failed_at = time.time()
        down = NodeDown(core, victim)
        log(f"[{path}] node {victim} (replica {victim_replica}) NotReady")
        shrunk = wait(lambda: running(custom, namespace, name, 3, generation + 1), 30, "the job shrunk to 3")
        run.shrink_generation = int(shrunk["plan"]["generation"])

        def stepped_on_survivors() -> bool:
            run.records = read_log(loss_log)
            return run.first_step_after(run.failed_at, 3) is not None

        wait(stepped_on_survivors, 60, "a step on the 3 survivors")
        log(f"[{path}] training on 3 replicas (generation {run.shrink_generation}) "
            f"{run.recovery_seconds:.2f} s after the failure")
        run.back_at = time.time()
        down.restore()
        run.node_blips = down.blips
        down = None
        grown = wait(lambda: running(custom, namespace, name, 4, run.shrink_generation + 1),
                     HYSTERESIS_SECONDS + 30,
                     "the job grown back to 4")
        run.grow_generation = int(grown["plan"]["generation"])
        wait(lambda: {r["step"] for r in steps_of(read_log(loss_log))} >= set(range(steps)), 180, "every step logged")
        run.records = read_log(loss_log)
        return run
    finally:
        if down is not None:
            down.restore()
        run.records = read_log(loss_log)
        try:
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except client.ApiException as err:
            if err.status != 404:
                raise
        try:
            wait(lambda: not core.list_namespaced_pod(namespace, label_selector=f"tessera.dev/workload={name}").items,
                 40, "the job's pods gone")
        finally:
            runner.terminate()
            try:
                runner.wait(timeout=20)
            except subprocess.TimeoutExpired:
                runner.kill()


def max_rel_diff(run: Run, reference: list[float], from_step: int = 0) -> float:
    """Largest |loss - reference| / |reference| over every logged step >= ``from_step`` (repeats too)."""
    diffs = [abs(r["loss"] - reference[r["step"]]) / abs(reference[r["step"]])
             for r in steps_of(run.records) if r["step"] >= from_step]
    return max(diffs) if diffs else float("nan")
