"""CP-SAT's round mode carried out by the operator against a real kube-apiserver + kwok.

A rigid one-replica training job may run on H100 (2x) or A100 (1x); a higher-priority job
holds every H100 node, so it starts on A100.  Once the H100 nodes free up, the next round
(``--policy-param round_seconds=2``) stops it and the follow-up decision restarts it on
H100 once its old pod has terminated (held terminating here, as a trainer writing a
checkpoint would); its status and Events say why, and no node ever has more GPUs bound
than it has.  The loop's interval is 30 s here, so the stop happening within seconds
shows the loop wakes for rounds by itself.  Without round_seconds the job stays on A100.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, Poller, clean_up
from prometheus_server import free_port, scrape_sample
from workload_views import condition, gpus, pods_of, status_of

pytestmark = pytest.mark.cluster

GPUS_PER_NODE = 8
ROUND_SECONDS = 2
MOVE_REASON = "round: restarts as 1 x H100 (worth its restart)"


def blocker(replicas: int) -> str:
    """Every H100 node, at a priority the round never stops for the training job."""
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: blocker}}
spec:
  replicas: {{min: {replicas}, max: {replicas}}}
  acceleratorsPerReplica: 8
  acceleratorTypes: [{{name: H100}}]
  priority: 10
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"""


TRAIN = """
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {name: train}
spec:
  replicas: {min: 1, max: 1}
  acceleratorsPerReplica: 8
  acceleratorTypes:
    - {name: H100, relativeThroughput: 2.0}
    - {name: A100, relativeThroughput: 1.0}
  template:
    spec:
      containers: [{name: trainer, image: trainer:1, resources: {requests: {cpu: "1", memory: 1Gi}}}]
"""


def node_types(cluster: Any) -> dict[str, str]:
    """Node name -> H100 / A100 / ... from the GPU product label."""
    out = {}
    for n in cluster.get_json("nodes")["items"]:
        product = (n["metadata"].get("labels") or {}).get("nvidia.com/gpu.product", "")
        for accelerator_type in ("H100", "A100"):
            if accelerator_type in product:
                out[n["metadata"]["name"]] = accelerator_type
    return out


class Watcher(Poller):
    """Polls the namespace's pods: the most GPUs ever bound on one node (terminating pods
    included) and every node the training job was ever bound to, with the most train pods
    bound at once."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        super().__init__()
        self.cluster, self.namespace = cluster, namespace
        self.peak: dict[str, int] = defaultdict(int)
        self.train_nodes: set[str] = set()
        self.train_peak = 0

    def sample(self) -> None:
        per_node: dict[str, int] = defaultdict(int)
        train = 0
        for pod in self.cluster.get_json("pods", "-A")["items"]:
            name = pod["spec"].get("nodeName")
            if not name:
                continue
            per_node[name] += gpus(pod)
            if pod["metadata"]["namespace"] == self.namespace and \
                    (pod["metadata"].get("labels") or {}).get("tessera.dev/workload") == "train":
                self.train_nodes.add(name)
                train += 1
        self.train_peak = max(self.train_peak, train)
        for name, used in per_node.items():
            self.peak[name] = max(self.peak[name], used)


@pytest.fixture
def start_operator(crds: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    started: list[OperatorProcess] = []

    def start(*args: str) -> OperatorProcess:
        proc = OperatorProcess(crds.kubeconfig, tmp_path / f"operator-{len(started)}.log", "--policy", "cpsat",
                               *args).start()
        started.append(proc)
        return proc

    yield start
    clean_up(crds, namespace, "elasticjobs", started)


def start_on_a100(cluster: Any, namespace: str) -> dict[str, str]:
    """The blocker on every H100 node, then the training job (on an A100 node); returns
    node name -> accelerator type."""
    types = node_types(cluster)
    h100 = sorted(n for n, t in types.items() if t == "H100")
    cluster.apply(blocker(len(h100)), namespace)
    cluster.wait_for(lambda: status_of(cluster, "blocker", namespace).get("phase") == "Running", timeout=40,
                     what="blocker Running")
    assert sorted(p["spec"]["nodeName"] for p in pods_of(cluster, namespace, "blocker")) == h100
    cluster.apply(TRAIN, namespace)
    train = cluster.wait_for(lambda: (s := status_of(cluster, "train", namespace)).get("phase") == "Running" and s,
                             timeout=40, what="train Running")
    assert train["acceleratorType"] == "A100"
    return types


def free_h100(cluster: Any, namespace: str) -> float:
    """Delete the blocker; returns when its pods are gone (monotonic time)."""
    cluster.kubectl("delete", "elasticjob", "blocker", "-n", namespace, "--wait=false")
    cluster.wait_for(lambda: not pods_of(cluster, namespace, "blocker"), timeout=40, what="blocker's pods gone")
    return time.monotonic()


def hold_pod(cluster: Any, namespace: str, pod: dict[str, Any]) -> None:
    """kwok (hack/cluster-up.sh) leaves pods annotated kwok.x-k8s.io/status=custom alone: once
    deleted, such a pod stays terminating, like a trainer writing its last checkpoint."""
    cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, "kwok.x-k8s.io/status=custom")


def release_pod(cluster: Any, namespace: str, pod: dict[str, Any]) -> None:
    """Finish the held pod's termination (the kubelet's part), if that very pod is still there."""
    name = pod["metadata"]["name"]
    current = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}", check=False)
    if current.returncode == 0 and current.stdout.strip() == pod["metadata"]["uid"]:
        cluster.kubectl("delete", "pod", name, "-n", namespace, "--grace-period=0", "--force", "--wait=false")


def test_a_round_moves_a_job_to_the_faster_type_once_it_frees(cluster, namespace, start_operator):
    port = free_port()
    # a 30 s interval: only the round's own wake-up can move the job within seconds
    operator = start_operator("--policy-param", f"round_seconds={ROUND_SECONDS}", "--interval-seconds", "30",
                              "--metrics-port", str(port))
    types = start_on_a100(cluster, namespace)
    (old_pod,) = pods_of(cluster, namespace, "train")
    # the old pod takes its time to terminate (like a trainer writing a checkpoint)
    hold_pod(cluster, namespace, old_pod)
    try:
        with Watcher(cluster, namespace) as watcher:
            rounds_before = scrape_sample(port, "tessera_scheduling_rounds_total", policy="cpsat")
            freed = free_h100(cluster, namespace)
            # the round stops it with its reason; the restart waits for the old pod to go
            held = cluster.wait_for(
                lambda: (s := status_of(cluster, "train", namespace)).get("phase") == "Pending"
                and "still terminating" in s.get("message", "") and s,
                timeout=15, what="train stopped by a round, waiting for its old pod")
            stopped_after_seconds = time.monotonic() - freed
            # a round later it still waits: never two pods of one name
            rounds = scrape_sample(port, "tessera_scheduling_rounds_total", policy="cpsat")
            cluster.wait_for(lambda: scrape_sample(port, "tessera_scheduling_rounds_total", policy="cpsat")
                             >= rounds + 1, timeout=3 * ROUND_SECONDS + 5, what="one more round")
            assert [p["spec"]["nodeName"] for p in pods_of(cluster, namespace, "train")] == [
                old_pod["spec"]["nodeName"]]
            assert pods_of(cluster, namespace, "train")[0]["metadata"].get("deletionTimestamp")
            release_pod(cluster, namespace, old_pod)
            train = cluster.wait_for(
                lambda: (s := status_of(cluster, "train", namespace)).get("acceleratorType") == "H100"
                and s.get("phase") == "Running" and s,
                timeout=15, what="train Running on H100")
            # settle: the next rounds keep it there (no thrashing)
            rounds = scrape_sample(port, "tessera_scheduling_rounds_total", policy="cpsat")
            cluster.wait_for(lambda: scrape_sample(port, "tessera_scheduling_rounds_total", policy="cpsat")
                             >= rounds + 2, timeout=4 * ROUND_SECONDS + 5, what="two more rounds")
    finally:
        release_pod(cluster, namespace, old_pod)
    assert stopped_after_seconds < 2 * ROUND_SECONDS + 3, stopped_after_seconds
    assert held["message"].startswith(MOVE_REASON + "; waiting to be placed again: placed once its previous pods")
    assert condition(held, "Preempted")["status"] == "True" and condition(held, "Preempted")["message"] == MOVE_REASON
    pods = pods_of(cluster, namespace, "train")
    assert len(pods) == 1 and types[pods[0]["spec"]["nodeName"]] == "H100"
    assert status_of(cluster, "train", namespace)["placement"] == train["placement"]  # stayed put
    # why it moved: the round's reason stays on its status, and in Events
    preempted = condition(train, "Preempted")
    assert preempted["status"] == "False" and preempted["reason"] == "Rescheduled"
    assert preempted["message"] == MOVE_REASON
    assert condition(train, "Scheduled")["reason"] == "Placed"
    events = [e for e in cluster.get_json("events", "-n", namespace)["items"]
              if e["involvedObject"]["name"] == "train"]
    assert any(e["reason"] == "Preempted" and e["message"] == MOVE_REASON for e in events)
    scheduled = [e for e in events if e["reason"] == "Scheduled"]
    assert sorted(types[e["message"].rsplit("-> ", 1)[-1]] for e in scheduled) == ["A100", "H100"]
    assert not [e for e in events if e["reason"] == "BindFailed"]  # the restart waited for its old pod
    # nothing double-bound: no node above its GPUs, never two train pods bound at once
    assert watcher.samples >= 3
    assert max(watcher.peak.values()) <= GPUS_PER_NODE, dict(watcher.peak)
    assert watcher.train_peak == 1
    assert {types[n] for n in watcher.train_nodes} == {"A100", "H100"}
    assert scrape_sample(port, "tessera_preemptions_total", policy="cpsat") == 1
    assert scrape_sample(port, "tessera_scheduling_rounds_total", policy="cpsat") >= rounds_before + 3
    assert "round mode: every 2s" in operator.log()


def test_without_round_seconds_nothing_moves(cluster, namespace, start_operator):
    port = free_port()
    operator = start_operator("--metrics-port", str(port))
    start_on_a100(cluster, namespace)
    before = status_of(cluster, "train", namespace)
    free_h100(cluster, namespace)
    operator.wait_cycles(6)  # many cycles, each one free to move it
    after = status_of(cluster, "train", namespace)
    assert after["acceleratorType"] == "A100" and after["placement"] == before["placement"]
    assert not condition(after, "Preempted")
    assert scrape_sample(port, "tessera_preemptions_total", policy="cpsat") == 0
    assert scrape_sample(port, "tessera_scheduling_rounds_total", policy="cpsat") == 0


def elastic_job(name: str, low: int, high: int, priority: int) -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: {low}, max: {high}}}
  acceleratorsPerReplica: 8
  acceleratorTypes: [{{name: A100}}]
  priority: {priority}
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"""


@pytest.mark.parametrize("in_place", [True, False], ids=["resize-in-place", "stop-and-restart"])
def test_a_round_grows_an_elastic_job_into_freed_room(cluster, namespace, start_operator, in_place):
    """An elastic job started at 1 of up to 4 replicas grows to 4 once the A100 nodes free:
    in place through the Resize path (its first pod keeps running) with
    round_resize_in_place, else stopped and restarted at 4."""
    args = ["--policy-param", f"round_seconds={ROUND_SECONDS}"]
    if in_place:
        args += ["--policy-param", "round_resize_in_place=true"]
    start_operator(*args)
    a100 = sorted(n for n, t in node_types(cluster).items() if t == "A100")
    cluster.apply(elastic_job("blocker", len(a100) - 1, len(a100) - 1, priority=10), namespace)
    cluster.wait_for(lambda: status_of(cluster, "blocker", namespace).get("phase") == "Running", timeout=40,
                     what="blocker Running")
    cluster.apply(elastic_job("grow", 1, len(a100), priority=0), namespace)
    cluster.wait_for(lambda: status_of(cluster, "grow", namespace).get("replicas") == 1, timeout=40,
                     what="grow Running with 1 replica")
    (first,) = pods_of(cluster, namespace, "grow")
    with Watcher(cluster, namespace) as watcher:
        cluster.kubectl("delete", "elasticjob", "blocker", "-n", namespace, "--wait=false")
        grown = cluster.wait_for(
            lambda: (s := status_of(cluster, "grow", namespace)).get("phase") == "Running"
            and s.get("replicas") == len(a100) and s,
            timeout=30, what="grow Running with every A100 node")
    pods = pods_of(cluster, namespace, "grow")
    assert sorted(p["spec"]["nodeName"] for p in pods) == a100
    assert max(watcher.peak.values()) <= GPUS_PER_NODE, dict(watcher.peak)
    events = [e for e in cluster.get_json("events", "-n", namespace)["items"]
              if e["involvedObject"]["name"] == "grow"]
    still_there = first["metadata"]["uid"] in {p["metadata"]["uid"] for p in pods}
    if in_place:
        assert still_there  # the kept replica never stopped
        assert not condition(grown, "Preempted")
        assert any(e["reason"] == "GrewBack" and f"round: grows to {len(a100)} x A100" in e["message"]
                   for e in events)
        assert grown["reshardHistory"][-1]["fromReplicas"] == 1
    else:
        assert not still_there
        assert condition(grown, "Preempted")["message"] == f"round: restarts as {len(a100)} x A100 (worth its restart)"
        assert any(e["reason"] == "Preempted" for e in events)
