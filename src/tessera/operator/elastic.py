"""Elastic ElasticJobs in the operator: failure grace, resharding, requeue, plan delivery.

The elastic policy (:class:`tessera.policies.elastic.ElasticWrapper`) decides; this module
carries its decisions out against the API server, in the same crash-safe style as a
placement (see :mod:`tessera.operator.scheduler`):

* **Failure grace.**  A node that stopped being usable (Ready not True, NoExecute or
  NoSchedule taint, cordon) counts as failed only once it has been so for
  ``failure_grace_seconds``, measured from the node's own timestamps (the Ready
  condition's ``lastTransitionTime``, a taint's ``timeAdded``), never from an in-memory
  timer, so a restarted operator keeps the same clock.  During the grace the node is shown
  to the policy as usable but full (its free room held), so the running replicas are not
  resharded on a blip and nothing new lands on the sick node.  A cordon, a taint without
  ``timeAdded`` and a Failed or deleted pod are not blips: they count at once.
* **Resize.**  One write records the new placement (phase Binding, a new
  placementGeneration, new pods with that generation), the new sharding plan and a reshard
  record; then the removed replicas' pods are deleted and the new ones created and bound by
  the scheduler's own ``_bind`` (all or nothing).  A crash after the record leaves the
  workload in phase Binding: :mod:`tessera.operator.state` finishes it (stale pods of removed
  replicas deleted, missing pods created and bound on the recorded nodes) or, when those
  nodes lost their room, undoes it.
* **Requeue.**  ``Preemption(after_failure=True)``: record Pending with ``Requeued`` and
  ``Scheduled=False/InsufficientReplicas`` (survivors < min), then delete the pods.  The
  plan, its generation and the reshard history stay in status (the progress record), so
  the next placement numbers its plan after the last one.
* **Plan delivery.**  Before any pod of an ElasticJob is created, the ConfigMap
  ``<job>-tessera-plan`` (updated in place) and the headless Service ``<job>-headless`` exist,
  both owned by the job; pods get ``hostname``/``subdomain``, the plan env
  (:func:`tessera.api.elastic_contract.pod_env`) and the ConfigMap mounted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from tessera.api import elastic_contract as contract
from tessera.api.models import ElasticJob, ReplicaStatus
from tessera.core import (
    Allocation,
    ClusterSnapshot,
    Preemption,
    ReplicaDemand,
    ReplicaPlacement,
    Resize,
    Workload,
    WorkloadKind,
)
from tessera.core.elastic import sharding_for
from tessera.core.sharding import ShardingPlan, plan_sharding
from tessera.engine import CycleResult, Engine
from tessera.operator import labels as L
from tessera.operator.actuator import Actuator, CycleReport
from tessera.operator.faults import CrashPoint
from tessera.operator.kube import KubeError
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.state import (
    CONDITION_TAINT_KEYS,
    TOLERATED_TAINT_KEYS,
    ClusterState,
    WorkloadView,
    free_replica_indices,
    parse_timestamp,
)
from tessera.operator.status import INSUFFICIENT, REQUEUED, Phase
from tessera.operator.views import attained_service_now
from tessera.policy import ReshardsOnFailure

log = logging.getLogger("tessera.operator.elastic")

#: env var and default of the failure grace (the chart sets it from elastic.failureGraceSeconds)
GRACE_ENV = "TESSERA_FAILURE_GRACE_SECONDS"
DEFAULT_FAILURE_GRACE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ElasticSettings:
    """Operator-side elastic settings (the policy's own live in its params)."""

    #: how long a node must stay failed before its replicas count as lost
    failure_grace_seconds: float = DEFAULT_FAILURE_GRACE_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ElasticSettings:
        env = os.environ if environ is None else environ
        raw = env.get(GRACE_ENV, "")
        return cls(failure_grace_seconds=max(0.0, float(raw)) if raw else DEFAULT_FAILURE_GRACE_SECONDS)


# --- failure grace (pure) ----------------------------------------------------------------


def node_failed_since(raw: Mapping[str, Any]) -> float | None:
    """When ``raw`` (a v1 Node) stopped being usable, in Unix seconds; None while usable.

    0.0 means "at once": a cordon or a taint without ``timeAdded`` carries no time and is
    an administrator's decision, not a blip.  With several causes the earliest counts.
    """
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    since: list[float] = []
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        since.append(parse_timestamp((ready or {}).get("lastTransitionTime")))
    if spec.get("unschedulable"):
        since.append(0.0)
    for taint in spec.get("taints") or []:
        key = taint.get("key")
        if taint.get("effect") not in ("NoSchedule", "NoExecute") or key in TOLERATED_TAINT_KEYS | CONDITION_TAINT_KEYS:
            continue
        since.append(parse_timestamp(taint.get("timeAdded")))
    return min(since) if since else None


def precise_rfc3339(seconds: float) -> str:
    """RFC 3339 with milliseconds: the growth hysteresis is timed from it, whole seconds are too coarse."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def growth_deadlines(snapshot: ClusterSnapshot, hysteresis_seconds: float, now_seconds: float) -> list[float]:
    """When running training jobs below their target may next grow (future times only)."""
    out = []
    for allocation in snapshot.allocations.values():
        workload = allocation.workload
        if workload.kind is WorkloadKind.TRAINING and len(allocation.replicas) < workload.target_replicas:
            at = allocation.stable_since_seconds + hysteresis_seconds
            if at > now_seconds:
                out.append(at)
    return out


def grace_left(failed_since: float | None, now_seconds: float, grace_seconds: float) -> float:
    """Seconds until a failure that began at ``failed_since`` counts (0.0: it counts now).

    API timestamps have whole seconds (the failure began up to 1 s after the stamp), so a
    positive grace is counted from the end of that second: a blip is never cut short.
    """
    if failed_since is None or grace_seconds <= 0:
        return 0.0
    if failed_since == int(failed_since):
        failed_since += 1.0
    return max(0.0, failed_since + grace_seconds - now_seconds)


def apply_failure_grace(
    state: ClusterState, raw_nodes: Iterable[Mapping[str, Any]], now_seconds: float, grace_seconds: float,
    flapping: frozenset[str] = frozenset(),
) -> tuple[frozenset[str], float | None]:
    """Show nodes still in their grace as usable but full; returns them and the next deadline.

    Replaces ``state.snapshot``.  The deadline (Unix seconds) is when the first of them
    turns into a counted failure, so the scheduler can run a cycle right then.  Nodes in
    ``flapping`` get no grace and count as failed even while momentarily Ready.
    """
    if flapping:
        snapshot = state.snapshot
        state.snapshot = snapshot.with_changes(nodes=[replace(n, ready=False) if n.name in flapping else n
                                                      for n in snapshot.nodes.values()])
    in_grace: dict[str, float] = {}
    for raw in raw_nodes:
        name = (raw.get("metadata") or {}).get("name", "")
        view = state.nodes.get(name)
        if view is None or view.node.usable or name in flapping:
            continue
        left = grace_left(node_failed_since(raw), now_seconds, grace_seconds)
        if left > 0:
            in_grace[name] = now_seconds + left
    if not in_grace:
        return frozenset(), None
    snapshot = state.snapshot
    nodes = [replace(n, ready=True, schedulable=True) if n.name in in_grace else n for n in snapshot.nodes.values()]
    holds = [_hold(snapshot, name) for name in sorted(in_grace)]
    state.snapshot = snapshot.with_changes(nodes=nodes, allocations=[*snapshot.allocations.values(), *holds])
    return frozenset(in_grace), min(in_grace.values())


class FlapDetector:
    """Counts a node that keeps failing as failed, even when no single outage outlasts the grace.

    Per node it keeps the outages seen over the last ``window_seconds`` (from the node's own
    timestamps where it has them: when Ready turned False, when it turned True again).  A
    node down for more than ``max_down_fraction`` of the window in at least two outages is
    flapping: its replicas are resharded away and nothing new lands there until it has been
    steady long enough.  A node down 4 s of every 5 with a 5 s grace was otherwise never
    counted as failed.  The history is a detector's memory, not a decision: a restarted
    operator learns it again within one window.
    """

    def __init__(self, window_seconds: float = 60.0, max_down_fraction: float = 0.5) -> None:
        self.window_seconds = window_seconds
        self.max_down_fraction = max_down_fraction
        #: node -> [down_since, up_at or None (still down)]
        self._outages: dict[str, list[list[float | None]]] = {}

    def observe(self, raw: Mapping[str, Any], usable: bool, now_seconds: float) -> None:
        name = (raw.get("metadata") or {}).get("name", "")
        outages = self._outages.setdefault(name, [])
        is_open = bool(outages) and outages[-1][1] is None
        if not usable and not is_open:
            since = node_failed_since(raw)
            outages.append([since if since else now_seconds, None])
        elif usable and is_open:
            ready: Mapping[str, Any] = next(
                (c for c in (raw.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
            outages[-1][1] = max(float(outages[-1][0] or 0.0), parse_timestamp(ready.get("lastTransitionTime")) or now_seconds)
        start = now_seconds - self.window_seconds
        self._outages[name] = [o for o in outages if o[1] is None or float(o[1]) > start]

    def flapping(self, name: str, now_seconds: float) -> bool:
        outages = self._outages.get(name) or []
        if len(outages) < 2:
            return False
        start = now_seconds - self.window_seconds
        down = sum(max(0.0, (now_seconds if o[1] is None else float(o[1])) - max(start, float(o[0] or 0.0)))
                   for o in outages)
        return down > self.max_down_fraction * self.window_seconds

    def recovered_at(self, name: str) -> float | None:
        """When the node's last outage ended (None: no outage seen, or still down)."""
        outages = self._outages.get(name) or []
        if not outages or outages[-1][1] is None:
            return None
        return float(outages[-1][1])

    def forget(self, names: Iterable[str]) -> None:
        for name in set(self._outages) - set(names):
            del self._outages[name]


def _hold(snapshot: ClusterSnapshot, name: str) -> Allocation:
    """An allocation taking all the free room of ``name`` (nothing new lands on a sick node)."""
    free = snapshot.free(name)
    devices = tuple(i for i, d in enumerate(free.devices_milli) if d > 0)
    demand = ReplicaDemand(accelerators=len(devices), cpu_milli=max(0, free.cpu_milli),
                           memory_mib=max(0, free.memory_mib))
    workload = Workload(key=f"grace:{name}", kind=WorkloadKind.POD, demand=demand, preemptible=False)
    return Allocation(workload, (ReplicaPlacement(0, name, snapshot.nodes[name].accelerator_type, devices),))


# --- plans (pure) ------------------------------------------------------------------------


def plan_for(view: WorkloadView, replicas: Iterable[ReplicaStatus]) -> ShardingPlan | None:
    """The sharding plan of ``view`` on ``replicas``, numbered after the one in status.

    Jobs without a global batch size get the trivial data-parallel plan (one micro-batch
    per rank) so the torchrun variables are still defined.  None when no plan exists.
    """
    workload = view.workload
    if workload is None:
        return None
    members = [(r.replica, r.acceleratorType or None) for r in sorted(replicas, key=lambda r: r.replica)]
    if not members:
        return None
    proposed = sharding_for(workload, members)
    if proposed is None:
        devices = max(1, workload.demand.accelerators)
        ranks = len(members) * devices // max(1, workload.tensor_parallel * workload.pipeline_parallel)
        outcome = plan_sharding([t for _, t in members], replica_indices=[i for i, _ in members],
                                global_batch_size=max(1, ranks), max_micro_batch=1,
                                tensor_parallel=workload.tensor_parallel,
                                pipeline_parallel=workload.pipeline_parallel, devices_per_replica=devices)
        proposed = outcome if isinstance(outcome, ShardingPlan) else None
    if not isinstance(proposed, ShardingPlan):
        return None
    return contract.next_generation(previous_plan(view), proposed)


def previous_plan(view: WorkloadView) -> ShardingPlan | None:
    """The plan recorded in status (the ConfigMap's document is the full copy)."""
    doc = view.status.get("plan") or {}
    full = doc.get("document")
    try:
        return ShardingPlan.from_dict(full) if isinstance(full, Mapping) else None
    except (KeyError, TypeError, ValueError):
        return None


def plan_status(plan: ShardingPlan) -> dict[str, Any]:
    """``status.plan``: the summary users read, plus the full document for restarts."""
    return {
        "generation": plan.generation,
        "dp": plan.dp,
        "tp": plan.tp,
        "pp": plan.pp,
        "microBatch": plan.micro_batch,
        "gradAccumSteps": plan.grad_accum_steps,
        "globalBatchSize": plan.global_batch_size,
        "replicas": list(plan.replicas_used),
        "worldSize": plan.world_size,
        "document": plan.to_dict(),
    }


# --- carrying decisions out -----------------------------------------------------------------


class ElasticActuator:
    """Carries out Resize and after-failure Preemption decisions (of any policy), applies
    the failure grace for policies that reshard on failure, closes reshard records."""

    def __init__(
        self,
        actuator: Actuator,
        engine: Engine,
        metrics: OperatorMetrics,
        settings: ElasticSettings,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.actuator = actuator
        self.status = actuator.status
        self.engine = engine
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        #: Unix seconds when the next node leaves its grace (the loop wakes then)
        self.next_deadline: float | None = None
        self._raw_nodes: dict[str, Mapping[str, Any]] = {}
        self.flaps = FlapDetector()

    @property
    def enabled(self) -> bool:
        """Whether the policy reshards around lost replicas itself (ReshardsOnFailure; the
        operator's default composition, see tessera.policy.with_failure_handling).

        Then lost replicas stay in the snapshot for it and the failure grace applies;
        otherwise lost replicas are dropped and a gang below min is rolled back.  Resizes
        are carried out for any policy that decides them.
        """
        return isinstance(self.engine.policy, ReshardsOnFailure)

    def observe(self, state: ClusterState, raw_nodes: Iterable[Mapping[str, Any]], now_seconds: float) -> None:
        """Apply the failure grace to this cycle's snapshot."""
        raw_nodes = list(raw_nodes)
        self._raw_nodes = {(n.get("metadata") or {}).get("name", ""): n for n in raw_nodes}
        policy = self.engine.policy
        if not isinstance(policy, ReshardsOnFailure):
            self.next_deadline = None
            return
        for raw in raw_nodes:
            view = state.nodes.get((raw.get("metadata") or {}).get("name", ""))
            if view is not None:
                self.flaps.observe(raw, view.node.usable, now_seconds)
        self.flaps.forget(state.nodes)
        flapping = frozenset(n for n in state.nodes if self.flaps.flapping(n, now_seconds))
        _, grace_deadline = apply_failure_grace(state, raw_nodes, now_seconds, self.settings.failure_grace_seconds,
                                                flapping)
        # a node back from an outage takes new replicas only once it has stayed Ready for the
        # grace too: a moment of Ready (a late heartbeat, a flap) must not pull work onto it
        recovering = {n: at + self.settings.failure_grace_seconds for n in state.nodes
                      if (at := self.flaps.recovered_at(n)) is not None
                      and at + self.settings.failure_grace_seconds > now_seconds}
        held = [n for n in sorted(recovering) if n in state.snapshot.nodes and state.snapshot.nodes[n].usable]
        if held:  # usable but full: what runs there stays, nothing new lands
            snapshot = state.snapshot
            state.snapshot = snapshot.with_changes(
                allocations=[*snapshot.allocations.values(), *(_hold(snapshot, n) for n in held)])
        # a node leaving its grace and a job's growth hysteresis ending are changes no watch
        # reports: the loop wakes for the earliest of them
        hysteresis = policy.growth_hysteresis_seconds(self.engine.params)
        deadlines = growth_deadlines(state.snapshot, hysteresis, now_seconds)
        if grace_deadline is not None:
            deadlines.append(grace_deadline)
        deadlines.extend(recovering.values())
        self.next_deadline = min(deadlines) if deadlines else None

    def wait_seconds(self, now_seconds: float, default: float) -> float:
        """How long the loop may sleep: until the next grace deadline at most."""
        if self.next_deadline is None:
            return default
        return max(0.05, min(default, self.next_deadline - now_seconds + 0.05))

    # -- Resize ---------------------------------------------------------------------------

    @staticmethod
    def removes_lost(state: ClusterState, resize: Resize) -> bool:
        """Whether ``resize`` removes a replica that is lost (failed node or pod)."""
        view = state.workloads.get(resize.workload)
        if view is None:
            return False
        for index in resize.remove:
            if index in view.lost:
                return True
            r = view.placement.get(index)
            node = state.snapshot.nodes.get(r.node) if r is not None else None
            if r is not None and (node is None or not node.usable):
                return True
        return False

    def resize(
        self, state: ClusterState, resize: Resize, result: CycleResult, report: CycleReport, *, label: str = ""
    ) -> bool:
        """Carry out one Resize (record, delete removed pods, bind new ones); ``label`` names
        it in metrics and Events (default: failure, grow or shrink, from what it does)."""
        view = state.workloads.get(resize.workload)
        if view is None or not isinstance(view.model, ElasticJob) or view.in_flight or view.rollback_reason:
            return False
        now = self.clock()
        removed = set(resize.remove)
        current = {**view.lost, **view.placement}
        kept = [r for i, r in sorted(current.items()) if i not in removed]
        generation = view.placement_generation + 1
        taken = {*current, *(p.replica for p in view.pods)}
        indices = free_replica_indices(sorted(taken), len(resize.add))
        new = [
            ReplicaStatus(
                replica=index,
                pod=L.pod_name(view.name, index),
                node=assignment.node,
                acceleratorType=state.nodes[assignment.node].node.accelerator_type or ""
                if assignment.node in state.nodes else "",
                generation=generation,
            )
            for index, assignment in zip(indices, resize.add, strict=True)
        ]
        full = sorted(kept + new, key=lambda r: r.replica)
        plan = plan_for(view, full)
        if plan is None and view.workload is not None and view.workload.global_batch_size is not None:
            # never run without a plan: the pods could not agree on who does what
            report.errors.append(f"{view.key}: no sharding plan on {len(full)} replica(s); not resharding")
            return False
        before = len(current)
        label = label or ("failure" if self.removes_lost(state, resize) else ("grow" if resize.add else "shrink"))
        grow = label == "grow"
        detected = self._failure_time(view, removed, now) if label == "failure" else now
        record = contract.reshard_record(reason=resize.reason, from_replicas=before, to_replicas=len(full),
                                         generation=plan.generation if plan else 0, detected_at_seconds=detected)
        history = contract.append_history(list(view.status.get("reshardHistory") or []), record)
        message = f"resharding {before} -> {len(full)} replicas: {resize.reason}"
        status: dict[str, Any] = {
            "phase": Phase.BINDING.value,
            "placementGeneration": generation,
            "placement": [r.model_dump() for r in full],
            "replicas": len(kept),
            "observedGeneration": view.generation,
            "message": message,
            # the run changes shape: the service of the old shape goes into the tally
            "attainedService": attained_service_now(view, now),
            "lastResizeTime": precise_rfc3339(now),
            "reshardHistory": history,
        }
        if plan is not None:
            status["plan"] = plan_status(plan)
        try:
            self.status.write(view, status, force=True)
        except KubeError as err:
            report.errors.append(f"{view.key}: could not record the reshard, not resharding: {err}")
            return False
        self.actuator.hooks.reached(CrashPoint.RESHARD_RECORDED)
        log.info("ElasticJob %s: %s", view.key, message)
        self._delete_removed(state, view, removed, report)
        view.lost = {}
        view.placement = {r.replica: r for r in kept}
        if not self.actuator.bind(state, view, full, new, previous=kept, report=report, why=resize.reason):
            return True  # the bind failed and was undone; the next cycle decides again
        event_reason = "GrewBack" if grow else ("Migrated" if label == "move" else "Resharded")
        self.finish(view, now_seconds=self.clock(), event_reason=event_reason,
                    message=f"{before} -> {len(full)} replicas, plan generation "
                            f"{plan.generation if plan else '-'}: {resize.reason}", reason=label)
        self.metrics.reshards_done.labels(reason=label).inc()
        return True

    def _failure_time(self, view: WorkloadView, removed: set[int], now: float) -> float:
        """When the failure that removed replicas began (earliest node failure, else now)."""
        times = []
        for index in removed:
            r = view.placement.get(index) or view.lost.get(index)
            raw = self._raw_nodes.get(r.node) if r is not None else None
            if raw is not None:
                since = node_failed_since(raw)
                if since:
                    times.append(since)
        return min(times) if times else now

    def _delete_removed(self, state: ClusterState, view: WorkloadView, removed: set[int], report: CycleReport) -> None:
        for pod in view.pods:
            if pod.replica in removed:
                node = state.nodes.get(pod.node_name)
                # on a dead node no kubelet confirms a graceful delete: force it
                grace = None if node is not None and node.node.usable else 0
                self.actuator.delete(pod, report, grace_period_seconds=grace)
        listed = {p.replica for p in view.pods}
        for index in removed - listed:  # a Failed pod is not listed: delete it by name if it is ours
            self.actuator.delete_if_ours(view, L.pod_name(view.name, index), report)

    def finish(self, view: WorkloadView, *, now_seconds: float, event_reason: str = "", message: str = "",
               reason: str = "failure") -> None:
        """Close the newest reshard record (runningAt, recovery time) once every replica is bound."""
        history = [dict(h) for h in view.status.get("reshardHistory") or []]
        if not history or history[-1].get("runningAt") is not None:
            return
        last = history[-1]
        last["runningAt"] = now_seconds
        last["recoverySeconds"] = max(0.0, now_seconds - float(last.get("detectedAt") or now_seconds))
        try:
            self.status.write(view, {"reshardHistory": history}, force=True)
        except KubeError as err:
            log.warning("%s: could not record the recovery time: %s", view.key, err)
            return
        self.metrics.reshard_recovery.labels(reason=reason).observe(last["recoverySeconds"])
        if event_reason:
            self.status.event(view, "Normal", event_reason,
                              f"{message} (recovered in {last['recoverySeconds']:.2f}s)")

    def settle(self, view: WorkloadView) -> None:
        """A running job whose reshard a restart completed: close the record; and whatever the
        policy, the plan (status, ConfigMap) follows the replicas that run (a replica dropped
        above min, a reshard's bind undone)."""
        if not isinstance(view.model, ElasticJob):
            return
        if view.in_flight or view.rollback_reason or not view.placement:
            return
        if view.status.get("phase") != Phase.RUNNING.value or view.lost or view.bound_replicas < len(view.placement):
            return
        recorded = (view.status.get("plan") or {}).get("replicas")
        if recorded is not None and sorted(recorded) != sorted(view.placement) and len(view.placement) > 0:
            # a reshard's bind was undone (or a replica dropped): the plan follows the pods
            self.actuator.deliver_plan(view, list(view.placement.values()))
        history = view.status.get("reshardHistory") or []
        if history and history[-1].get("runningAt") is None and int(history[-1].get("toReplicas") or 0) > 0:
            self.finish(view, now_seconds=self.clock(), event_reason="Resharded",
                        message=f"reshard completed after a restart: {history[-1].get('reason', '')}")

    # -- requeue below the minimum ----------------------------------------------------------------

    def requeue(self, state: ClusterState, preemption: Preemption, report: CycleReport) -> bool:
        """Release a job whose survivors are below its minimum; it waits to be placed again."""
        view = state.workloads.get(preemption.workload)
        if view is None or view.workload is None or not (view.placement or view.lost):
            return False  # not running (or released already this cycle)
        now = self.clock()
        before = len(view.placement) + len(view.lost)
        reason = preemption.reason or "survivors below the minimum; released and requeued"
        everything = set(view.placement) | set(view.lost)
        record = contract.reshard_record(
            reason=reason, from_replicas=before, to_replicas=0,
            generation=int((view.status.get("plan") or {}).get("generation") or 0),
            detected_at_seconds=self._failure_time(view, everything, now),
            running_at_seconds=None)
        status: dict[str, Any] = {
            **self.status.released(view, reason, REQUEUED, INSUFFICIENT),
            "lastResizeTime": precise_rfc3339(now),
            "reshardHistory": contract.append_history(list(view.status.get("reshardHistory") or []), record),
        }
        if not self.actuator.release(view, status, report, crash_point=CrashPoint.EVICTION_RECORDED,
                                     delete=lambda: self._delete_removed(state, view, everything, report)):
            return False
        self.metrics.reshards_done.labels(reason="requeue").inc()
        report.preempted.append(view.key)
        self.status.event(view, "Warning", REQUEUED, reason)
        return True
