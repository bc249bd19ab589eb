"""Tessera beside the real kube-scheduler on the same GPU nodes (issue 17, item 1).

Tessera counts every bound pod, whoever bound it; what it cannot see is a pod kube-scheduler
has decided but not yet bound. When both bind to the same devices the node holds more than it
has: Tessera steps back (operator/overcommit.py): its latest workload on that node is rolled
back with a condition and an Event naming the node, and placed again where there is room.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, clean_up
from test_kube_scheduler import plain_pod, running_kube_scheduler
from workload_views import condition, gpus, pods_of, status_of

pytestmark = pytest.mark.cluster


def job(name: str, replicas: int, gpus_per_replica: int) -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: {replicas}, max: {replicas}}}
  acceleratorsPerReplica: {gpus_per_replica}
  acceleratorTypes: [{{name: H100}}, {{name: A100}}]
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1}}]
"""


@pytest.fixture
def operator(crds: Any, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crds.kubeconfig, tmp_path / "operator.log", env={"KUBECONFIG": str(crds.kubeconfig)}).start()
    yield proc
    crds.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false", check=False)
    clean_up(crds, namespace, "elasticjobs", [proc])


def node_use(cluster: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Accelerators bound per node (every pod, whoever bound it) and each node's allocatable."""
    allocatable = {n["metadata"]["name"]: int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
                   for n in cluster.get_json("nodes")["items"]}
    used: dict[str, int] = {}
    for pod in cluster.get_json("pods", "-A")["items"]:
        node = pod["spec"].get("nodeName")
        if node and pod["status"].get("phase") not in ("Succeeded", "Failed") \
                and not pod["metadata"].get("deletionTimestamp"):
            used[node] = used.get(node, 0) + gpus(pod)
    return used, allocatable


def test_a_pod_bound_to_the_same_devices_sends_the_tessera_job_elsewhere(crds: Any, namespace: str,
                                                                          operator: OperatorProcess) -> None:
    crds.apply(job("first", 1, 8), namespace)
    pod = crds.wait_for(lambda: next((p for p in pods_of(crds, namespace, "first") if p["spec"].get("nodeName")), None),
                        timeout=30, what="first bound")
    node = pod["spec"]["nodeName"]
    # another scheduler binds 8 GPUs to the same node (as a race with kube-scheduler ends)
    other = plain_pod("other", {"cpu": "1", "nvidia.com/gpu": "8"})
    other["spec"]["nodeName"] = node
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(other))

    def elsewhere() -> dict[str, Any] | None:
        pods = [p for p in pods_of(crds, namespace, "first") if not p["metadata"].get("deletionTimestamp")]
        status = status_of(crds, "first", namespace)
        return status if len(pods) == 1 and pods[0]["spec"].get("nodeName") not in (None, node) \
            and status.get("phase") == "Running" else None

    crds.wait_for(elsewhere, timeout=40, what="first placed again on another node")
    used, allocatable = node_use(crds)
    assert used[node] == 8 == allocatable[node]
    events = crds.get_json("events", "-n", namespace, "--field-selector", "reason=PlacementRolledBack")["items"]
    assert any(f"node {node} holds 16 accelerators for its 8" in e.get("message", "") for e in events), events


def test_both_schedulers_on_shared_nodes_never_leave_a_node_over_its_allocatable(crds: Any, namespace: str,
                                                                                 operator: OperatorProcess) -> None:
    with running_kube_scheduler(crds):
        # 96 GPUs asked of 64 (4 H100 + 4 A100 nodes of 8), half by each scheduler, all at once
        manifests = [job(f"gang-{i}", 2, 4) for i in range(6)]
        manifests += [json.dumps(plain_pod(f"plain-{i}", {"cpu": "100m", "nvidia.com/gpu": "2"})) for i in range(24)]
        crds.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(manifests))

        def settled() -> dict[str, str] | None:
            out = {}
            for i in range(6):
                status = status_of(crds, f"gang-{i}", namespace)
                bound = [p for p in pods_of(crds, namespace, f"gang-{i}") if p["spec"].get("nodeName")]
                if status.get("phase") == "Running" and len(bound) == 2:
                    out[f"gang-{i}"] = "Running"
                elif status.get("phase") == "Pending" and condition(status, "Scheduled").get("message"):
                    out[f"gang-{i}"] = "Pending: " + condition(status, "Scheduled")["message"]
                else:
                    return None
            used, allocatable = node_use(crds)
            return out if all(used[n] <= allocatable.get(n, 0) for n in used) else None

        outcome = crds.wait_for(settled, timeout=120, interval=1.0,
                                what="every gang Running or waiting with a reason, no node over its allocatable")
        operator.wait_cycles(3)
        used, allocatable = node_use(crds)
        assert all(used[n] <= allocatable.get(n, 0) for n in used), (used, allocatable)
        assert settled() is not None, outcome
