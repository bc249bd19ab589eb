"""Queues in the operator on an in-memory cluster: quota enforced on what is placed, each
workload's queue resolved (spec.queueName, namespace selector, default queue), queue status
written.  tests/operator/test_queues.py checks the same against a real kube-apiserver."""

from __future__ import annotations

from fake_kube import FakeKube, elasticjob, gpu_node, queue
from test_operator_core import Clock, running, scheduler

from tessera.operator.scheduler import Scheduler


def job(name: str, queue_name: str = "", namespace: str = "ns", gpus: int = 8) -> dict:
    raw = elasticjob(name, namespace, replicas=1, accelerators=gpus)
    if queue_name:
        raw["spec"]["queueName"] = queue_name
    return raw


def settle(op: Scheduler, cycles: int = 4) -> None:
    for _ in range(cycles):
        op.run_cycle()


def teams() -> FakeKube:
    kube = FakeKube([gpu_node(f"h{i}") for i in range(4)])  # 32 H100, far more than the queues' 16
    for q in (queue("org"), queue("team-a", "org", H100=8), queue("team-b", "org", H100=8)):
        kube.queues[q["metadata"]["name"]] = q
    return kube


def usage(kube: FakeKube, name: str) -> dict:
    status = kube.queues[name].get("status") or {}
    return {row["acceleratorType"]: (row["used"], row["borrowed"], row["nominal"]) for row in status.get("usage", [])}


def test_a_queue_borrows_idle_quota_of_its_tree_and_waits_beyond_it_although_nodes_are_free():
    kube = teams()
    for name in ("a1", "a2", "a3"):
        kube.add(job(name, "team-a"))
    op = scheduler(kube, Clock())
    settle(op)
    assert [n for n in ("a1", "a2", "a3") if running(kube, n)] == ["a1", "a2"]  # 8 own + 8 of team-b's
    waiting = kube.condition("a3")
    assert waiting["reason"] == "WaitingForQuota" and "queue" in waiting["message"], waiting
    assert usage(kube, "team-a") == {"H100": (16.0, 8.0, 8)}
    assert usage(kube, "org") == {"H100": (16.0, 0.0, 16)}
    assert kube.queues["team-a"]["status"]["pending"] == 1 and kube.queues["team-a"]["status"]["admitted"] == 2
    assert kube.queues["org"]["status"]["admitted"] == 2
    # team-b's quota is lent, not lost: b1 waits while team-a uses it (taking it back by
    # preemption, reclaim, is not built yet) and runs once team-a's borrowers are done
    kube.add(job("b1", "team-b"))
    settle(op)
    assert not running(kube, "b1") and kube.condition("b1")["reason"] == "WaitingForQuota"
    for name in ("a2", "a3"):
        del kube.workloads[("ElasticJob", "ns", name)]
        for pod in kube.pods_of(name):
            kube.delete_pod("ns", pod["metadata"]["name"])
    settle(op)
    assert running(kube, "b1") and running(kube, "a1")
    assert usage(kube, "team-b") == {"H100": (8.0, 0.0, 8)} and usage(kube, "team-a") == {"H100": (8.0, 0.0, 8)}


def test_a_missing_queue_or_an_inner_queue_holds_the_workload_with_a_reason():
    kube = teams()
    kube.add(job("lost", "nope"))
    kube.add(job("inner", "org"))
    settle(scheduler(kube, Clock()))
    assert not running(kube, "lost") and "queue nope does not exist" in kube.condition("lost")["message"]
    assert not running(kube, "inner") and "only leaf queues" in kube.condition("inner")["message"]


def test_workloads_without_a_queue_name_go_by_namespace_selector_then_the_default_queue():
    kube = FakeKube([gpu_node("h0"), gpu_node("h1")])
    kube.queues["default"] = queue("default", H100=0)  # nothing for workloads nobody assigned
    kube.queues["team-b"] = queue("team-b", namespaces={"team": "b"}, H100=8)
    kube.namespace_labels = {"team-b-ns": {"team": "b"}, "other": {}}
    kube.add(job("by-namespace", namespace="team-b-ns"))
    kube.add(job("by-default", namespace="other"))
    settle(scheduler(kube, Clock()))
    pods = {p["metadata"]["labels"]["tessera.dev/workload"] for p in kube.pods.values()}
    assert pods == {"by-namespace"}
    assert "queue default" in kube.workload("by-default", "other")["status"]["conditions"][0]["message"]


def test_without_queue_objects_nothing_is_limited_and_no_default_queue_is_required():
    kube = FakeKube([gpu_node("h0"), gpu_node("h1")])
    kube.add(job("x"))
    kube.add(job("y"))
    settle(scheduler(kube, Clock()))
    assert running(kube, "x") and running(kube, "y")


def test_an_invalid_queue_object_says_why_on_its_status_and_admits_nothing():
    kube = FakeKube([gpu_node("h0")])
    bad = queue("bad", H100=4)
    bad["spec"]["quotas"][0]["lendingLimit"] = 8  # more than nominal: the CRD refuses it; an old object may not
    kube.queues["bad"] = bad
    kube.add(job("j", "bad", gpus=4))
    settle(scheduler(kube, Clock()))
    valid = kube.queues["bad"]["status"]["conditions"][0]
    assert valid["type"] == "Valid" and valid["status"] == "False" and "lendingLimit" in valid["message"]
    assert not running(kube, "j") and "queue bad" in kube.condition("j")["message"]
