"""Operator scheduling-cycle cost at 100 .. 2,000 nodes on a real control plane.

Starts a private local cluster (etcd + kube-apiserver + kwok, ``hack/cluster-up.sh`` in a
temporary ``TESSERA_CLUSTER_DIR``; no controller manager, so no node-lifecycle noise) and
grows it through ``--sizes`` (ascending).  At each size it holds:

* N kwok nodes shaped like ``examples/nodes`` (half H100, half A100, 8 GPUs, 96 CPUs each,
  generated names ``scale-h100-00042``);
* ``--pods-per-node`` pods per node that are not Tessera's (created with ``spec.nodeName``
  set, so nothing schedules them; kwok marks them Running), each with 1 GPU, 4 CPUs,
  16 GiB: every node has 4 of its 8 GPUs taken;
* ``--pending-jobs`` ElasticJobs (2..4 replicas x 8 GPUs, H100 or A100) that cannot fit
  (no node has 8 free GPUs), so every cycle has a queue and the policy really decides.

Per size it measures

1. **in-process**, ``--repeats`` times, the parts of one cycle exactly as
   :meth:`tessera.operator.scheduler.Scheduler.run_cycle` does them: the LISTs of
   ``tessera.operator.kube.Kube`` (elasticjobs + inferenceservices, pods of all namespaces
   with the operator's phase field selector, nodes) split into fetch (request + body) and
   JSON parse, with their response bytes; ``build_state``; the policy decision
   (``Engine.decide``, cpsat, 1 s budget: the operator's defaults).  Medians are reported.
   Also one cheap option: the same pod and node LISTs with ``resourceVersion=0``.
2. **the real operator** (``python -m tessera operator``, default policy cpsat, default
   2 s interval) for ``--window-seconds``: ``tessera_scheduling_cycle_duration_seconds``
   from its /metrics (difference of two scrapes, so startup is excluded; p50/p95
   interpolated within the histogram's buckets, mean exact), cycles per second, and the
   CPU seconds per second of the operator and of kube-apiserver during that window minus
   kube-apiserver's CPU in an equally long window without the operator (kwok's own
   traffic), read from /proc.

Run: ``nice -n 10 .venv/bin/python -m bench.bench_operator_scale`` (needs ``make tools``, or
``TESSERA_BIN_DIR`` naming a folder with etcd, kube-apiserver, kubectl, kwok).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from bench.common import write_results
from tessera.engine import Engine
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.state import SCALE_UP_SUFFIX, build_state
from tessera.operator.timing import WallClock, gc_paused
from tessera.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("TESSERA_BIN_DIR", ROOT / ".local-cluster" / "bin"))
NAMESPACE = "bench-scale"
JOBS_NAMESPACE = "bench-scale-jobs"
GROUP, VERSION = "tessera.dev", "v1alpha1"
#: the operator's pod LIST field selector (tessera.operator.kube.Kube.list_pods)
POD_FIELD_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"
CYCLE_METRIC = "tessera_scheduling_cycle_duration_seconds"
CREATE_THREADS = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

GPU_SHAPES = (
    # (name stem, gpu.product label, zone): the examples/nodes H100 and A100 fixtures
    ("h100", "NVIDIA-H100-80GB-HBM3", "zone-a"),
    ("a100", "NVIDIA-A100-SXM4-80GB", "zone-b"),
)


def node_manifest(index: int) -> dict[str, Any]:
    """Node ``index``: alternately H100 and A100, 16 nodes per rack domain, kwok-managed."""
    stem, product, zone = GPU_SHAPES[index % 2]
    name = f"scale-{stem}-{index:05d}"
    resources = {"cpu": "96", "memory": "1024Gi", "pods": "110", "nvidia.com/gpu": "8"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            # kwok (hack/cluster-up.sh) manages nodes with this annotation
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": zone,
                "tessera.dev/domain": f"rack-{stem}-{index // 32}", "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": "8",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources, "capacity": resources,
            # the fixtures' fields plus the ones the Python client requires (a real kubelet sets them)
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake",
                         "kubeProxyVersion": "fake", "bootID": "", "containerRuntimeVersion": "fake",
                         "kernelVersion": "fake", "machineID": "", "osImage": "fake", "systemUUID": ""},
        },
    }


def pod_manifest(node: str, slot: int) -> dict[str, Any]:
    """A bound, non-Tessera pod on ``node`` holding 1 GPU (extended resources: limits = requests)."""
    resources = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{node}-w{slot}", "namespace": NAMESPACE,
                     "labels": {"app": "bench-filler", "bench.tessera.dev/node": node}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "worker", "image": "registry.example.com/worker:1",
                            "resources": {"requests": resources, "limits": resources}}],
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def job_manifest(index: int) -> dict[str, Any]:
    """A queued ElasticJob: 2..4 replicas x 8 GPUs; no node has 8 free, so it keeps waiting."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticJob",
        "metadata": {"name": f"queued-{index}", "namespace": JOBS_NAMESPACE},
        "spec": {
            "replicas": {"min": 2, "max": 4}, "acceleratorsPerReplica": 8,
            "acceleratorTypes": [{"name": "H100", "relativeThroughput": 2.0}, {"name": "A100"}],
            "globalBatchSize": 1024, "microBatchSize": 4, "priority": index,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1",
                                                  "resources": {"requests": {"cpu": "8", "memory": "64Gi"}}}]}},
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (/proc/PID/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def apiserver_list_calls(cluster: Cluster) -> int:
    """LIST requests kube-apiserver has served so far (``apiserver_request_total``, verb LIST,
    every resource).  The window's difference counts the operator's (kwok lists only when
    it starts; the bench lists nothing while the operator is measured)."""
    text = cluster.kubectl("get", "--raw", "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="LIST"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class Cluster:
    """The private control plane, API clients, and the objects the bench created."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.env = {**os.environ, "TESSERA_CLUSTER_DIR": str(state_dir), "TESSERA_BIN_DIR": str(BIN),
                    "TESSERA_NO_CONTROLLER_MANAGER": "1"}
        self.env.pop("TESSERA_PORT_BASE", None)
        self.kubeconfig = state_dir / "kubeconfig"
        self.nodes: list[str] = []
        self.nodes_with_pods = 0

    def up(self, first_nodes: Path) -> None:
        subprocess.run(["bash", str(ROOT / "hack" / "cluster-up.sh")], env={**self.env, "TESSERA_NODES": str(first_nodes)},
                       check=True, capture_output=True, timeout=300)
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = CREATE_THREADS * 2
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def down(self) -> None:
        subprocess.run(["bash", str(ROOT / "hack" / "cluster-down.sh")], env=self.env, capture_output=True, timeout=60)

    def pid(self, name: str) -> int:
        return int((self.dir / "pids" / name).read_text().strip())

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                              capture_output=True, text=True, check=True, timeout=120).stdout

    def create_all(self, bodies: Sequence[dict[str, Any]], create: Callable[[dict[str, Any]], object]) -> None:
        """Create ``bodies`` with a few threads; an object left from an earlier size is fine."""
        def one(body: dict[str, Any]) -> None:
            try:
                create(body)
            except ApiException as err:
                if err.status != 409:
                    raise
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(one, bodies))

    def grow(self, nodes: int, pods_per_node: int) -> None:
        """Add nodes and their pods up to ``nodes``; wait until kwok has every pod Running."""
        new = [node_manifest(i) for i in range(len(self.nodes), nodes)]
        self.create_all(new, lambda b: self.core.create_node(cast(Any, b), _preload_content=False))
        self.nodes += [b["metadata"]["name"] for b in new]
        # every node without pods yet (the seed node cluster-up.sh applied too)
        pods = [pod_manifest(node, slot) for node in self.nodes[self.nodes_with_pods:] for slot in range(pods_per_node)]
        self.create_all(pods, lambda b: self.core.create_namespaced_pod(NAMESPACE, cast(Any, b),
                                                                               _preload_content=False))
        self.nodes_with_pods = len(self.nodes)
        self.wait_settled(len(self.nodes) * pods_per_node)

    def first_pod(self, field_selector: str = "") -> dict[str, Any]:
        """A one-item page of the bench's pods matching ``field_selector``."""
        response: Any = self.core.list_namespaced_pod(NAMESPACE, field_selector=field_selector, limit=1,
                                                      _preload_content=False)
        return dict(json.loads(response.data))

    def wait_settled(self, pods: int, timeout_seconds: float = 300) -> None:
        """Until the bench namespace holds ``pods`` pods and none is not Running."""
        deadline = time.monotonic() + timeout_seconds
        count = 0
        while time.monotonic() < deadline:
            # remainingItemCount comes only with unfiltered lists: count all, then look for a non-Running one
            page = self.first_pod()
            count = len(page["items"]) + int(page["metadata"].get("remainingItemCount") or 0)
            if count >= pods and not self.first_pod("status.phase!=Running")["items"]:
                return
            time.sleep(2)
        raise RuntimeError(f"{count} of {pods} pods, not all Running after {timeout_seconds}s")


# --- in-process: the parts of one cycle ---------------------------------------------

last_body: bytes = b""


def timed_list(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One LIST as tessera.operator.kube does it (raw body, json.loads): items and timings
    (the raw body is kept in ``last_body`` for the GC-paused re-parse)."""
    global last_body
    started = time.perf_counter()
    response = call(*args, _preload_content=False, **kwargs)
    body = last_body = response.data
    fetched = time.perf_counter()
    items = list(json.loads(body)["items"])
    parsed = time.perf_counter()
    return items, {"fetch_seconds": fetched - started, "parse_seconds": parsed - fetched, "bytes": float(len(body))}


def measure_parts(cluster: Cluster, repeats: int) -> dict[str, float]:
    """Medians over ``repeats`` of each part of one cycle (no writes: lists, state, decision)."""
    engine = Engine(load_policy("cpsat"), WallClock(), seed=0, time_budget_seconds=1.0, metrics=OperatorMetrics())
    core, custom = cluster.core, cluster.custom
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    for _ in range(repeats):
        workloads: list[tuple[str, dict[str, Any]]] = []
        for kind, plural in (("ElasticJob", "elasticjobs"), ("InferenceService", "inferenceservices")):
            items, t = timed_list(custom.list_cluster_custom_object, GROUP, VERSION, plural)
            workloads += [(kind, item) for item in items]
            for key, value in t.items():
                add(f"workloads_{key}", value)
        pods, t = timed_list(core.list_pod_for_all_namespaces, field_selector=POD_FIELD_SELECTOR)
        pods_body = last_body
        for key, value in t.items():
            add(f"pods_{key}", value)
        nodes, t = timed_list(core.list_node)
        for key, value in t.items():
            add(f"nodes_{key}", value)
        # the cheap option: the same LISTs answered from the API server's watch cache
        _, t = timed_list(core.list_pod_for_all_namespaces, field_selector=POD_FIELD_SELECTOR, resource_version="0")
        add("pods_rv0_fetch_seconds", t["fetch_seconds"])
        _, t = timed_list(core.list_node, resource_version="0")
        add("nodes_rv0_fetch_seconds", t["fetch_seconds"])

        started = time.perf_counter()
        state = build_state(nodes, pods, workloads, time.time(), keep_lost=False)
        add("build_state_seconds", time.perf_counter() - started)
        pending = [w for w in state.pending if not w.key.endswith(SCALE_UP_SUFFIX)]
        started = time.perf_counter()
        result = engine.decide(state.snapshot, pending)
        add("decide_seconds", time.perf_counter() - started)
        add("placed", float(len(result.plan.placements)))
        # the same parts with the cyclic GC paused, as the operator's cycle now runs
        # (scheduler.gc_paused): CPython's collections over ever more live objects make
        # parse and build_state superlinear
        del state, result
        gc.collect()
        with gc_paused():
            started = time.perf_counter()
            pods_again = list(json.loads(pods_body)["items"])
            add("pods_parse_gc_off_seconds", time.perf_counter() - started)
            started = time.perf_counter()
            build_state(nodes, pods_again, workloads, time.time(), keep_lost=False)
            add("build_state_gc_off_seconds", time.perf_counter() - started)
        add("pending", float(len(pending)))
        add("pods_listed", float(len(pods)))
        add("nodes_listed", float(len(nodes)))
    return {key: median(values) for key, values in samples.items()}


# --- the real operator ----------------------------------------------------------------


def scrape_histogram(port: int, name: str) -> dict[str, float]:
    """Cumulative bucket counts (by upper bound, "+Inf" too), ``_count`` and ``_sum`` of ``name``."""
    deadline = time.monotonic() + 30
    while True:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if m := re.match(rf'^{name}_bucket\{{le="([^"]+)"\}} (\S+)$', line):
            out[m.group(1)] = float(m.group(2))
        elif m := re.match(rf"^{name}_(count|sum) (\S+)$", line):
            out[f"_{m.group(1)}"] = float(m.group(2))
    return out


def histogram_quantile(buckets: dict[str, float], q: float) -> float:
    """Prometheus-style quantile: linear within the bucket holding rank ``q * count``."""
    bounds = sorted((float(le), count) for le, count in buckets.items() if not le.startswith("_"))
    total = bounds[-1][1] if bounds else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def measure_operator(cluster: Cluster, window_seconds: float, log_path: Path) -> dict[str, float]:
    """Run ``tessera operator`` for a window; cycle-duration histogram deltas and CPU shares."""
    apiserver = cluster.pid("kube-apiserver")
    idle_from, idle_cpu = time.monotonic(), cpu_seconds(apiserver)
    time.sleep(window_seconds / 2)  # kwok's own traffic, without the operator
    idle_rate = (cpu_seconds(apiserver) - idle_cpu) / (time.monotonic() - idle_from)
    port = free_port()
    with log_path.open("ab") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "tessera", "operator", "--kubeconfig", str(cluster.kubeconfig),
             "--metrics-port", str(port), "--lease-duration-seconds", "3", "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    try:
        deadline = time.monotonic() + 120
        first = scrape_histogram(port, CYCLE_METRIC)
        while first.get("_count", 0) < 1:  # the first cycle (startup, status writes) is not counted
            if time.monotonic() > deadline or operator.poll() is not None:
                raise RuntimeError(f"operator ran no cycle:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
            first = scrape_histogram(port, CYCLE_METRIC)
        started, cpu_api, cpu_op = time.monotonic(), cpu_seconds(apiserver), cpu_seconds(operator.pid)
        lists_before = apiserver_list_calls(cluster)
        time.sleep(window_seconds)
        last = scrape_histogram(port, CYCLE_METRIC)
        lists_after = apiserver_list_calls(cluster)
        elapsed = time.monotonic() - started
        api_rate = (cpu_seconds(apiserver) - cpu_api) / elapsed
        op_rate = (cpu_seconds(operator.pid) - cpu_op) / elapsed
        rss = rss_mb(operator.pid)
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(timeout=5)
    delta = {key: last.get(key, 0.0) - first.get(key, 0.0) for key in last}
    cycles = delta.get("_count", 0.0)
    return {
        "cycles": cycles,
        "cycles_per_second": cycles / elapsed,
        "cycle_p50_seconds": histogram_quantile(delta, 0.5),
        "cycle_p95_seconds": histogram_quantile(delta, 0.95),
        "cycle_mean_seconds": delta.get("_sum", 0.0) / cycles if cycles else float("nan"),
        "list_calls_per_cycle": (lists_after - lists_before) / cycles if cycles else float("nan"),
        "list_calls": lists_after - lists_before,
        "rss_mb": rss,
        "operator_cpu_per_second": op_rate,
        "apiserver_cpu_per_second": api_rate,
        "apiserver_idle_cpu_per_second": idle_rate,
    }


# --- the run ----------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_operator_scale")
    parser.add_argument("--sizes", default="100,500,1000,2000", help="node counts, ascending")
    parser.add_argument("--pods-per-node", type=int, default=4)
    parser.add_argument("--pending-jobs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="in-process measurements per size")
    parser.add_argument("--window-seconds", type=float, default=20.0, help="operator measurement window per size")
    parser.add_argument("--name", default="operator_scale")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="also write the records (nodes, pods, cycle_mean_seconds, list_calls_per_cycle, rss_mb, "
                             "...) as a JSON list here")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    missing = [b for b in ("etcd", "kube-apiserver", "kubectl", "kwok") if not (BIN / b).exists()]
    if missing:
        # skipped, not failed: `python -m bench` on a machine without the cluster tools runs the rest
        print(f"bench_operator_scale SKIPPED: missing {', '.join(missing)} in {BIN}; run 'make tools'")
        return 0
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-scale-") as tmp:
        cluster = Cluster(Path(tmp) / "cluster")
        seed_nodes = Path(tmp) / "seed-node.json"
        # cluster-up.sh applies a node fixture and waits for it: start with the first bench node
        seed_nodes.write_text(json.dumps(node_manifest(0)))
        try:
            cluster.up(seed_nodes)
            cluster.nodes.append(node_manifest(0)["metadata"]["name"])
            cluster.kubectl("apply", "-f", str(ROOT / "crds"))
            for crd in ("elasticjobs", "inferenceservices"):
                cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}.{GROUP}", "--timeout=60s")
            for ns in (NAMESPACE, JOBS_NAMESPACE):
                cluster.kubectl("create", "namespace", ns)
                cluster.kubectl("create", "serviceaccount", "default", "-n", ns)  # no controller manager
            for i in range(args.pending_jobs):
                cluster.kubectl("apply", "-f", "-", stdin=json.dumps(job_manifest(i)))
            for size in sizes:
                started = time.monotonic()
                cluster.grow(size, args.pods_per_node)
                setup_seconds = time.monotonic() - started
                parts = measure_parts(cluster, args.repeats) if args.repeats else {}
                operator = measure_operator(cluster, args.window_seconds, Path(tmp) / f"operator-{size}.log")
                record = {"nodes": size, "pods": size * args.pods_per_node, "setup_seconds": round(setup_seconds, 1),
                          **parts, **operator}
                records.append(record)
                print(f"{size} nodes: cycle mean {operator['cycle_mean_seconds']:.3f}s ({operator['cycles']:.0f} "
                      f"cycles), {operator['list_calls_per_cycle']:.2f} LIST calls per cycle, operator RSS "
                      f"{operator['rss_mb']:.0f} MiB (setup {setup_seconds:.0f}s)", flush=True)
                if not parts:
                    continue
                print(f"{size} nodes: cycle p50 {operator['cycle_p50_seconds']:.3f}s p95 "
                      f"{operator['cycle_p95_seconds']:.3f}s mean {operator['cycle_mean_seconds']:.3f}s "
                      f"({operator['cycles']:.0f} cycles); pods LIST {parts['pods_fetch_seconds']:.3f}s + parse "
                      f"{parts['pods_parse_seconds']:.3f}s {parts['pods_bytes'] / 1e6:.1f} MB; nodes LIST "
                      f"{parts['nodes_fetch_seconds']:.3f}s + {parts['nodes_parse_seconds']:.3f}s; build_state "
                      f"{parts['build_state_seconds']:.3f}s; decide {parts['decide_seconds']:.3f}s "
                      f"(setup {setup_seconds:.0f}s)", flush=True)
        except Exception as err:
            logs = "\n".join(p.read_text()[-2000:] for p in Path(tmp).glob("operator-*.log"))
            print(f"bench_operator_scale failed: {err!r}\n{logs}")
            return 1
        finally:
            cluster.down()
    return report(records, args)


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> int:
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(records, indent=2))
    if not args.repeats:
        return report_cycles(records, args)
    base = records[0]
    summary: list[dict[str, Any]] = []
    for r in records:
        lists = ("workloads", "pods", "nodes")
        list_seconds = sum(r[f"{k}_fetch_seconds"] + r[f"{k}_parse_seconds"] for k in lists)
        parse_seconds = sum(r[f"{k}_parse_seconds"] for k in lists)
        list_mb = sum(r[f"{k}_bytes"] for k in lists) / 1e6
        parts = list_seconds + r["build_state_seconds"] + r["decide_seconds"]
        base_parts = (sum(base[f"{k}_fetch_seconds"] + base[f"{k}_parse_seconds"] for k in lists)
                      + base["build_state_seconds"] + base["decide_seconds"])
        summary.append({
            "nodes": r["nodes"], "pods": r["pods"],
            "cycle p50 s": r["cycle_p50_seconds"], "cycle p95 s": r["cycle_p95_seconds"],
            "cycle mean s": r["cycle_mean_seconds"],
            "LIST s": list_seconds, "of which JSON parse s": parse_seconds, "LIST MB": list_mb,
            "pods fetch s / rv=0 fetch s": f"{r['pods_fetch_seconds']:.3f} / {r['pods_rv0_fetch_seconds']:.3f}",
            "pods parse s": r["pods_parse_seconds"], "build_state s": r["build_state_seconds"], "decide s": r["decide_seconds"],
            "GC paused: pods parse s / build_state s": (f"{r['pods_parse_gc_off_seconds']:.3f} / "
                                                        f"{r['build_state_gc_off_seconds']:.3f}"),
            "apiserver CPU s/s (idle)": f"{r['apiserver_cpu_per_second']:.2f} ({r['apiserver_idle_cpu_per_second']:.2f})",
            "operator CPU s/s": r["operator_cpu_per_second"],
            "list_calls_per_cycle": r["list_calls_per_cycle"], "rss_mb": r["rss_mb"],
            "x100: cycle mean": r["cycle_mean_seconds"] / base["cycle_mean_seconds"],
            "x100: parts": parts / base_parts,
            "x100: LIST MB": list_mb / (sum(base[f"{k}_bytes"] for k in lists) / 1e6),
        })
    summary = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in summary]
    command = _command(args)
    notes = (
        _setup_note(args) + " `cycle` columns: the real operator process (cpsat, 2 s interval), "
        "tessera_scheduling_cycle_duration_seconds over the window after its first cycle; p50/p95 interpolated "
        "within the histogram buckets (edges 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 s: coarse), mean exact (_sum/_count). "
        "`LIST s` = the operator's 4 LIST calls (elasticjobs, inferenceservices, pods of all namespaces with its "
        "phase field selector, nodes) done in-process as kube.py does them: request + body + json.loads, median "
        f"of {args.repeats}; `of which JSON parse` is the json.loads part. `pods fetch / rv=0 fetch`: request + "
        "body of the pod LIST without and with resourceVersion=0. build_state and decide (cpsat, 1 s budget) "
        "in-process on the same lists. apiserver CPU s/s: kube-apiserver CPU seconds per second while the operator "
        "ran (in brackets: the same without the operator, i.e. kwok's traffic). `GC paused`: the pod list's json.loads and build_state again with CPython's cyclic GC disabled (gc.disable); compare with `pods parse s` and `build_state s`. x100 = ratio to the first size "
        "in this run; `parts` = LIST + build_state + decide."
    )
    write_results(args.name, records, summary, command=command, notes=notes)
    print(Path(ROOT / "bench" / "results" / f"{args.name}.md").read_text())
    return 0


def _command(args: argparse.Namespace) -> str:
    return (f"nice -n 10 .venv/bin/python -m bench operator_scale --sizes {args.sizes} --pods-per-node "
            f"{args.pods_per_node} --pending-jobs {args.pending_jobs} --repeats {args.repeats} --window-seconds "
            f"{args.window_seconds:g}")


def _setup_note(args: argparse.Namespace) -> str:
    return ("Local kube-apiserver v1.34 + etcd + kwok on a shared 2-core machine (all niced), no controller manager. "
            f"Per size: N kwok nodes (H100/A100, 8 GPUs), {args.pods_per_node} bound non-Tessera pods per node (1 GPU "
            f"each, Running via kwok), {args.pending_jobs} ElasticJobs (2..4 x 8 GPUs) that cannot fit, so every "
            "cycle decides a queue.")


def report_cycles(records: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """The operator's steady-state cycle only (``--repeats 0``: no in-process LIST parts)."""
    base = records[0]
    summary = [{
        "nodes": r["nodes"], "pods": r["pods"], "cycle_mean_seconds": round(r["cycle_mean_seconds"], 4),
        "cycle p50 s": round(r["cycle_p50_seconds"], 4), "cycle p95 s": round(r["cycle_p95_seconds"], 4),
        "cycles": int(r["cycles"]), "list_calls_per_cycle": round(r["list_calls_per_cycle"], 3), "rss_mb": r["rss_mb"],
        "operator CPU s/s": round(r["operator_cpu_per_second"], 3),
        "apiserver CPU s/s (idle)": f"{r['apiserver_cpu_per_second']:.2f} ({r['apiserver_idle_cpu_per_second']:.2f})",
        "cycle vs first size": round(r["cycle_mean_seconds"] / base["cycle_mean_seconds"], 2),
    } for r in records]
    command = _command(args)
    notes = (
        _setup_note(args) + " The real operator process with its defaults (watch cache on, cpsat, 2 s interval): cycle = "
        "tessera_scheduling_cycle_duration_seconds over the window after its first cycle (mean exact; p50/p95 "
        "interpolated in coarse buckets). list_calls_per_cycle = LIST requests counted by kube-apiserver "
        "(apiserver_request_total, verb LIST, all resources) during the window / cycles in it. rss_mb = the "
        "operator's VmRSS at the end of the window."
    )
    write_results(args.name, records, summary, command=command, notes=notes)
    print(Path(ROOT / "bench" / "results" / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
