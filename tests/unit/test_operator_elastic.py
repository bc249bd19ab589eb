"""The operator's elastic pieces without a cluster: failure grace from node timestamps,
lost replicas kept for the policy, plans and the pod contract in the pod spec."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_api_reconcile import NODES, job, node, placement, pod

from tessera.api import elastic_contract as contract
from tessera.core import lost_replicas
from tessera.operator.elastic import (
    DEFAULT_FAILURE_GRACE_SECONDS,
    ElasticSettings,
    apply_failure_grace,
    grace_left,
    node_failed_since,
    plan_for,
    plan_status,
    previous_plan,
)
from tessera.operator.pods import build_pod, single_replica
from tessera.operator.state import LOST_NODE_PREFIX, build_state
from tessera.policies.elastic import ElasticBestFit
from tessera.policy import PolicyContext

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def rfc(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def not_ready(name: str, since: float, status: str = "False") -> dict[str, Any]:
    raw = node(name)
    raw["status"]["conditions"] = [{"type": "Ready", "status": status, "lastTransitionTime": rfc(since)}]
    return raw


def test_failure_time_comes_from_the_node_object():
    assert node_failed_since(node("n0")) is None
    assert node_failed_since(not_ready("n0", T0)) == T0
    assert node_failed_since(not_ready("n0", T0, status="Unknown")) == T0
    cordoned = node("n0")
    cordoned["spec"]["unschedulable"] = True
    assert node_failed_since(cordoned) == 0.0  # a cordon is a decision, not a blip: at once
    tainted = node("n0", taints=[{"key": "maintenance", "effect": "NoExecute", "timeAdded": rfc(T0 + 3)}])
    assert node_failed_since(tainted) == T0 + 3
    # the taints that mirror Ready are read through the condition, accelerator taints are tolerated
    mirrored = node("n0", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
                                  {"key": "nvidia.com/gpu", "effect": "NoSchedule"}])
    assert node_failed_since(mirrored) is None
    both = not_ready("n0", T0)
    both["spec"]["taints"] = [{"key": "x", "effect": "NoExecute", "timeAdded": rfc(T0 - 10)}]
    assert node_failed_since(both) == T0 - 10  # the earliest cause


def test_grace_left_counts_down_and_a_zero_grace_is_immediate():
    # whole-second stamps: counted from the end of that second (never shorter than the grace)
    assert grace_left(T0, T0 + 1, 5) == 5
    assert grace_left(T0, T0 + 6, 5) == 0
    assert grace_left(T0 + 0.25, T0 + 1.25, 5) == 4  # a precise stamp is taken as it is
    assert grace_left(T0, T0 + 0.1, 0) == 0  # no grace: at once
    assert grace_left(None, T0, 5) == 0


def test_settings_from_env():
    assert ElasticSettings.from_env({}).failure_grace_seconds == DEFAULT_FAILURE_GRACE_SECONDS
    assert ElasticSettings.from_env({"TESSERA_FAILURE_GRACE_SECONDS": "0.5"}).failure_grace_seconds == 0.5
    assert ElasticSettings.from_env({"TESSERA_FAILURE_GRACE_SECONDS": "-1"}).failure_grace_seconds == 0.0


def running_job(nodes: list[str], replicas: tuple[int, int] = (2, 3), **status: Any) -> tuple[str, dict]:
    return job("a", replicas=replicas, status={"phase": "Running", "placementGeneration": 1,
                                               "placement": placement("a", nodes), **status})


def test_a_node_in_its_grace_keeps_its_replicas_but_takes_nothing_new():
    nodes = [not_ready("n0", T0), node("n1"), node("n2")]
    pods = [pod("a", 0, "n0"), pod("a", 1, "n1")]
    state = build_state(nodes, pods, [running_job(["n0", "n1"])], T0 + 2, keep_lost=True)
    alloc = state.snapshot.allocations["ns/a"]
    assert lost_replicas(state.snapshot, alloc) == (0,)  # without the grace: lost at once
    in_grace, deadline = apply_failure_grace(state, nodes, T0 + 2, 5.0)
    assert in_grace == {"n0"} and deadline == T0 + 6
    alloc = state.snapshot.allocations["ns/a"]
    assert lost_replicas(state.snapshot, alloc) == ()  # a blip: nothing to reshard yet
    assert state.snapshot.free("n0").whole_devices == 0  # but its room is held
    # once the grace is over the node counts as failed
    later = build_state(nodes, pods, [running_job(["n0", "n1"])], T0 + 6, keep_lost=True)
    assert apply_failure_grace(later, nodes, T0 + 6, 5.0) == (frozenset(), None)
    assert lost_replicas(later.snapshot, later.snapshot.allocations["ns/a"]) == (0,)


def test_lost_replicas_stay_in_the_allocation_for_the_elastic_policy():
    pods = [pod("a", 0, "n0")]  # replica 1's pod failed (not listed) or was deleted
    keep = build_state(NODES, pods, [running_job(["n0", "n1"])], T0, keep_lost=True)
    view = keep.workloads["ns/a"]
    assert sorted(view.placement) == [0] and sorted(view.lost) == [1] and not view.rollback_reason
    alloc = keep.snapshot.allocations["ns/a"]
    assert [rp.node for rp in alloc.replicas] == ["n0", LOST_NODE_PREFIX + "n1"]
    assert lost_replicas(keep.snapshot, alloc) == (1,)
    # below min: kept too (the policy releases it with a reason instead of a silent rollback)
    rigid = build_state(NODES, pods, [running_job(["n0", "n1"], replicas=(2, 2))], T0, keep_lost=True)
    assert not rigid.workloads["ns/a"].rollback_reason and sorted(rigid.workloads["ns/a"].lost) == [1]
    # without keep_lost (a policy that does not resize) the old rule holds
    drop = build_state(NODES, pods, [running_job(["n0", "n1"], replicas=(2, 2))], T0)
    assert "below the minimum" in drop.workloads["ns/a"].rollback_reason


def test_the_elastic_policy_resizes_around_a_lost_replica_and_releases_below_min():
    pods = [pod("a", 0, "n0")]
    state = build_state(NODES, pods, [running_job(["n0", "n1"])], T0, keep_lost=True)
    plan = ElasticBestFit().decide(state.snapshot, [], PolicyContext(now_seconds=T0))
    (resize,) = plan.resizes
    # replaced on free capacity, up to the target of 3
    assert resize.remove == (1,) and sorted(a.node for a in resize.add) == ["n1", "n2"]
    # min 2 and no free node left for a replacement: released with a reason
    full = build_state(NODES[:1], pods, [running_job(["n0", "n1"], replicas=(2, 2))], T0, keep_lost=True)
    (release,) = ElasticBestFit().decide(full.snapshot, [], PolicyContext(now_seconds=T0)).preemptions
    assert release.after_failure and "released and requeued" in release.reason


def test_resize_time_in_status_feeds_the_growth_hysteresis():
    state = build_state(NODES, [pod("a", 0, "n0"), pod("a", 1, "n1")],
                        [running_job(["n0", "n1"], lastResizeTime=rfc(T0))], T0 + 10)
    assert state.snapshot.allocations["ns/a"].resized_at_seconds == T0
    ctx = PolicyContext(now_seconds=T0 + 10, params={"elastic_hysteresis_seconds": 60})
    assert not ElasticBestFit().decide(state.snapshot, [], ctx).resizes  # too soon after the last resize
    later = state.snapshot.with_changes(now_seconds=T0 + 61)
    ctx = PolicyContext(now_seconds=T0 + 61, params={"elastic_hysteresis_seconds": 60})
    (grow,) = ElasticBestFit().decide(later, [], ctx).resizes
    assert not grow.remove and len(grow.add) == 1


def test_new_replica_indices_skip_kept_removed_and_present_ones():
    from tessera.operator.state import free_replica_indices  # the one index allocator of every decision

    assert free_replica_indices([0, 2, 3], 2) == [1, 4]
    assert free_replica_indices([], 3) == [0, 1, 2]


BOUND = [pod("a", 0, "n0"), pod("a", 1, "n1")]


def batch_job(**status: Any) -> tuple[str, dict]:
    kind, raw = running_job(["n0", "n1"], replicas=(1, 3), **status)
    raw["spec"].update({"globalBatchSize": 48, "microBatchSize": 8})
    return kind, raw


def test_plan_generation_follows_status_and_bumps_on_a_new_layout():
    state = build_state(NODES, BOUND, [batch_job()], T0, keep_lost=True)
    view = state.workloads["ns/a"]
    two = plan_for(view, view.placement.values())
    assert two is not None and two.generation == 1 and two.dp == 16 and two.micro_batch * sum(two.rank_micro_batches) == 48
    recorded = build_state(NODES, BOUND, [batch_job(plan=plan_status(two))], T0, keep_lost=True).workloads["ns/a"]
    assert previous_plan(recorded) == two
    same = plan_for(recorded, recorded.placement.values())
    assert same is not None and same.generation == 1  # unchanged layout: no restart of the pods
    one = plan_for(recorded, [recorded.placement[0]])
    assert one is not None and one.generation == 2 and one.dp == 8 and one.global_batch_size == 48


def test_a_job_without_a_batch_size_gets_the_trivial_data_parallel_plan():
    view = build_state(NODES, BOUND, [running_job(["n0", "n1"])], T0).workloads["ns/a"]
    plan = plan_for(view, view.placement.values())
    assert plan is not None and plan.dp == 16 and plan.replicas_used == (0, 1)  # 8 accelerators per replica


def test_the_pod_carries_the_plan_contract():
    view = build_state(NODES, BOUND, [batch_job()], T0).workloads["ns/a"]
    plan = plan_for(view, view.placement.values())
    assert plan is not None
    body = build_pod(view, 1, "n1", "H100", "nvidia.com/gpu", 1, plan=plan)
    spec = body["spec"]
    assert spec["hostname"] == "a-1" and spec["subdomain"] == "a-headless"
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env["WORLD_SIZE"] == "16" and env["RANK"] == "8" and env["NODE_RANK"] == "1"
    assert env["MASTER_ADDR"] == "a-0.a-headless.ns.svc"
    assert json.loads(env["TESSERA_PLAN"])["generation"] == plan.generation
    assert {"name": "tessera-plan", "configMap": {"name": contract.configmap_name("a")}} in spec["volumes"]
    mount = spec["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == contract.PLAN_MOUNT_PATH and mount["readOnly"]
    plain = build_pod(view, 1, "n1", "H100", "nvidia.com/gpu", 1)
    assert "hostname" not in plain["spec"] and "env" not in plain["spec"]["containers"][0]


def test_a_job_of_at_most_one_replica_rendezvous_on_itself_without_service_or_configmap():
    kind, raw = running_job(["n0"], replicas=(1, 1))
    raw["spec"].update({"globalBatchSize": 48, "microBatchSize": 8})
    view = build_state(NODES, [pod("a", 0, "n0")], [(kind, raw)], T0).workloads["ns/a"]
    assert single_replica(view)
    plan = plan_for(view, view.placement.values())
    assert plan is not None
    spec = build_pod(view, 0, "n0", "H100", "nvidia.com/gpu", 1, plan=plan)["spec"]
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == contract.SINGLE_ADDR
    assert env["PET_RDZV_ENDPOINT"] == f"{contract.SINGLE_ADDR}:{contract.DEFAULT_RDZV_PORT}"
    assert json.loads(env["TESSERA_PLAN"])["master_addr"] == contract.SINGLE_ADDR
    # nothing names the Service or the ConfigMap it will not get
    assert "subdomain" not in spec and "volumes" not in spec and "volumeMounts" not in spec["containers"][0]
    # control: a job that may grow to two keeps both
    grows = build_state(NODES, [pod("a", 0, "n0")], [running_job(["n0"], replicas=(1, 2))], T0).workloads["ns/a"]
    assert not single_replica(grows)


@pytest.mark.parametrize("cause", ["cordon", "taint-now"])
def test_administrative_failures_skip_the_grace(cause: str):
    sick = node("n0")
    if cause == "cordon":
        sick["spec"]["unschedulable"] = True
    else:
        sick["spec"]["taints"] = [{"key": "maintenance", "effect": "NoExecute"}]
    nodes = [sick, node("n1"), node("n2")]
    state = build_state(nodes, [pod("a", 0, "n0"), pod("a", 1, "n1")], [running_job(["n0", "n1"])], T0,
                        keep_lost=True)
    assert apply_failure_grace(state, nodes, T0, 60.0) == (frozenset(), None)
    assert lost_replicas(state.snapshot, state.snapshot.allocations["ns/a"]) == (0,)


def test_a_deleted_node_loses_its_replicas_at_once():
    # the pod is still bound to a node object that is gone (no node lifecycle controller)
    pods = [pod("a", 0, "n0"), pod("a", 1, "gone")]
    state = build_state(NODES, pods, [running_job(["n0", "gone"])], T0, keep_lost=True)
    assert apply_failure_grace(state, NODES, T0, 60.0) == (frozenset(), None)  # nothing to wait for
    assert lost_replicas(state.snapshot, state.snapshot.allocations["ns/a"]) == (1,)
    (resize,) = ElasticBestFit().decide(state.snapshot, [], PolicyContext(now_seconds=T0)).resizes
    assert resize.remove == (1,) and resize.add
