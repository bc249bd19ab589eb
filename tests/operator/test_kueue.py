"""Workloads left to the real Kueue's admission (issue 17, item 3), and spec.suspend.

A private control plane (the extended-resource pools of examples/nodes) with the real Kueue
controller (sigs.k8s.io/kueue, built by `make tools`, started by hack/kueue-up.sh): two
ResourceFlavors (H100 and A100 nodes, by their GPU product label), two ClusterQueues each
covering nvidia.com/gpu with one flavor, a LocalQueue for each.  Tessera creates the Kueue
Workload of each labelled ElasticJob, places it only once Kueue admits it and only on the
admitted flavor's nodes, and when Kueue preempts it stops its pods and clears the
reservation so the preemptor is admitted.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, clean_up
from workload_views import condition, pods_of, status_of

from conftest import BIN, ROOT, LocalCluster, fresh_namespace, local_cluster

pytestmark = pytest.mark.cluster

QUEUES = """
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: h100}
spec: {nodeLabels: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: a100}
spec: {nodeLabels: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: h100-queue}
spec:
  namespaceSelector: {}
  preemption: {withinClusterQueue: LowerPriority}
  resourceGroups:
  - coveredResources: [nvidia.com/gpu]
    flavors: [{name: h100, resources: [{name: nvidia.com/gpu, nominalQuota: 16}]}]
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: a100-queue}
spec:
  namespaceSelector: {}
  preemption: {withinClusterQueue: LowerPriority}
  resourceGroups:
  - coveredResources: [nvidia.com/gpu]
    flavors: [{name: a100, resources: [{name: nvidia.com/gpu, nominalQuota: 16}]}]
"""


def local_queues(namespace: str) -> str:
    return "\n---\n".join(f"""
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{clusterQueue: {name}-queue}}""" for name in ("h100", "a100"))


def job(name: str, *, queue: str = "", priority: int = 0, suspend: bool = False, replicas: int = 2) -> str:
    labels = f"labels: {{kueue.x-k8s.io/queue-name: {queue}}}" if queue else "labels: {}"
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}, {labels}}}
spec:
  replicas: {{min: {replicas}, max: {replicas}}}
  acceleratorsPerReplica: 8
  acceleratorTypes: [{{name: H100}}, {{name: A100}}]
  priority: {priority}
  suspend: {str(suspend).lower()}
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1}}]
"""


def kueue_up(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TESSERA_CLUSTER_DIR": str(cluster.dir), "TESSERA_BIN_DIR": str(BIN)}
    return subprocess.run(["bash", str(ROOT / "hack" / "kueue-up.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def kueue_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if not (BIN / "kueue").exists():
        reason = f"kueue missing in {BIN} (run 'make tools')"
        if os.environ.get("TESSERA_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with local_cluster(tmp_path_factory.mktemp("kueue")) as cluster:
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/elasticjobs.tessera.dev", "--timeout=60s")
        started = kueue_up(cluster)
        assert started.returncode == 0, started.stderr
        try:
            cluster.apply(QUEUES)
            yield cluster
        finally:
            kueue_up(cluster, "--down")


@pytest.fixture
def ns(kueue_cluster: LocalCluster) -> Iterator[str]:
    for name in fresh_namespace(kueue_cluster):
        kueue_cluster.apply(local_queues(name))
        yield name


@pytest.fixture
def operator(kueue_cluster: LocalCluster, ns: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(kueue_cluster.kubeconfig, tmp_path / "operator.log",
                           env={"KUBECONFIG": str(kueue_cluster.kubeconfig)}).start()
    yield proc
    clean_up(kueue_cluster, ns, "elasticjobs", [proc])


def kueue_workload(cluster: LocalCluster, namespace: str, job_name: str) -> dict[str, Any]:
    found = cluster.kubectl("get", "workloads.kueue.x-k8s.io", f"elasticjob-{job_name}", "-n", namespace, "-o",
                            "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else {}


def running_on(cluster: LocalCluster, namespace: str, name: str) -> set[str] | None:
    pods = [p for p in pods_of(cluster, namespace, name) if p["spec"].get("nodeName")
            and not p["metadata"].get("deletionTimestamp")]
    if status_of(cluster, name, namespace).get("phase") == "Running" and len(pods) == 2:
        return {p["spec"]["nodeName"] for p in pods}
    return None


def test_kueue_admits_tessera_places_on_the_flavor_and_kueue_preempts(kueue_cluster: LocalCluster, ns: str,
                                                                      operator: OperatorProcess) -> None:
    # H100 and A100 both suit the job (and left alone the policy picks A100 here); Kueue admits
    # it through the H100 queue: it runs on H100 nodes
    kueue_cluster.apply(job("low", queue="h100"), ns)
    nodes = kueue_cluster.wait_for(lambda: running_on(kueue_cluster, ns, "low"), timeout=60, what="low Running")
    assert all(n.startswith("h100-") for n in nodes), nodes
    workload = kueue_workload(kueue_cluster, ns, "low")
    (pod_set,) = workload["spec"]["podSets"]
    assert pod_set["count"] == 2 and workload["spec"]["queueName"] == "h100"
    assert workload["status"]["admission"]["podSetAssignments"][0]["flavors"] == {"nvidia.com/gpu": "h100"}
    assert workload["metadata"]["ownerReferences"][0]["kind"] == "ElasticJob"

    # a higher-priority job fills the same ClusterQueue: Kueue evicts low, Tessera stops it and
    # clears its reservation, Kueue admits high, Tessera places it
    kueue_cluster.apply(job("high", queue="h100", priority=100), ns)
    nodes = kueue_cluster.wait_for(lambda: running_on(kueue_cluster, ns, "high"), timeout=90, what="high Running")
    assert all(n.startswith("h100-") for n in nodes), nodes
    assert not [p for p in pods_of(kueue_cluster, ns, "low") if not p["metadata"].get("deletionTimestamp")]
    low = kueue_cluster.wait_for(
        lambda: (s := status_of(kueue_cluster, "low", ns)) and condition(s, "Scheduled").get("reason")
        == "WaitingForKueue" and s, timeout=30, what="low waiting for Kueue again")
    assert low["phase"] == "Pending" and "requeued" in condition(low, "Scheduled")["message"]
    requeued = kueue_workload(kueue_cluster, ns, "low")
    kinds = {c["type"]: c for c in requeued["status"]["conditions"]}
    assert kinds["Requeued"]["status"] == "True" and kinds["QuotaReserved"]["status"] == "False"
    assert not requeued["status"].get("admission")
    events = kueue_cluster.get_json("events", "-n", ns, "--field-selector", "reason=EvictedByKueue")["items"]
    assert any("Preempted" in e.get("message", "") for e in events), events
    # low waits while high holds the quota: it stays without pods
    operator.wait_cycles(3)
    assert not [p for p in pods_of(kueue_cluster, ns, "low") if p["spec"].get("nodeName")]
    # high goes: Kueue admits low again, and it runs
    kueue_cluster.kubectl("delete", "elasticjob", "high", "-n", ns)
    kueue_cluster.wait_for(lambda: running_on(kueue_cluster, ns, "low"), timeout=90, what="low Running again")


def test_a_queue_without_quota_for_it_keeps_it_waiting_with_kueue_s_reason(kueue_cluster: LocalCluster, ns: str,
                                                                          operator: OperatorProcess) -> None:
    # 3 replicas x 8 = 24 GPUs > the A100 queue's 16: Kueue never admits it, and it never runs
    kueue_cluster.apply(job("big", queue="a100", replicas=3), ns)
    status = kueue_cluster.wait_for(
        lambda: (s := status_of(kueue_cluster, "big", ns)) and "insufficient" in condition(s, "Scheduled").get(
            "message", "") and s, timeout=60, what="big waiting with Kueue's reason")
    assert condition(status, "Scheduled")["reason"] == "WaitingForKueue"
    operator.wait_cycles(3)
    assert not pods_of(kueue_cluster, ns, "big")


def test_spec_suspend_stops_a_running_job_and_resumes_it(kueue_cluster: LocalCluster, ns: str,
                                                         operator: OperatorProcess) -> None:
    kueue_cluster.apply(job("paused", suspend=True), ns)
    kueue_cluster.wait_for(lambda: condition(status_of(kueue_cluster, "paused", ns), "Scheduled").get("reason")
                           == "Suspended", timeout=30, what="paused says Suspended")
    operator.wait_cycles(2)
    assert not pods_of(kueue_cluster, ns, "paused")
    kueue_cluster.kubectl("patch", "elasticjob", "paused", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    kueue_cluster.wait_for(lambda: running_on(kueue_cluster, ns, "paused"), timeout=40, what="paused Running")
    kueue_cluster.kubectl("patch", "elasticjob", "paused", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    kueue_cluster.wait_for(
        lambda: not [p for p in pods_of(kueue_cluster, ns, "paused") if not p["metadata"].get("deletionTimestamp")]
        and status_of(kueue_cluster, "paused", ns).get("phase") == "Pending", timeout=40,
        what="paused stopped and Pending")
    assert condition(status_of(kueue_cluster, "paused", ns), "Scheduled")["reason"] == "Suspended"


def test_a_kueue_workload_of_that_name_not_tessera_s_is_never_adopted(kueue_cluster: LocalCluster, ns: str,
                                                                    operator: OperatorProcess) -> None:
    # someone else's Workload already has the name Tessera would give the job's
    kueue_cluster.apply(f"""
apiVersion: kueue.x-k8s.io/v1beta2
kind: Workload
metadata: {{name: elasticjob-taken, namespace: {ns}}}
spec:
  queueName: a100
  podSets: [{{name: main, count: 1, template: {{spec: {{containers: [{{name: c, image: x}}]}}}}}}]
""")
    kueue_cluster.apply(job("taken", queue="a100"), ns)
    failed = kueue_cluster.wait_for(
        lambda: (s := status_of(kueue_cluster, "taken", ns)) and condition(s, "Scheduled").get("reason")
        == "ActionFailed" and s, timeout=40, what="taken: ActionFailed naming the Workload")
    assert "Tessera did not create" in condition(failed, "Scheduled")["message"]
    operator.wait_cycles(3)  # backing off: the condition stays, nothing is placed
    assert condition(status_of(kueue_cluster, "taken", ns), "Scheduled")["reason"] == "ActionFailed"
    assert not pods_of(kueue_cluster, ns, "taken")
    assert kueue_workload(kueue_cluster, ns, "taken")["spec"]["podSets"][0]["name"] == "main"  # untouched
