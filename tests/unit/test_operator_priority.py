"""PriorityClasses on the operator core (fake cluster): the class a workload's pod template
names gives its priority, preemptionPolicy: Never keeps it from preempting, and naming a
class beside spec.priority is refused with a reason."""

from __future__ import annotations

from fake_kube import FakeKube, elasticjob, gpu_node, priority_class
from test_operator_core import Clock, running, scheduler

from tessera.operator.scheduler import Scheduler


def job(name: str, *, klass: str = "", priority: int = 0) -> dict:
    container = {"name": "trainer", "image": "trainer:1"}
    raw = elasticjob(name, replicas=1, accelerators=8, priority=priority, container=container)
    if klass:
        raw["spec"]["template"]["spec"]["priorityClassName"] = klass
    return raw


def cluster() -> FakeKube:
    kube = FakeKube([gpu_node("h0")])  # room for one 8-GPU job
    for pc in (priority_class("high", 1000), priority_class("high-no-preempt", 1000, "Never")):
        kube.priority_classes[pc["metadata"]["name"]] = pc
    return kube


def settle(kube: FakeKube, policy: str = "best-fit", op: Scheduler | None = None) -> Scheduler:
    op = op or scheduler(kube, Clock(), policy=policy)
    for _ in range(5):
        op.run_cycle()
    return op


def test_the_template_s_priority_class_orders_the_queue():
    kube = cluster()
    kube.add(job("plain", priority=10))  # older, priority 10
    kube.add(job("classy", klass="high"))  # the class says 1000
    settle(kube)
    assert running(kube, "classy") and not running(kube, "plain")


def test_preemption_policy_never_waits_instead_of_preempting():
    for klass, preempts in (("high", True), ("high-no-preempt", False)):
        kube = cluster()
        kube.add(job("low"))
        op = settle(kube, "cpsat")
        assert running(kube, "low")
        kube.add(job("urgent", klass=klass))
        settle(kube, op=op)
        assert running(kube, "urgent") is preempts and running(kube, "low") is not preempts, klass


def test_spec_priority_beside_a_priority_class_is_refused_with_a_reason():
    kube = cluster()
    kube.add(job("both", klass="high", priority=5))
    settle(kube)
    assert not running(kube, "both")
    assert "not both" in kube.condition("both")["message"]
