"""The single scheduling loop: list -> state -> admission -> engine -> actuator -> status.

One cycle (:meth:`Scheduler.run_cycle`) is plain blocking code; :meth:`Scheduler.loop`
runs it in a worker thread, so neither the Kubernetes client nor a slow policy ever
blocks kopf's event loop.  A cycle runs every ``interval_seconds``, as soon as a handler
signals a change, and when something no watch reports comes due (a node leaving its
failure grace, a round, a workload's backoff).

**Bulkheads.**  Every action on one workload (repairing it, completing its placement,
evicting it, resharding it, placing it, writing its status) runs inside
:meth:`Scheduler._bulkhead`: whatever it raises marks that workload (``Scheduled=False``,
reason ``ActionFailed``, the cause in the message, a Warning Event), backs it off
(:class:`~tessera.operator.backoff.Backoff`), and the cycle goes on with the others.  A
workload whose spec cannot be parsed or whose status cannot be reconciled is refused
alone (:mod:`tessera.operator.state`); a policy that fails on one workload is retried
without it (:class:`~tessera.engine.Engine`).  No workload can stop the cycle.

The write protocols (record the decision, then create/bind/delete) live in
:mod:`tessera.operator.actuator`; docs/operator.md walks through them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import TypeVar

from tessera.core import Allocation, ClusterSnapshot, Placement, ReplicaPlacement, Spread, Workload
from tessera.engine import CycleResult, Engine
from tessera.operator.actuator import Actuator, CycleReport
from tessera.operator.admission import Admission
from tessera.operator.backoff import Backoff
from tessera.operator.elastic import ElasticActuator, ElasticSettings, plan_for, plan_status
from tessera.operator.executable import executable_placements, old_pods_going
from tessera.operator.faults import NO_FAULTS, FaultHooks
from tessera.operator.kube import KubeError
from tessera.operator.kueue import write_kueue
from tessera.operator.lease import LeaderElector, LeaseLost, keep_decision_state, resume_decision_state
from tessera.operator.memo import StateMemo
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.ports import KubePort
from tessera.operator.queues import DEFAULT_QUEUE, QueueReporter, count_admission, count_reclaim, queue_tree
from tessera.operator.rebalance import Rebalancer
from tessera.operator.reporting import Reporter
from tessera.operator.state import SCALE_UP_SUFFIX, ClusterState, WorkloadView, build_state
from tessera.operator.status import (
    ACTION_FAILED,
    INVALID_SPEC,
    BackgroundEvents,
    Phase,
    StatusWriter,
)
from tessera.operator.timing import gc_paused, round_wait_seconds
from tessera.operator.views import priority_classes

__all__ = ["CycleReport", "Scheduler"]

log = logging.getLogger("tessera.operator.scheduler")

T = TypeVar("T")


class Scheduler:
    """Owns one engine and applies its decisions to the cluster."""

    def __init__(
        self,
        kube: KubePort,
        engine: Engine,
        elector: LeaderElector,
        metrics: OperatorMetrics,
        *,
        interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        rebalancer: Rebalancer | None = None,
        elastic: ElasticSettings | None = None,
        hooks: FaultHooks = NO_FAULTS,
        workers: int = 8,
        batch_size: int = 256,
        namespaces: frozenset[str] = frozenset(),
        default_queue: str = DEFAULT_QUEUE,
        event_threads: int = 0,
    ) -> None:
        self.kube = kube
        self.engine = engine
        self.elector = elector
        self.metrics = metrics
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.hooks = hooks
        self._warned_nodes: dict[str, tuple[str, ...]] = {}
        #: Events posted off the decisions' path on this many threads (0: on the caller's)
        self.events = BackgroundEvents(kube.post_event, event_threads) if event_threads > 0 else None
        self.status = StatusWriter(kube, clock, leader=elector.require_leader, post_event=self.events)
        self.actuator = Actuator(kube, self.status, elector, metrics, hooks=hooks, plan_for=plan_for,
                                 plan_status=plan_status)
        self.backoff = Backoff(clock)
        self.reporter = Reporter(self.status)
        self.admission = Admission(kube)
        #: carries out replica moves (always: moves recorded before a restart must finish)
        #: and runs rebalancing rounds when configured (tessera.operator.rebalance)
        self.rebalancer = rebalancer or Rebalancer(kube, metrics, elector, clock=clock)
        self.rebalancer.attach(self.actuator, hooks)
        #: carries out resizes and failure releases, applies the failure grace
        self.elastic = ElasticActuator(self.actuator, engine, metrics, elastic or ElasticSettings.from_env(),
                                       clock=clock)
        #: completed cycles (tests wait on it instead of sleeping)
        self.cycles = 0
        #: API writes for different workloads (admission dry runs, placements) run on this
        #: many threads at once; 1 acts on one workload after another
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tessera-act") if self.workers > 1 else None
        #: at most this many pending workloads are decided per cycle (highest priority, then
        #: oldest first); the rest are decided in the cycles right after, so the first of a
        #: burst are bound while later ones are still to be decided (0: no limit)
        self.batch_size = max(0, batch_size)
        #: the namespaces whose workloads this operator schedules (empty: all)
        self.namespaces = namespaces
        #: where workloads without spec.queueName (and no namespace selector) go, if it exists
        self.default_queue = default_queue
        self.queue_reporter = QueueReporter(kube, metrics)
        #: workloads the last cycle decided and could not place: the next batch takes the
        #: others first (as kube-scheduler's unschedulable queue), so a blocked head of the
        #: queue never starves what could run behind it
        self._unschedulable: frozenset[str] = frozenset()
        #: what the last cycle derived from unchanged objects, and its snapshot: a cycle's
        #: state costs what changed (tessera.operator.memo)
        self._memo = StateMemo()
        self._snapshot: ClusterSnapshot | None = None

    # --- the loop ------------------------------------------------------------------

    async def loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Run cycles until ``stop`` is set. Errors are logged and retried next cycle."""
        while not stop.is_set():
            wake.clear()
            try:
                report = await asyncio.to_thread(self.run_cycle)
                for error in report.errors:
                    log.warning("%s", error)
                if report.deferred and report.bound:
                    continue  # more of the queue to decide and the last batch moved: the next one at once
            except KubeError as err:  # API trouble (missing CRDs, RBAC, a restarting server): retry
                log.warning("scheduling cycle failed: %s", err)
            except Exception:  # the loop must survive any one bad cycle
                log.exception("scheduling cycle failed; retrying")
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            try:
                await asyncio.wait(waiters, timeout=self.wait_seconds(), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        await asyncio.to_thread(self.elector.release)

    def wait_seconds(self) -> float:
        """How long the loop may sleep: a node leaving its failure grace, a policy's round and
        a workload's backoff coming due are changes no watch reports."""
        now = self.clock()
        timeout = round_wait_seconds(self.engine.policy, now, self.elastic.wait_seconds(now, self.interval_seconds))
        retry = self.backoff.next_retry()
        if retry is not None:
            timeout = max(0.05, min(timeout, retry - now + 0.05))
        return timeout

    def run_cycle(self) -> CycleReport:
        """One scheduling cycle, with the cyclic GC paused throughout (:func:`gc_paused`): the
        cycle's objects are freed by reference counting when it returns, so the collector,
        back on between cycles, has little left to walk."""
        with gc_paused():
            try:
                return self._run_cycle()
            except LeaseLost as err:
                # a successor leads now: stop at once, undo nothing, decide nothing more
                log.warning("%s; stopping this cycle", err)
                return CycleReport(leader=False, errors=[str(err)])
            finally:
                self.cycles += 1
                self.metrics.cycles.inc()

    @contextmanager
    def _bulkhead(self, view: WorkloadView | None, step: str, report: CycleReport) -> Iterator[None]:
        """Contain whatever acting on ``view`` raises: mark it, back it off, carry on."""
        try:
            yield
        except LeaseLost:
            raise  # not the workload's fault: the whole cycle stops (see _run_cycle)
        except Exception as err:
            if view is None:
                report.errors.append(f"{step} failed: {type(err).__name__}: {err}")
                log.exception("%s failed", step)
                return
            cause = f"{step} failed: {type(err).__name__}: {err}"
            delay = self.backoff.failed(view.uid, view.generation, cause)
            report.failed[view.key] = cause
            self.metrics.workload_failures.labels(kind=view.kind).inc()
            report.errors.append(f"{view.kind} {view.key}: {cause}; retrying in {delay:.0f}s")
            if not isinstance(err, KubeError):
                log.exception("%s %s: %s", view.kind, view.key, cause)
            message = f"{cause}; retrying in {delay:.0f}s"
            try:
                self.status.write(view, self.status.not_scheduled(view, ACTION_FAILED, message),
                                  event=("Warning", ACTION_FAILED, cause))
            except Exception as write_err:
                log.warning("%s: could not record the failure: %s", view.key, write_err)

    def _each(self, act: Callable[[T], None], items: Iterable[T]) -> None:
        """``act`` on every item, on the worker pool; waits for all.  Each item is one
        workload (its own bulkhead inside ``act``); LeaseLost from any stops the cycle."""
        todo = list(items)
        if self._pool is None or len(todo) <= 1:
            for item in todo:
                act(item)
            return
        for future in [self._pool.submit(act, item) for item in todo]:
            future.result()

    def _run_cycle(self) -> CycleReport:
        report = CycleReport()
        started = time.perf_counter()
        was_leader = self.elector.is_leader
        try:
            report.leader = self.elector.acquire_or_renew()
        except KubeError as err:
            report.errors.append(f"lease: {err}")
            report.leader = False
        self.metrics.leader.set(1 if report.leader else 0)
        if not report.leader:
            return report
        if not was_leader:
            resume_decision_state(self.engine.policy, self.elector)
        workloads = self.kube.list_workloads()
        pods = self.kube.list_pods()
        nodes = self.kube.list_nodes()
        queues = queue_tree(self.kube.list_queues())
        labels = self.kube.list_namespace_labels() if queues.needs_namespace_labels() else {}
        now = self.clock()
        state = build_state(nodes, pods, workloads, now, keep_lost=self.elastic.enabled, namespaces=self.namespaces,
                            queues=queues, namespace_labels=labels, default_queue=self.default_queue,
                            classes=priority_classes(self.kube.list_priority_classes()),
                            memo=self._memo, previous=self._snapshot, dra=self.kube.list_dra(),
                            kueue=self.kube.list_kueue())
        self._memo.sweep()
        self._snapshot = state.snapshot
        self.elastic.observe(state, nodes, now)
        self._warn_nodes(state)
        self._repair(state, report)
        self._kueue(state, report)
        self.rebalancer.advance(state, report, guard=lambda view, step: self._bulkhead(view, step, report))
        held: dict[str, str] = {}
        backing_off: dict[str, str] = {}
        pending = self._admit(state, backing_off, report)
        scale_ups = [w for w in pending if w.key.endswith(SCALE_UP_SUFFIX)]
        pending = [w for w in pending if w not in scale_ups]
        result = self.engine.decide(state.snapshot, pending)
        report.result = result
        keep_decision_state(self.engine.policy, self.elector)
        executable = executable_placements(result, pending, leaving_pods=len(state.leaving))
        if result.error:
            report.errors.append(result.error)
        if not self.elector.ensure_leader():
            report.errors.append("lost the scheduler lease during the decision; not applying it")
            return report
        evicted = self._evict(state, result, executable.preemptions, report)
        self._resize(state, result, report, skip=evicted)
        for view in state.workloads.values():
            # an in-flight decision with nothing left to bind still needs its Running status
            if view.in_flight and not view.rollback_reason and view.key not in evicted:
                if reason := self.backoff.waiting(view.uid, view.generation):
                    backing_off[view.key] = reason
                    continue
                with self._bulkhead(view, "completing its placement", report):
                    # an adopted single pod (tessera.operator.state._adopt): its decision is
                    # recorded with the Running status
                    record = {"placementGeneration": max(r.generation or 0 for r in view.placement.values()),
                              "observedGeneration": view.generation} if view.adopted else None
                    if self.actuator.bind(state, view, list(view.placement.values()), view.to_bind,
                                          previous=None, report=report, record=record):
                        self.backoff.succeeded(view.uid)
        ready: list[Placement] = []
        for placement in executable.placements:
            if reason := old_pods_going(state, placement.workload):
                held[placement.workload] = reason
            else:
                ready.append(placement)
        why = f"policy {result.policy}"
        self._each(lambda placement: self._place(state, placement, why, report), ready)
        waiting = {**result.waiting, **executable.waiting, **held}
        scale_ups = [u for u in scale_ups if state.pending_owner[u.key] not in evicted]
        waiting.update(self._scale_up(state, scale_ups, result, report))
        if not (report.bound or report.preempted or report.rolled_back or report.deleted_pods or state.leaving):
            # only on a settled cycle: the snapshot still describes the cluster
            with self._bulkhead(None, "rebalancing round", report):
                self.rebalancer.round(state, pending, report,
                                      reshard=lambda resize, result: self.elastic.resize(
                                          state, resize, result, report, label="move"))
        # waiting count, demand and capacity gauges once per cycle, from the snapshot the
        # cycle started with (scale-up decisions see modified snapshots)
        self.metrics.record_cluster(state.snapshot, state.pending, {**waiting, **backing_off})
        self._unschedulable = frozenset(k for k in waiting if k in {w.key for w in pending})
        bulkhead = lambda view, step: self._bulkhead(view, step, report)  # noqa: E731
        blocked = self.reporter.waiting(state, waiting, report, bulkhead)
        self.reporter.steady(state, blocked, report, bulkhead, self.elastic.settle)
        with self._bulkhead(None, "reporting queues", report):
            self.queue_reporter.report(queues, state.snapshot, state.pending, {**waiting, **backing_off})
        self.metrics.cycle_duration.observe(time.perf_counter() - started)
        return report

    # --- admission -------------------------------------------------------------------

    def _admit(self, state: ClusterState, backing_off: dict[str, str], report: CycleReport) -> list[Workload]:
        """The pending workloads the policy may place now: the API server accepts their pods
        (:mod:`tessera.operator.admission`) and they are not backing off after failures
        (those go to ``backing_off``; their ActionFailed condition already says why)."""
        candidates: list[tuple[Workload, WorkloadView]] = []
        order = sorted(state.pending, key=lambda w: (w.key in self._unschedulable, -w.priority,
                                                     w.submitted_at_seconds, w.key))
        for unit in order:
            view = state.workloads.get(state.pending_owner.get(unit.key, ""))
            if view is None:
                continue
            if reason := self.backoff.waiting(view.uid, view.generation):
                backing_off[unit.key] = reason
                continue
            if self.batch_size and len(candidates) >= self.batch_size:
                backing_off[unit.key] = "queued for the next batch"
                report.deferred += 1
                continue
            candidates.append((unit, view))
        problems: dict[str, str] = {}

        def check(view: WorkloadView) -> None:
            with self._bulkhead(view, "checking its pods with the API server", report):
                problems[view.key] = self.admission.problem(view, state.nodes)

        self._each(check, {view.key: view for _, view in candidates}.values())
        out: list[Workload] = []
        for unit, view in candidates:
            problem = problems.get(view.key)
            if problem is None or view.key in report.failed:
                continue
            if problem:
                with self._bulkhead(view, "recording its invalid spec", report):
                    self.status.write(view, self.status.not_scheduled(view, INVALID_SPEC, problem, phase=Phase.PENDING),
                                      event=("Warning", INVALID_SPEC, problem))
                continue
            out.append(unit)
        return out

    # --- applying decisions -----------------------------------------------------------

    def _evict(self, state: ClusterState, result: CycleResult, preemptions: tuple, report: CycleReport) -> set[str]:
        """Carry out evictions and failure releases; returns the workloads released."""
        done: set[str] = set()
        for pre in (*preemptions, *(p for p in result.plan.preemptions if p.after_failure)):
            view = state.workloads.get(pre.workload)
            if pre.workload in done or view is None:
                continue
            with self._bulkhead(view, "releasing it", report):
                if pre.after_failure:
                    released = self.elastic.requeue(state, pre, report)
                elif view.workload is None or not view.placement:
                    report.errors.append(f"preemption of {pre.workload}: not a running Tessera workload")
                    released = False
                else:
                    released = self.actuator.preempt(view, pre.reason or f"preempted by {result.policy}", report,
                                                    restart_on=pre.restart_on)
                    if released:
                        self.metrics.preemptions.labels(policy=result.policy).inc()
                        count_reclaim(self.metrics, pre.reason)
                if released:
                    done.add(pre.workload)
        return done

    def _resize(self, state: ClusterState, result: CycleResult, report: CycleReport, skip: set[str]) -> None:
        """Carry out the accepted Resizes (failures, growth, shrinks for others).

        A shrink that makes room for other work waits while earlier evictions' pods go, as
        evictions do: their room does not look free yet, so the policy would shrink more for
        the same beneficiary.  A release after a failure never waits (see :meth:`_evict`).
        """
        for resize in result.plan.resizes:
            view = state.workloads.get(resize.workload)
            if resize.workload in skip or view is None:
                continue
            if state.leaving and not resize.add and not self.elastic.removes_lost(state, resize):
                continue
            with self._bulkhead(view, "resharding it", report):
                if self.elastic.resize(state, resize, result, report):
                    count_reclaim(self.metrics, resize.reason)

    def _place(self, state: ClusterState, placement: Placement, why: str, report: CycleReport) -> None:
        view = state.workloads.get(state.pending_owner.get(placement.workload, ""))
        with self._bulkhead(view, "placing it", report):
            self.actuator.place(state, placement, why, report)
            if view is None:
                return
            if view.key in report.rolled_back:  # the bind failed and was undone: try it later
                self.backoff.failed(view.uid, view.generation, str(view.status.get("message") or "bind failed"))
            else:
                self.backoff.succeeded(view.uid)
                if placement.workload == view.key and view.placement:  # bound (not only recorded)
                    count_admission(self.metrics, view.workload, self.clock())

    def _scale_up(
        self, state: ClusterState, units: list[Workload], first: CycleResult, report: CycleReport
    ) -> dict[str, str]:
        """Grow running InferenceServices, one engine decision per service.

        Each decision sees the capacity left after this cycle's placements, with the nodes
        that already host a replica of that service closed when it spreads by node, so the
        new replicas keep the one-per-node rule together with the old ones.
        """
        if not units:
            return {}
        pending_by_key = {w.key: w for w in state.pending}
        allocations = list(state.snapshot.allocations.values())
        for placement in executable_placements(first, list(pending_by_key.values()), evict=False).placements:
            workload = pending_by_key[placement.workload]
            allocations.append(Allocation(workload, tuple(
                ReplicaPlacement(i, a.node, state.nodes[a.node].node.accelerator_type, a.devices)
                for i, a in enumerate(placement.replicas))))
        waiting: dict[str, str] = {}
        for unit in sorted(units, key=lambda w: (-w.priority, w.submitted_at_seconds, w.key)):
            view = state.workloads[state.pending_owner[unit.key]]
            # the targets of moves in flight count: their replicas land there
            hosting = {r.node for r in view.placement.values()} | {p.node_name for p in view.incoming.values()} \
                if unit.spread is Spread.NODE else set()
            nodes = [replace(v.node, schedulable=False) if v.node.name in hosting else v.node
                     for v in state.nodes.values()]
            snapshot = state.snapshot.with_changes(nodes=nodes, allocations=allocations)
            result = self.engine.decide(snapshot, [unit])
            executable = executable_placements(result, [unit], evict=False)
            waiting.update({**result.waiting, **executable.waiting})
            if not self.elector.ensure_leader():
                break
            for placement in executable.placements:
                self._place(state, placement, f"policy {result.policy}", report)
                allocations.append(Allocation(unit, tuple(
                    ReplicaPlacement(i, a.node, state.nodes[a.node].node.accelerator_type, a.devices)
                    for i, a in enumerate(placement.replicas))))
        return waiting

    # --- repairs before deciding -----------------------------------------------------

    def _warn_nodes(self, state: ClusterState) -> None:
        for name, warnings in state.node_warnings.items():
            if self._warned_nodes.get(name) != warnings:
                for w in warnings:
                    log.warning("node %s: %s", name, w)
        self._warned_nodes = dict(state.node_warnings)

    def _kueue(self, state: ClusterState, report: CycleReport) -> None:
        if state.kueue.installed:
            write_kueue(state.workloads.values(), self.kube.kueue,
                        waiting=lambda view: self.backoff.waiting(view.uid, view.generation),
                        bulkhead=lambda view, step: self._bulkhead(view, step, report))

    def _repair(self, state: ClusterState, report: CycleReport) -> None:
        for pod in state.orphans:
            log.info("deleting orphaned pod %s/%s (its workload is gone)", pod.namespace, pod.name)
            self.actuator.delete(pod, report)
        for claim in state.dra.stale:
            meta = claim["metadata"]
            log.info("deleting resourceclaim %s/%s (its pod is gone)", meta.get("namespace"), meta.get("name"))
            try:
                self.kube.dra.delete_claim(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""))
            except KubeError as err:
                report.errors.append(str(err))
        for view in state.workloads.values():
            with self._bulkhead(view, "repairing it", report):
                if view.error:
                    self.status.write(view, self.status.not_scheduled(view, INVALID_SPEC, view.error,
                                                                      phase=Phase.FAILED),
                                      event=("Warning", INVALID_SPEC, view.error))
                    continue
                for pod in view.to_delete:
                    self.actuator.delete(pod, report)
                for note in view.notes:
                    scaled = note.startswith("scaled")
                    self.status.event(view, "Normal" if scaled else "Warning",
                                      "ScaledDown" if scaled else "ReplicaLost", note)
                if view.rollback_reason:
                    self.actuator.rollback(view, view.rollback_reason, report, code=view.rollback_code)
