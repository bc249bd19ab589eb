"""Preemption carried out by the operator against a real kube-apiserver + kwok.

A low-priority gang fills the H100 nodes; a high-priority gang that fits only by evicting
it arrives.  The operator (policy cpsat) must evict the victim whole, record why on it,
bind the beneficiary only once the victim's pods are gone (never more than a node's 8
GPUs bound at any observed moment), and re-queue the victim.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, Poller, clean_up
from prometheus_server import free_port, scrape_sample
from workload_views import condition, gpus, pods_of, status_of

pytestmark = pytest.mark.cluster

GPUS_PER_NODE = 8


def elasticjob(name: str, replicas: int, priority: int) -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: {replicas}, max: {replicas}}}
  acceleratorsPerReplica: 8
  acceleratorTypes: [{{name: H100}}]
  priority: {priority}
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"""


class BindingWatcher(Poller):
    """Polls every pod in the cluster and keeps the most GPUs ever seen bound on one node
    (terminating pods included: their containers may still hold the devices)."""

    def __init__(self, cluster: Any) -> None:
        super().__init__()
        self.cluster = cluster
        self.peak: dict[str, int] = defaultdict(int)

    def sample(self) -> None:
        per_node: dict[str, int] = defaultdict(int)
        for pod in self.cluster.get_json("pods", "-A")["items"]:
            if pod["spec"].get("nodeName"):
                per_node[pod["spec"]["nodeName"]] += gpus(pod)
        for name, used in per_node.items():
            self.peak[name] = max(self.peak[name], used)


@pytest.fixture
def start_operator(crds: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """Start operators (policy cpsat) on demand; at the end delete the test's workloads
    while one runs (finalizers) and wait until their pods are gone."""
    started: list[OperatorProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> OperatorProcess:
        proc = OperatorProcess(crds.kubeconfig, tmp_path / f"operator-{len(started)}.log", "--policy", "cpsat",
                               *args, env=env).start()
        started.append(proc)
        return proc

    yield start
    if not any(p.alive for p in started):
        start()
    clean_up(crds, namespace, "elasticjobs", started)


def h100_nodes(cluster: Any) -> list[str]:
    return sorted(n["metadata"]["name"] for n in cluster.get_json("nodes")["items"]
                  if "H100" in (n["metadata"].get("labels") or {}).get("nvidia.com/gpu.product", ""))


def fill_h100(cluster: Any, namespace: str) -> list[str]:
    """A priority-0 gang on every H100 node; returns the nodes."""
    h100 = h100_nodes(cluster)
    cluster.apply(elasticjob("low", len(h100), priority=0), namespace)
    cluster.wait_for(lambda: status_of(cluster, "low", namespace).get("phase") == "Running", timeout=40,
                     what="low Running")
    assert sorted(p["spec"]["nodeName"] for p in pods_of(cluster, namespace, "low")) == h100  # all full
    return h100


def check_outcome(cluster: Any, namespace: str, h100: list[str], watcher: BindingWatcher) -> dict[str, Any]:
    """high runs on H100, low was evicted whole and re-queued saying why; returns low's status."""
    high = cluster.wait_for(
        lambda: (s := status_of(cluster, "high", namespace)).get("phase") == "Running" and s,
        timeout=40, what="high Running")
    # the victim re-queues: Pending, with what preempted it, and it stays off the nodes
    low = cluster.wait_for(
        lambda: (s := status_of(cluster, "low", namespace)).get("phase") == "Pending"
        and "waiting to be placed again" in condition(s, "Scheduled").get("message", "") and s,
        timeout=20, what="low re-queued with its reason")
    assert not pods_of(cluster, namespace, "low")  # evicted whole
    scheduled = condition(low, "Scheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "Preempted"
    assert f"preempted by {namespace}/high (priority 10)" in scheduled["message"]
    assert condition(low, "Preempted")["status"] == "True" and not low.get("placement")
    high_pods = pods_of(cluster, namespace, "high")
    assert len(high_pods) == 2 and {p["spec"]["nodeName"] for p in high_pods} <= set(h100)
    assert condition(high, "Scheduled")["reason"] == "Placed"
    assert watcher.samples >= 3
    assert max(watcher.peak.values()) <= GPUS_PER_NODE, dict(watcher.peak)
    return low


def test_high_priority_gang_preempts_a_low_priority_one(cluster, namespace, start_operator):
    port = free_port()
    operator = start_operator("--metrics-port", str(port))
    h100 = fill_h100(cluster, namespace)
    with BindingWatcher(cluster) as watcher:
        cluster.apply(elasticjob("high", 2, priority=10), namespace)
        check_outcome(cluster, namespace, h100, watcher)
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "Preempted" and e["involvedObject"]["name"] == "low"
               and "high" in e["message"] for e in events)
    assert scrape_sample(port, "tessera_preemptions_total", policy="cpsat") == 1  # carried out once
    assert "preempting" in operator.log()


def test_a_crash_after_recording_an_eviction_is_finished_by_the_next_operator(cluster, namespace, start_operator):
    first = start_operator("--fault-exit-after", "eviction-recorded=1")
    h100 = fill_h100(cluster, namespace)
    with BindingWatcher(cluster) as watcher:
        cluster.apply(elasticjob("high", 2, priority=10), namespace)
        assert first.wait_exit(timeout=40) == 137
        # the crash we wanted: the eviction is recorded, every pod of the victim still bound
        low = status_of(cluster, "low", namespace)
        assert low["phase"] == "Pending" and condition(low, "Preempted")["status"] == "True"
        assert len([p for p in pods_of(cluster, namespace, "low") if p["spec"].get("nodeName")]) == len(h100)
        assert not pods_of(cluster, namespace, "high")
        second = start_operator()
        check_outcome(cluster, namespace, h100, watcher)
    assert "bind failed" not in second.log()


def with_priority_class(manifest: str, klass: str) -> str:
    """An ElasticJob manifest from elasticjob() whose pod template names ``klass`` instead of a priority."""
    return manifest.replace("  priority: 0\n", "").replace(
        "    spec:\n      containers:", f"    spec:\n      priorityClassName: {klass}\n      containers:")


def test_a_priority_class_gives_the_priority_and_never_means_never_preempt(cluster, namespace, start_operator):
    suffix = namespace
    for name, policy in ((f"urgent-{suffix}", "PreemptLowerPriority"), (f"polite-{suffix}", "Never")):
        cluster.apply(f"apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {name}}}\n"
                      f"value: 10\npreemptionPolicy: {policy}\n")
    operator = start_operator()
    try:
        fill_h100(cluster, namespace)
        # the polite job (priority 10 by its class) waits: its class never preempts
        cluster.apply(with_priority_class(elasticjob("polite", 2, priority=0), f"polite-{suffix}"), namespace)
        operator.wait_cycles(3)
        assert status_of(cluster, "polite", namespace).get("phase") == "Pending"
        assert status_of(cluster, "low", namespace).get("phase") == "Running"
        # the urgent one (same value, a class that preempts) evicts the low gang
        cluster.apply(with_priority_class(elasticjob("urgent", 2, priority=0), f"urgent-{suffix}"), namespace)
        cluster.wait_for(lambda: status_of(cluster, "urgent", namespace).get("phase") == "Running", timeout=60,
                         what="urgent Running after preempting low")
        preempted = condition(status_of(cluster, "low", namespace), "Preempted")
        assert preempted.get("status") == "True" and f"preempted by {namespace}/urgent" in preempted["message"]
        # (polite may run now in the room urgent's eviction left over: it took it, it did not evict for it)
    finally:
        cluster.kubectl("delete", "priorityclass", f"urgent-{suffix}", f"polite-{suffix}", check=False)
