"""Preemption carried out by the operator against a real kube-apiserver + kwok.

A low-priority gang fills the H100 nodes; a high-priority gang that fits only by evicting
it arrives.  The operator (policy cpsat) must evict the victim whole, record why on it,
bind the beneficiary only once the victim's pods are gone (never more than a node's 8
GPUs bound at any observed moment), and re-queue the victim.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess

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


def pods_of(cluster: Any, namespace: str, workload: str) -> list[dict[str, Any]]:
    return list(cluster.get_json("pods", "-n", namespace, "-l", f"tessera.dev/workload={workload}")["items"])


def status_of(cluster: Any, name: str, namespace: str) -> dict[str, Any]:
    return dict(cluster.get_json("elasticjob", name, "-n", namespace).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def gpus(pod: dict[str, Any]) -> int:
    return sum(int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
               for c in pod["spec"].get("containers") or [])


class BindingWatcher:
    """Polls every pod in the cluster and keeps the most GPUs ever seen bound on one node
    (terminating pods included: their containers may still hold the devices)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.peak: dict[str, int] = defaultdict(int)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            per_node: dict[str, int] = defaultdict(int)
            for pod in self.cluster.get_json("pods", "-A")["items"]:
                if pod["spec"].get("nodeName"):
                    per_node[pod["spec"]["nodeName"]] += gpus(pod)
            for name, used in per_node.items():
                self.peak[name] = max(self.peak[name], used)
            self.samples += 1

    def __enter__(self) -> BindingWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def operator(crds: Any, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crds.kubeconfig, tmp_path / "operator.log", "--policy", "cpsat").start()
    try:
        yield proc
    finally:
        crds.kubectl("delete", "elasticjobs", "--all", "-n", namespace, "--wait=false", check=False)
        try:
            crds.wait_for(lambda: not crds.get_json("pods", "-n", namespace)["items"], timeout=40,
                          what="pods of the test removed")
        finally:
            proc.stop()
            print(f"----- operator log\n{proc.log()[-6000:]}")  # shown when the test fails


def test_high_priority_gang_preempts_a_low_priority_one(cluster, namespace, operator):
    h100 = [n["metadata"]["name"] for n in cluster.get_json("nodes")["items"]
            if "H100" in (n["metadata"].get("labels") or {}).get("nvidia.com/gpu.product", "")]
    cluster.apply(elasticjob("low", len(h100), priority=0), namespace)
    cluster.wait_for(lambda: status_of(cluster, "low", namespace).get("phase") == "Running", timeout=40,
                     what="low Running")
    low_pods = pods_of(cluster, namespace, "low")
    assert sorted(p["spec"]["nodeName"] for p in low_pods) == sorted(h100)  # every H100 node is full

    with BindingWatcher(cluster) as watcher:
        cluster.apply(elasticjob("high", 2, priority=10), namespace)
        high = cluster.wait_for(
            lambda: (s := status_of(cluster, "high", namespace)).get("phase") == "Running" and s,
            timeout=40, what="high Running")
        # the victim re-queues: Pending, with what preempted it, and it stays off the nodes
        low = cluster.wait_for(
            lambda: (s := status_of(cluster, "low", namespace)).get("phase") == "Pending"
            and "waiting to be placed again" in condition(s, "Scheduled").get("message", "") and s,
            timeout=20, what="low re-queued with its reason")
    assert watcher.samples >= 3
    assert max(watcher.peak.values()) <= GPUS_PER_NODE, dict(watcher.peak)

    assert not pods_of(cluster, namespace, "low")  # evicted whole
    scheduled = condition(low, "Scheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "Preempted"
    assert f"preempted by {namespace}/high (priority 10)" in scheduled["message"]
    assert condition(low, "Preempted")["status"] == "True"
    assert not low.get("placement")

    high_pods = pods_of(cluster, namespace, "high")
    assert len(high_pods) == 2 and {p["spec"]["nodeName"] for p in high_pods} <= set(h100)
    assert condition(high, "Scheduled")["reason"] == "Placed"
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "Preempted" and e["involvedObject"]["name"] == "low"
               and "high" in e["message"] for e in events)
    assert "preempting" in operator.log()
