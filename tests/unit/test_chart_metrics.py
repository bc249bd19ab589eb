"""The operator's metrics module (what the chart's ServiceMonitor and dashboard consume).

Fed with hand-made cycles: every documented metric is registered with its documented type
and labels, and each one counts what docs/metrics.md says it counts.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
from chart_helpers import documented_metrics

metrics_module = pytest.importorskip("tessera.operator.metrics", reason="the operator is not in this tree yet")
from prometheus_client import CollectorRegistry  # noqa: E402

from tessera.core import (  # noqa: E402
    Allocation,
    Migration,
    Placement,
    Plan,
    Preemption,
    Rejection,
    ReplicaAssignment,
    ReplicaPlacement,
    Resize,
)
from tessera.engine import CycleResult  # noqa: E402
from tessera.testing.builders import gang, node, snapshot  # noqa: E402

OperatorMetrics = metrics_module.OperatorMetrics


def sample(metrics: Any, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def cycle(plan: Plan | None = None, *, rejected: tuple[Rejection, ...] = (), error: str = "",
          stats: dict[str, Any] | None = None, policy: str = "cpsat") -> CycleResult:
    return CycleResult(policy=policy, policy_version="1", snapshot=snapshot([]), plan=plan or Plan(), rejected=rejected,
                       waiting=MappingProxyType({}), decision_seconds=0.25, cycle=1, error=error,
                       stats=MappingProxyType(stats or {}))


def test_every_documented_metric_is_registered_with_its_type_and_labels() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    registered = {}
    for collector in list(metrics.registry._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else collector.collect():
            registered[family.name] = (family.type, tuple(getattr(collector, "_labelnames", ())))
    for name, (kind, labels) in documented_metrics().items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert family in registered, f"{name} is documented but not registered"
        assert registered[family][0] == kind, name
        assert set(registered[family][1]) == set(labels), f"{name}: {registered[family][1]} vs {labels}"


def test_record_cycle_counts_decisions_solver_status_errors_and_rejections() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    job = gang("ns/a", 2, 8, ["H100"])
    plan = Plan(
        preemptions=(Preemption("ns/b", "room"),),
        resizes=(Resize("ns/c", add=(ReplicaAssignment("n1"),)), Resize("ns/d", remove=(1, 2))),
        migrations=(Migration("ns/e", 0, ReplicaAssignment("n2")),),
    )
    rejected = (Rejection(Placement(job.key, ()), "over-commit"),)
    metrics.record_cycle(cycle(plan, rejected=rejected, stats={"status": "OPTIMAL"}))
    metrics.record_cycle(cycle(error="policy cpsat failed: boom", stats={}))
    assert sample(metrics, "tessera_decision_latency_seconds_count", policy="cpsat") == 2
    assert sample(metrics, "tessera_decision_latency_seconds_sum", policy="cpsat") == 0.5
    assert sample(metrics, "tessera_solver_status_total", policy="cpsat", status="OPTIMAL") == 1
    assert sample(metrics, "tessera_policy_errors_total", policy="cpsat") == 1
    # a proposed preemption is not an eviction: the scheduler counts the ones it carries out
    assert sample(metrics, "tessera_preemptions_total", policy="cpsat") == 0
    assert sample(metrics, "tessera_reshards_total", policy="cpsat", direction="grow") == 1
    assert sample(metrics, "tessera_reshards_total", policy="cpsat", direction="shrink") == 1
    # a proposed migration is not a move: the rebalancer counts the ones it completes
    assert sample(metrics, "tessera_migrations_total", policy="cpsat", reason="rebalance") == 0
    assert sample(metrics, "tessera_migrations_total", policy="cpsat", reason="defrag") == 0
    assert sample(metrics, "tessera_plan_rejections_total", policy="cpsat", action="placement") == 1
    # children exist at 0 from the first cycle on (so rate() has a starting point)
    assert metrics.registry.get_sample_value("tessera_plan_rejections_total", {"policy": "cpsat", "action": "migration"}) == 0


def test_record_cluster_sets_demand_and_capacity_by_type_and_pool() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    h100 = [replace(node(f"h{i}", "H100", 8), labels={"karpenter.sh/nodepool": "train"}) for i in range(2)]
    a100 = [node("a0", "A100", 8), node("a1", "A100", 8, ready=False)]  # a1 is not usable
    running = gang("ns/run", 2, 4, ["H100"])
    allocation = Allocation(running, (ReplicaPlacement(0, "h0", "H100", (0, 1, 2, 3)),
                                      ReplicaPlacement(1, "h1", "H100", (0, 1, 2, 3))))
    shared = gang("ns/shared", 1, shared_milli=500, types=["A100"])
    waiting_one = gang("ns/wait", (3, 4), 8, ["H100", "A100"])
    waiting_any = gang("ns/any", 1, 2)
    waiting_cpu = gang("ns/cpu", 1, 0, cpu_milli=1000)
    placed = gang("ns/placed", 1, 8, ["A100"])
    snap = snapshot(h100 + a100, allocation,
                    Allocation(shared, (ReplicaPlacement(0, "a0", "A100", (0,)),)))
    waiting = {"ns/wait": "no room", "ns/any": "no room", "ns/cpu": "no room"}
    metrics.record_cluster(snap, [waiting_one, waiting_any, waiting_cpu, placed], waiting)
    assert sample(metrics, "tessera_capacity_accelerators", accelerator_type="H100", node_pool="train") == 16
    assert sample(metrics, "tessera_capacity_accelerators", accelerator_type="A100", node_pool="default") == 8
    assert sample(metrics, "tessera_allocated_accelerators", accelerator_type="H100", node_pool="train") == 8
    assert sample(metrics, "tessera_allocated_accelerators", accelerator_type="A100", node_pool="default") == 0.5
    assert sample(metrics, "tessera_pending_gangs", accelerator_type="H100") == 1
    assert sample(metrics, "tessera_pending_gangs", accelerator_type="A100") == 1  # counted under each type
    assert sample(metrics, "tessera_pending_gangs", accelerator_type="any") == 1
    assert sample(metrics, "tessera_pending_gangs", accelerator_type="none") == 1
    assert sample(metrics, "tessera_pending_accelerators", accelerator_type="H100") == 24  # min gang 3 x 8
    assert sample(metrics, "tessera_pending_accelerators", accelerator_type="any") == 2
    assert sample(metrics, "tessera_pending_workloads") == 3
    # next cycle: everything placed, the H100 pool drained: gauges go to 0, not stale values
    metrics.record_cluster(snapshot(a100), [], {})
    assert sample(metrics, "tessera_pending_gangs", accelerator_type="H100") == 0
    assert metrics.registry.get_sample_value("tessera_capacity_accelerators",
                                             {"accelerator_type": "H100", "node_pool": "train"}) == 0
    assert sample(metrics, "tessera_pending_workloads") == 0


@pytest.mark.parametrize(
    ("method", "url", "verb", "resource"),
    [
        ("GET", "https://h:6443/api/v1/nodes", "list", "nodes"),
        ("GET", "https://h:6443/api/v1/pods?labelSelector=x", "list", "pods"),
        ("GET", "https://h:6443/api/v1/namespaces/ns/pods/p", "get", "pods"),
        ("GET", "https://h:6443/api/v1/namespaces/ns/pods?watch=true", "watch", "pods"),
        ("POST", "https://h:6443/api/v1/namespaces/ns/pods/p/binding", "create", "pods/binding"),
        ("DELETE", "https://h:6443/api/v1/namespaces/ns/pods/p", "delete", "pods"),
        ("PATCH", "https://h:6443/apis/tessera.dev/v1alpha1/namespaces/ns/elasticjobs/j/status", "patch",
         "elasticjobs/status"),
        ("PUT", "https://h:6443/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", "update", "leases"),
        ("GET", "https://h:6443/apis/tessera.dev/v1alpha1/inferenceservices", "list", "inferenceservices"),
    ],
)
def test_api_requests_are_named_by_verb_and_resource(method: str, url: str, verb: str, resource: str) -> None:
    assert metrics_module.api_verb_and_resource(method, url) == (verb, resource)


def test_instrument_counts_failed_requests_and_lets_them_through() -> None:
    metrics = OperatorMetrics(CollectorRegistry())

    class Response:
        def __init__(self, status: int) -> None:
            self.status = status

    class Refused(Exception):
        status = 0

    class FakeClient:
        """The shape of kubernetes>=33's ApiClient: call_api(method, url) returns a response."""

        def param_serialize(self) -> None: ...

        def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
            if "down" in url:
                raise Refused("connection refused")
            return Response(403 if "secrets" in url else 200)

    client = FakeClient()
    metrics.instrument(client)
    assert client.call_api("GET", "https://h/api/v1/nodes").status == 200
    assert client.call_api("GET", "https://h/api/v1/namespaces/ns/secrets/s").status == 403
    with pytest.raises(Refused):
        client.call_api("POST", "https://down/api/v1/namespaces/ns/pods")
    assert sample(metrics, "tessera_api_errors_total", verb="get", resource="secrets", code="403") == 1
    assert sample(metrics, "tessera_api_errors_total", verb="create", resource="pods", code="0") == 1
    assert sample(metrics, "tessera_api_errors_total", verb="list", resource="nodes", code="200") == 0


def test_node_pool_label_precedence() -> None:
    pool = metrics_module.node_pool
    assert pool({}) == "default"
    assert pool({"cloud.google.com/gke-nodepool": "gke"}) == "gke"
    assert pool({"cloud.google.com/gke-nodepool": "gke", "tessera.dev/node-pool": "ours"}) == "ours"
