"""Queues against a real kube-apiserver + kwok: the Queue CRD refuses bad quotas, the
operator (default policy) admits a team's jobs up to its quota plus what it may borrow,
holds the rest with a condition saying which queue, and reports use on the Queue status.

Queues are cluster-scoped and the cluster is shared by the tests: every name here carries
the test's namespace, and the queues are deleted at the end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, clean_up
from prometheus_server import free_port, scrape_sample
from workload_views import condition, gpus, pods_of, status_of

pytestmark = pytest.mark.cluster


def queue(name: str, parent: str = "", **quotas: tuple[int, int | None]) -> str:
    items = ", ".join(
        "{acceleratorType: " + t + f", nominal: {n}" + (f", lendingLimit: {lend}" if lend is not None else "") + "}"
        for t, (n, lend) in quotas.items())
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: Queue
metadata: {{name: {name}}}
spec:
  parent: "{parent}"
  quotas: [{items}]
"""


def job(name: str, queue_name: str) -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  queueName: {queue_name}
  replicas: {{min: 1, max: 1}}
  acceleratorsPerReplica: 8
  acceleratorTypes: [{{name: H100}}]
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1}}]
"""


@pytest.fixture
def queues(crds: Any, namespace: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """org-<ns> with team-a and team-b (8 H100 each) under it; an operator with its
    defaults; everything removed at the end."""
    names = {"org": f"org-{namespace}", "a": f"team-a-{namespace}", "b": f"team-b-{namespace}"}
    crds.apply(queue(names["org"]))
    crds.apply(queue(names["a"], names["org"], H100=(8, None)))
    crds.apply(queue(names["b"], names["org"], H100=(8, None)))
    # reclaim without waiting the default minute a borrower may run first
    names["metrics_port"] = str(free_port())
    proc = OperatorProcess(crds.kubeconfig, tmp_path / "operator.log", "--reclaim-min-runtime-seconds", "0",
                           "--metrics-port", names["metrics_port"]).start()
    try:
        yield names
    finally:
        clean_up(crds, namespace, "elasticjobs", [proc])
        crds.kubectl("delete", "queues", names["org"], names["a"], names["b"], "--wait=false", check=False)


def test_a_team_runs_its_quota_plus_what_it_may_borrow_and_the_rest_waits_for_quota(crds: Any, namespace: str,
                                                                                    queues: dict[str, str]) -> None:
    for name in ("a1", "a2", "a3"):
        crds.apply(job(name, queues["a"]), namespace=namespace)

    def settled() -> dict[str, Any] | None:
        statuses = {n: status_of(crds, n, namespace) for n in ("a1", "a2", "a3")}
        running = sorted(n for n, s in statuses.items() if s.get("phase") == "Running")
        waiting = [s for s in statuses.values() if condition(s, "Scheduled").get("reason") == "WaitingForQuota"]
        return statuses if len(running) == 2 and len(waiting) == 1 else None

    statuses = crds.wait_for(settled, timeout=60, what="two jobs running, one waiting for quota")
    # team-a: its own 8 and team-b's idle 8; a third job would take org past its 16 (16 H100 stay free)
    [held] = [s for s in statuses.values() if s.get("phase") != "Running"]
    message = condition(held, "Scheduled")["message"]
    assert message.startswith("over quota") and queues["org"] in message, message
    bound = [p for n in ("a1", "a2", "a3") for p in pods_of(crds, namespace, n) if p["spec"].get("nodeName")]
    assert sum(gpus(p) for p in bound) == 16

    def reported() -> dict[str, Any] | None:
        status = crds.get_json("queue", queues["a"]).get("status") or {}
        return status if status.get("admitted") == 2 and status.get("pending") == 1 else None

    status = crds.wait_for(reported, timeout=30, what="team-a's queue status")
    assert status["usage"] == [{"acceleratorType": "H100", "used": 16.0, "borrowed": 8.0, "nominal": 8}]
    assert status["fairShare"] == 2.0  # 16 H100 at full speed over weight 1 x quota 8
    assert condition(status, "Valid")["status"] == "True"
    org = crds.get_json("queue", queues["org"])["status"]
    assert org["usage"] == [{"acceleratorType": "H100", "used": 16.0, "borrowed": 0.0, "nominal": 16}]
    assert org["fairShare"] == 1.0


def test_the_crd_refuses_a_lending_limit_above_nominal(crds: Any, namespace: str) -> None:
    result = crds.kubectl("apply", "-f", "-", input=queue(f"bad-{namespace}", H100=(4, 8)), check=False)
    assert result.returncode != 0 and "lendingLimit may not exceed nominal" in result.stderr, result.stderr


def test_a_team_below_its_quota_reclaims_it_from_the_team_that_borrows_it(crds: Any, namespace: str,
                                                                         queues: dict[str, str]) -> None:
    for name in ("a1", "a2"):
        crds.apply(job(name, queues["a"]), namespace=namespace)
    crds.wait_for(lambda: all(status_of(crds, n, namespace).get("phase") == "Running" for n in ("a1", "a2")),
                  timeout=60, what="team-a running 16 H100 (8 borrowed)")
    crds.apply(job("b1", queues["b"]), namespace=namespace)
    peak: dict[str, int] = defaultdict(int)

    def reclaimed() -> dict[str, Any] | None:
        per_node: dict[str, int] = defaultdict(int)
        for pod in crds.get_json("pods", "-A")["items"]:
            if pod["spec"].get("nodeName"):
                per_node[pod["spec"]["nodeName"]] += gpus(pod)
        for node, used in per_node.items():
            peak[node] = max(peak[node], used)
        statuses = {n: status_of(crds, n, namespace) for n in ("a1", "a2", "b1")}
        running = [n for n, s in statuses.items() if s.get("phase") == "Running"]
        return statuses if sorted(running) in (["a1", "b1"], ["a2", "b1"]) else None

    statuses = crds.wait_for(reclaimed, timeout=60, interval=0.5, what="b1 running after reclaiming team-b's quota")
    [victim] = [n for n in ("a1", "a2") if statuses[n].get("phase") != "Running"]
    preempted = condition(statuses[victim], "Preempted")
    assert preempted.get("status") == "True" and f"queue {queues['b']}" in preempted.get("message", ""), preempted
    events = crds.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={victim}")["items"]
    assert any("reclaim" in e.get("message", "") and queues["b"] in e.get("message", "") for e in events), events
    assert max(peak.values()) <= 8, dict(peak)  # no node ever over its allocatable
    port = int(queues["metrics_port"])
    assert scrape_sample(port, "tessera_queue_reclaims_total", queue=queues["b"]) == 1
    assert scrape_sample(port, "tessera_queue_admission_wait_seconds_count", queue=queues["a"]) == 2
    crds.wait_for(lambda: scrape_sample(port, "tessera_queue_admission_wait_seconds_count", queue=queues["b"]) == 1,
                  timeout=10, what="b1's admission counted")
    # the victim waits for quota now (team-a is at its own 8 and team-b uses its own 8)
    crds.wait_for(lambda: condition(status_of(crds, victim, namespace), "Scheduled").get("reason") in (
        "WaitingForQuota", "Preempted"), timeout=20, what="the victim waiting with a reason")
