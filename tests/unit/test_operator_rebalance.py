"""The pure parts of the operator's rebalancer (tessera.operator.moves) and its hook in
tessera.operator.state: moves in flight as surge replicas of the desired placement, cooldown
from status, which moves start."""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any

import pytest

from tessera.core import Migration, Plan, ReplicaAssignment
from tessera.engine import CycleResult
from tessera.operator import labels as L
from tessera.operator.main import rebalance_params
from tessera.operator.moves import (
    landing_times,
    next_replica_index,
    rebalance_snapshot,
    select_moves,
)
from tessera.operator.state import ClusterState, build_state
from tessera.policies.rebalance import config_from_params
from tessera.policy import PolicyContext
from tessera.solver.rebalance import RebalanceConfig

TEMPLATE = {"spec": {"containers": [{"name": "c", "image": "i"}]}}


def node(name: str, product: str = "NVIDIA-H100-80GB-HBM3", gpus: int = 8) -> dict:
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}}, "spec": {},
            "status": {"allocatable": {"cpu": "96", "memory": "1024Gi", "nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def service(name: str, replicas: int, status: dict, *, accelerators: int = 8, annotations: dict | None = None,
            spread: str = "Node") -> tuple[str, dict]:
    return ("InferenceService", {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                     "annotations": annotations or {}},
        "spec": {"replicas": replicas, "acceleratorsPerReplica": accelerators, "spread": spread,
                 "acceleratorTypes": [{"name": "H100", "capacityPerReplica": 4}, {"name": "A100"}],
                 "template": TEMPLATE},
        "status": status})


def pod(workload: str, replica: int, node_name: str, generation: int = 1, *, ready: bool = True,
        terminating: bool = False, gpus: int = 8) -> dict:
    """A pod as tessera.operator.pods.build_pod makes it (the GPUs in the first container's limits)."""
    meta: dict[str, Any] = {"name": f"{workload}-{replica}", "namespace": "ns", "uid": f"pod-{workload}-{replica}",
                            "labels": {L.WORKLOAD_UID: f"uid-{workload}", L.REPLICA: str(replica),
                                       L.PLACEMENT_GENERATION: str(generation)}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    containers = [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]
    return {"metadata": meta, "spec": {"nodeName": node_name, "containers": containers},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}}


def placement(workload: str, nodes: list[str], generation: int = 1) -> list[dict]:
    return [{"replica": i, "pod": f"{workload}-{i}", "node": n, "acceleratorType": "", "generation": generation}
            for i, n in enumerate(nodes)]


def move(replica: int, new: int, source: str, target: str, generation: int = 2,
         start: str = "2026-01-01T00:10:00Z") -> dict:
    return {"replica": replica, "pod": f"s-{replica}", "fromNode": source, "toNode": target, "newReplica": new,
            "newPod": f"s-{new}", "generation": generation, "startTime": start,
            "estimatedCostSeconds": 3.5, "policy": "rebalance-cost-aware", "reason": "rebalance"}


def surge(m: dict) -> dict:
    """The surge replica a move records in the desired placement."""
    return {"replica": m["newReplica"], "pod": m["newPod"], "node": m["toNode"], "acceleratorType": "H100",
            "generation": m["generation"], "surgeFor": m["replica"]}


NODES = [node("a0", "NVIDIA-A100-SXM4-80GB"), node("a1", "NVIDIA-A100-SXM4-80GB"), node("h0"), node("h1"), node("h2")]


def running(moves: list[dict] | None = None, history: list[dict] | None = None, **extra: Any) -> dict:
    """A running 2-replica service on a0, a1 with ``moves`` in flight (records + surge replicas)."""
    return {"phase": "Running", "placementGeneration": 2, "startTime": "2026-01-01T00:00:00Z",
            "placement": placement("s", ["a0", "a1"]) + [surge(m) for m in moves or []], "migrations": moves or [],
            "migrationHistory": history or [], **extra}


def test_the_new_pod_of_a_move_in_flight_is_kept_holds_its_node_and_is_no_scale_change():
    status = running([move(0, 2, "a0", "h0")])
    pods = [pod("s", 0, "a0"), pod("s", 1, "a1"), pod("s", 2, "h0", generation=2, ready=False)]
    state = build_state(NODES, pods, [service("s", 2, status)], 0)
    view = state.workloads["ns/s"]
    assert sorted(view.placement) == [0, 1]  # the moving replica still serves
    assert list(view.surges) == [2] and view.surges[2].surgeFor == 0
    assert list(view.incoming) == [2] and not view.to_delete  # not stale, not a scale-down
    assert not state.pending  # and no scale-up unit either
    assert state.snapshot.free("h0").whole_devices == 0  # its room is taken
    assert not state.leaving


def test_without_the_surge_replica_in_the_placement_the_same_pod_is_stale():
    pods = [pod("s", 0, "a0"), pod("s", 1, "a1"), pod("s", 2, "h0", generation=2)]
    view = build_state(NODES, pods, [service("s", 2, running())], 0).workloads["ns/s"]
    assert [p.name for p in view.to_delete] == ["s-2"] and not view.incoming
    # a move record alone (an older operator's, without a surge replica) keeps nothing either
    status = running()
    status["migrations"] = [move(0, 2, "a0", "h0")]
    view = build_state(NODES, pods, [service("s", 2, status)], 0).workloads["ns/s"]
    assert [p.name for p in view.to_delete] == ["s-2"] and not view.incoming and not view.surges


def test_after_the_take_over_the_old_pod_is_stale_and_deleted():
    status = running()
    status["placement"] = [placement("s", ["a0", "a1"])[1],
                           {"replica": 2, "pod": "s-2", "node": "h0", "acceleratorType": "H100", "generation": 2}]
    pods = [pod("s", 0, "a0"), pod("s", 1, "a1"), pod("s", 2, "h0", generation=2)]
    state = build_state(NODES, pods, [service("s", 2, status)], 0)
    view = state.workloads["ns/s"]
    assert sorted(view.placement) == [1, 2] and [p.name for p in view.to_delete] == ["s-0"]
    assert [p.name for p in state.leaving] == ["s-0"]  # it holds a0 until gone


def test_landing_times_come_from_history_and_moves_in_flight():
    history = [
        {"replica": 0, "newReplica": 2, "fromNode": "a0", "toNode": "h0", "startTime": "2026-01-01T00:05:00Z",
         "completionTime": "2026-01-01T00:05:40Z", "outcome": "Completed"},
        {"replica": 1, "newReplica": 3, "fromNode": "a1", "toNode": "h1", "startTime": "2026-01-01T00:06:00Z",
         "completionTime": "2026-01-01T00:06:10Z", "outcome": "Aborted"},
    ]
    status = running([move(1, 4, "a1", "h1")], history)
    status["placement"] = [placement("s", ["a0", "a1"])[1],
                           {"replica": 2, "pod": "s-2", "node": "h0", "acceleratorType": "H100", "generation": 2},
                           surge(move(1, 4, "a1", "h1"))]
    pods = [pod("s", 1, "a1"), pod("s", 2, "h0", generation=2), pod("s", 4, "h1", generation=2)]
    state = build_state(NODES, pods, [service("s", 2, status)], 0)
    landed = landing_times(state.workloads["ns/s"])
    base = 1767225600.0  # 2026-01-01T00:00:00Z
    # replica 2 landed when its move finished; an aborted move moved nothing; replica 1 is
    # moving (pinned at the move's start)
    assert landed == {2: base + 340, 1: base + 600}
    snapshot = rebalance_snapshot(state, {"ns/s": 6.0}, base + 900)
    allocation = snapshot.allocations["ns/s"]
    since = {rp.replica: rp.since_seconds for rp in allocation.replicas}
    assert since == {1: base + 600, 2: base + 340}
    assert allocation.observed_load_per_second == 6.0 and snapshot.now_seconds == base + 900


def test_annotations_become_cost_attributes():
    annotations = {"tessera.dev/max-unavailable": "2", "tessera.dev/weights-gib": "140", "other/x": "y"}
    pods = [pod("s", 0, "a0"), pod("s", 1, "a1")]
    state = build_state(NODES, pods, [service("s", 2, running(), annotations=annotations)], 0)
    attributes = rebalance_snapshot(state, None, 0).allocations["ns/s"].workload.attributes
    assert attributes["tessera.dev/max-unavailable"] == "2" and attributes["tessera.dev/weights-gib"] == "140"
    assert "other/x" not in attributes


def result_of(state: ClusterState, *migrations: Migration, placements: tuple = ()) -> CycleResult:
    return CycleResult("rebalance-cost-aware", "1", state.snapshot, Plan(placements=placements, migrations=migrations),
                       (), MappingProxyType({}), 0.0, 1)


def test_moves_start_in_order_with_room_max_unavailable_and_no_second_move_of_a_moving_replica():
    status = running([move(0, 2, "a0", "h0")])
    pods = [pod("s", 0, "a0"), pod("s", 1, "a1"), pod("s", 2, "h0", generation=2, ready=False)]
    workloads = [service("s", 2, status, annotations={"tessera.dev/max-unavailable": "2"})]
    state = build_state(NODES, pods, workloads, 0)
    snapshot = rebalance_snapshot(state, None, 0)
    again = Migration("ns/s", 0, ReplicaAssignment("h1"))  # replica 0 is moving already
    onto_incoming = Migration("ns/s", 1, ReplicaAssignment("h0"))  # h0 holds the new replica (and is full)
    ok = Migration("ns/s", 1, ReplicaAssignment("h1"), estimated_cost_seconds=3.0)
    third = Migration("ns/s", 1, ReplicaAssignment("h2"))
    selection = select_moves(state, snapshot, result_of(state, again, onto_incoming, ok, third))
    assert [(s.migration.replica, s.migration.to.node, s.source_node) for s in selection.start] == [(1, "h1", "a1")]
    assert selection.start[0].reason == "rebalance"
    waits = [(replica, why) for _key, replica, why in selection.waiting]
    assert waits[0][0] == 0 and "already moving" in waits[0][1]
    assert waits[1][0] == 1 and "already hosts a replica" in waits[1][1]
    # the last: replica 1 has just been started (a second move of a moving replica)
    assert waits[2][0] == 1 and "already moving" in waits[2][1] and len(waits) == 3


def test_max_unavailable_counts_moves_of_earlier_rounds():
    status = running([move(0, 2, "a0", "h0")])
    pods = [pod("s", 0, "a0"), pod("s", 1, "a1"), pod("s", 2, "h0", generation=2, ready=False)]
    state = build_state(NODES, pods, [service("s", 2, status)], 0)  # default maxUnavailable 1
    selection = select_moves(state, rebalance_snapshot(state, None, 0),
                             result_of(state, Migration("ns/s", 1, ReplicaAssignment("h1"))))
    assert not selection.start
    assert selection.waiting == [("ns/s", 1, "1 move(s) of the service in flight (maxUnavailable 1)")]


def test_a_move_without_room_now_waits_and_defrag_moves_are_labelled():
    full = ("ElasticJob", {
        "metadata": {"name": "big", "namespace": "ns", "uid": "uid-big", "generation": 1},
        "spec": {"replicas": {"min": 1, "max": 1}, "acceleratorsPerReplica": 8,
                 "acceleratorTypes": [{"name": "H100"}], "template": TEMPLATE},
        "status": {"phase": "Running", "placementGeneration": 1,
                   "placement": [{"replica": 0, "pod": "big-0", "node": "h1", "generation": 1}]}})
    pods = [pod("s", 0, "a0"), pod("s", 1, "a1"), pod("big", 0, "h1")]
    state = build_state(NODES, pods, [service("s", 2, running()), full], 0)
    snapshot = rebalance_snapshot(state, None, 0)
    blocked = select_moves(state, snapshot, result_of(state, Migration("ns/s", 0, ReplicaAssignment("h1"))))
    assert not blocked.start and "no room on h1" in blocked.waiting[0][2]
    training = select_moves(state, snapshot, result_of(state, Migration("ns/big", 0, ReplicaAssignment("h2"))))
    assert not training.start and "elastic path" in training.waiting[0][2]
    defrag = select_moves(state, snapshot, result_of(state, Migration("ns/s", 0, ReplicaAssignment("h2")),
                                                      placements=("x",)))
    assert [s.reason for s in defrag.start] == ["defrag"]


def test_a_fresh_replica_index_avoids_moves_and_terminating_pods():
    status = running([move(0, 2, "a0", "h0")])
    pods = [pod("s", 0, "a0"), pod("s", 1, "a1"), pod("s", 2, "h0", generation=2, ready=False),
            pod("s", 3, "h1", terminating=True)]
    state = build_state(NODES, pods, [service("s", 2, status)], 0)
    assert next_replica_index(state.workloads["ns/s"], state) == 4


def test_rebalance_params_become_policy_parameters_and_reach_the_config():
    params = rebalance_params(["cooldown_seconds=60", " budget_moves = 2"])
    assert params == {"rebalance.cooldown_seconds": "60", "rebalance.budget_moves": "2"}
    ctx = PolicyContext(now_seconds=0.0, rng=random.Random(0), time_budget_seconds=1.0, params=params)
    config = config_from_params(RebalanceConfig(), params, ctx)
    assert config.cooldown_seconds == 60.0 and config.budget_moves == 2
    with pytest.raises(ValueError, match="NAME=VALUE"):
        rebalance_params(["cooldown_seconds"])


class _Leader:
    def ensure_leader(self) -> bool:
        return True

    def require_leader(self, doing: str) -> None:
        return None


def test_training_moves_become_one_resize_through_the_elastic_path_and_cool_down():
    from test_api_reconcile import NODES, job, placement
    from test_api_reconcile import pod as job_pod

    from tessera.core import Resize
    from tessera.operator.metrics import OperatorMetrics
    from tessera.operator.moves import rebalance_snapshot
    from tessera.operator.rebalance import Rebalancer

    resized = "2026-01-01T01:00:00.500Z"
    workloads = [job("a", replicas=(2, 2), status={"phase": "Running", "placementGeneration": 1,
                                                   "startTime": "2026-01-01T00:00:00Z", "lastResizeTime": resized,
                                                   "placement": placement("a", ["n0", "n1"])})]
    state = build_state(NODES, [job_pod("a", 0, "n0"), job_pod("a", 1, "n1")], workloads, 1_767_230_000.0)
    # the cooldown of every replica of a job counts from its last reshard (all ranks restarted)
    allocation = rebalance_snapshot(state, None, 1_767_230_000.0).allocations["ns/a"]
    assert {rp.since_seconds for rp in allocation.replicas} == {allocation.stable_since_seconds}
    assert allocation.stable_since_seconds == pytest.approx(1_767_229_200.5)

    metrics = OperatorMetrics()
    rebalancer = Rebalancer(None, metrics, _Leader())  # type: ignore[arg-type]
    target = ReplicaAssignment("n2", tuple(range(8)))
    result = result_of(state, Migration("ns/a", 1, target, reason="n1 is hot", estimated_cost_seconds=40.0))
    calls: list[Resize] = []
    moved = rebalancer._move_training(state, result, lambda resize, _result: calls.append(resize) or True, [])
    assert moved == ["ns/a"]
    assert calls == [Resize("ns/a", remove=(1,), add=(target,), reason="moved by rebalance-cost-aware: n1 is hot")]
    assert metrics.registry.get_sample_value(
        "tessera_migrations_total", {"policy": "rebalance-cost-aware", "reason": "rebalance"}) == 1.0
