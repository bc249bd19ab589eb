"""Elastic resharding carried out by the operator against a real kube-apiserver + kwok.

The operator runs the ``elastic`` policy.  Nodes are failed by taking them away from kwok
(annotation ``kwok.x-k8s.io/status=custom``, see hack/cluster-up.sh) and patching their
Ready condition, exactly what a node-lifecycle controller or a dead kubelet leaves behind.
Every test restores the nodes it touched.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, clean_up

pytestmark = pytest.mark.cluster

GRACE_SECONDS = 2.0
HYSTERESIS_SECONDS = 4.0


def elasticjob(name: str, min_replicas: int, max_replicas: int) -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: {min_replicas}, max: {max_replicas}}}
  acceleratorsPerReplica: 8
  acceleratorTypes: [{{name: A100}}]
  globalBatchSize: 96
  microBatchSize: 8
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"""


def status_of(cluster: Any, name: str, namespace: str) -> dict[str, Any]:
    return dict(cluster.get_json("elasticjob", name, "-n", namespace).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def pods_of(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(cluster.get_json("pods", "-n", namespace, "-l", f"tessera.dev/workload={name}")["items"])


def generation(status: dict[str, Any]) -> int:
    return int((status.get("plan") or {}).get("generation") or 0)


def a100_nodes(cluster: Any) -> list[str]:
    return sorted(n["metadata"]["name"] for n in cluster.get_json("nodes")["items"]
                  if "A100" in (n["metadata"].get("labels") or {}).get("nvidia.com/gpu.product", ""))


#: node -> the thread keeping it NotReady (see set_ready)
_KEEPERS: dict[str, tuple[threading.Event, threading.Thread]] = {}


def _patch_ready(cluster: Any, node: str, ready: bool, since: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cond = {"type": "Ready", "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady", "message": "set by test_elastic",
            "lastHeartbeatTime": now, "lastTransitionTime": since}
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"conditions": [cond]}}))


def set_ready(cluster: Any, node: str, ready: bool) -> None:
    """Fail a kwok node (kwok stops managing its status) or bring it back.

    kwok can still play a heartbeat it queued before the node was taken from it (seen ~13 s
    later on a loaded machine): the node would turn Ready for a moment, which a test reads as
    a recovery.  While a node is failed a keeper thread puts NotReady back at once, with the
    original transition time (a dead kubelet does not come back)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    keeper = _KEEPERS.pop(node, None)
    if keeper is not None:
        keeper[0].set()
        keeper[1].join(timeout=10)
    if not ready:
        cluster.kubectl("annotate", "node", node, "kwok.x-k8s.io/status=custom", "--overwrite")
    _patch_ready(cluster, node, ready, now)
    if ready:
        cluster.kubectl("annotate", "node", node, "kwok.x-k8s.io/status-")
        return
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(0.2):
            conditions = (cluster.get_json("node", node).get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions) and not stop.is_set():
                _patch_ready(cluster, node, False, now)

    thread = threading.Thread(target=keep, daemon=True)
    thread.start()
    _KEEPERS[node] = (stop, thread)


def running_on(cluster: Any, name: str, namespace: str, count: int, *, avoid: set[str] = frozenset(),
               min_generation: int = 0) -> dict[str, Any] | None:
    """Status when the job runs ``count`` replicas, all bound, none on ``avoid``, plan >= min_generation."""
    status = status_of(cluster, name, namespace)
    if status.get("phase") != "Running" or len(status.get("placement") or []) != count:
        return None
    if generation(status) < min_generation:
        return None
    placed = {r["pod"]: r["node"] for r in status["placement"]}
    bound = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in pods_of(cluster, namespace, name)
             if not p["metadata"].get("deletionTimestamp")}
    if any(bound.get(pod) != node for pod, node in placed.items()) or set(placed.values()) & avoid:
        return None
    return status


def configmap_generation(cluster: Any, name: str, namespace: str) -> int:
    cm = cluster.get_json("configmap", f"{name}-tessera-plan", "-n", namespace)
    assert json.loads(cm["data"]["plan.json"])["generation"] == int(cm["data"]["generation"])
    return int(cm["data"]["generation"])


@pytest.fixture
def elastic(crds: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """Start elastic operators on demand; restore the A100 nodes and clean up at the end."""
    started: list[OperatorProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None, policy: tuple[str, ...] = ("--policy", "elastic"),
              ) -> OperatorProcess:
        proc = OperatorProcess(crds.kubeconfig, tmp_path / f"operator-{len(started)}.log", *policy,
                               f"--failure-grace-seconds={GRACE_SECONDS}",
                               "--policy-param", f"elastic_hysteresis_seconds={HYSTERESIS_SECONDS}", *extra,
                               env={"KUBECONFIG": str(crds.kubeconfig), **(env or {})}).start()
        started.append(proc)
        return proc

    yield start
    for node in a100_nodes(crds):
        set_ready(crds, node, True)
    if not any(p.alive for p in started):
        start()
    clean_up(crds, namespace, "elasticjobs", started)


def start_job(cluster: Any, namespace: str, name: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    cluster.apply(elasticjob(name, min_replicas, max_replicas), namespace)
    return cluster.wait_for(lambda: running_on(cluster, name, namespace, max_replicas, min_generation=1),
                            timeout=60, what=f"{name} Running on {max_replicas} replicas")


def test_node_not_ready_shrinks_then_grows_back(cluster, namespace, elastic):
    operator = elastic()
    nodes = a100_nodes(cluster)
    status = start_job(cluster, namespace, "train", 2, len(nodes))
    first = generation(status)
    assert configmap_generation(cluster, "train", namespace) == first
    assert cluster.get_json("service", "train-headless", "-n", namespace)["spec"]["clusterIP"] == "None"
    # every pod's env is the plan it was created under (a pod from before a growth keeps its
    # env; the ConfigMap is the current truth); pods of the current plan say 4 replicas
    for pod in pods_of(cluster, namespace, "train"):
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        document = json.loads(env["TESSERA_PLAN"])
        assert env["WORLD_SIZE"] == str(document["world_size"]) and document["generation"] <= first
        assert env["MASTER_ADDR"].startswith("train-0.train-headless.")
        assert pod["spec"]["subdomain"] == "train-headless" and pod["spec"]["hostname"] == pod["metadata"]["name"]
        if document["generation"] == first:
            assert env["WORLD_SIZE"] == str(8 * len(nodes))
    victim = next(r["node"] for r in status["placement"] if r["replica"] == 1)

    # a blip shorter than the grace changes nothing
    set_ready(cluster, victim, False)
    time.sleep(GRACE_SECONDS / 4)
    set_ready(cluster, victim, True)
    # cycles that begin after the grace would have ended decide nothing new
    ended = time.monotonic() + GRACE_SECONDS + 1.0
    cluster.wait_for(lambda: time.monotonic() > ended, timeout=GRACE_SECONDS + 5, interval=0.1, what="grace over")
    operator.wait_cycles(3)
    assert generation(status_of(cluster, "train", namespace)) == first
    assert running_on(cluster, "train", namespace, len(nodes))

    # a real failure: resharded onto the survivors after the grace
    failed_at = time.monotonic()
    set_ready(cluster, victim, False)
    shrunk = cluster.wait_for(
        lambda: running_on(cluster, "train", namespace, len(nodes) - 1, avoid={victim}, min_generation=first + 1),
        timeout=30, what="the job resharded onto the survivors")
    assert time.monotonic() - failed_at >= GRACE_SECONDS - 0.5  # not before the grace
    assert generation(shrunk) == first + 1 and configmap_generation(cluster, "train", namespace) == first + 1
    plan = shrunk["plan"]
    assert plan["dp"] == 8 * (len(nodes) - 1) and plan["globalBatchSize"] == 96
    assert plan["microBatch"] * plan["gradAccumSteps"] * plan["dp"] == 96  # the global batch is kept
    record = cluster.wait_for(lambda: (h := status_of(cluster, "train", namespace)["reshardHistory"])[-1]
                              .get("recoverySeconds") is not None and h[-1], timeout=10, what="recovery time")
    assert record["fromReplicas"] == len(nodes) and record["toReplicas"] == len(nodes) - 1
    assert "lost 1 replica" in record["reason"]
    assert not any(p["spec"].get("nodeName") == victim for p in pods_of(cluster, namespace, "train"))
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "Resharded" and e["involvedObject"]["name"] == "train" for e in events)

    # the node returns: growth waits for the hysteresis, then goes back to max
    set_ready(cluster, victim, True)
    grown = cluster.wait_for(lambda: running_on(cluster, "train", namespace, len(nodes), min_generation=first + 2),
                             timeout=HYSTERESIS_SECONDS + 30, what="the job grown back")
    assert configmap_generation(cluster, "train", namespace) == generation(grown)
    resized_at = datetime.fromisoformat(shrunk["lastResizeTime"].replace("Z", "+00:00")).timestamp()
    grew = grown["reshardHistory"][-1]
    assert grew["toReplicas"] == len(nodes) and grew["detectedAt"] >= resized_at + HYSTERESIS_SECONDS - 1
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "GrewBack" and e["involvedObject"]["name"] == "train" for e in events)


def test_the_default_operator_reshards_on_node_failure(cluster, namespace, elastic):
    # no --policy: CP-SAT placement with elastic failure handling composed on top (the
    # CLI's and the chart's default), not a separate "elastic" policy
    operator = elastic(policy=())
    nodes = a100_nodes(cluster)
    status = start_job(cluster, namespace, "default", 2, len(nodes))
    first = generation(status)
    victim = next(r["node"] for r in status["placement"] if r["replica"] == 0)
    set_ready(cluster, victim, False)
    shrunk = cluster.wait_for(
        lambda: running_on(cluster, "default", namespace, len(nodes) - 1, avoid={victim}, min_generation=first + 1),
        timeout=30, what="the job resharded onto the survivors by the default operator")
    assert configmap_generation(cluster, "default", namespace) == generation(shrunk)
    assert shrunk["plan"]["globalBatchSize"] == 96  # the global batch is kept
    assert "policy cpsat" in operator.log() and "ReshardsOnFailure" in operator.log()
    events = [e["reason"] for e in cluster.get_json("events", "-n", namespace)["items"]
              if e["involvedObject"]["name"] == "default"]
    assert "Resharded" in events


def test_survivors_below_min_are_requeued_with_their_record(cluster, namespace, elastic):
    elastic()
    nodes = a100_nodes(cluster)
    status = start_job(cluster, namespace, "rigid", len(nodes), len(nodes))
    first = generation(status)
    set_ready(cluster, nodes[2], False)
    requeued = cluster.wait_for(
        lambda: (s := status_of(cluster, "rigid", namespace)).get("phase") == "Pending"
        and condition(s, "Requeued").get("status") == "True" and s,
        timeout=30, what="the job requeued")
    scheduled = condition(requeued, "Scheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "InsufficientReplicas"
    assert f"min {len(nodes)}" in condition(requeued, "Requeued")["message"]
    # nothing lost: the plan and its history stay; no pod is left running
    assert generation(requeued) == first and requeued["reshardHistory"][-1]["toReplicas"] == 0
    cluster.wait_for(lambda: not [p for p in pods_of(cluster, namespace, "rigid")
                                  if not p["metadata"].get("deletionTimestamp")], timeout=20, what="pods released")
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "Requeued" and e["involvedObject"]["name"] == "rigid" for e in events)
    # capacity returns: placed again; the plan numbering goes on from the record (same layout, same
    # generation: next_generation only bumps when the layout changes)
    set_ready(cluster, nodes[2], True)
    again = cluster.wait_for(lambda: running_on(cluster, "rigid", namespace, len(nodes), min_generation=first),
                             timeout=40, what="the job placed again")
    assert generation(again) == first and configmap_generation(cluster, "rigid", namespace) == first
    assert again["reshardHistory"] == requeued["reshardHistory"]
    assert condition(again, "Scheduled")["status"] == "True"
    assert condition(again, "Requeued")["status"] == "False"


def test_two_failures_in_quick_succession(cluster, namespace, elastic):
    elastic()
    nodes = a100_nodes(cluster)
    status = start_job(cluster, namespace, "twice", 1, len(nodes))
    first = generation(status)
    victims = [r["node"] for r in status["placement"] if r["replica"] in (1, 2)]
    set_ready(cluster, victims[0], False)
    time.sleep(0.3)
    set_ready(cluster, victims[1], False)
    final = cluster.wait_for(
        lambda: running_on(cluster, "twice", namespace, len(nodes) - 2, avoid=set(victims), min_generation=first + 1),
        timeout=40, what="the job running on the two survivors")
    assert configmap_generation(cluster, "twice", namespace) == generation(final)
    bound = [p for p in pods_of(cluster, namespace, "twice") if p["spec"].get("nodeName")
             and not p["metadata"].get("deletionTimestamp")]
    assert len(bound) == len(nodes) - 2 and not {p["spec"]["nodeName"] for p in bound} & set(victims)
    assert final["plan"]["dp"] * final["plan"]["microBatch"] * final["plan"]["gradAccumSteps"] == 96


def test_operator_restart_in_the_middle_of_a_reshard(cluster, namespace, elastic):
    first_operator = elastic("--fault-exit-after", "reshard-recorded=1")
    nodes = a100_nodes(cluster)
    status = start_job(cluster, namespace, "crash", 2, len(nodes))
    first = generation(status)
    victim = next(r["node"] for r in status["placement"] if r["replica"] == 1)
    set_ready(cluster, victim, False)
    assert first_operator.wait_exit(timeout=40) == 137
    # the crash we wanted: the new plan is recorded, nothing carried out yet
    recorded = status_of(cluster, "crash", namespace)
    assert recorded["phase"] == "Binding" and generation(recorded) == first + 1
    assert any(p["spec"].get("nodeName") == victim for p in pods_of(cluster, namespace, "crash"))
    elastic()
    done = cluster.wait_for(
        lambda: running_on(cluster, "crash", namespace, len(nodes) - 1, avoid={victim}, min_generation=first + 1),
        timeout=40, what="the reshard finished by the second operator")
    assert generation(done) == first + 1  # finished, not decided a second time
    assert configmap_generation(cluster, "crash", namespace) == first + 1
    pods = [p for p in pods_of(cluster, namespace, "crash") if not p["metadata"].get("deletionTimestamp")]
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(r["pod"] for r in done["placement"])
    cluster.wait_for(lambda: status_of(cluster, "crash", namespace)["reshardHistory"][-1].get("runningAt"),
                     timeout=10, what="the reshard record closed after the restart")


def test_a_leader_change_in_the_middle_of_a_reshard(cluster, namespace, elastic):
    # the leader stalls 8 s right after recording a reshard (a GC pause, a frozen VM); the
    # standby takes the 3 s Lease and finishes the reshard; the old leader, back, must notice
    # it lost the Lease and stop, never undo or redo what its successor did
    stalled = elastic("--fault-pause-at", "reshard-recorded=8")
    nodes = a100_nodes(cluster)
    status = start_job(cluster, namespace, "handover", 2, len(nodes))
    first = generation(status)
    standby = elastic()
    victim = next(r["node"] for r in status["placement"] if r["replica"] == 1)
    set_ready(cluster, victim, False)
    done = cluster.wait_for(
        lambda: running_on(cluster, "handover", namespace, len(nodes) - 1, avoid={victim},
                           min_generation=first + 1),
        timeout=40, what="the reshard finished by the standby")
    cluster.wait_for(lambda: "lost the scheduler lease" in stalled.log(), timeout=30,
                     what="the stalled leader noticing it lost the Lease")
    standby.wait_cycles(3)
    after = status_of(cluster, "handover", namespace)
    assert generation(after) == generation(done) == first + 1  # decided once, not undone or redone
    assert after["placement"] == done["placement"]
    pods = [p for p in pods_of(cluster, namespace, "handover") if not p["metadata"].get("deletionTimestamp")]
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(r["pod"] for r in after["placement"])
    assert "became the scheduling leader" in standby.log()
    assert "bind failed" not in stalled.log() + standby.log()


def test_a_failed_pod_is_replaced_and_a_cordon_counts_at_once(cluster, namespace, elastic):
    elastic()
    nodes = a100_nodes(cluster)
    status = start_job(cluster, namespace, "podfail", 2, len(nodes))
    first = generation(status)
    failed = next(r for r in status["placement"] if r["replica"] == 1)
    # the container died: kwok stops managing the pod and it turns Failed
    cluster.kubectl("annotate", "pod", failed["pod"], "-n", namespace, "kwok.x-k8s.io/status=custom")
    cluster.kubectl("patch", "pod", failed["pod"], "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Failed", "reason": "Error"}}))
    # replaced on the capacity the failed pod freed (its node is fine): same size, next plan
    replaced = cluster.wait_for(
        lambda: running_on(cluster, "podfail", namespace, len(nodes), min_generation=first + 1),
        timeout=30, what="the failed replica replaced")
    assert 1 not in {r["replica"] for r in replaced["placement"]}  # a fresh replica index, not the failed pod
    assert failed["node"] in {r["node"] for r in replaced["placement"]}
    cluster.wait_for(lambda: failed["pod"] not in {p["metadata"]["name"] for p in pods_of(cluster, namespace, "podfail")},
                     timeout=20, what="the failed pod deleted")
    # a cordon takes the node away too (at once: no timestamp, not a blip; timing in the unit tests)
    victim = next(r["node"] for r in replaced["placement"] if r["replica"] == 2)
    cluster.kubectl("cordon", victim)
    try:
        shrunk = cluster.wait_for(
            lambda: running_on(cluster, "podfail", namespace, len(nodes) - 1, avoid={victim},
                               min_generation=generation(replaced) + 1),
            timeout=30, what="the job resharded off the cordoned node")
        assert shrunk["reshardHistory"][-1]["toReplicas"] == len(nodes) - 1
    finally:
        cluster.kubectl("uncordon", victim)
