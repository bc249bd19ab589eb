"""From submit to all bound: Tessera beside the real kube-scheduler, same burst, same cluster.

Starts a private control plane (etcd + kube-apiserver + kwok, ``hack/cluster-up.sh`` in a
temporary ``TESSERA_CLUSTER_DIR``, no controller manager), adds ``--nodes`` kwok nodes
(8 GPUs each, half H100 and half A100, as ``bench_operator_scale``) and runs, one after
the other on that cluster:

* **kube-scheduler** v1.34 (``.local-cluster/bin/kube-scheduler``, built by
  ``hack/build-tools.sh``; client QPS/burst 1000): ``--pods`` plain pods (1 GPU, 1 CPU)
  created by a client at full speed (``--create-threads`` threads);
* **tessera** (``python -m tessera operator`` with its defaults: cpsat + failure handling,
  ``--workers``): the same number of pods as ElasticJobs of ``--replicas-per-job`` replicas
  (1 GPU each), created the same way.

For each it reports the seconds from the first create to the last pod bound, pods per
second, and when the first pod was bound (a watch on the namespace's pods, opened before
the burst, notes when each pod is first seen bound), and the API writes per pod that
kube-apiserver counted during the run (``apiserver_request_total``).  Between runs every pod is deleted and the
scheduler stopped.  The ratio ``tessera / kube-scheduler`` is the figure to read: these
machines are shared and noisy, so only ratios measured in one run compare.

    nice -n 10 .venv/bin/python -m bench throughput --nodes 1000 --pods 2000 --json PATH

``--replicas-per-job 1,8`` runs both the one-GPU burst and gangs of 8.  Records:
``scheduler``, ``replicas_per_job``, ``nodes``, ``pods``, ``seconds_to_all_bound``,
``pods_per_second``, ``first_bound_seconds``.  Results: ``bench/results/throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from bench.bench_operator_scale import BIN, ROOT, Cluster, free_port, node_manifest
from bench.common import write_results

NAMESPACE = "bench-throughput"
GROUP, VERSION = "tessera.dev", "v1alpha1"


def plain_pod(index: int) -> dict[str, Any]:
    resources = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"plain-{index:05d}", "namespace": NAMESPACE, "labels": {"app": "bench-burst"}},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/worker:1",
                                 "resources": {"requests": resources, "limits": resources}}],
                 # the cluster runs no node lifecycle controller, so nothing lifts the taint the API
                 # server puts on new nodes (node.kubernetes.io/not-ready); Tessera reads the Ready
                 # condition instead, so kube-scheduler's pods tolerate the taint to compare alike
                 "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
                                 {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                  "effect": "NoSchedule"}]},
    }


def job(index: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticJob",
        "metadata": {"name": f"burst-{index:05d}", "namespace": NAMESPACE},
        "spec": {
            "replicas": {"min": replicas, "max": replicas}, "acceleratorsPerReplica": 1,
            "acceleratorTypes": [{"name": "H100"}, {"name": "A100"}],
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1",
                                                  "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}},
        },
    }


def count_pods(cluster: Cluster) -> tuple[int, int]:
    """(pods in the namespace, pods bound) from one LIST."""
    response: Any = cluster.core.list_namespaced_pod(NAMESPACE, _preload_content=False)
    items = json.loads(response.data)["items"]
    return len(items), sum(1 for p in items if p["spec"].get("nodeName"))


class BindWatch:
    """Watches the namespace's pods from before the burst and notes when each is first seen
    bound, so the first bind is timed while the burst is still being created (a poll after
    the creates could only see it once they were done)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.bound: dict[str, float] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        response: Any = cluster.core.list_namespaced_pod(NAMESPACE, limit=1, _preload_content=False)
        self._version = json.loads(response.data)["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                response: Any = self.cluster.core.list_namespaced_pod(
                    NAMESPACE, watch=True, resource_version=self._version, timeout_seconds=30,
                    allow_watch_bookmarks=True, _preload_content=False)
                for line in response:
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    self._version = (obj.get("metadata") or {}).get("resourceVersion") or self._version
                    uid = (obj.get("metadata") or {}).get("uid")
                    if uid and (obj.get("spec") or {}).get("nodeName") and uid not in self.bound:
                        self.bound[uid] = time.monotonic()
                    if self._stop.is_set():
                        break
        except BaseException as err:  # reported by wait()
            self.error = err

    def wait(self, pods: int, started: float, timeout_seconds: float) -> tuple[float, float]:
        """Until ``pods`` pods were seen bound: (seconds to all bound, seconds to the first)."""
        deadline = started + timeout_seconds
        try:
            while time.monotonic() < deadline and self.error is None:
                if len(self.bound) >= pods:
                    times = sorted(self.bound.values())
                    return times[pods - 1] - started, times[0] - started
                time.sleep(0.1)
        finally:
            self._stop.set()
        raise RuntimeError(f"not all {pods} pods bound within {timeout_seconds}s (seen bound: {len(self.bound)}; "
                           f"watch error: {self.error!r}; listed bound: {count_pods(self.cluster)[1]})")


def create_burst(cluster: Cluster, bodies: list[dict[str, Any]], threads: int, custom: bool) -> float:
    """Create ``bodies`` at full client speed; returns the monotonic time of the first create."""
    started = time.monotonic()

    def one(body: dict[str, Any]) -> None:
        if custom:
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "elasticjobs", body,
                                                           _preload_content=False)
        else:
            cluster.core.create_namespaced_pod(NAMESPACE, cast(Any, body), _preload_content=False)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, bodies))
    return started


def clear(cluster: Cluster, custom: bool, timeout_seconds: float = 600) -> None:
    """Delete the run's objects with collection deletes (one call each, no grace)."""
    if custom:
        # the operator is stopped: drop the finalizers it would have handled, then delete
        jobs = json.loads(cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "elasticjobs", _preload_content=False).data)["items"]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda j: cluster.custom.patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "elasticjobs", j["metadata"]["name"],
                {"metadata": {"finalizers": None}}, _preload_content=False), jobs))
        cluster.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "elasticjobs",
                                                                  _preload_content=False)
    cluster.core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0, _preload_content=False)
    if custom:
        # the jobs' Services and plan ConfigMaps: no garbage collector runs here (no controller
        # manager), and the next run's jobs reuse the names (Tessera never adopts another's)
        cluster.core.delete_collection_namespaced_config_map(NAMESPACE, _preload_content=False)
        for svc in json.loads(cluster.core.list_namespaced_service(NAMESPACE, _preload_content=False).data)["items"]:
            cluster.core.delete_namespaced_service(svc["metadata"]["name"], NAMESPACE, _preload_content=False)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if count_pods(cluster)[0] == 0:
            return
        time.sleep(1)
    raise RuntimeError("the namespace did not empty")


WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION"})


def requests(cluster: Cluster) -> dict[str, float]:
    """kube-apiserver's request counts so far ("VERB resource/subresource" -> count, from
    ``apiserver_request_total``): a run's difference over its pods is what each pod cost
    in API calls, the client's creates included (kwok's pod status updates too)."""
    out: dict[str, float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics").splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        pairs = (part.split("=", 1) for part in line[line.index("{") + 1:line.rindex("}")].split(",") if "=" in part)
        labels = {k: v.strip('"') for k, v in pairs}
        sub = labels.get("subresource", "")
        key = f"{labels.get('verb', '')} {labels.get('resource', '')}{'/' + sub if sub else ''}" \
            + (" (dry run)" if labels.get("dry_run") else "")
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def start_kube_scheduler(cluster: Cluster, work: Path) -> subprocess.Popen[bytes]:
    config = work / "kube-scheduler.yaml"
    config.write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
        f"clientConnection: {{kubeconfig: {cluster.kubeconfig}, qps: 1000, burst: 1000}}\n"
        "leaderElection: {leaderElect: false}\n")
    log = (work / "kube-scheduler.log").open("wb")
    return subprocess.Popen([str(BIN / "kube-scheduler"), f"--config={config}", f"--secure-port={free_port()}",
                             f"--authentication-kubeconfig={cluster.kubeconfig}",
                             f"--authorization-kubeconfig={cluster.kubeconfig}", "--v=1"],
                            stdout=log, stderr=subprocess.STDOUT)


def start_tessera(cluster: Cluster, work: Path, workers: int, log_level: str = "WARNING") -> subprocess.Popen[bytes]:
    log = (work / "operator.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "tessera", "operator", "--kubeconfig", str(cluster.kubeconfig),
                             "--metrics-port", "0", "--workers", str(workers), "--lease-namespace", "default",
                             "--log-level", log_level],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**cluster.env, "KUBECONFIG": str(cluster.kubeconfig)})


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def run(cluster: Cluster, work: Path, scheduler: str, pods: int, replicas: int, args: argparse.Namespace,
        nodes: int) -> dict[str, Any]:
    custom = scheduler == "tessera"
    bodies = [job(i, replicas) for i in range(pods // replicas)] if custom else [plain_pod(i) for i in range(pods)]
    proc = start_tessera(cluster, work, args.workers, args.operator_log_level) if custom \
        else start_kube_scheduler(cluster, work)
    try:
        time.sleep(3)  # let it start and LIST before the burst (both get the same head start)
        before = requests(cluster)
        watch = BindWatch(cluster)
        started = create_burst(cluster, bodies, args.create_threads, custom)
        created = time.monotonic() - started
        seconds, first = watch.wait(pods, started, args.timeout_seconds)
        writes = {k: round((v - before.get(k, 0)) / pods, 2) for k, v in requests(cluster).items()
                  if k.split(" ")[0] in WRITE_VERBS and v - before.get(k, 0) >= 1}
    finally:
        stop(proc)
    record = {"scheduler": scheduler, "replicas_per_job": replicas, "nodes": nodes, "pods": pods,
              "seconds_to_all_bound": round(seconds, 2), "pods_per_second": round(pods / seconds, 1),
              "first_bound_seconds": round(first, 2), "create_seconds": round(created, 2),
              "writes_per_pod": round(sum(writes.values()), 2), "writes_per_pod_by_request": writes}
    print(json.dumps(record), flush=True)
    clear(cluster, custom)
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--replicas-per-job", default="1,8", help="comma-separated: 1 (one-GPU jobs), 8 (gangs)")
    parser.add_argument("--workers", type=int, default=48, help="tessera operator --workers (its default)")
    parser.add_argument("--create-threads", type=int, default=16)
    parser.add_argument("--timeout-seconds", type=float, default=900)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--operator-log-level", default="WARNING",
                        help="the operator's --log-level (its log is operator.log in the run's temporary folder)")
    args = parser.parse_args(argv)
    if not (BIN / "kube-scheduler").exists():
        print(f"kube-scheduler not found in {BIN}: run `make tools` (hack/build-tools.sh builds it)")
        return 2
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tessera-throughput-") as tmp:
        work = Path(tmp)
        seed = work / "seed.yaml"
        seed.write_text(json.dumps(node_manifest(0)))
        cluster = Cluster(work / "cluster")
        (work / "cluster").mkdir()
        try:
            cluster.up(seed)
            cluster.kubectl("apply", "-f", str(ROOT / "crds"))
            cluster.kubectl("create", "namespace", NAMESPACE)
            cluster.kubectl("create", "serviceaccount", "default", "-n", NAMESPACE)
            cluster.grow(args.nodes, 0)
            for replicas in (int(r) for r in args.replicas_per_job.split(",")):
                for scheduler in ("kube-scheduler", "tessera"):
                    records.append(run(cluster, work, scheduler, args.pods, replicas, args, args.nodes))
        finally:
            cluster.down()
    base = {r["replicas_per_job"]: r["seconds_to_all_bound"] for r in records if r["scheduler"] == "kube-scheduler"}
    summary = [{**r, "ratio_to_kube_scheduler": round(r["seconds_to_all_bound"] / base[r["replicas_per_job"]], 2)
                if base.get(r["replicas_per_job"]) else None} for r in records]
    write_results("throughput", records, summary, command="python -m bench throughput " + " ".join(argv),
                  notes="Submit to all bound, Tessera (ElasticJobs) beside kube-scheduler (plain pods) on one "
                        "private kube-apiserver + kwok cluster in one run; ratio = tessera / kube-scheduler.")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
