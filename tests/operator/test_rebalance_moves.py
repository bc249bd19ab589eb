"""Rebalancing carried out by the operator against a real kube-apiserver + kwok, with the
load read from a real Prometheus scraping a small exporter.

The service ``chat`` (2 replicas of 8 GPUs, one per node) starts on the A100 nodes while
the H100 nodes are cordoned; then the H100 nodes open up. Its load (6 requests/s, 3 per
replica) overloads an A100 replica (capacity 1) but not an H100 one (capacity 4), so the
cost-aware rebalancer moves the replicas, one at a time (maxUnavailable 1), make-before-
break. A watcher polls the pods throughout: the service never has fewer Ready replicas
than spec.replicas and never more than spec.replicas + maxUnavailable pods. Further tests:
an operator killed mid-move (after binding the new pod / after recording the move), a new
replica that never gets Ready, and the cooldown after a move surviving a restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, Poller, clean_up
from prometheus_client import Gauge
from prometheus_server import ExporterServer, free_port, run_prometheus, scrape_sample
from test_prometheus_load import prometheus_binary

pytestmark = pytest.mark.cluster

REPLICAS = 2
QUERY = "sum by (namespace, service) (tessera_test_service_requests_per_second)"
POLICY = "rebalance-cost-aware"

SERVICE = """
apiVersion: tessera.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  replicas: 2
  acceleratorsPerReplica: 8
  acceleratorTypes: [{name: A100, capacityPerReplica: 1}, {name: H100, capacityPerReplica: 4}]
  template:
    spec:
      containers: [{name: server, image: server:1, resources: {requests: {cpu: "1", memory: 1Gi}}}]
"""


class Exporter(ExporterServer):
    """requests/s per service, as a gauge Prometheus scrapes."""

    def __init__(self) -> None:
        super().__init__()
        self.rps = Gauge("tessera_test_service_requests_per_second", "test load", ["namespace", "service"],
                         registry=self.registry)


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = prometheus_binary()
    with run_prometheus(binary, tmp_path_factory.mktemp("prometheus"), "exporter", f"127.0.0.1:{exporter.port}") as url:
        yield url


def pods_of(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    return list(cluster.get_json("pods", "-n", namespace, "-l", "tessera.dev/workload=chat")["items"])


def status_of(cluster: Any, namespace: str) -> dict[str, Any]:
    return dict(cluster.get_json("inferenceservice", "chat", "-n", namespace).get("status") or {})


def ready(pod: dict[str, Any]) -> bool:
    return bool(pod["spec"].get("nodeName")) and not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions") or [])


def nodes_with(cluster: Any, product: str) -> list[str]:
    return sorted(n["metadata"]["name"] for n in cluster.get_json("nodes")["items"]
                  if product in (n["metadata"].get("labels") or {}).get("nvidia.com/gpu.product", ""))


class ReplicaWatcher(Poller):
    """Polls the service's pods; keeps the fewest Ready and the most existing pods seen
    once the service first had all its replicas Ready."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        super().__init__()
        self.cluster, self.namespace = cluster, namespace
        self.fewest_ready = REPLICAS
        self.most_pods = 0
        #: the pods when the fewest Ready were seen (for the failure message)
        self.worst: list[Any] = []
        self.timeline: list[Any] = []

    def sample(self) -> None:
        raw = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", "tessera.dev/workload=chat",
                                   "-o", "json")
        pods = json.loads(raw.stdout)["items"]
        count = sum(1 for p in pods if ready(p))
        seen = [(p["metadata"]["name"], p["spec"].get("nodeName"), ready(p), p.get("status", {}).get("phase"),
                 p["metadata"].get("resourceVersion")) for p in pods]
        if not self.timeline or self.timeline[-1][1] != seen:
            self.timeline.append((time.strftime("%H:%M:%S"), seen, raw.stderr[-300:]))
        if count < self.fewest_ready:
            self.worst = self.timeline[-3:]
        self.fewest_ready = min(self.fewest_ready, count)
        self.most_pods = max(self.most_pods, len(pods))


def rfc3339(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()




@pytest.fixture
def setup(crds: Any, namespace: str, tmp_path: Path, exporter: Exporter, prometheus: str) -> Iterator[Any]:
    """Operators on demand (rebalancing every second from Prometheus); H100 nodes cordoned
    until ``open_h100()``; at the end the service is deleted and the nodes uncordoned."""
    started: list[OperatorProcess] = []
    h100 = nodes_with(crds, "H100")
    exporter.rps.labels(namespace, "chat").set(6.0)

    class Setup:
        nodes_h100 = h100
        nodes_a100 = nodes_with(crds, "A100")

        @staticmethod
        def start(*params: str, env: dict[str, str] | None = None, metrics_port: int = 0,
                  extra: tuple[str, ...] = ()) -> OperatorProcess:
            # best-fit places and never moves anything itself, so every move seen here is
            # the rebalancer's
            args = ["--policy", "best-fit", "--metrics-port", str(metrics_port), "--rebalance-period-seconds", "1",
                    "--rebalance-policy", POLICY, "--load-prometheus-url", prometheus, "--load-query", QUERY]
            for p in params:
                args += ["--rebalance-param", p]
            args += extra
            # KUBECONFIG for kopf's own login, whatever ~/.kube/config holds on this machine
            env = {"KUBECONFIG": str(crds.kubeconfig), **(env or {})}
            proc = OperatorProcess(crds.kubeconfig, tmp_path / f"operator-{len(started)}.log", *args, env=env).start()
            started.append(proc)
            return proc

        @staticmethod
        def open_h100() -> None:
            crds.kubectl("uncordon", *h100)

    crds.kubectl("cordon", *h100)
    try:
        yield Setup
    finally:
        crds.kubectl("uncordon", *h100, check=False)
        if not any(p.alive for p in started):
            Setup.start()
        clean_up(crds, namespace, "inferenceservices", started)


def start_on_a100(cluster: Any, namespace: str, setup: Any) -> None:
    cluster.apply(SERVICE, namespace)
    cluster.wait_for(lambda: len([p for p in pods_of(cluster, namespace) if ready(p)]) == REPLICAS
                     and status_of(cluster, namespace).get("phase") == "Running", timeout=40, what="chat Running")
    assert {p["spec"]["nodeName"] for p in pods_of(cluster, namespace)} <= set(setup.nodes_a100)


def settled_on_h100(cluster: Any, namespace: str, setup: Any, timeout: float = 90) -> dict[str, Any]:
    """Both replicas moved to H100, no move in flight, exactly the placement's pods exist."""
    def done() -> dict[str, Any] | None:
        status = status_of(cluster, namespace)
        nodes = {r["node"] for r in status.get("placement") or []}
        pods = pods_of(cluster, namespace)
        if (len(nodes) == REPLICAS and nodes <= set(setup.nodes_h100) and not status.get("migrations")
                and len(pods) == REPLICAS and all(ready(p) for p in pods)):
            return status
        return None

    return dict(cluster.wait_for(done, timeout=timeout, interval=0.5, what="chat settled on H100"))


def assert_consistent(cluster: Any, namespace: str, status: dict[str, Any]) -> None:
    """Exactly spec.replicas pods, each the one the placement names, on its node."""
    pods = {p["metadata"]["name"]: p for p in pods_of(cluster, namespace)}
    placement = {r["pod"]: r for r in status["placement"]}
    assert set(pods) == set(placement), (sorted(pods), sorted(placement))
    for name, replica in placement.items():
        assert pods[name]["spec"]["nodeName"] == replica["node"]
        assert pods[name]["metadata"]["labels"]["tessera.dev/replica"] == str(replica["replica"])
    assert status["replicas"] == REPLICAS


def surge_of(status: dict, move: dict) -> dict:
    """Where the placement records a move's new replica, and which replica it replaces."""
    [entry] = [r for r in status["placement"] if r["replica"] == move["newReplica"]]
    return {"node": entry["node"], "surgeFor": entry.get("surgeFor")}


def test_a_hot_replica_moves_make_before_break_after_its_cooldown(cluster, namespace, setup):
    # a cooldown longer than the test: the rounds run (with load) but nothing moves
    first = setup.start("cooldown_seconds=3600", metrics_port=(port := free_port()))
    start_on_a100(cluster, namespace, setup)
    setup.open_h100()
    cluster.wait_for(lambda: scrape_sample(port, "tessera_decision_latency_seconds_count", policy=POLICY) >= 4,
                     timeout=40, what="four rebalancing rounds")
    status = status_of(cluster, namespace)
    assert not status.get("migrations") and not status.get("migrationHistory")
    assert {r["node"] for r in status["placement"]} <= set(setup.nodes_a100)
    first.stop()

    port = free_port()
    with ReplicaWatcher(cluster, namespace) as watcher:
        setup.start("cooldown_seconds=2", metrics_port=port)
        status = settled_on_h100(cluster, namespace, setup)
    assert watcher.samples >= 5
    assert watcher.fewest_ready >= REPLICAS, f"fewer Ready replicas than spec.replicas: {watcher.worst}"
    assert watcher.most_pods <= REPLICAS + 1, "more pods than spec.replicas + maxUnavailable"
    assert_consistent(cluster, namespace, status)
    history = status["migrationHistory"]
    assert [h["outcome"] for h in history] == ["Completed", "Completed"]
    assert {h["fromNode"] for h in history} <= set(setup.nodes_a100)
    assert {h["toNode"] for h in history} <= set(setup.nodes_h100)
    assert all(h["observedSeconds"] > 0 and h["estimatedCostSeconds"] > 0 for h in history)
    assert status.get("lastMigrationTime")
    # one move at a time (maxUnavailable 1): the second started after the first finished
    assert history[1]["startTime"] >= history[0]["completionTime"]
    events = [e for e in cluster.get_json("events", "-n", namespace)["items"] if e["reason"] == "Migrated"]
    assert len(events) == 2 and all("estimated cost" in e["message"] for e in events)
    assert scrape_sample(port, "tessera_migrations_total", policy=POLICY, reason="rebalance") == 2
    assert scrape_sample(port, "tessera_migration_observed_seconds_count") == 2
    assert scrape_sample(port, "tessera_migrations_aborted_total") == 0


def test_a_restart_after_binding_the_new_replica_finishes_the_move(cluster, namespace, setup):
    first = setup.start("cooldown_seconds=2", extra=("--fault-exit-after", "migration-bound=1"))
    start_on_a100(cluster, namespace, setup)
    with ReplicaWatcher(cluster, namespace) as watcher:
        setup.open_h100()
        assert first.wait_exit(timeout=60) == 137
        # the crash we wanted: the move is recorded, the new pod bound, the old one still there
        status = status_of(cluster, namespace)
        [move] = status["migrations"]
        assert move["toNode"] in setup.nodes_h100
        # the move is the desired placement: a surge replica beside the one it replaces
        assert surge_of(status, move) == {"node": move["toNode"], "surgeFor": move["replica"]}
        assert status["replicas"] == REPLICAS
        pods = {p["metadata"]["name"]: p for p in pods_of(cluster, namespace)}
        assert len(pods) == REPLICAS + 1 and pods[move["newPod"]]["spec"]["nodeName"] == move["toNode"]
        second = setup.start("cooldown_seconds=2")
        status = settled_on_h100(cluster, namespace, setup)
    assert watcher.fewest_ready >= REPLICAS, watcher.worst
    assert watcher.most_pods <= REPLICAS + 1
    assert_consistent(cluster, namespace, status)
    history = status["migrationHistory"]
    assert history[0]["newReplica"] == move["newReplica"] and history[0]["outcome"] == "Completed"
    assert all(h["outcome"] == "Completed" for h in history)
    assert "undoing" not in second.log()


def test_a_restart_before_the_new_replica_is_bound_undoes_the_move(cluster, namespace, setup):
    first = setup.start("cooldown_seconds=2", extra=("--fault-exit-after", "migration-recorded=1"))
    start_on_a100(cluster, namespace, setup)
    with ReplicaWatcher(cluster, namespace) as watcher:
        setup.open_h100()
        assert first.wait_exit(timeout=60) == 137
        status = status_of(cluster, namespace)
        [move] = status["migrations"]
        assert surge_of(status, move) == {"node": move["toNode"], "surgeFor": move["replica"]}
        assert move["newPod"] not in {p["metadata"]["name"] for p in pods_of(cluster, namespace)}
        # the successor undoes it (the old replica never stopped), then moves again on its own
        setup.start("cooldown_seconds=2")
        status = settled_on_h100(cluster, namespace, setup)
    assert watcher.fewest_ready >= REPLICAS, watcher.worst
    assert watcher.most_pods <= REPLICAS + 1
    assert_consistent(cluster, namespace, status)
    history = status["migrationHistory"]
    assert history[0]["outcome"] == "Aborted" and history[0]["newReplica"] == move["newReplica"]
    assert "not bound" in history[0]["reason"]
    assert [h["outcome"] for h in history[1:]] == ["Completed", "Completed"]
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "MigrationAborted" for e in events)


def test_a_new_replica_that_never_gets_ready_is_undone_and_the_old_one_keeps_serving(cluster, namespace, setup):
    port = free_port()
    setup.start("cooldown_seconds=2", metrics_port=port, extra=("--migration-ready-timeout-seconds", "3"))
    start_on_a100(cluster, namespace, setup)
    # pods created from now on are left alone by kwok: bound, never Running nor Ready
    cluster.kubectl("patch", "inferenceservice", "chat", "-n", namespace, "--type", "merge", "-p",
                    '{"spec": {"template": {"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}}}}')
    with ReplicaWatcher(cluster, namespace) as watcher:
        setup.open_h100()
        aborted = cluster.wait_for(
            lambda: [h for h in status_of(cluster, namespace).get("migrationHistory") or [] if h["outcome"] == "Aborted"],
            timeout=60, what="a move undone")
    assert "not Ready within 3s" in aborted[0]["reason"]
    assert aborted[0]["observedSeconds"] >= 3
    assert watcher.fewest_ready >= REPLICAS, watcher.worst
    assert watcher.most_pods <= REPLICAS + 1
    status = status_of(cluster, namespace)
    assert not any(h["outcome"] == "Completed" for h in status["migrationHistory"])
    # nothing moved: what serves is on A100 (a later move's surge replica may be recorded beside it)
    assert {r["node"] for r in status["placement"] if r.get("surgeFor") is None} <= set(setup.nodes_a100)
    cluster.wait_for(lambda: scrape_sample(port, "tessera_migrations_aborted_total") >= 1, timeout=10, what="aborted counted")
    assert scrape_sample(port, "tessera_migrations_total", policy=POLICY, reason="rebalance") == 0
    # kwok would never confirm the graceful deletion of the pods it leaves alone: new pods
    # get the normal template again, and the left-alone ones go at once
    cluster.kubectl("patch", "inferenceservice", "chat", "-n", namespace, "--type", "merge", "-p",
                    '{"spec": {"template": {"metadata": {"annotations": null}}}}')

    def none_left_alone() -> bool:
        left = [p["metadata"]["name"] for p in pods_of(cluster, namespace)
                if (p["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/status") == "custom"]
        for name in left:
            cluster.kubectl("delete", "pod", name, "-n", namespace, "--grace-period=0", "--force", check=False)
        return not left

    # twice in a row: a cycle that read the old template may still create one
    cluster.wait_for(lambda: none_left_alone() and (time.sleep(2) is None) and none_left_alone(), timeout=30,
                     what="left-alone pods removed")


def test_the_cooldown_after_a_move_survives_a_restart(cluster, namespace, setup, exporter):
    cooldown = 20
    first = setup.start("cooldown_seconds=2")
    start_on_a100(cluster, namespace, setup)
    placed = time.monotonic()
    # the placement's startTime lies more than `cooldown` before the restart below, so only
    # the moves' landing times (status.migrationHistory) can keep the replicas in place
    time.sleep(cooldown + 6)
    setup.open_h100()
    settled_on_h100(cluster, namespace, setup)
    landed = time.monotonic()
    first.stop()
    # now the H100 replicas run hot and A100 would serve the load: moving back pays off
    exporter.rps.labels(namespace, "chat").set(20.0)
    cluster.kubectl("patch", "inferenceservice", "chat", "-n", namespace, "--type", "merge", "-p",
                    '{"spec": {"acceleratorTypes": [{"name": "A100", "capacityPerReplica": 16},'
                    ' {"name": "H100", "capacityPerReplica": 4}]}}')
    # a restarted operator reads the landing times from status.migrationHistory: both
    # replicas stay until `cooldown` after they landed, although the placement is older
    assert time.monotonic() - placed > cooldown + 5
    port = free_port()
    setup.start(f"cooldown_seconds={cooldown}", metrics_port=port)
    cluster.wait_for(lambda: scrape_sample(port, "tessera_decision_latency_seconds_count", policy=POLICY) >= 3,
                     timeout=30, what="three rebalancing rounds")
    pinned = status_of(cluster, namespace)
    assert time.monotonic() - landed < cooldown, "too slow to check the cooldown"
    assert len(pinned["migrationHistory"]) == 2 and not pinned.get("migrations")
    # once the cooldown has passed they move back
    moved_back = cluster.wait_for(
        lambda: [h for h in status_of(cluster, namespace).get("migrationHistory") or []
                 if h["outcome"] == "Completed" and h["toNode"] in setup.nodes_a100],
        timeout=60, interval=0.5, what="a move back to A100")
    back = moved_back[0]
    assert back["fromNode"] in setup.nodes_h100
    # it left no earlier than `cooldown` after it landed (RFC 3339 times, whole seconds)
    [arrival] = [h for h in pinned["migrationHistory"] if h["newReplica"] == back["replica"]]
    assert rfc3339(back["startTime"]) - rfc3339(arrival["completionTime"]) >= cooldown - 1
