"""build_state with the loop's memo and last snapshot equals build_state from scratch.

The watch cache hands a cycle the same dict for an unchanged object; the memo reuses what
was derived from it and the snapshot reuses the free capacity of nodes that did not
change.  A changed object is a new dict: it must be parsed again, never served stale.
"""

from __future__ import annotations

import copy
from typing import Any

from tessera.core import ClusterSnapshot
from tessera.operator import labels as L
from tessera.operator.memo import Memo, StateMemo
from tessera.operator.state import ClusterState, build_state

NS = "team"


def _node(i: int, gpus: str = "8") -> dict[str, Any]:
    resources = {"cpu": "96", "memory": "1024Gi", "pods": "110", "nvidia.com/gpu": gpus}
    return {"metadata": {"name": f"n{i}", "uid": f"node-{i}", "resourceVersion": "1",
                         "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": gpus}},
            "spec": {}, "status": {"allocatable": resources, "capacity": resources,
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


def _job(i: int, node: str | None) -> dict[str, Any]:
    job: dict[str, Any] = {
        "apiVersion": "tessera.dev/v1alpha1", "kind": "ElasticJob",
        "metadata": {"name": f"j{i}", "namespace": NS, "uid": f"job-{i}", "generation": 1,
                     "creationTimestamp": f"2026-01-01T00:00:{i:02d}Z"},
        "spec": {"replicas": {"min": 1, "max": 1}, "acceleratorsPerReplica": 2,
                 "template": {"spec": {"containers": [{"name": "t", "image": "t:1"}]}}},
    }
    if node:
        job["status"] = {"phase": "Running", "placementGeneration": 1, "startTime": "2026-01-01T00:01:00Z",
                         "placement": [{"replica": 0, "pod": f"j{i}-0", "node": node, "acceleratorType": "H100",
                                        "generation": 1}]}
    return job


def _pod(i: int, node: str, ours: bool = True) -> dict[str, Any]:
    labels = {L.WORKLOAD_UID: f"job-{i}", L.REPLICA: "0", L.PLACEMENT_GENERATION: "1"} if ours else {}
    return {"metadata": {"name": f"j{i}-0" if ours else f"other-{i}", "namespace": NS, "uid": f"pod-{i}-{ours}",
                         "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "t", "resources": {
                "requests": {"cpu": "1", "nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}}]},
            "status": {"phase": "Running"}}


def _summary(state: ClusterState) -> tuple[Any, ...]:
    snap = state.snapshot
    return (sorted(w.key for w in state.pending), {n: snap.free(n) for n in snap.nodes}, dict(snap.allocations),
            sorted((v.key, v.in_flight, v.rollback_reason, len(v.to_delete)) for v in state.workloads.values()))


def test_memo_and_previous_snapshot_give_what_a_fresh_build_gives() -> None:
    nodes = [_node(i) for i in range(4)]
    jobs = [("ElasticJob", _job(i, f"n{i % 4}")) for i in range(6)] + [("ElasticJob", _job(9, None))]
    pods = [_pod(i, f"n{i % 4}") for i in range(6)] + [_pod(20, "n3", ours=False)]
    memo, previous = StateMemo(), None

    def step() -> None:
        nonlocal previous
        fresh = build_state(nodes, pods, jobs, 1.8e9)
        reused = build_state(nodes, pods, jobs, 1.8e9, memo=memo, previous=previous)
        memo.sweep()
        previous = reused.snapshot
        assert _summary(reused) == _summary(fresh)

    step()
    step()
    assert memo.hit_rate() > 0.4  # the second build reused the first's views
    # a pod deleted by someone: a new dict for it (what the watch would deliver)
    gone = copy.deepcopy(pods[1])
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:02:00Z"
    pods[1] = gone
    step()
    # a node loses half its GPUs (a new dict); a workload is removed and one finishes placing
    nodes[2] = _node(2, gpus="4")
    jobs.pop(0)
    pods[0] = {**pods[0], "status": {"phase": "Succeeded"}}
    step()
    # the foreign pod moves to another node (a new dict under the same uid)
    pods[-1] = _pod(20, "n0", ours=False)
    step()
    assert isinstance(previous, ClusterSnapshot)
    assert previous.free("n0").whole_devices == 8 - 2 - 2  # j4 and the foreign pod (j0 is gone, its pod done)


def test_a_memo_entry_lives_while_its_sources_are_the_same_objects() -> None:
    memo: Memo[int] = Memo()
    a, b = {"x": 1}, {"x": 1}
    assert memo.get("u", (a,), lambda: 1) == 1
    assert memo.get("u", (a,), lambda: 2) == 1  # same object: reused
    assert memo.get("u", (b,), lambda: 3) == 3  # an equal but new object: derived again
    memo.sweep()
    memo.sweep()  # not asked for during a whole cycle: forgotten
    assert memo.get("u", (b,), lambda: 4) == 4


def test_a_heartbeat_keeps_a_node_s_view_and_a_real_change_does_not() -> None:
    nodes = [_node(0)]
    memo = StateMemo()
    first = build_state(nodes, [], [], 1.8e9, memo=memo)
    memo.sweep()
    beat = copy.deepcopy(nodes[0])
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:10Z"
    beat["metadata"]["resourceVersion"] = "2"
    second = build_state([beat], [], [], 1.8e9, memo=memo, previous=first.snapshot)
    memo.sweep()
    assert second.nodes["n0"] is first.nodes["n0"]  # heartbeat only: the same view
    down = copy.deepcopy(beat)
    down["status"]["conditions"][0]["status"] = "False"
    third = build_state([down], [], [], 1.8e9, memo=memo, previous=second.snapshot)
    assert not third.nodes["n0"].node.ready and not third.snapshot.nodes["n0"].usable


def test_a_node_heartbeat_does_not_wake_the_loop_and_a_real_change_does() -> None:
    from tessera.operator.cache import Mirror
    from tessera.operator.views import node_fingerprint

    woken: list[int] = []
    mirror = Mirror("nodes", lambda **_: None, resync_seconds=300, on_change=lambda: woken.append(1),
                    relevant=lambda held, new: node_fingerprint(held) != node_fingerprint(new))
    node = _node(0)
    mirror._apply({"type": "ADDED", "object": node}, "1")
    assert len(woken) == 1
    beat = copy.deepcopy(node)
    beat["metadata"]["resourceVersion"] = "2"
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:10Z"
    mirror._apply({"type": "MODIFIED", "object": beat}, "1")
    assert len(woken) == 1 and mirror.items() == [beat]  # kept, but nothing to decide again
    tainted = copy.deepcopy(beat)
    tainted["metadata"]["resourceVersion"] = "3"
    tainted["spec"]["taints"] = [{"key": "maintenance", "effect": "NoSchedule"}]
    mirror._apply({"type": "MODIFIED", "object": tainted}, "2")
    assert len(woken) == 2
