"""Prometheus metrics of the operator (one registry, served on --metrics-port).

docs/metrics.md documents every metric (name, type, labels, meaning); a test checks the
operator serves exactly those after a scheduling cycle. Label values stay bounded: policy
names, accelerator types, node pools, plan action kinds, API verbs/resources/status codes;
never a workload or pod name.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tessera.core import ClusterSnapshot, Migration, Placement, Preemption, Resize, Workload
from tessera.engine import CycleResult

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MIGRATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_ADMISSION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 7 * 86400.0)

#: node labels that name a node pool, most specific first (ours, then the common providers')
NODE_POOL_LABELS = (
    "tessera.dev/node-pool",
    "karpenter.sh/nodepool",
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "kubernetes.azure.com/agentpool",
)
DEFAULT_POOL = "default"

_ACTIONS: Mapping[type, str] = {Placement: "placement", Preemption: "preemption", Resize: "resize", Migration: "migration"}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_API_PREFIX = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)/")


def node_pool(labels: Mapping[str, str]) -> str:
    """The node's pool: the first pool label it carries, else ``default``."""
    for key in NODE_POOL_LABELS:
        if labels.get(key):
            return labels[key]
    return DEFAULT_POOL


def demand_types(workload: Workload) -> tuple[str, ...]:
    """Accelerator-type label values a waiting workload counts under (docs/metrics.md)."""
    if not workload.demand.needs_accelerator:
        return ("none",)
    return workload.allowed_types or ("any",)


def api_verb_and_resource(method: str, url: str) -> tuple[str, str]:
    """("list", "pods") for GET /api/v1/pods, ("create", "pods/binding") for a Binding, ..."""
    path, _, query = url.partition("?")
    path = re.sub(r"^https?://[^/]+", "", path)
    match = _API_PREFIX.match(path)
    parts = path[match.end():].split("/") if match else [p for p in path.split("/") if p]
    if len(parts) > 2 and parts[0] == "namespaces":
        parts = parts[2:]
    resource = parts[0] if parts else ""
    if len(parts) > 2:
        resource += "/" + parts[2]
    if method.upper() == "GET":
        verb = "watch" if "watch=true" in query else ("get" if len(parts) > 1 else "list")
    else:
        verb = _VERBS.get(method.upper(), method.lower())
    return verb, resource


class OperatorMetrics:
    """The operator's metrics; also the engine's MetricsSink."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._label_sets: dict[int, set[tuple[str, ...]]] = defaultdict(set)
        r = self.registry
        self.cycle_duration = Histogram(
            "tessera_scheduling_cycle_duration_seconds",
            "Wall time of one scheduling cycle: list, decide, bind, write status.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.decision_latency = Histogram(
            "tessera_decision_latency_seconds", "Time the policy took to decide one cycle.",
            ["policy"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.solver_status = Counter(
            "tessera_solver_status_total", "Solver outcomes of policies that run a solver (CP-SAT status name).",
            ["policy", "status"], registry=r,
        )
        self.policy_artifact = Gauge(
            "tessera_policy_artifact_info", "1 for the trained artifact (name@version) the policy decides with.",
            ["policy", "artifact"], registry=r,
        )
        self.plan_source = Counter(
            "tessera_plan_source_total", "Decisions by the plan a solver policy kept: cpsat, greedy or learned.",
            ["policy", "source"], registry=r,
        )
        self.rounds = Counter(
            "tessera_scheduling_rounds_total",
            "Round decisions of a round-based policy (cpsat with round_seconds): each re-decided every "
            "running and waiting job; the jobs it stopped to restart elsewhere count in tessera_preemptions_total.",
            ["policy"], registry=r,
        )
        self.policy_errors = Counter(
            "tessera_policy_errors_total", "Cycles in which the policy raised (nothing was applied).",
            ["policy"], registry=r,
        )
        self.plan_rejections = Counter(
            "tessera_plan_rejections_total", "Plan actions the engine refused as invalid.",
            ["policy", "action"], registry=r,
        )
        self.placements = Counter(
            "tessera_placements_total",
            "Workload placements bound (a gang counts once), by workload kind and outcome.",
            ["kind", "outcome"], registry=r,
        )
        self.preemptions = Counter(
            "tessera_preemptions_total", "Running workloads evicted by a preemption (carried out, not just proposed).",
            ["policy"], registry=r,
        )
        self.reshards = Counter(
            "tessera_reshards_total", "Elastic resizes of running jobs (accepted), by direction.",
            ["policy", "direction"], registry=r,
        )
        self.reshards_done = Counter(
            "tessera_reshards_carried_out_total",
            "Elastic reshards the operator carried out, by reason: failure (shrink or replace lost replicas), "
            "grow (back toward max), shrink (room for other work), requeue (survivors below min: released).",
            ["reason"], registry=r,
        )
        self.reshard_recovery = Histogram(
            "tessera_reshard_recovery_seconds",
            "From a failure (node failed or pod lost; for grow: the decision) to every replica of the new plan bound.",
            ["reason"], buckets=(0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300), registry=r,
        )
        for reason in ("failure", "grow", "shrink", "requeue"):  # 0 before the first event, for rate()
            self.reshards_done.labels(reason=reason)
        self.migrations = Counter(
            "tessera_migrations_total",
            "Replica moves carried out to the end (new replica Ready, old one gone), by deciding policy and "
            "reason (rebalance: load; defrag: room for a waiting gang).",
            ["policy", "reason"], registry=r,
        )
        self.migrations_aborted = Counter(
            "tessera_migrations_aborted_total",
            "Replica moves undone before cut-over (new pod not bound or not Ready in time, placement changed).",
            registry=r,
        )
        self.migration_estimated_cost = Histogram(
            "tessera_migration_estimated_cost_seconds",
            "The policy's estimated cost of each completed move, in replica-seconds of lost service.",
            buckets=_MIGRATION_BUCKETS, registry=r,
        )
        self.migration_observed = Histogram(
            "tessera_migration_observed_seconds",
            "Observed duration of each completed move: from recording it to the new replica taking over.",
            buckets=_MIGRATION_BUCKETS, registry=r,
        )
        self.pending = Gauge(
            "tessera_pending_workloads", "Workloads (or scale-up units) waiting for capacity after the last cycle.",
            registry=r,
        )
        self.pending_gangs = Gauge(
            "tessera_pending_gangs", "Gangs waiting after the last cycle, by accelerator type they accept.",
            ["accelerator_type"], registry=r,
        )
        self.pending_accelerators = Gauge(
            "tessera_pending_accelerators",
            "Accelerators the waiting gangs ask for (minimum gang size), by accelerator type they accept.",
            ["accelerator_type"], registry=r,
        )
        self.allocated_accelerators = Gauge(
            "tessera_allocated_accelerators", "Accelerators held by running Tessera workloads.",
            ["accelerator_type", "node_pool"], registry=r,
        )
        self.capacity_accelerators = Gauge(
            "tessera_capacity_accelerators", "Accelerators on ready, schedulable nodes.",
            ["accelerator_type", "node_pool"], registry=r,
        )
        self.bound_pods = Counter(
            "tessera_pods_bound_total", "Pods bound, through the Binding subresource or created bound (single-pod decisions).", registry=r
        )
        self.api_errors = Counter(
            "tessera_api_errors_total", "Failed Kubernetes API requests of the scheduler (HTTP status, 0: no answer).",
            ["verb", "resource", "code"], registry=r,
        )
        self.cycles = Counter(
            "tessera_scheduling_cycles_total", "Scheduling cycles completed (led or not).", registry=r
        )
        self.workload_failures = Counter(
            "tessera_workload_failures_total",
            "Actions on one workload that raised and were contained (the workload backs off; the cycle goes on).",
            ["kind"], registry=r,
        )
        self.leader = Gauge(
            "tessera_scheduler_leader", "1 when this replica holds the scheduler Lease.", registry=r
        )
        self.queue_used = Gauge(
            "tessera_queue_used_accelerators", "Accelerators in use under a queue (its own and its descendants').",
            ["queue", "accelerator_type"], registry=r,
        )
        self.queue_borrowed = Gauge(
            "tessera_queue_borrowed_accelerators", "Accelerators a queue uses beyond its quota (borrowed).",
            ["queue", "accelerator_type"], registry=r,
        )
        self.queue_nominal = Gauge(
            "tessera_queue_nominal_accelerators", "A queue's quota: its nominal plus its descendants'.",
            ["queue", "accelerator_type"], registry=r,
        )
        self.queue_pending = Gauge(
            "tessera_queue_pending_workloads", "Workloads of a queue (and its descendants) waiting to be admitted.",
            ["queue"], registry=r,
        )
        self.queue_reclaims = Counter(
            "tessera_queue_reclaims_total",
            "Preemptions and shrinks carried out so that a queue gets back quota other queues borrowed.",
            ["queue"], registry=r,
        )
        self.queue_admission_wait = Histogram(
            "tessera_queue_admission_wait_seconds",
            "From a queued workload's creation to its placement, by queue.",
            ["queue"], buckets=_ADMISSION_BUCKETS, registry=r,
        )
        self.queue_admitted = Gauge(
            "tessera_queue_admitted_workloads", "Workloads of a queue (and its descendants) admitted and placed.",
            ["queue"], registry=r,
        )

    # --- the engine's MetricsSink -------------------------------------------------------

    def record_cycle(self, result: CycleResult) -> None:
        policy = result.policy
        self.decision_latency.labels(policy=policy).observe(result.decision_seconds)
        # children exist from the first cycle on, so rate() sees a 0 before the first event
        for counter in (self.preemptions, self.policy_errors):
            counter.labels(policy=policy)
        for reason in ("rebalance", "defrag"):
            self.migrations.labels(policy=policy, reason=reason)
        for direction in ("grow", "shrink"):
            self.reshards.labels(policy=policy, direction=direction)
        for action in _ACTIONS.values():
            self.plan_rejections.labels(policy=policy, action=action)
        if result.error:
            self.policy_errors.labels(policy=policy).inc()
        if result.stats.get("mode") == "rounds":  # round mode: every decision says whether it was a round
            rounds = self.rounds.labels(policy=policy)
            if result.stats.get("round") is True:
                rounds.inc()
        status = result.stats.get("status")
        if isinstance(status, str) and status:
            self.solver_status.labels(policy=policy, status=status).inc()
        # which trained model decided (learned, hybrid): the engine puts it in every cycle's stats
        artifact = result.stats.get("policy_artifact")
        if isinstance(artifact, str) and artifact:
            self.policy_artifact.labels(policy=policy, artifact=artifact).set(1)
        chosen = result.stats.get("chosen")  # cpsat/hybrid: "learned" = the fallback plan was used
        if isinstance(chosen, str) and chosen:
            self.plan_source.labels(policy=policy, source=chosen).inc()
        plan = result.plan
        # tessera_preemptions_total and tessera_migrations_total count what the operator
        # carried out (the scheduler and the rebalancer increment them), not what a plan
        # proposed: a proposal may wait or be dropped
        for resize in plan.resizes:
            direction = "grow" if len(resize.add) > len(resize.remove) else "shrink"
            self.reshards.labels(policy=policy, direction=direction).inc()
        for rejection in result.rejected:
            self.plan_rejections.labels(policy=policy, action=_ACTIONS[type(rejection.action)]).inc()

    # --- once per scheduling cycle ---------------------------------------------------

    def record_queue(self, queue: str, usage: Iterable[Mapping[str, Any]], pending: int, admitted: int) -> None:
        """The gauges of one queue (``usage``: its status rows, one per accelerator type)."""
        for row in usage:
            labels = {"queue": queue, "accelerator_type": str(row["acceleratorType"])}
            self.queue_used.labels(**labels).set(float(row["used"]))
            self.queue_borrowed.labels(**labels).set(float(row["borrowed"]))
            self.queue_nominal.labels(**labels).set(float(row["nominal"]))
        self.queue_pending.labels(queue=queue).set(pending)
        self.queue_admitted.labels(queue=queue).set(admitted)

    def forget_queue(self, queue: str) -> None:
        """Drop the gauges of a queue that was deleted (its counters and wait times stay)."""
        for gauge in (self.queue_used, self.queue_borrowed, self.queue_nominal):
            for labels in [k for k in gauge._metrics if k[0] == queue]:
                gauge.remove(*labels)
        for gauge in (self.queue_pending, self.queue_admitted):
            if (queue,) in gauge._metrics:
                gauge.remove(queue)

    def record_cluster(self, snapshot: ClusterSnapshot, pending: Iterable[Workload], waiting: Mapping[str, str]) -> None:
        """Demand and capacity gauges of one cycle.

        ``snapshot`` is the cluster the cycle started from, ``pending`` what went into its
        decisions, ``waiting`` what is left waiting after them (key -> reason).
        """
        self.pending.set(len(waiting))
        self._record_accelerators(snapshot)
        gangs: dict[str, float] = defaultdict(float)
        accelerators: dict[str, float] = defaultdict(float)
        for workload in pending:
            if workload.key not in waiting:
                continue
            for accelerator_type in demand_types(workload):
                gangs[accelerator_type] += 1
                accelerators[accelerator_type] += workload.gang_min * workload.demand.accelerator_milli / 1000
        self._set_all(self.pending_gangs, {(t,): v for t, v in gangs.items()})
        self._set_all(self.pending_accelerators, {(t,): v for t, v in accelerators.items()})

    def _record_accelerators(self, snapshot: ClusterSnapshot) -> None:
        capacity: dict[tuple[str, ...], float] = defaultdict(float)
        pools = {name: node_pool(node.labels) for name, node in snapshot.nodes.items()}
        for name, node in snapshot.nodes.items():
            if node.accelerator_type and node.usable:
                capacity[(node.accelerator_type, pools[name])] += node.accelerator_count
        allocated: dict[tuple[str, ...], float] = defaultdict(float)
        for allocation in snapshot.allocations.values():
            per_replica = allocation.workload.demand.accelerator_milli / 1000
            for replica in allocation.replicas:
                if replica.accelerator_type and per_replica:
                    pool = pools.get(replica.node, DEFAULT_POOL)
                    allocated[(replica.accelerator_type, pool)] += per_replica
        self._set_all(self.capacity_accelerators, capacity)
        self._set_all(self.allocated_accelerators, allocated)

    def _set_all(self, gauge: Gauge, values: Mapping[tuple[str, ...], float]) -> None:
        """Set a labelled gauge to exactly ``values``; label sets seen before and absent now go to 0.

        Zero rather than removal: a type or pool that drained stays visible as 0 instead of
        vanishing from dashboards until it comes back.
        """
        seen = self._label_sets[id(gauge)]
        for labels in seen - set(values):
            gauge.labels(*labels).set(0)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        seen.update(values)

    # --- API errors ------------------------------------------------------------------

    def record_api_error(self, method: str, url: str, status: int) -> None:
        verb, resource = api_verb_and_resource(method, url)
        self.api_errors.labels(verb=verb, resource=resource, code=str(status)).inc()

    def instrument(self, api_client: Any) -> None:
        """Count every failed request made through ``api_client`` (kubernetes.client.ApiClient).

        kubernetes>=33 sends requests through ``call_api(method, url, ...)`` and returns
        non-2xx answers as responses; older clients use ``request(method, url, ...)`` and
        raise ApiException. Both go through the same wrapper.
        """
        name = "call_api" if hasattr(api_client, "param_serialize") else "request"
        send: Callable[..., Any] = getattr(api_client, name)

        def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            try:
                response = send(method, url, *args, **kwargs)
            except Exception as err:
                self.record_api_error(method, url, int(getattr(err, "status", 0) or 0))
                raise
            status = getattr(response, "status", 200)
            if isinstance(status, int) and not 200 <= status <= 299:
                self.record_api_error(method, url, status)
            return response

        setattr(api_client, name, counted)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics on ``port`` in a background thread (0 disables)."""
        if port:
            start_http_server(port, addr=address, registry=self.registry)
