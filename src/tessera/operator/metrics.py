"""Prometheus metrics of the operator (one registry, served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tessera.engine import CycleResult

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperatorMetrics:
    """The core scheduling metrics; also the engine's MetricsSink."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.cycle_duration = Histogram(
            "tessera_scheduling_cycle_duration_seconds",
            "Wall time of one scheduling cycle: list, decide, bind, write status.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decision_latency = Histogram(
            "tessera_decision_latency_seconds",
            "Time the policy took to decide one cycle.",
            ["policy"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.placements = Counter(
            "tessera_placements_total",
            "Workload placements bound (a gang counts once), by workload kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "tessera_pending_workloads",
            "Workloads (or scale-up units) waiting for capacity after the last cycle.",
            registry=self.registry,
        )
        self.bound_pods = Counter(
            "tessera_pods_bound_total", "Pods bound through the Binding subresource.", registry=self.registry
        )
        self.leader = Gauge(
            "tessera_scheduler_leader", "1 when this replica holds the scheduler Lease.", registry=self.registry
        )

    def record_cycle(self, result: CycleResult) -> None:
        self.decision_latency.labels(policy=result.policy).observe(result.decision_seconds)
        self.pending.set(len(result.waiting))

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics on ``port`` in a background thread (0 disables)."""
        if port:
            start_http_server(port, addr=address, registry=self.registry)
