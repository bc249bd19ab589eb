"""Rebuilding the scheduler's view from cluster objects (tessera.operator.state): the
crash-recovery rules, without a cluster."""

from __future__ import annotations

from typing import Any

from tessera.operator import labels as L
from tessera.operator.state import SCALE_UP_SUFFIX, build_state, node_view

TEMPLATE = {"spec": {"containers": [{"name": "c", "image": "i"}]}}


def node(name: str, product: str = "NVIDIA-H100-80GB-HBM3", gpus: int = 8, taints: list | None = None) -> dict:
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
            "spec": {"taints": taints or []},
            "status": {"allocatable": {"cpu": "96", "memory": "1024Gi", "nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def job(name: str, *, replicas=(2, 2), status: dict | None = None, uid: str | None = None) -> tuple[str, dict]:
    return ("ElasticJob", {
        "metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"replicas": {"min": replicas[0], "max": replicas[1]}, "acceleratorsPerReplica": 8,
                 "acceleratorTypes": [{"name": "H100"}], "template": TEMPLATE},
        "status": status or {}})


def service(name: str, replicas: int, status: dict | None = None) -> tuple[str, dict]:
    return ("InferenceService", {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {"replicas": replicas, "replicaRange": {"min": 1, "max": 8}, "acceleratorsPerReplica": 1,
                 "acceleratorTypes": [{"name": "H100"}], "template": TEMPLATE},
        "status": status or {}})


def pod(workload: str, replica: int, node_name: str = "", generation: int = 1, **extra: Any) -> dict:
    return {"metadata": {"name": f"{workload}-{replica}", "namespace": "ns", "uid": f"pod-{workload}-{replica}",
                         "labels": {L.WORKLOAD_UID: f"uid-{workload}", L.REPLICA: str(replica),
                                    L.PLACEMENT_GENERATION: str(generation)}, **extra},
            "spec": {"nodeName": node_name} if node_name else {}, "status": {"phase": "Running"}}


def placement(workload: str, nodes: list[str], generation: int = 1) -> list[dict]:
    return [{"replica": i, "pod": f"{workload}-{i}", "node": n, "acceleratorType": "H100", "generation": generation}
            for i, n in enumerate(nodes)]


NODES = [node("n0"), node("n1"), node("n2")]


def test_unplaced_workload_is_pending_and_leftover_pods_are_stale():
    state = build_state(NODES, [pod("a", 0, generation=3)], [job("a")], 0)
    assert [w.key for w in state.pending] == ["ns/a"]
    assert [p.name for p in state.workloads["ns/a"].to_delete] == ["a-0"]


def test_in_flight_placement_is_completed_and_holds_its_capacity():
    status = {"phase": "Binding", "placementGeneration": 1, "placement": placement("a", ["n0", "n1"])}
    pods = [pod("a", 0, "n0")]  # replica 0 bound before the crash, replica 1 never created
    state = build_state(NODES, pods, [job("a", status=status)], 0)
    view = state.workloads["ns/a"]
    assert view.in_flight and not view.rollback_reason
    assert [r.replica for r in view.to_bind] == [1]
    assert not state.pending
    assert state.snapshot.free("n1").whole_devices == 0  # reserved for replica 1 already


def test_in_flight_placement_on_a_vanished_node_is_rolled_back():
    status = {"phase": "Binding", "placementGeneration": 1, "placement": placement("a", ["n0", "gone"])}
    state = build_state(NODES, [pod("a", 0, "n0")], [job("a", status=status)], 0)
    assert "gone no longer exists" in state.workloads["ns/a"].rollback_reason
    assert state.snapshot.free("n0").whole_devices == 8  # nothing reserved for it


def test_in_flight_pod_bound_elsewhere_is_rolled_back():
    status = {"phase": "Binding", "placementGeneration": 1, "placement": placement("a", ["n0", "n1"])}
    state = build_state(NODES, [pod("a", 0, "n2")], [job("a", status=status)], 0)
    assert "bound to n2" in state.workloads["ns/a"].rollback_reason


def test_running_gang_losing_a_replica_keeps_running_above_min_and_restarts_below():
    status = {"phase": "Running", "placementGeneration": 1, "placement": placement("a", ["n0", "n1", "n2"])}
    pods = [pod("a", 0, "n0"), pod("a", 1, "n1")]
    elastic = build_state(NODES, pods, [job("a", replicas=(2, 3), status=status)], 0).workloads["ns/a"]
    assert sorted(elastic.placement) == [0, 1] and not elastic.rollback_reason
    assert "lost replica" in elastic.notes[0]
    rigid = build_state(NODES, pods, [job("a", replicas=(3, 3), status=status)], 0).workloads["ns/a"]
    assert "below the minimum of 3" in rigid.rollback_reason


def test_running_allocation_comes_from_bound_pods():
    status = {"phase": "Running", "placementGeneration": 1, "placement": placement("a", ["n0", "n1"])}
    state = build_state(NODES, [pod("a", 0, "n0"), pod("a", 1, "n1")], [job("a", status=status)], 0)
    assert set(state.snapshot.allocations) == {"ns/a"}
    assert state.snapshot.allocations["ns/a"].started_at_seconds == 0.0  # unknown start
    status["startTime"] = "2026-01-01T00:01:40Z"
    state = build_state(NODES, [pod("a", 0, "n0"), pod("a", 1, "n1")], [job("a", status=status)], 0)
    assert state.snapshot.allocations["ns/a"].started_at_seconds == 1767225700.0
    assert state.snapshot.free("n0").whole_devices == 0 and state.snapshot.free("n2").whole_devices == 8


def test_service_scales_down_by_highest_index_and_up_by_a_separate_unit():
    status = {"phase": "Running", "placementGeneration": 1, "placement": placement("s", ["n0", "n1", "n2"])}
    pods = [pod("s", i, f"n{i}") for i in range(3)]
    down = build_state(NODES, pods, [service("s", 1, status)], 0).workloads["ns/s"]
    assert sorted(down.placement) == [0] and sorted(p.name for p in down.to_delete) == ["s-1", "s-2"]
    status_one = {"phase": "Running", "placementGeneration": 1, "placement": placement("s", ["n0"])}
    up = build_state(NODES, pods[:1], [service("s", 3, status_one)], 0)
    unit = next(w for w in up.pending if w.key == "ns/s" + SCALE_UP_SUFFIX)
    assert unit.target_replicas == 2 and unit.gang_min == 1
    assert up.pending_owner[unit.key] == "ns/s"


def test_foreign_pods_hold_capacity_and_orphans_are_reported():
    foreign = {"metadata": {"name": "x", "namespace": "other", "uid": "x"},
               "spec": {"nodeName": "n0", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "3"}}}]},
               "status": {"phase": "Running"}}
    orphan = pod("deleted", 0, "n1")
    state = build_state(NODES, [foreign, orphan], [], 0)
    assert state.snapshot.free("n0").whole_devices == 5
    assert [p.name for p in state.orphans] == ["deleted-0"]


def test_finished_pods_hold_nothing():
    done = pod("a", 0, "n0")
    done["status"]["phase"] = "Succeeded"
    state = build_state(NODES, [done], [], 0)
    assert state.snapshot.free("n0").whole_devices == 8


def test_node_taints_and_readiness():
    assert not node_view(node("t", taints=[{"key": "dedicated", "effect": "NoSchedule"}])).node.usable
    assert node_view(node("t", taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}])).node.usable
    # mirrors the Ready condition, which is read directly
    assert node_view(node("t", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])).node.usable
    not_ready = node("t")
    not_ready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert not node_view(not_ready).node.usable


def test_invalid_object_is_reported_not_raised():
    kind, raw = job("bad")
    raw["spec"]["replicas"] = {"min": 3, "max": 1}
    state = build_state(NODES, [], [(kind, raw)], 0)
    assert "spec.replicas.min must be <= spec.replicas.max" in state.workloads["ns/bad"].error
    assert not state.pending


def test_pod_of_a_replica_links_back_and_asks_for_the_devices():
    from tessera.operator.pods import build_pod
    from tessera.operator.state import workload_view

    kind, raw = job("a")
    raw["spec"]["template"] = {"metadata": {"labels": {"app": "x"}},
                               "spec": {"nodeName": "sneaky", "containers": [{"name": "c", "image": "i"}]}}
    pod_body = build_pod(workload_view(kind, raw), 1, "n0", "H100", "nvidia.com/gpu", 3)
    meta, spec = pod_body["metadata"], pod_body["spec"]
    assert meta["name"] == "a-1" and meta["namespace"] == "ns"
    assert meta["labels"] == {"app": "x", L.WORKLOAD: "a", L.WORKLOAD_KIND: "ElasticJob", L.WORKLOAD_UID: "uid-a",
                              L.REPLICA: "1", L.PLACEMENT_GENERATION: "3"}
    assert meta["annotations"][L.TARGET_NODE] == "n0"
    assert meta["ownerReferences"][0] == {"apiVersion": "tessera.dev/v1alpha1", "kind": "ElasticJob", "name": "a",
                                              "uid": "uid-a", "controller": True, "blockOwnerDeletion": True}
    assert spec["schedulerName"] == "tessera" and "nodeName" not in spec  # bound by Binding, not by spec
    assert spec["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "8"},
                                                  "requests": {"nvidia.com/gpu": "8"}}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_conditions_keep_their_transition_time_until_the_status_flips():
    from tessera.operator.status import set_condition, unchanged

    now = "2026-06-01T00:00:00Z"
    first = set_condition([], "Scheduled", "False", "Unschedulable", "needs 2; 1 fit", 1, now)
    first[0]["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    again = set_condition(first, "Scheduled", "False", "Unschedulable", "needs 2; 0 fit", 1, now)
    assert again[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and again[0]["message"] == "needs 2; 0 fit"
    flipped = set_condition(again, "Scheduled", "True", "Placed", "bound", 1, now)
    assert flipped[0]["lastTransitionTime"] == now
    # an unchanged status is not patched again (timestamps aside)
    assert unchanged({"phase": "Pending", "conditions": first}, {"phase": "Pending", "conditions": set_condition(
        first, "Scheduled", "False", "Unschedulable", "needs 2; 1 fit", 1, now)})
    assert not unchanged({"phase": "Pending", "conditions": first}, {"phase": "Pending", "conditions": again})


def gpu_pod(workload: str, replica: int, node_name: str, **extra: Any) -> dict:
    raw = pod(workload, replica, node_name, **extra)
    raw["spec"]["containers"] = [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]
    return raw


def test_a_half_done_eviction_is_finished_and_its_pods_hold_their_room_until_gone():
    # crash point: the victim's status says preempted (no placement), its pods are still bound
    preempted = {"phase": "Pending", "placementGeneration": 1, "placement": [],
                 "conditions": [{"type": "Preempted", "status": "True", "reason": "Preempted",
                                 "message": "preempted by ns/high (priority 10)"}]}
    pods = [gpu_pod("low", 0, "n0"), gpu_pod("low", 1, "n1")]
    state = build_state(NODES, pods, [job("low", status=preempted), job("high", replicas=(1, 1))], 0)
    low = state.workloads["ns/low"]
    assert sorted(p.name for p in low.to_delete) == ["low-0", "low-1"]  # the eviction is finished
    assert not low.placement and {w.key for w in state.pending} == {"ns/low", "ns/high"}
    free = state.snapshot.ledger()
    assert not free.fits("n0", state.pending[0].demand) and not free.fits("n1", state.pending[0].demand)
    assert free.fits("n2", state.pending[0].demand)  # only really free room is offered
    assert sorted(p.name for p in state.leaving) == ["low-0", "low-1"]  # no new eviction meanwhile

    # graceful deletion under way: terminating pods still hold their nodes and block evictions
    terminating = [gpu_pod("low", 0, "n0", deletionTimestamp="2026-01-01T00:00:00Z")]
    state = build_state(NODES, terminating, [job("low", status=preempted)], 0)
    assert not state.workloads["ns/low"].to_delete and [p.name for p in state.leaving] == ["low-0"]
    assert not state.snapshot.ledger().fits("n0", state.pending[0].demand)

    # once the pods are gone the room is free and nothing is leaving
    state = build_state(NODES, [], [job("low", status=preempted)], 0)
    assert not state.leaving and state.snapshot.ledger().fits("n0", state.pending[0].demand)


def test_pods_leaving_a_node_that_is_not_ready_do_not_block_evictions():
    down = node("n0")
    down["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    stuck = [gpu_pod("low", 0, "n0", deletionTimestamp="2026-01-01T00:00:00Z")]
    state = build_state([down, node("n1")], stuck, [job("low")], 0)
    assert not state.leaving  # a dead node's kubelet may never confirm; it must not stall preemption
