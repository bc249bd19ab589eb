"""Gates on running (tessera.operator.state._gate, tessera.operator.kueue): spec.suspend and
Kueue's admission, read from the objects as the operator reads them.  The real Kueue
controller's side is tests/operator/test_kueue.py."""

from __future__ import annotations

import copy
from typing import Any

from tessera.api import kueue as K
from tessera.api.kueue import KueueObjects
from tessera.operator import labels as L
from tessera.operator.kueue import released, workload_for
from tessera.operator.state import build_state

TEMPLATE = {"spec": {"containers": [{"name": "c", "image": "i"}]}}
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}


def node(name: str, labels: dict[str, str]) -> dict:
    return {"metadata": {"name": name, "uid": name, "labels": labels},
            "status": {"allocatable": {"cpu": "96", "memory": "1024Gi", "nvidia.com/gpu": "8"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


NODES = [node("h0", H100), node("a0", A100)]


def job(name: str = "a", *, queue: str = "team", suspend: bool = False, status: dict | None = None,
        replicas: tuple[int, int] = (1, 2)) -> tuple[str, dict]:
    labels = {K.QUEUE_LABEL: queue} if queue else {}
    return ("ElasticJob", {
        "apiVersion": "tessera.dev/v1alpha1",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1, "labels": labels,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"replicas": {"min": replicas[0], "max": replicas[1]}, "acceleratorsPerReplica": 4,
                 "acceleratorTypes": [{"name": "H100"}, {"name": "A100"}], "template": TEMPLATE,
                 "suspend": suspend},
        "status": status or {}})


def pod(replica: int, node_name: str) -> dict:
    return {"metadata": {"name": f"a-{replica}", "namespace": "ns", "uid": f"pod-{replica}",
                         "labels": {L.WORKLOAD_UID: "uid-a", L.REPLICA: str(replica), L.PLACEMENT_GENERATION: "1"}},
            "spec": {"nodeName": node_name}, "status": {"phase": "Running"}}


RUNNING = {"phase": "Running", "placementGeneration": 1,
           "placement": [{"replica": 0, "pod": "a-0", "node": "h0", "acceleratorType": "H100", "generation": 1}]}
FLAVORS = [{"metadata": {"name": "h100"}, "spec": {"nodeLabels": H100}},
           {"metadata": {"name": "a100"}, "spec": {"nodeLabels": A100}}]


def kueue_workload(conditions: list[tuple[str, str, str]], admission: dict | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "elasticjob-a", "namespace": "ns", "generation": 1,
                         "labels": {K.OWNER_UID_LABEL: "uid-a"}, "ownerReferences": [{"uid": "uid-a"}]},
            "status": {"conditions": [{"type": t, "status": s, "reason": r, "message": f"{t} {r}"}
                                      for t, s, r in conditions], "admission": admission}}


ADMITTED = kueue_workload([("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted")],
                          {"clusterQueue": "cq", "podSetAssignments": [
                              {"name": "replicas", "count": 1, "flavors": {"nvidia.com/gpu": "a100"}}]})


def test_a_suspended_workload_is_not_pending_and_a_running_one_is_stopped():
    state = build_state(NODES, [], [job(queue="", suspend=True)], 0)
    view = state.workloads["ns/a"]
    assert not state.pending and view.gate_code == "Suspended" and not view.rollback_reason
    state = build_state(NODES, [pod(0, "h0")], [job(queue="", suspend=True, status=RUNNING)], 0)
    view = state.workloads["ns/a"]
    assert (view.rollback_code, view.rollback_reason) == ("Suspended", view.gate)
    # control: not suspended, it keeps running
    state = build_state(NODES, [pod(0, "h0")], [job(queue="", status=RUNNING)], 0)
    assert not state.workloads["ns/a"].rollback_reason


def test_without_kueue_a_labelled_workload_waits_saying_so():
    state = build_state(NODES, [], [job()], 0)
    assert not state.pending
    assert "Kueue is not installed" in state.workloads["ns/a"].gate


def test_it_waits_for_its_workload_then_for_admission():
    state = build_state(NODES, [], [job()], 0, kueue=KueueObjects([], FLAVORS))
    view = state.workloads["ns/a"]
    assert not state.pending and view.gate_code == "WaitingForKueue" and view.kueue_workload is None
    body = workload_for(view)
    assert body["metadata"]["name"] == "elasticjob-a" and body["spec"]["queueName"] == "team"
    (pod_set,) = body["spec"]["podSets"]
    assert (pod_set["count"], pod_set["minCount"]) == (2, 1)
    assert pod_set["template"]["spec"]["containers"][0]["resources"]["requests"] == {"nvidia.com/gpu": "4"}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-a"
    pending = kueue_workload([("QuotaReserved", "False", "Pending")])
    state = build_state(NODES, [], [job()], 0, kueue=KueueObjects([pending], FLAVORS))
    assert not state.pending and "QuotaReserved Pending" in state.workloads["ns/a"].gate


def test_admitted_it_is_placed_inside_the_flavor_and_the_admitted_count():
    state = build_state(NODES, [], [job()], 0, kueue=KueueObjects([ADMITTED], FLAVORS))
    (unit,) = state.pending
    assert unit.allowed_types == ("A100",) and unit.max_replicas == 1 and unit.min_replicas == 1
    # control: an unlabelled job may use both types and both replicas
    (free,) = build_state(NODES, [], [job(queue="")], 0).pending
    assert set(free.allowed_types) == {"H100", "A100"} and free.max_replicas == 2


def test_evicted_its_pods_go_then_the_reservation_is_cleared():
    evicted = copy.deepcopy(ADMITTED)
    evicted["status"]["conditions"].append({"type": "Evicted", "status": "True", "reason": "Preempted",
                                            "message": "Preempted to accommodate a workload"})
    state = build_state(NODES, [pod(0, "h0")], [job(status=RUNNING)], 0, kueue=KueueObjects([evicted], FLAVORS))
    view = state.workloads["ns/a"]
    assert view.rollback_code == "EvictedByKueue" and "Preempted" in view.rollback_reason
    assert released(view) is None  # its pod is still there
    state = build_state(NODES, [], [job()], 0, kueue=KueueObjects([evicted], FLAVORS))
    cleared = released(state.workloads["ns/a"])
    assert cleared is not None and cleared["admission"] is None
    kinds = {c["type"]: (c["status"], c["reason"]) for c in cleared["conditions"]}
    assert kinds["QuotaReserved"] == ("False", "Pending") and kinds["Admitted"] == ("False", "NoReservation")
    assert kinds["Requeued"] == ("True", "Preempted") and kinds["Evicted"] == ("True", "Preempted")
    # once cleared it waits (requeued), never evicted again
    after = {**evicted, "status": {**evicted["status"], **cleared}}
    state = build_state(NODES, [], [job()], 0, kueue=KueueObjects([after], FLAVORS))
    assert state.workloads["ns/a"].gate_code == "WaitingForKueue" and "requeued" in state.workloads["ns/a"].gate
