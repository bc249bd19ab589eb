"""The operator against a real kube-apiserver + kwok: CRDs, placement, gangs, crashes.

The operator runs as a subprocess (``python -m tessera operator``) so the crash tests
kill a real process.  Each test works in its own namespace and leaves no pods behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess

from tessera.api.discovery import discover

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.cluster


# --- helpers ---------------------------------------------------------------------------


def elasticjob(name: str, types: list[str], *, min_replicas: int, max_replicas: int, accelerators: int = 8) -> str:
    type_list = ", ".join(f"{{name: {t}}}" for t in types)
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: {min_replicas}, max: {max_replicas}}}
  acceleratorsPerReplica: {accelerators}
  acceleratorTypes: [{type_list}]
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"""


def pods_of(cluster: Any, namespace: str, workload: str | None = None) -> list[dict[str, Any]]:
    selector = ["-l", f"tessera.dev/workload={workload}"] if workload else []
    return list(cluster.get_json("pods", "-n", namespace, *selector)["items"])


def status_of(cluster: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return dict(cluster.get_json(kind, name, "-n", namespace).get("status") or {})


def condition(status: dict[str, Any], type_: str = "Scheduled") -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def node_types(cluster: Any) -> dict[str, str | None]:
    out = {}
    for node in cluster.get_json("nodes")["items"]:
        found = discover(node["metadata"].get("labels") or {}, node["status"].get("allocatable") or {})
        out[node["metadata"]["name"]] = found.accelerator_type
    return out


def wait_phase(cluster: Any, kind: str, name: str, namespace: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    return dict(cluster.wait_for(
        lambda: (s := status_of(cluster, kind, name, namespace)).get("phase") == phase and s,
        timeout=timeout, what=f"{kind} {name} phase {phase}",
    ))


def running_pods(cluster: Any, namespace: str, workload: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        pods = pods_of(cluster, namespace, workload)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        ok = len(live) == count and all(
            p["spec"].get("nodeName") and p["status"].get("phase") == "Running" for p in live)
        return live if ok else None

    return list(cluster.wait_for(ready, timeout=timeout, what=f"{count} running pods of {workload}"))


@pytest.fixture
def start_operator(crds: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """Start operators on demand; at the end delete the namespace's workloads (while one
    runs, so finalizers are handled) and wait until their pods are gone."""
    started: list[OperatorProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> OperatorProcess:
        proc = OperatorProcess(crds.kubeconfig, tmp_path / f"operator-{len(started)}.log", *args, env=env).start()
        started.append(proc)
        return proc

    yield start
    if not any(p.alive for p in started):
        start()
    crds.kubectl("delete", "elasticjobs,inferenceservices", "--all", "-n", namespace, "--wait=false", check=False)
    try:
        crds.wait_for(lambda: not pods_of(crds, namespace), timeout=40, what="pods of the test removed")
    finally:
        for proc in started:
            proc.stop()
            # shown by pytest when the test fails
            print(f"----- {proc.log_path.name}\n{proc.log()[-6000:]}")


# --- the API ---------------------------------------------------------------------------


def test_crds_apply_and_are_served(crds):
    out = crds.kubectl("apply", "-f", str(ROOT / "crds")).stdout
    assert "elasticjobs.tessera.dev" in out and "inferenceservices.tessera.dev" in out
    # the OpenAPI document is published a moment after the CRD is Established
    explained = crds.wait_for(
        lambda: (p := crds.kubectl("explain", "elasticjobs.tessera.dev.spec.replicas", check=False)).returncode == 0
        and p.stdout, timeout=30, interval=0.5, what="kubectl explain")
    assert "gang" in explained
    resources = crds.kubectl("api-resources", "--api-group=tessera.dev", "-o", "wide").stdout
    assert "tisvc" in resources and "ej" in resources


INVALID = [
    ("min > max", "ElasticJob", {"replicas": {"min": 4, "max": 2}}, "spec.replicas.min must be <= spec.replicas.max"),
    ("zero accelerators", "ElasticJob", {"acceleratorsPerReplica": 0}, "spec.acceleratorsPerReplica"),
    ("negative accelerators", "InferenceService", {"acceleratorsPerReplica": -2}, "spec.acceleratorsPerReplica"),
    ("empty type list", "ElasticJob", {"acceleratorTypes": []}, "spec.acceleratorTypes"),
    ("unknown field", "ElasticJob", {"gpusPerReplica": 8}, "spec.gpusPerReplica"),
    ("replicas out of range", "InferenceService", {"replicas": 9, "replicaRange": {"min": 1, "max": 3}},
     "spec.replicas must lie within"),
    ("tensor does not divide", "ElasticJob", {"parallelism": {"tensor": 3}}, "spec.parallelism.tensor"),
]


def test_invalid_objects_are_rejected_naming_the_field(crds, namespace):
    base = {"acceleratorTypes": [{"name": "H100"}],
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
    for label, kind, overrides, needle in INVALID:
        spec = {**base, **({"replicas": {"min": 1, "max": 2}} if kind == "ElasticJob" else {}), **overrides}
        body = {"apiVersion": "tessera.dev/v1alpha1", "kind": kind,
                "metadata": {"name": label.replace(" ", "-").replace(">", "gt")}, "spec": spec}
        proc = crds.kubectl("apply", "--validate=strict", "-n", namespace, "-f", "-", input=json.dumps(body),
                            check=False)
        assert proc.returncode != 0, f"{label}: accepted"
        assert needle in proc.stderr, f"{label}: {proc.stderr}"
    assert not crds.get_json("elasticjobs,inferenceservices", "-n", namespace)["items"]


# --- scheduling ------------------------------------------------------------------------


def test_examples_are_placed_on_allowed_types_and_run(cluster, namespace, start_operator):
    operator = start_operator()
    types = node_types(cluster)
    cluster.apply(EXAMPLES / "elasticjob-basic.yaml", namespace)
    cluster.apply(EXAMPLES / "inferenceservice-basic.yaml", namespace)

    job = wait_phase(cluster, "elasticjob", "llm-pretrain", namespace, "Running")
    assert 2 <= job["replicas"] <= 4
    assert condition(job)["status"] == "True" and condition(job)["reason"] == "Placed"
    job_pods = running_pods(cluster, namespace, "llm-pretrain", job["replicas"])
    job_types = {types[p["spec"]["nodeName"]] for p in job_pods}
    assert len(job_types) == 1 and job_types <= {"H100", "A100"}  # one type, an allowed one
    assert job["acceleratorType"] in job_types
    pod = job_pods[0]
    assert pod["spec"]["schedulerName"] == "tessera"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ElasticJob"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {p["metadata"]["name"] for p in job_pods} == {f"llm-pretrain-{i}" for i in range(job["replicas"])}

    svc = wait_phase(cluster, "inferenceservice.tessera.dev", "chat-server", namespace, "Running")
    svc_pods = running_pods(cluster, namespace, "chat-server", 3)
    assert {types[p["spec"]["nodeName"]] for p in svc_pods} <= {"A100", "Ascend910B"}
    assert len({p["spec"]["nodeName"] for p in svc_pods}) == 3  # spread: one per node
    assert svc["selector"] == f"tessera.dev/workload-uid={cluster.get_json('tisvc', 'chat-server', '-n', namespace)['metadata']['uid']}"

    # the scale subresource drives it (kubectl scale / an HPA)
    cluster.kubectl("scale", "inferenceservices.tessera.dev/chat-server", "--replicas=4", "-n", namespace)
    grown = running_pods(cluster, namespace, "chat-server", 4)
    assert len({p["spec"]["nodeName"] for p in grown}) == 4  # new replicas avoid the old ones' nodes
    cluster.kubectl("scale", "tisvc/chat-server", "--replicas=2", "-n", namespace)
    running_pods(cluster, namespace, "chat-server", 2)
    cluster.wait_for(lambda: status_of(cluster, "tisvc", "chat-server", namespace).get("replicas") == 2,
                     what="status.replicas 2")

    # deleting a workload removes its pods
    cluster.kubectl("delete", "elasticjob", "llm-pretrain", "-n", namespace, "--wait=false")
    cluster.wait_for(lambda: not pods_of(cluster, namespace, "llm-pretrain"), timeout=30, what="job pods deleted")
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "Scheduled" and e["involvedObject"]["name"] == "chat-server" for e in events)
    assert operator.alive


def test_gang_that_does_not_fit_binds_nothing_until_capacity_frees(cluster, namespace, start_operator):
    start_operator()
    cluster.apply(elasticjob("filler", ["H100"], min_replicas=3, max_replicas=3), namespace)
    wait_phase(cluster, "elasticjob", "filler", namespace, "Running")
    cluster.apply(elasticjob("gang", ["H100"], min_replicas=2, max_replicas=2), namespace)
    status = cluster.wait_for(
        lambda: (s := status_of(cluster, "elasticjob", "gang", namespace)).get("conditions") and s,
        what="gang condition")
    scheduled = condition(status)
    assert status["phase"] == "Pending"
    assert scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable"
    assert "needs 2 replicas" in scheduled["message"] and "1 fit on H100" in scheduled["message"]
    assert not pods_of(cluster, namespace, "gang")  # nothing created, nothing bound
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "Unschedulable" and e["involvedObject"]["name"] == "gang" for e in events)

    cluster.kubectl("delete", "elasticjob", "filler", "-n", namespace, "--wait=false")
    wait_phase(cluster, "elasticjob", "gang", namespace, "Running", timeout=40)
    assert len(running_pods(cluster, namespace, "gang", 2)) == 2


def test_type_no_node_has_stays_pending_with_reason(cluster, namespace, start_operator):
    operator = start_operator()
    cluster.apply(elasticjob("tpu-job", ["TPUv5"], min_replicas=1, max_replicas=1), namespace)
    status = cluster.wait_for(
        lambda: (s := status_of(cluster, "elasticjob", "tpu-job", namespace)).get("conditions") and s,
        what="tpu-job condition")
    assert status["phase"] == "Pending"
    assert condition(status)["reason"] == "NoMatchingAccelerator"
    assert "TPUv5" in condition(status)["message"]
    # the operator keeps scheduling everything else
    cluster.apply(elasticjob("small", ["A100"], min_replicas=1, max_replicas=1, accelerators=1), namespace)
    wait_phase(cluster, "elasticjob", "small", namespace, "Running")
    assert operator.alive and not pods_of(cluster, namespace, "tpu-job")


# --- crashes ---------------------------------------------------------------------------


def _bound(pods: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {p["metadata"]["name"]: (p["metadata"]["uid"], p["spec"]["nodeName"])
            for p in pods if p["spec"].get("nodeName")}


@pytest.mark.parametrize("point,created,bound", [
    ("placement-recorded=1", 0, 0),  # the decision is recorded, no pod exists
    ("pod-created=2", 2, 0),  # two of four pods created, none bound
    ("bind=3", 4, 3),  # three of four bound
])
def test_crash_in_the_middle_of_a_gang_is_completed_without_double_binding(cluster, namespace, start_operator,
                                                                          point, created, bound):
    # the first operator dies (exit 137, no cleanup) at a crash point of a 4-pod gang
    first = start_operator("--fault-exit-after", point)
    cluster.apply(elasticjob("crashy", ["H100"], min_replicas=4, max_replicas=4), namespace)
    assert first.wait_exit(timeout=40) == 137
    pods = pods_of(cluster, namespace, "crashy")
    before = _bound(pods)
    assert len(pods) == created and len(before) == bound  # exactly the crash we wanted
    status = status_of(cluster, "elasticjob", "crashy", namespace)
    assert status["phase"] == "Binding"
    planned = {r["pod"]: r["node"] for r in status["placement"]}

    second = start_operator()
    wait_phase(cluster, "elasticjob", "crashy", namespace, "Running", timeout=40)
    after = _bound(running_pods(cluster, namespace, "crashy", 4))
    for name, (uid, node) in before.items():
        assert after[name] == (uid, node), f"{name} was re-created or re-bound"
    assert {name: node for name, (_, node) in after.items()} == planned  # the recorded decision was finished
    log = second.log()
    assert "bind failed" not in log and "already assigned" not in log


def test_sigkill_and_restart_loses_nothing(cluster, namespace, start_operator):
    first = start_operator()
    cluster.apply(elasticjob("train-a", ["H100"], min_replicas=2, max_replicas=2), namespace)
    cluster.apply(EXAMPLES / "inferenceservice-basic.yaml", namespace)
    wait_phase(cluster, "elasticjob", "train-a", namespace, "Running")
    wait_phase(cluster, "inferenceservice.tessera.dev", "chat-server", namespace, "Running")
    before = _bound(pods_of(cluster, namespace))
    first.kill()

    # work arriving while no operator runs
    cluster.apply(elasticjob("train-b", ["H100"], min_replicas=2, max_replicas=2), namespace)
    second = start_operator()
    wait_phase(cluster, "elasticjob", "train-b", namespace, "Running", timeout=40)
    after = _bound(pods_of(cluster, namespace))
    for name, placed in before.items():
        assert after.get(name) == placed, f"{name} changed across the restart"
    assert len(after) == len(before) + 2
    for name in ("train-a", "train-b"):  # every gang whole
        assert len(running_pods(cluster, namespace, name, 2)) == 2
    assert "bind failed" not in second.log()


def test_two_operators_never_schedule_at_once(cluster, namespace, start_operator):
    # a longer Lease than the other tests: on a loaded machine a 3 s Lease may lapse between
    # renewals, and then a takeover is correct behaviour, not what this test is about
    first = start_operator("--identity", "replica-a", "--lease-duration-seconds", "15")
    cluster.wait_for(lambda: "became the scheduling leader" in first.log(), what="first operator leads")
    second = start_operator("--identity", "replica-b", "--lease-duration-seconds", "15")
    cluster.apply(elasticjob("pair-a", ["H100"], min_replicas=2, max_replicas=2), namespace)
    cluster.apply(elasticjob("pair-b", ["A100"], min_replicas=2, max_replicas=2), namespace)
    wait_phase(cluster, "elasticjob", "pair-a", namespace, "Running")
    wait_phase(cluster, "elasticjob", "pair-b", namespace, "Running")
    assert "became the scheduling leader" not in second.log()  # the Lease keeps it idle
    assert first.alive and second.alive
    assert len(_bound(pods_of(cluster, namespace))) == 4
    # the leader goes away cleanly (releasing the Lease); the standby takes over
    first.stop()
    cluster.wait_for(lambda: "became the scheduling leader" in second.log(), timeout=20, what="takeover")
    cluster.apply(elasticjob("pair-c", ["H100"], min_replicas=1, max_replicas=1), namespace)
    wait_phase(cluster, "elasticjob", "pair-c", namespace, "Running")
    assert "bind failed" not in first.log() + second.log()


def test_a_gang_whose_bind_fails_partway_leaves_nothing_bound(cluster, namespace, start_operator):
    # a foreign pod squats the name of replica 1: replica 0 gets created, replica 1 cannot be,
    # so the operator must undo replica 0 and report why
    cluster.apply(f"""
apiVersion: v1
kind: Pod
metadata: {{name: squat-1, namespace: {namespace}}}
spec:
  schedulerName: nobody
  containers: [{{name: c, image: busybox}}]
""")
    start_operator()
    try:
        cluster.apply(elasticjob("squat", ["H100"], min_replicas=2, max_replicas=2), namespace)
        status = cluster.wait_for(
            lambda: (s := status_of(cluster, "elasticjob", "squat", namespace)).get("conditions")
            and condition(s).get("reason") == "BindFailed" and s, what="BindFailed condition")
        assert "squat-1" in condition(status)["message"] and "does not belong" in condition(status)["message"]
        assert status["phase"] != "Running"  # Pending, or Binding while the next attempt runs
        assert not _bound(pods_of(cluster, namespace, "squat"))  # all or nothing
        events = cluster.get_json("events", "-n", namespace)["items"]
        assert any(e["reason"] == "BindFailed" and e["involvedObject"]["name"] == "squat" for e in events)
    finally:
        cluster.kubectl("delete", "pod", "squat-1", "-n", namespace, "--wait=false")
    wait_phase(cluster, "elasticjob", "squat", namespace, "Running", timeout=40)
    assert len(running_pods(cluster, namespace, "squat", 2)) == 2


# --- infrastructure faults -------------------------------------------------------------


def restart_apiserver(cluster: Any, down_seconds: float) -> None:
    """SIGKILL the test cluster's kube-apiserver, keep it down ``down_seconds``, start it
    again with the same command line, and wait until it is ready."""
    import os
    import signal
    import subprocess
    import time

    pid_file = cluster.dir / "pids" / "kube-apiserver"
    pid = int(pid_file.read_text())
    command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(down_seconds)  # the outage itself (a scenario duration, not a wait for an effect)
    log = (cluster.dir / "logs" / "kube-apiserver.log").open("ab")
    proc = subprocess.Popen([c.decode() for c in command], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    pid_file.write_text(str(proc.pid))
    cluster.wait_for(lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
                     timeout=90, interval=0.5, what="kube-apiserver ready again")


def test_apiserver_killed_and_restarted_while_a_gang_binds(cluster, namespace, start_operator):
    # the operator stalls 6 s after its first bind of a 4-pod gang: the API server dies then
    # and comes back 3 s later; the watches are cut, the next writes fail, then succeed
    operator = start_operator("--fault-pause-at", "bind=6")
    cluster.apply(elasticjob("outage", ["H100"], min_replicas=4, max_replicas=4), namespace)
    cluster.wait_for(lambda: "pausing" in operator.log(), timeout=40, what="the operator stalled after a bind")
    restart_apiserver(cluster, down_seconds=3)
    status = wait_phase(cluster, "elasticjob", "outage", namespace, "Running", timeout=90)
    pods = running_pods(cluster, namespace, "outage", 4, timeout=60)
    assert {p["spec"]["nodeName"] for p in pods} == {r["node"] for r in status["placement"]}
    gpus_per_node: dict[str, int] = {}
    for pod in cluster.get_json("pods", "-A")["items"]:
        node = pod["spec"].get("nodeName")
        if node:
            limits = pod["spec"]["containers"][0].get("resources", {}).get("limits", {})
            gpus_per_node[node] = gpus_per_node.get(node, 0) + int(limits.get("nvidia.com/gpu", 0))
    assert max(gpus_per_node.values()) <= 8, gpus_per_node
    assert operator.alive
    # every waiting workload says why; here none waits, and the operator kept scheduling
    cluster.apply(elasticjob("after", ["A100"], min_replicas=1, max_replicas=1), namespace)
    wait_phase(cluster, "elasticjob", "after", namespace, "Running", timeout=40)
