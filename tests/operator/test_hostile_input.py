"""Careless and hostile workloads against the default operator on kube-apiserver + kwok (#15).

Each test reproduces one finding of the issue and shows what happens now: the bad
workload is refused alone with a condition naming why, a good workload in another
namespace still runs, nothing is preempted for what can never start, and no node ever
holds more accelerators than it has (pods counted as Kubernetes counts them: containers
add up, init containers take the largest).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, clean_up
from workload_views import condition, pods_of, status_of

pytestmark = pytest.mark.cluster

GPUS_PER_NODE = 8


def job(name: str, *, replicas: int = 1, gpus: int = 8, priority: int = 0, types: str = "H100",
        container_extra: str = "", pod_extra: str = "") -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: {replicas}, max: {replicas}}}
  acceleratorsPerReplica: {gpus}
  acceleratorTypes: [{{name: {types}}}]
  priority: {priority}
  template:
    spec:
      containers:
      - name: trainer
        image: trainer:1
        resources: {{requests: {{cpu: "1", memory: 1Gi}}}}
{container_extra}
{pod_extra}
"""


def effective_gpus(pod: dict[str, Any]) -> int:
    """Accelerators a pod holds as the kubelet counts them (containers sum, init max)."""
    def one(c: dict[str, Any]) -> int:
        limits = (c.get("resources") or {}).get("limits") or {}
        return int(limits.get("nvidia.com/gpu", 0))
    spec = pod["spec"]
    return max([sum(one(c) for c in spec.get("containers") or []),
                *(one(c) for c in spec.get("initContainers") or [])])


def gpus_per_node(cluster: Any) -> dict[str, int]:
    used: dict[str, int] = {}
    for pod in cluster.get_json("pods", "-A")["items"]:
        node = pod["spec"].get("nodeName")
        if node and pod["status"].get("phase") not in ("Succeeded", "Failed"):
            used[node] = used.get(node, 0) + effective_gpus(pod)
    return used


@pytest.fixture
def operator(crds: Any, namespace: str, other_namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The default operator (cpsat + failure handling), as a user runs it."""
    proc = OperatorProcess(crds.kubeconfig, tmp_path / "operator.log").start()
    yield proc
    for ns in (namespace, other_namespace):
        crds.kubectl("delete", "elasticjobs,inferenceservices", "--all", "-n", ns, "--wait=false", check=False)
    clean_up(crds, namespace, "elasticjobs", [])
    clean_up(crds, other_namespace, "elasticjobs", [proc])


def test_a_template_the_api_server_refuses_stops_nothing_and_preempts_no_one(cluster, namespace, other_namespace,
                                                                             operator):
    # finding 1 + 4: a low-priority job holds an H100 node; a priority-100 job whose pods the
    # API server refuses (a volumeMount of a volume that does not exist) arrives, and a good
    # job in another namespace asks for an A100
    cluster.apply(job("low", priority=0), namespace)
    cluster.wait_for(lambda: status_of(cluster, "low", namespace).get("phase") == "Running", timeout=40,
                     what="low running")
    low_pods = {p["metadata"]["uid"] for p in pods_of(cluster, namespace, "low")}
    cluster.apply(job("careless", priority=100, container_extra="        volumeMounts: [{name: data, mountPath: /d}]"),
                  namespace)
    cluster.apply(job("good", types="A100"), other_namespace)
    cluster.wait_for(lambda: status_of(cluster, "good", other_namespace).get("phase") == "Running", timeout=40,
                     what="the good job in another namespace running")
    refused = cluster.wait_for(
        lambda: (c := condition(status_of(cluster, "careless", namespace), "Scheduled")).get("reason") == "InvalidSpec"
        and c, timeout=30, what="the careless job refused with InvalidSpec")
    assert "volumeMounts" in refused["message"] and "data" in refused["message"], refused
    operator.wait_cycles(3)
    # nothing was evicted for a job that can never start, nothing of it exists
    assert {p["metadata"]["uid"] for p in pods_of(cluster, namespace, "low")} == low_pods
    assert not pods_of(cluster, namespace, "careless")
    assert max(gpus_per_node(cluster).values()) <= GPUS_PER_NODE


def test_accelerators_asked_outside_accelerators_per_replica_are_refused(cluster, namespace, operator):
    # finding 3c: 4 GPUs per replica, but an init container asks 8: each pod would hold 8
    init = """      initContainers:
      - name: warmup
        image: warmup:1
        resources: {limits: {nvidia.com/gpu: "8"}, requests: {nvidia.com/gpu: "8"}}"""
    cluster.apply(job("greedy-init", replicas=2, gpus=4, pod_extra=init), namespace)
    refused = cluster.wait_for(
        lambda: (c := condition(status_of(cluster, "greedy-init", namespace), "Scheduled")).get("reason")
        == "InvalidSpec" and c, timeout=30, what="greedy-init refused")
    assert "initContainers[0].resources" in refused["message"] and "nvidia.com/gpu" in refused["message"]
    operator.wait_cycles(3)
    assert not pods_of(cluster, namespace, "greedy-init")
    assert max(gpus_per_node(cluster).values(), default=0) <= GPUS_PER_NODE


def test_a_spec_edited_under_running_pods_is_not_reaccounted(cluster, namespace, operator):
    # finding 3b: acceleratorsPerReplica edited 8 -> 1 while the pods hold 8
    cluster.apply(job("edited", gpus=8), namespace)
    cluster.wait_for(lambda: status_of(cluster, "edited", namespace).get("phase") == "Running", timeout=40,
                     what="edited running")
    (pod,) = pods_of(cluster, namespace, "edited")
    node = pod["spec"]["nodeName"]
    cluster.kubectl("patch", "elasticjob", "edited", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"acceleratorsPerReplica": 1}}')
    cond = cluster.wait_for(
        lambda: (c := condition(status_of(cluster, "edited", namespace), "SpecApplied")).get("status") == "False"
        and c, timeout=30, what="SpecApplied=False")
    assert "8 accelerator(s)" in cond["message"]
    # a job that would fit only if the edited one were counted by its new spec
    cluster.apply(job("squeeze", gpus=8, replicas=1), namespace)
    operator.wait_cycles(4)
    used = gpus_per_node(cluster)
    assert used[node] <= GPUS_PER_NODE, used
    assert max(used.values()) <= GPUS_PER_NODE


def test_an_elasticjob_and_an_inferenceservice_cannot_share_a_name(cluster, namespace, operator):
    # finding 3a: the second kind with the same name is refused; its pods never hide the first's
    cluster.apply(job("twin", gpus=8), namespace)
    cluster.wait_for(lambda: status_of(cluster, "twin", namespace).get("phase") == "Running", timeout=40,
                     what="the ElasticJob twin running")
    cluster.apply(f"""
apiVersion: tessera.dev/v1alpha1
kind: InferenceService
metadata: {{name: twin, namespace: {namespace}}}
spec:
  replicas: 2
  acceleratorsPerReplica: 8
  acceleratorTypes: [{{name: H100}}]
  template:
    spec:
      containers: [{{name: server, image: server:1}}]
""")
    refused = cluster.wait_for(
        lambda: (s := cluster.get_json("inferenceservices.tessera.dev", "twin", "-n", namespace).get("status") or {})
        .get("phase") == "Failed" and s, timeout=30, what="the InferenceService twin refused")
    assert "already exists" in refused["message"]
    operator.wait_cycles(3)
    assert len(pods_of(cluster, namespace, "twin")) == 1  # only the ElasticJob's pod
    assert max(gpus_per_node(cluster).values()) <= GPUS_PER_NODE


def test_a_spec_too_large_for_an_annotation_is_refused_and_can_be_deleted(cluster, namespace, operator, tmp_path):
    # finding 6: a 270 KB spec (here a pod annotation; command/args/env are capped by CEL)
    # used to stay Terminating forever: kopf could not write its last-handled annotation
    import json

    big = {
        "apiVersion": "tessera.dev/v1alpha1", "kind": "ElasticJob",
        "metadata": {"name": "huge", "namespace": namespace},
        "spec": {"replicas": {"min": 1, "max": 1}, "acceleratorsPerReplica": 1,
                 "acceleratorTypes": [{"name": "H100"}],
                 "template": {"metadata": {"annotations": {"blob": "x" * 270_000}},
                              "spec": {"containers": [{"name": "c", "image": "c:1"}]}}},
    }
    manifest = tmp_path / "huge.json"
    manifest.write_text(json.dumps(big))
    cluster.kubectl("create", "-f", str(manifest))
    refused = cluster.wait_for(
        lambda: (c := condition(status_of(cluster, "huge", namespace), "Scheduled")).get("reason") == "InvalidSpec"
        and c, timeout=30, what="the huge job refused")
    assert "bytes as JSON" in refused["message"]
    assert not pods_of(cluster, namespace, "huge")
    cluster.kubectl("delete", "elasticjob", "huge", "-n", namespace, "--wait=false")
    cluster.wait_for(lambda: cluster.kubectl("get", "elasticjob", "huge", "-n", namespace,
                                             check=False).returncode != 0, timeout=30, what="the huge job deleted")


def test_never_partial_never_stale(cluster, namespace, operator):
    # finding 7: a job whose global batch no plan can split over its replicas (8 samples, 16
    # ranks) does not run without a plan; a scaled-down service's status names only what runs
    cluster.apply(job("unsplittable", replicas=2, gpus=8).replace(
        "  priority: 0\n", "  priority: 0\n  globalBatchSize: 8\n  microBatchSize: 8\n"), namespace)
    waiting = cluster.wait_for(
        lambda: (c := condition(status_of(cluster, "unsplittable", namespace), "Scheduled")).get("status") == "False"
        and "plan" in c.get("message", "") and c, timeout=30, what="unsplittable waiting for a plan")
    assert waiting["reason"] in ("Unschedulable", "BindFailed"), waiting
    operator.wait_cycles(3)
    assert not pods_of(cluster, namespace, "unsplittable")
    assert cluster.kubectl("get", "configmap", "unsplittable-tessera-plan", "-n", namespace,
                           check=False).returncode != 0
    cluster.apply(f"""
apiVersion: tessera.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat, namespace: {namespace}}}
spec:
  replicas: 2
  acceleratorsPerReplica: 1
  acceleratorTypes: [{{name: A100}}]
  template:
    spec:
      containers: [{{name: server, image: server:1}}]
""")
    cluster.wait_for(lambda: len([p for p in pods_of(cluster, namespace, "chat") if p["spec"].get("nodeName")]) == 2,
                     timeout=40, what="two chat replicas")
    cluster.kubectl("scale", "inferenceservices.tessera.dev/chat", "-n", namespace, "--replicas=1")

    def one_left() -> dict[str, Any] | None:
        pods = [p for p in pods_of(cluster, namespace, "chat") if not p["metadata"].get("deletionTimestamp")]
        status = cluster.get_json("inferenceservices.tessera.dev", "chat", "-n", namespace).get("status") or {}
        message = condition(status, "Scheduled").get("message", "")
        return status if len(pods) == 1 and message.count("->") == 1 and pods[0]["metadata"]["name"] in message \
            else None

    cluster.wait_for(one_left, timeout=30, what="the scaled-down service's status naming only what runs")
