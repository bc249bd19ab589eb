"""Accelerators published through Dynamic Resource Allocation, on the real API server (issue 17, item 2).

A private control plane with the extended-resource pools (examples/nodes) and, beside them,
two L40S nodes whose GPUs exist only as ``resource.k8s.io/v1`` ResourceSlices
(examples/nodes/dra, with the driver's DeviceClass).  Tessera reads the slices into the same
accelerator model, gives each pod on those nodes a ResourceClaim, writes the claim's
allocation and reservation, then binds; devices allocated in claims it did not write (as
kube-scheduler's would be) are not given again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, clean_up
from test_kube_scheduler import running_kube_scheduler
from workload_views import condition, pods_of, status_of

from conftest import ROOT, LocalCluster, fresh_namespace, local_cluster

pytestmark = pytest.mark.cluster

DRA_NODES = ("l40s-dra-0", "l40s-dra-1")
DRIVER = "gpu.nvidia.com"


@pytest.fixture(scope="module")
def dra_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    nodes = f"{ROOT / 'examples' / 'nodes'} {ROOT / 'examples' / 'nodes' / 'dra'}"
    with local_cluster(tmp_path_factory.mktemp("dra"), TESSERA_NODES=nodes) as cluster:
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/elasticjobs.tessera.dev", "--timeout=60s")
        yield cluster


@pytest.fixture
def ns(dra_cluster: LocalCluster) -> Iterator[str]:
    yield from fresh_namespace(dra_cluster)


@pytest.fixture(params=["--watch-cache", "--no-watch-cache"])
def operator(dra_cluster: LocalCluster, ns: str, tmp_path: Path, request: pytest.FixtureRequest
             ) -> Iterator[OperatorProcess]:
    """The operator reading through its watch cache (the default) and LISTing every cycle."""
    proc = OperatorProcess(dra_cluster.kubeconfig, tmp_path / "operator.log", request.param,
                           env={"KUBECONFIG": str(dra_cluster.kubeconfig)}).start()
    yield proc
    dra_cluster.kubectl("delete", "pods", "--all", "-n", ns, "--wait=false", check=False)  # plain pods too
    clean_up(dra_cluster, ns, "elasticjobs", [proc])
    dra_cluster.kubectl("delete", "resourceclaims", "--all", "-n", ns, "--wait=false", check=False)


def job(name: str, replicas: int, per_replica: int) -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: {replicas}, max: {replicas}}}
  acceleratorsPerReplica: {per_replica}
  acceleratorTypes: [{{name: L40S}}]
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1"}}}}}}]
"""


def claims(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in cluster.get_json("resourceclaims", "-n", namespace)["items"]}


def devices_of(claim: dict[str, Any]) -> list[tuple[str, str]]:
    results = ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []
    return [(r["pool"], r["device"]) for r in results]


def foreign_claim(cluster: LocalCluster, namespace: str, name: str, node: str, devices: list[str]) -> None:
    """A claim allocated by someone else (as kube-scheduler allocates one in PreBind)."""
    body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": DRIVER, "allocationMode": "ExactCount", "count": len(devices)}}]}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    status = {"status": {"allocation": {
        "devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": node, "device": d} for d in devices]},
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}}
    cluster.kubectl("patch", "resourceclaim", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))


def running(cluster: LocalCluster, namespace: str, name: str, replicas: int) -> list[dict[str, Any]] | None:
    pods = [p for p in pods_of(cluster, namespace, name) if p["spec"].get("nodeName")
            and not p["metadata"].get("deletionTimestamp")]
    return pods if status_of(cluster, name, namespace).get("phase") == "Running" and len(pods) == replicas else None


def test_a_job_on_dra_nodes_gets_a_claim_per_pod_allocated_and_reserved(dra_cluster: LocalCluster, ns: str,
                                                                       operator: OperatorProcess) -> None:
    dra_cluster.apply(job("train", 2, 3), ns)
    pods = dra_cluster.wait_for(lambda: running(dra_cluster, ns, "train", 2), timeout=40, what="train Running")
    held = claims(dra_cluster, ns)
    seen: list[tuple[str, str]] = []
    for pod in pods:
        node = pod["spec"]["nodeName"]
        assert node in DRA_NODES
        # the pod names its claim and asks for no extended resource (the node has none)
        assert pod["spec"]["resourceClaims"] == [{"name": "accelerators",
                                                  "resourceClaimName": f"{pod['metadata']['name']}-accelerators"}]
        container = pod["spec"]["containers"][0]
        assert container["resources"]["claims"] == [{"name": "accelerators"}]
        assert "nvidia.com/gpu" not in json.dumps(container["resources"])
        claim = held[f"{pod['metadata']['name']}-accelerators"]
        # 3 devices of the pod's node, reserved for the pod, owned by it (deleted with it)
        assert len(devices_of(claim)) == 3 and {p for p, _ in devices_of(claim)} == {node}
        assert [r["uid"] for r in claim["status"]["reservedFor"]] == [pod["metadata"]["uid"]]
        assert claim["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
        assert claim["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] == DRIVER
        seen.extend(devices_of(claim))
    assert len(seen) == len(set(seen)) == 6  # no device given twice
    status = status_of(dra_cluster, "train", ns)
    assert {r["acceleratorType"] for r in status["placement"]} == {"L40S"}

    # deleting the job: its pods go, and their claims with them
    dra_cluster.kubectl("delete", "elasticjob", "train", "-n", ns, "--wait=false")
    dra_cluster.wait_for(lambda: not claims(dra_cluster, ns) and not pods_of(dra_cluster, ns, "train"), timeout=60,
                         what="the job's pods and claims gone")


def test_devices_claimed_by_others_are_not_given_again(dra_cluster: LocalCluster, ns: str,
                                                       operator: OperatorProcess) -> None:
    # someone else holds 3 of l40s-dra-0's 4 GPUs: a 4-GPU replica fits only on l40s-dra-1
    foreign_claim(dra_cluster, ns, "theirs", "l40s-dra-0", ["gpu-0", "gpu-1", "gpu-2"])
    dra_cluster.apply(job("big", 1, 4), ns)
    (pod,) = dra_cluster.wait_for(lambda: running(dra_cluster, ns, "big", 1), timeout=40, what="big Running")
    assert pod["spec"]["nodeName"] == "l40s-dra-1"
    # a 2-GPU job now fits nowhere (1 free on l40s-dra-0, none on l40s-dra-1): it waits, saying why
    dra_cluster.apply(job("second", 1, 2), ns)
    waiting = dra_cluster.wait_for(
        lambda: (s := status_of(dra_cluster, "second", ns)).get("phase") == "Pending"
        and condition(s, "Scheduled").get("status") == "False" and s, timeout=40, what="second waiting with a reason")
    assert condition(waiting, "Scheduled")["message"], waiting
    operator.wait_cycles(3)  # and it stays unbound while the devices are taken
    assert not [p for p in pods_of(dra_cluster, ns, "second") if p["spec"].get("nodeName")]
    # their claim released: the job gets the freed devices
    dra_cluster.kubectl("delete", "resourceclaim", "theirs", "-n", ns)
    (second,) = dra_cluster.wait_for(lambda: running(dra_cluster, ns, "second", 1), timeout=40, what="second Running")
    assert second["spec"]["nodeName"] == "l40s-dra-0"
    assert len(devices_of(claims(dra_cluster, ns)["second-0-accelerators"])) == 2


def test_a_claim_of_that_name_not_tessera_s_is_never_taken_over(dra_cluster: LocalCluster, ns: str,
                                                                operator: OperatorProcess) -> None:
    # a user's own claim happens to have the name Tessera would give the pod's claim
    foreign_claim(dra_cluster, ns, "mine-0-accelerators", "l40s-dra-1", ["gpu-0"])
    dra_cluster.apply(job("mine", 1, 1), ns)
    failed = dra_cluster.wait_for(
        lambda: (s := status_of(dra_cluster, "mine", ns)) and condition(s, "Scheduled").get("reason") == "BindFailed"
        and s, timeout=40, what="the bind refused, with a reason")
    assert "that Tessera did not create" in condition(failed, "Scheduled")["message"]
    claim = claims(dra_cluster, ns)["mine-0-accelerators"]
    assert devices_of(claim) == [("l40s-dra-1", "gpu-0")] and not claim["metadata"].get("ownerReferences")
    events = dra_cluster.get_json("events", "-n", ns, "--field-selector", "reason=BindFailed")["items"]
    assert any("delete or rename it" in e.get("message", "") for e in events), events


def plain_pod_with_claim(cluster: LocalCluster, namespace: str, name: str, count: int) -> None:
    """A pod for kube-scheduler (default schedulerName) asking ``count`` GPUs through its own claim."""
    claim = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": f"{name}-gpus"},
             "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                 "deviceClassName": DRIVER, "allocationMode": "ExactCount", "count": count}}]}}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"resourceClaims": [{"name": "gpus", "resourceClaimName": f"{name}-gpus"}],
                    "containers": [{"name": "main", "image": "registry.example/none:1",
                                    "resources": {"requests": {"cpu": "100m"}, "claims": [{"name": "gpus"}]}}]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(claim) + "\n---\n" + json.dumps(pod))


def test_kube_scheduler_and_tessera_never_allocate_the_same_device(dra_cluster: LocalCluster, ns: str,
                                                                   operator: OperatorProcess) -> None:
    with running_kube_scheduler(dra_cluster):
        # kube-scheduler's DRA plugin allocates the plain pod's claim (3 GPUs), then binds it
        plain_pod_with_claim(dra_cluster, ns, "plain", 3)
        pod = dra_cluster.wait_for(
            lambda: (p := dra_cluster.get_json("pod", "plain", "-n", ns))["spec"].get("nodeName") and p,
            timeout=60, what="the plain pod bound by kube-scheduler")
        taken = pod["spec"]["nodeName"]
        assert taken in DRA_NODES and len(devices_of(claims(dra_cluster, ns)["plain-gpus"])) == 3
        # Tessera counts kube-scheduler's claim: a 4-GPU replica goes to the other DRA node
        dra_cluster.apply(job("big", 1, 4), ns)
        (big,) = dra_cluster.wait_for(lambda: running(dra_cluster, ns, "big", 1), timeout=40, what="big Running")
        assert big["spec"]["nodeName"] == next(n for n in DRA_NODES if n != taken)
        # and kube-scheduler counts Tessera's: a second 2-GPU plain pod fits on neither node
        plain_pod_with_claim(dra_cluster, ns, "late", 2)
        dra_cluster.wait_for(
            lambda: condition(dra_cluster.get_json("pod", "late", "-n", ns).get("status") or {}, "PodScheduled")
            .get("reason") == "Unschedulable", timeout=60, what="kube-scheduler finds no room for the late pod")
        held = [d for c in claims(dra_cluster, ns).values() for d in devices_of(c)]
        assert len(held) == len(set(held)) == 7, held  # 3 + 4, none twice
