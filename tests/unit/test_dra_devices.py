"""DRA devices (tessera.api.dra, tessera.operator.devices): reading ResourceSlices into the
accelerator model, counting what ResourceClaims hold, and the claim a pod gets.  The real
API server's side (claims created, allocated, conflicting) is tests/operator/test_dra.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tessera.api import dra
from tessera.api.dra import DraObjects
from tessera.operator import labels as L
from tessera.operator.devices import counted_pods, dra_state
from tessera.operator.pods import build_pod
from tessera.operator.state import build_state, node_view

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = [o for o in yaml.safe_load_all((ROOT / "examples" / "nodes" / "dra" / "l40s.yaml").read_text()) if o]
SLICES = [o for o in FIXTURE if o["kind"] == "ResourceSlice"]
CLASSES = [o for o in FIXTURE if o["kind"] == "DeviceClass"]
NODES = [{**o, "status": {**o["status"], "conditions": [{"type": "Ready", "status": "True"}]}}
         for o in FIXTURE if o["kind"] == "Node"]
TEMPLATE = {"spec": {"containers": [{"name": "c", "image": "i"}]}}


def job(name: str, *, per_replica: int = 2, status: dict | None = None) -> tuple[str, dict]:
    return ("ElasticJob", {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"replicas": {"min": 1, "max": 1}, "acceleratorsPerReplica": per_replica,
                 "acceleratorTypes": [{"name": "L40S"}], "template": TEMPLATE},
        "status": status or {}})


def pod(name: str, node: str = "", uid: str = "", workload: str = "") -> dict:
    labels = {L.WORKLOAD_UID: f"uid-{workload}", L.REPLICA: "0", L.PLACEMENT_GENERATION: "1"} if workload else {}
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid or f"pod-{name}", "labels": labels},
            "spec": {"nodeName": node} if node else {}, "status": {"phase": "Running"}}


def claim(name: str, devices: list[str], *, pool: str = "l40s-dra-0", pod_uid: str = "", tessera: bool = False,
          created: str = "2026-01-01T00:00:00Z") -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"claim-{name}", "creationTimestamp": created}
    if tessera:
        meta["labels"] = {L.WORKLOAD_UID: "uid-x"}
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": pod_uid}]
    status: dict[str, Any] = {"allocation": {"devices": {"results": [
        {"request": "r", "driver": "gpu.nvidia.com", "pool": pool, "device": d} for d in devices]}}}
    if pod_uid:
        status["reservedFor"] = [{"resource": "pods", "name": "p", "uid": pod_uid}]
    return {"metadata": meta, "status": status}


def test_slices_become_a_pool_per_node_with_the_product_and_the_class():
    pools = dra.pools_by_node(SLICES, CLASSES)
    assert sorted(pools) == ["l40s-dra-0", "l40s-dra-1"]
    pool = pools["l40s-dra-0"]
    assert (pool.driver, pool.pool, pool.devices) == ("gpu.nvidia.com", "l40s-dra-0", ("gpu-0", "gpu-1", "gpu-2", "gpu-3"))
    assert pool.products == ("NVIDIA L40S",) and pool.device_class == "gpu.nvidia.com" and not pool.warnings


def test_only_the_newest_generation_of_a_pool_counts():
    old = SLICES[0]
    new = {**old, "metadata": {"name": "new"}, "spec": {**old["spec"], "pool": {**old["spec"]["pool"], "generation": 2},
                                                        "devices": old["spec"]["devices"][:1]}}
    assert dra.pools_by_node([old, new], CLASSES)["l40s-dra-0"].devices == ("gpu-0",)


def test_a_node_of_dra_devices_is_an_accelerator_node():
    pools = dra.pools_by_node(SLICES, CLASSES)
    view = node_view(NODES[0], pools["l40s-dra-0"])
    assert (view.node.accelerator_type, view.node.accelerator_count) == ("L40S", 4)
    assert view.discovery.resource_name is None and view.dra is pools["l40s-dra-0"]
    assert view.discovery.source == "ResourceSlice gpu.nvidia.com/l40s-dra-0"
    # without its slices the same node has no accelerator
    assert node_view(NODES[0]).node.accelerator_count == 0


def test_without_a_device_class_the_devices_are_not_counted_and_the_node_says_why():
    pool = dra.pools_by_node(SLICES, [])["l40s-dra-0"]
    view = node_view(NODES[0], pool)
    assert view.node.accelerator_count == 0
    assert any("no DeviceClass selects driver gpu.nvidia.com" in w for w in view.discovery.warnings)


def test_an_extended_resource_wins_over_slices():
    gpu_node = {**NODES[0], "metadata": {**NODES[0]["metadata"], "labels": {"nvidia.com/gpu.product": "NVIDIA-A100"}},
                "status": {**NODES[0]["status"], "allocatable": {"cpu": "8", "nvidia.com/gpu": "8"}}}
    view = node_view(gpu_node, dra.pools_by_node(SLICES, CLASSES)["l40s-dra-0"])
    assert (view.node.accelerator_type, view.node.accelerator_count, view.dra) == ("A100", 8, None)


def test_claims_of_others_hold_their_devices_and_ours_are_not_counted_twice():
    running = {"phase": "Running", "placementGeneration": 1,
               "placement": [{"replica": 0, "pod": "a-0", "node": "l40s-dra-0", "acceleratorType": "L40S",
                              "generation": 1}]}
    ours = pod("a-0", "l40s-dra-0", workload="a")
    objects = DraObjects(SLICES, [claim("foreign", ["gpu-3"]),  # allocated, its pod not bound yet
                                  claim("a-0-accelerators", ["gpu-0", "gpu-1"], pod_uid="pod-a-0", tessera=True)],
                         CLASSES)
    state = build_state(NODES, [ours], [job("a", status=running)], 0, dra=objects)
    # 4 devices: 2 for job a (its allocation), 1 for the foreign claim
    assert state.snapshot.free("l40s-dra-0").whole_devices == 1
    assert state.snapshot.free("l40s-dra-1").whole_devices == 4
    assert state.dra.free(state.nodes["l40s-dra-0"].dra) == ["gpu-2"]  # type: ignore[arg-type]
    assert not state.dra.stale


def test_a_claim_whose_pod_is_gone_is_stale_and_holds_its_devices_meanwhile():
    objects = DraObjects(SLICES, [claim("gone-0-accelerators", ["gpu-0"], pod_uid="pod-gone", tessera=True)], CLASSES)
    state = build_state(NODES, [], [], 0, dra=objects)
    assert [c["metadata"]["name"] for c in state.dra.stale] == ["gone-0-accelerators"]
    assert state.snapshot.free("l40s-dra-0").whole_devices == 3


def test_a_device_in_two_claims_rolls_back_the_later_tessera_workload():
    running = {"phase": "Running", "placementGeneration": 1,
               "placement": [{"replica": 0, "pod": "a-0", "node": "l40s-dra-0", "acceleratorType": "L40S",
                              "generation": 1}]}
    ours = pod("a-0", "l40s-dra-0", workload="a")
    theirs = claim("theirs", ["gpu-1"], created="2026-01-01T00:00:00Z", pod_uid="foreign-pod")
    mine = claim("a-0-accelerators", ["gpu-0", "gpu-1"], pod_uid="pod-a-0", tessera=True, created="2026-01-01T00:00:01Z")
    state = build_state(NODES, [ours], [job("a", status=running)], 0, dra=DraObjects(SLICES, [theirs, mine], CLASSES))
    reason = state.workloads["ns/a"].rollback_reason
    assert "device gpu-1 on node l40s-dra-0" in reason and "ns/theirs" in reason
    # the earlier claim is Tessera's: the other scheduler's pod is not touched, only reported
    mine["metadata"]["creationTimestamp"] = "2025-12-31T00:00:00Z"
    state = build_state(NODES, [ours], [job("a", status=running)], 0, dra=DraObjects(SLICES, [theirs, mine], CLASSES))
    assert not state.workloads["ns/a"].rollback_reason
    assert any("more than one claim" in w for w in state.node_warnings["l40s-dra-0"])


def test_counted_pods_leave_out_rolled_back_workloads():
    running = {"phase": "Running", "placementGeneration": 1,
               "placement": [{"replica": 0, "pod": "a-0", "node": "l40s-dra-0", "acceleratorType": "L40S",
                              "generation": 1}]}
    state = build_state(NODES, [pod("a-0", "l40s-dra-0", workload="a")], [job("a", status=running)], 0)
    assert counted_pods(state.workloads.values()) == {"pod-a-0"}
    state.workloads["ns/a"].rollback_reason = "x"
    assert counted_pods(state.workloads.values()) == set()


def test_the_pod_names_its_claim_and_asks_for_no_extended_resource():
    state = build_state(NODES, [], [job("a")], 0, dra=DraObjects(SLICES, [], CLASSES))
    view = state.workloads["ns/a"]
    body = build_pod(view, 0, "l40s-dra-0", "L40S", None, 1, claim=dra.claim_name("a-0"))
    assert body["spec"]["resourceClaims"] == [{"name": "accelerators", "resourceClaimName": "a-0-accelerators"}]
    container = body["spec"]["containers"][0]
    assert container["resources"] == {"claims": [{"name": "accelerators"}]}


def test_the_claim_and_its_allocation():
    pool = dra.pools_by_node(SLICES, CLASSES)["l40s-dra-1"]
    owner = {"metadata": {"name": "a-0", "namespace": "ns", "uid": "u"}}
    body = dra.claim_body(owner, pool.device_class, 2, {"k": "v"})
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u"
    assert body["spec"]["devices"]["requests"][0]["exactly"] == {
        "deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": 2}
    status = dra.allocation_status(pool, ["gpu-2", "gpu-3"], owner)
    assert dra.allocated({"status": status}) == [("gpu.nvidia.com", "l40s-dra-1", "gpu-2"),
                                                 ("gpu.nvidia.com", "l40s-dra-1", "gpu-3")]
    assert dra.reserved_for({"status": status}) == ["u"]
    assert status["allocation"]["nodeSelector"]["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["l40s-dra-1"]


def test_dra_state_without_objects_is_empty():
    assert dra_state(None).pools == {} and dra_state(DraObjects()).claims == {}


def test_claims_on_a_pool_the_node_does_not_count_hold_nothing_there():
    # no DeviceClass selects the driver: the node counts no devices, so a claim there holds none
    state = build_state(NODES, [], [], 0, dra=DraObjects(SLICES, [claim("theirs", ["gpu-0"])], []))
    assert state.nodes["l40s-dra-0"].node.accelerator_count == 0
    assert not [a for a in state.snapshot.allocations if a.startswith("claim:")]
    # control: with the class the same claim holds its device
    state = build_state(NODES, [], [], 0, dra=DraObjects(SLICES, [claim("theirs", ["gpu-0"])], CLASSES))
    assert [a for a in state.snapshot.allocations if a.startswith("claim:")] == ["claim:ns/theirs@l40s-dra-0"]
