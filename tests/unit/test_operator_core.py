"""The operator core on an in-memory cluster (tests/unit/fake_kube.py): bulkheads, admission,
every crash point of the placement protocol, accounting of what runs.

The same behaviour is checked against a real kube-apiserver in tests/operator; these run in
milliseconds, so every step and every crash point is covered.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fake_kube import FakeKube, elasticjob, gpu_node

from tessera.engine import Engine
from tessera.operator.elastic import ElasticSettings
from tessera.operator.faults import CrashPoint
from tessera.operator.kube import KubeError
from tessera.operator.lease import LeaderElector
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.scheduler import Scheduler
from tessera.policy import load_policy, with_failure_handling

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t


class Crash(BaseException):
    """A simulated SIGKILL: a BaseException, so no bulkhead mistakes it for a workload's failure."""


class CrashAt:
    def __init__(self, point: CrashPoint, nth: int) -> None:
        self.point, self.nth, self.seen = point, nth, 0

    def reached(self, point: CrashPoint) -> None:
        if point is self.point:
            self.seen += 1
            if self.seen == self.nth:
                raise Crash(point.value)


IDENTITIES = iter(range(1_000_000))


def scheduler(kube: FakeKube, clock: Clock, policy: str = "best-fit", hooks: Any = None) -> Scheduler:
    """A fresh operator (its own identity in the Lease), as after a restart."""
    chosen = with_failure_handling(load_policy(policy))
    engine = Engine(chosen, clock, time_budget_seconds=1.0)
    elector = LeaderElector(kube, "default", "tessera-scheduler", f"operator-{next(IDENTITIES)}", 15, clock=clock)
    kwargs = {"hooks": hooks} if hooks is not None else {}
    # one worker: a simulated crash (a BaseException) must stop every write, as a SIGKILL would
    return Scheduler(kube, engine, elector, OperatorMetrics(), clock=clock,
                     elastic=ElasticSettings(failure_grace_seconds=0), workers=1 if hooks else 4, **kwargs)


def settle(s: Scheduler, cycles: int = 4) -> None:
    for _ in range(cycles):
        s.run_cycle()


def cluster(nodes: int = 2) -> FakeKube:
    return FakeKube([gpu_node(f"h{i}") for i in range(nodes)])


def bound_gpus(kube: FakeKube) -> Counter[str]:
    used: Counter[str] = Counter()
    for pod in kube.pods.values():
        node = pod["spec"].get("nodeName")
        if node:
            for c in [*pod["spec"].get("containers", []), *pod["spec"].get("initContainers", [])]:
                used[node] += int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
    return used


def running(kube: FakeKube, name: str, namespace: str = "ns") -> bool:
    raw = kube.workload(name, namespace)
    pods = [p for p in kube.pods_of(name) if p["metadata"]["namespace"] == namespace]
    return (raw.get("status") or {}).get("phase") == "Running" and bool(pods) and all(
        p["spec"].get("nodeName") for p in pods)


# --- bulkheads ------------------------------------------------------------------------------

def _bad(name: str) -> Any:
    return lambda *args: any(name in str(a) for a in args)


STEPS = {
    "create": ("create_pod", lambda: RuntimeError("the client refused the pod: int in args")),
    "bind": ("bind_pod", lambda: ValueError("a malformed Binding")),
    "status": ("patch_status", lambda: TypeError("status write exploded")),
    "dry-run": ("dry_run_pod", lambda: OverflowError("cannot convert float infinity to integer")),
    "configmap": ("apply_configmap", lambda: RuntimeError("configmap write exploded")),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_failure_acting_on_one_workload_never_stops_the_others(step: str) -> None:
    kube, clock = cluster(), Clock()
    verb, error = STEPS[step]
    kube.fail(verb, _bad("bad"), error())
    # bad is older, so it is decided and acted on first
    kube.add(elasticjob("bad", created="2026-01-01T00:00:00Z", globalBatchSize=8))
    kube.add(elasticjob("good", namespace="other", created="2026-01-01T00:00:05Z", globalBatchSize=8))
    s = scheduler(kube, clock)
    report = s.run_cycle()
    good = kube.workload("good", "other")
    assert good["status"]["phase"] == "Running", (step, report.errors, good["status"])
    assert all(p["spec"].get("nodeName") for p in kube.pods_of("good"))
    assert "ns/bad" in report.failed and step in ("create", "bind", "status", "dry-run", "configmap")
    if verb != "patch_status":  # the failure is on the workload, in words
        cond = kube.condition("bad")
        assert cond["status"] == "False" and cond["reason"] in ("ActionFailed", "BindFailed"), cond
    assert max(bound_gpus(kube).values()) <= 8


def test_a_failing_workload_backs_off_and_recovers_once_the_cause_is_gone() -> None:
    kube, clock = cluster(), Clock()
    trouble = RuntimeError("transient")
    kube.fail("dry_run_pod", lambda body: trouble is not None and "flaky" in body["metadata"]["name"], trouble)
    kube.add(elasticjob("flaky"))
    s = scheduler(kube, clock)
    s.run_cycle()
    assert kube.condition("flaky")["reason"] == "ActionFailed"
    attempts = kube.calls["dry_run_pod"]
    s.run_cycle()  # within the backoff: not tried again
    assert kube.calls["dry_run_pod"] == attempts
    assert 0 < s.wait_seconds() <= 1.1  # the loop wakes when the backoff ends
    kube._faults.clear()
    clock.t += 1.5
    settle(s, 2)
    assert running(kube, "flaky")


def test_an_unparseable_status_refuses_only_that_workload_and_its_pods_still_count() -> None:
    kube, clock = cluster(1), Clock()
    broken = kube.add(elasticjob("broken", accelerators=8, replicas=1))
    s = scheduler(kube, clock)
    settle(s, 2)
    assert running(kube, "broken")
    broken["status"]["placement"] = [{"replica": "zero?"}]  # a hand-edited status
    kube.add(elasticjob("next", accelerators=8, replicas=1, created="2026-01-02T00:00:00Z"))
    settle(s, 3)
    assert kube.workload("broken")["status"]["conditions"][-1]["reason"] == "InvalidSpec"
    # its pod still holds the node: the newcomer does not land on top of it
    assert not kube.pods_of("next")
    assert max(bound_gpus(kube).values()) <= 8


def test_a_pod_the_api_server_refuses_is_invalid_before_anything_is_reserved() -> None:
    kube, clock = cluster(1), Clock()
    kube.refuse_pod = lambda body: ("spec.containers[0].resources.requests[cpu]: Invalid value: \"2x\""
                                    if body["metadata"]["name"].startswith("careless") else "")
    kube.add(elasticjob("careless", accelerators=8, replicas=1, priority=100))
    kube.add(elasticjob("careful", accelerators=8, replicas=1, created="2026-01-02T00:00:00Z"))
    settle(scheduler(kube, clock), 2)
    cond = kube.condition("careless")
    assert cond["reason"] == "InvalidSpec" and "requests[cpu]" in cond["message"]
    assert not kube.pods_of("careless") and running(kube, "careful")


def test_an_elasticjob_and_an_inferenceservice_of_one_name_never_share_a_node_s_devices() -> None:
    kube, clock = cluster(1), Clock()
    kube.add(elasticjob("twin", accelerators=8, replicas=1))
    s = scheduler(kube, clock)
    settle(s, 2)
    isvc = {
        "apiVersion": "tessera.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "twin", "namespace": "ns", "uid": "uid-isvc-twin", "generation": 1,
                     "creationTimestamp": "2026-02-01T00:00:00Z"},
        "spec": {"replicas": 1, "acceleratorsPerReplica": 8, "acceleratorTypes": [{"name": "H100"}],
                 "template": {"spec": {"containers": [{"name": "srv", "image": "srv:1"}]}}},
    }
    kube.add(isvc)
    settle(s, 2)
    assert running(kube, "twin")
    status = kube.workload("twin", kind="InferenceService").get("status") or {}
    assert "already exists" in status.get("message", "")
    assert max(bound_gpus(kube).values()) <= 8


def test_running_pods_are_counted_by_what_they_request_not_by_the_edited_spec() -> None:
    kube, clock = cluster(1), Clock()
    job = kube.add(elasticjob("grower", accelerators=4, replicas=1))
    s = scheduler(kube, clock)
    settle(s, 2)
    assert running(kube, "grower")
    job["spec"]["acceleratorsPerReplica"] = 1  # edited while running: its pod still holds 4
    job["metadata"]["generation"] = 2
    kube.add(elasticjob("filler", accelerators=4, replicas=2, created="2026-01-02T00:00:00Z"))
    settle(s, 3)
    assert max(bound_gpus(kube).values()) <= 8
    assert not kube.pods_of("filler")  # 4 + 2x4 cannot fit on 8 GPUs
    assert kube.condition("grower", "SpecApplied")["status"] == "False"


# --- crash points of the placement protocol ---------------------------------------------------

@pytest.mark.parametrize("point,nth", [
    (CrashPoint.PLACEMENT_RECORDED, 1),
    (CrashPoint.POD_CREATED, 1),
    (CrashPoint.POD_CREATED, 3),
    (CrashPoint.BIND, 1),
    (CrashPoint.BIND, 3),
    (CrashPoint.BIND, 4),
])
def test_a_crash_at_any_point_of_a_placement_is_finished_by_the_next_operator(point: CrashPoint, nth: int) -> None:
    kube, clock = cluster(4), Clock()
    kube.add(elasticjob("gang", replicas=4, accelerators=8))
    first = scheduler(kube, clock, hooks=CrashAt(point, nth))
    with pytest.raises(Crash):
        settle(first, 2)
    # the lease of the dead operator expires; a new one takes over
    clock.t += 20
    second = scheduler(kube, clock)
    settle(second, 3)
    assert running(kube, "gang")
    assert len(kube.pods_of("gang")) == 4
    assert set(kube.binds.values()) == {1}, kube.binds  # no pod bound twice
    assert max(bound_gpus(kube).values()) <= 8


def test_a_crash_after_recording_an_eviction_finishes_it_and_never_overcommits() -> None:
    kube, clock = cluster(1), Clock()
    kube.add(elasticjob("low", accelerators=8, replicas=1, priority=0))
    s = scheduler(kube, clock, policy="cpsat")
    settle(s, 2)
    assert running(kube, "low")
    kube.add(elasticjob("high", accelerators=8, replicas=1, priority=10, created="2026-01-02T00:00:00Z"))
    crashing = scheduler(kube, clock, policy="cpsat", hooks=CrashAt(CrashPoint.EVICTION_RECORDED, 1))
    clock.t += 20
    with pytest.raises(Crash):
        settle(crashing, 2)
    assert kube.pods_of("low")  # recorded, not yet deleted
    clock.t += 20
    settle(scheduler(kube, clock, policy="cpsat"), 4)
    assert running(kube, "high") and not kube.pods_of("low")
    assert kube.condition("low", "Preempted")["status"] == "True"


def test_status_write_conflicts_are_contained_and_retried() -> None:
    kube, clock = cluster(1), Clock()
    kube.fail("patch_status", lambda *a: a[2] == "ns" and a[3] == "raced" and kube.calls["patch_status"] < 3,
              KubeError("patch status: 409 Conflict", 409))
    kube.add(elasticjob("raced", accelerators=8, replicas=1))
    s = scheduler(kube, clock)
    s.run_cycle()
    clock.t += 2
    settle(s, 3)
    assert running(kube, "raced")
    assert set(kube.binds.values()) == {1}


class OtherLeaderTakesOver:
    """At a crash point the operator stalls; meanwhile another replica takes the Lease and
    finishes the work (as after a long GC pause or a frozen VM)."""

    def __init__(self, point: CrashPoint, clock: Clock, successor: Any) -> None:
        self.point, self.clock, self.successor, self.fired = point, clock, successor, False

    def reached(self, point: CrashPoint) -> None:
        if point is self.point and not self.fired:
            self.fired = True
            self.clock.t += 20  # past the Lease
            settle(self.successor(), 3)


def test_a_leader_change_in_the_middle_of_a_reshard_never_undoes_the_successor_s_work() -> None:
    kube, clock = cluster(3), Clock()
    kube.add(elasticjob("train", accelerators=8, globalBatchSize=96, microBatchSize=8, replicas=2, min_replicas=1))
    first = scheduler(kube, clock, hooks=None)
    settle(first, 2)
    assert running(kube, "train")
    victim = kube.pods_of("train")[0]["spec"]["nodeName"]
    kube.nodes[victim]["status"]["conditions"] = [{"type": "Ready", "status": "False",
                                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    deposed = scheduler(kube, clock, hooks=OtherLeaderTakesOver(
        CrashPoint.RESHARD_RECORDED, clock, lambda: scheduler(kube, clock)))
    clock.t += 20
    report = deposed.run_cycle()
    # the successor's reshard stands: the job runs on the healthy nodes, nothing was undone
    pods = kube.pods_of("train")
    assert pods and all(p["spec"]["nodeName"] != victim for p in pods), pods
    assert running(kube, "train")
    assert set(kube.binds.values()) == {1}
    assert max(bound_gpus(kube).values()) <= 8
    assert any("lost the scheduler lease" in e for e in report.errors), report.errors


def test_a_deposed_leader_stalled_mid_gang_never_deletes_what_its_successor_bound() -> None:
    kube, clock = cluster(2), Clock()
    kube.add(elasticjob("gang", accelerators=8, replicas=2))
    deposed = scheduler(kube, clock, hooks=OtherLeaderTakesOver(
        CrashPoint.POD_CREATED, clock, lambda: scheduler(kube, clock)))
    report = deposed.run_cycle()
    # the successor completed the recorded placement; the stale leader stopped, undid nothing
    assert running(kube, "gang") and len(kube.pods_of("gang")) == 2
    assert set(kube.binds.values()) == {1}
    assert any("lost the scheduler lease" in e for e in report.errors), report.errors


def test_a_burst_is_decided_in_batches_and_a_blocked_head_never_starves_the_rest() -> None:
    kube, clock = cluster(1), Clock()
    kube.add(elasticjob("giant", accelerators=8, replicas=2, priority=10))  # never fits on one node
    for i in range(3):
        kube.add(elasticjob(f"small-{i}", accelerators=2, replicas=1, created=f"2026-01-0{i + 2}T00:00:00Z"))
    s = scheduler(kube, clock)
    s.batch_size = 1
    first = s.run_cycle()
    assert first.deferred == 3 and not first.bound  # only the giant (highest priority) was decided
    second = s.run_cycle()  # the giant waits behind the others now
    assert second.bound == ["ns/small-0-0"]
    settle(s, 4)
    assert all(running(kube, f"small-{i}") for i in range(3))
    assert kube.condition("giant")["reason"] == "Unschedulable"


def test_accelerators_asked_beside_accelerators_per_replica_are_refused() -> None:
    kube, clock = cluster(1), Clock()
    sidecar = {"name": "side", "image": "s:1", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
    job = elasticjob("sneaky", accelerators=4, replicas=1)
    job["spec"]["template"]["spec"]["containers"].append(sidecar)
    kube.add(job)
    ok = elasticjob("warm", accelerators=4, replicas=1, created="2026-01-02T00:00:00Z")
    ok["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "w", "image": "w:1", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]  # shared: fine
    kube.add(ok)
    settle(scheduler(kube, clock), 2)
    cond = kube.condition("sneaky")
    assert cond["reason"] == "InvalidSpec" and "containers[1].resources.limits[nvidia.com/gpu]" in cond["message"]
    assert not kube.pods_of("sneaky") and running(kube, "warm")


def test_an_operator_limited_to_namespaces_leaves_the_others_alone() -> None:
    kube, clock = cluster(1), Clock()
    kube.add(elasticjob("mine", "team-a", accelerators=4, replicas=1))
    kube.add(elasticjob("theirs", "team-b", accelerators=4, replicas=1, created="2026-01-02T00:00:00Z"))
    other = scheduler(kube, clock)
    other.namespaces = frozenset({"team-b"})
    settle(other, 2)  # another operator runs team-b's job
    assert running(kube, "theirs", "team-b")
    clock.t += 20
    mine = scheduler(kube, clock)
    mine.namespaces = frozenset({"team-a"})
    settle(mine, 2)
    assert running(kube, "mine", "team-a")
    assert running(kube, "theirs", "team-b")  # not an orphan to it: never deleted
    assert max(bound_gpus(kube).values()) <= 8


def test_status_never_describes_replicas_that_no_longer_run() -> None:
    kube, clock = cluster(2), Clock()
    svc = kube.add({
        "apiVersion": "tessera.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "uid-chat", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"replicas": 2, "acceleratorsPerReplica": 8, "acceleratorTypes": [{"name": "H100"}],
                 "template": {"spec": {"containers": [{"name": "srv", "image": "srv:1"}]}}},
    })
    s = scheduler(kube, clock)
    settle(s, 2)
    assert len(kube.pods_of("chat")) == 2
    svc["spec"]["replicas"] = 1
    svc["metadata"]["generation"] = 2
    settle(s, 2)
    (left,) = kube.pods_of("chat")
    message = kube.condition("chat", kind="InferenceService")["message"]
    assert f"{left['metadata']['name']} -> {left['spec']['nodeName']}" in message
    assert message.count("->") == 1, message


def test_a_node_that_keeps_failing_is_counted_failed_although_each_outage_is_short() -> None:
    from tessera.operator.status import rfc3339

    kube, clock = cluster(3), Clock()
    kube.add(elasticjob("train", accelerators=8, globalBatchSize=96, microBatchSize=8, replicas=2, min_replicas=1))
    s = scheduler(kube, clock)
    s.elastic.settings = ElasticSettings(failure_grace_seconds=5)
    settle(s, 2)
    flappy = kube.pods_of("train")[0]["spec"]["nodeName"]

    def set_ready(ready: bool) -> None:
        kube.nodes[flappy]["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False",
                                                       "lastTransitionTime": rfc3339(clock.t)}]

    for _ in range(12):  # down 4 s of every 5: no outage outlasts the 5 s grace
        set_ready(False)
        for _ in range(4):
            clock.t += 1
            s.run_cycle()
        set_ready(True)
        clock.t += 1
        s.run_cycle()
    assert all(p["spec"]["nodeName"] != flappy for p in kube.pods_of("train")), "still on the flapping node"
    assert running(kube, "train")


def test_a_node_back_from_an_outage_takes_new_replicas_only_after_the_grace() -> None:
    from tessera.operator.status import rfc3339

    kube, clock = cluster(2), Clock()
    kube.add(elasticjob("train", accelerators=8, globalBatchSize=96, microBatchSize=8, replicas=2, min_replicas=1))
    chosen = with_failure_handling(load_policy("best-fit"))
    engine = Engine(chosen, clock, params={"elastic_hysteresis_seconds": 0.0})
    s = Scheduler(kube, engine, LeaderElector(kube, "default", "l", "me", 15, clock=clock), OperatorMetrics(),
                  clock=clock, elastic=ElasticSettings(failure_grace_seconds=5), workers=1)
    settle(s, 2)
    victim = kube.pods_of("train")[0]["spec"]["nodeName"]
    kube.nodes[victim]["status"]["conditions"] = [{"type": "Ready", "status": "False",
                                                   "lastTransitionTime": rfc3339(clock.t)}]
    clock.t += 7
    settle(s, 2)
    assert len(kube.pods_of("train")) == 1  # resharded away after the grace
    kube.nodes[victim]["status"]["conditions"] = [{"type": "Ready", "status": "True",
                                                   "lastTransitionTime": rfc3339(clock.t)}]
    clock.t += 1
    settle(s, 2)
    assert len(kube.pods_of("train")) == 1  # Ready for a moment only: not grown onto it yet
    assert s.wait_seconds() <= 5
    clock.t += 6
    settle(s, 2)
    assert len(kube.pods_of("train")) == 2 and running(kube, "train")


# --- writes per placement -------------------------------------------------------------------

def test_identical_jobs_share_one_dry_run_and_a_single_pod_placement_costs_one_status_write() -> None:
    kube, clock = cluster(4), Clock()
    for i in range(4):
        kube.add(elasticjob(f"same-{i}", replicas=1, accelerators=8, created=f"2026-01-01T00:00:0{i}Z"))
    kube.add(elasticjob("elsewhere", namespace="other", replicas=1, accelerators=8))
    s = scheduler(kube, clock)
    s.run_cycle()
    assert all(running(kube, f"same-{i}") for i in range(4)) or running(kube, "elsewhere", "other")
    settle(s)
    # one dry run per (namespace, template): the four identical jobs share one answer
    assert kube.calls["dry_run_pod"] == 2
    # each single-pod placement: its pod created bound, then ONE write (placement, plan and
    # Running); the job that does not fit (5 x 8 GPUs on 4 nodes) one write saying why it waits
    placed = sum(running(kube, f"same-{i}") for i in range(4)) + running(kube, "elsewhere", "other")
    assert placed == 4
    assert kube.calls["patch_status"] == placed + 1, kube.calls["patch_status"]
    for job in kube.workloads.values():
        if job["status"].get("phase") == "Running":
            assert job["status"]["placementGeneration"] == 1 and job["status"]["plan"], job["status"]
    # replicas.max 1: no peers to find and nothing to reshard, so no Service and no ConfigMap
    assert kube.calls["ensure_service"] == kube.calls["apply_configmap"] == 0


def test_a_job_that_may_grow_gets_its_service_and_plan_configmap() -> None:
    kube, clock = cluster(2), Clock()
    kube.add(elasticjob("grows", replicas=2, min_replicas=1, accelerators=8))
    s = scheduler(kube, clock)
    settle(s)
    assert running(kube, "grows")
    assert kube.calls["ensure_service"] >= 1 and kube.calls["apply_configmap"] >= 1


def test_a_gang_placement_is_recorded_before_its_pods_exist() -> None:
    kube, clock = cluster(2), Clock()
    kube.add(elasticjob("gang", replicas=2, accelerators=8))
    settle(scheduler(kube, clock))
    assert running(kube, "gang")
    assert kube.calls["patch_status"] == 2  # the record (phase Binding), then Running


def test_a_crash_between_a_single_pod_s_create_and_its_record_is_adopted_not_redone() -> None:
    kube, clock = cluster(1), Clock()
    kube.add(elasticjob("solo", replicas=1, accelerators=8))
    first = scheduler(kube, clock, hooks=CrashAt(CrashPoint.POD_CREATED, 1))
    with pytest.raises(Crash):
        settle(first, 2)
    (pod,) = kube.pods_of("solo")
    assert pod["spec"]["nodeName"]  # created bound, nothing recorded yet
    assert not (kube.workload("solo").get("status") or {}).get("placement")
    clock.t += 20
    settle(scheduler(kube, clock), 3)
    assert running(kube, "solo")
    (after,) = kube.pods_of("solo")
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]  # adopted: not deleted and created again
    status = kube.workload("solo")["status"]
    assert status["placementGeneration"] == 1 and status["placement"][0]["node"] == pod["spec"]["nodeName"]


def test_a_refused_template_is_not_shared() -> None:
    kube, clock = cluster(), Clock()
    # a webhook of this cluster refuses these pods (what the server alone knows)
    kube.fail("dry_run_pod", lambda body: "bad" in body["metadata"]["name"],
              KubeError("admission webhook \"policy.example\" denied the request", 403))
    kube.add(elasticjob("bad-1"))
    kube.add(elasticjob("bad-2", created="2026-01-01T00:00:03Z"))
    s = scheduler(kube, clock)
    s.run_cycle()
    assert kube.calls["dry_run_pod"] == 2  # each refused job was asked about (never a shared refusal)
    for name in ("bad-1", "bad-2"):
        scheduled = next(c for c in kube.workload(name, "ns")["status"]["conditions"] if c["type"] == "Scheduled")
        assert scheduled["reason"] == "InvalidSpec" and "denied" in scheduled["message"]


# --- another scheduler on the same nodes ------------------------------------------------------

def _foreign_pod(name: str, node: str, gpus: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "other", "uid": f"uid-{name}", "labels": {},
                         "creationTimestamp": "2027-01-15T08:00:01Z"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                                                       "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": "Running"}}


def test_a_node_over_its_allocatable_sends_the_latest_tessera_workload_elsewhere() -> None:
    kube, clock = cluster(2), Clock()
    kube.add(elasticjob("a", replicas=1, accelerators=8))
    s = scheduler(kube, clock)
    s.run_cycle()
    (pod,) = kube.pods_of("a")
    node = pod["spec"]["nodeName"]
    # kube-scheduler bound a pod to the same 8 GPUs (it could not see a's pod yet)
    kube.pods[("other", "plain")] = _foreign_pod("plain", node, 8)
    for _ in range(4):
        clock.t += 1
        s.run_cycle()
    assert bound_gpus(kube)[node] == 8  # only the foreign pod is left there
    assert running(kube, "a") and kube.pods_of("a")[0]["spec"]["nodeName"] != node  # placed again elsewhere
    events = [e for e in kube.events if e[2] == "PlacementRolledBack"]
    assert events and f"node {node} holds 16 accelerators for its 8" in events[0][3]


def test_a_node_over_its_allocatable_from_foreign_pods_alone_is_reported_not_repaired() -> None:
    kube, clock = cluster(1), Clock()
    kube.pods[("other", "p1")] = _foreign_pod("p1", "h0", 8)
    kube.pods[("other", "p2")] = _foreign_pod("p2", "h0", 8)
    s = scheduler(kube, clock)
    s.run_cycle()
    assert set(kube.pods) == {("other", "p1"), ("other", "p2")}  # never someone else's pods
    assert kube.calls["delete_pod"] == 0


def test_over_means_over_what_the_kubelet_enforces_not_tessera_s_own_count() -> None:
    # time-slicing: the device plugin advertises 32 while a label tells Tessera 8 devices
    node = gpu_node("h0", gpus=32)
    node["metadata"]["labels"]["tessera.dev/accelerator-count"] = "8"
    kube, clock = FakeKube([node]), Clock()
    kube.add(elasticjob("a", replicas=1, accelerators=8))
    s = scheduler(kube, clock)
    s.run_cycle()
    assert running(kube, "a")
    kube.pods[("other", "shared")] = _foreign_pod("shared", "h0", 16)  # 24 of 32: the kubelet admits it
    clock.t += 1
    s.run_cycle()
    assert running(kube, "a") and kube.calls["delete_pod"] == 0


def test_identical_jobs_checked_at_once_on_the_pool_send_one_dry_run() -> None:
    import threading
    import time as _time

    from tessera.operator.admission import Admission
    from tessera.operator.state import build_state

    kube, clock = cluster(2), Clock()
    for i in range(8):
        kube.add(elasticjob(f"same-{i}", replicas=1, accelerators=8))
    slow = kube.dry_run_pod

    def dry_run(body: dict[str, Any]) -> None:
        _time.sleep(0.05)  # the answer takes a while: every thread asks before the first returns
        slow(body)

    kube.dry_run_pod = dry_run  # type: ignore[method-assign]
    state = build_state(kube.list_nodes(), kube.list_pods(), kube.list_workloads(), clock())
    admission = Admission(kube)
    answers: list[str] = []
    threads = [threading.Thread(target=lambda v=v: answers.append(admission.problem(v, state.nodes)))
               for v in state.workloads.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [""] * 8
    assert kube.calls["dry_run_pod"] == 1
