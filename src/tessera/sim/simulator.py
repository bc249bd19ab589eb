"""The discrete-event simulator: the engine's ports implemented over a simulated cluster.

:class:`Simulator` is a :class:`~tessera.engine.ports.Clock`, a
:class:`~tessera.engine.ports.ClusterSource`, an :class:`~tessera.engine.ports.Actuator`
and a :class:`~tessera.engine.ports.MetricsSink` at once, and drives any registered
policy through :class:`~tessera.engine.Engine` (so every plan is validated in simulation
exactly as in the operator).

Hot path, and why it is shaped like this:

* events are tuples on a heap (:mod:`tessera.sim.events`), arrivals are fed one at a
  time from a cursor so the heap stays small;
* free capacity lives in one mutable :class:`~tessera.core.CapacityLedger`; only the
  nodes touched since the last cycle get a fresh ``NodeFree``, so a snapshot costs a few
  dict copies instead of a replay of every allocation;
* a job's progress is updated lazily (rate x elapsed time) only when something about it
  changes, and its completion is a single heap entry invalidated by a version number, so
  no event touches every job;
* the pending list handed to the policy is bounded (``max_pending``, oldest first).

Extension points (used by the elastic-resharding and rebalancing work):

* :meth:`Simulator.on` registers a handler for an event kind (allocate new kinds with
  :func:`tessera.sim.events.new_event_kind`), :meth:`Simulator.schedule` queues events;
* ``failure_handler`` (:class:`FailureHandler`) decides what a node failure does to the
  workloads on it (``restart`` is built in: requeue, keep progress up to the last
  checkpoint);
* observers (:class:`Observer`) see every cycle and finished job and add their own
  figures to the report;
* resizes and migrations in plans are applied here (progress continues after a
  reshard/migration penalty), so elastic and rebalancing policies need no simulator change.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from types import MappingProxyType
from typing import Any, Protocol

from tessera.core import (
    MILLI_PER_DEVICE,
    Allocation,
    CapacityLedger,
    ClusterSnapshot,
    Node,
    NodeFree,
    ReplicaAssignment,
    ReplicaPlacement,
    Workload,
)
from tessera.core.elastic import REMAINING_SECONDS_ATTRIBUTE, resize_cost_seconds
from tessera.core.quota import QuotaTree
from tessera.core.service import folded
from tessera.engine import CycleResult, Engine
from tessera.policy import Policy
from tessera.sim import events as ev
from tessera.sim.models import NodeEvent, SimWorkload, sorted_by_arrival

PENDING, RUNNING, DONE = 0, 1, 2


class SimJob:
    """Mutable simulator state of one workload (one object per workload, not per event)."""

    __slots__ = (
        "alloc",
        "arrival",
        "failures",
        "finish",
        "first_start",
        "key",
        "last_update",
        "load",
        "lost_seconds",
        "lost_work",
        "migrations",
        "offered",
        "paused_until",
        "preemptions",
        "progress",
        "queued_seconds",
        "queued_since",
        "rate",
        "reshards",
        "restarts",
        "rollback_pending",
        "served",
        "slo_seconds",
        "spec",
        "started_before",
        "state",
        "stint_start",
        "svc_last",
        "version",
        "work",
        "workload",
    )

    def __init__(self, spec: SimWorkload) -> None:
        self.spec = spec
        self.key = spec.key
        self.workload: Workload = spec.workload
        self.work = spec.work
        self.arrival = spec.arrival_seconds
        self.state = PENDING
        self.alloc: Allocation | None = None
        self.rate = 0.0
        self.progress = 0.0
        self.last_update = self.arrival
        self.paused_until = self.arrival
        self.stint_start = self.arrival
        self.version = 0
        self.first_start: float | None = None
        self.finish: float | None = None
        self.queued_since = self.arrival
        self.queued_seconds = 0.0
        self.started_before = False
        self.preemptions = self.migrations = self.reshards = self.restarts = self.failures = 0
        self.lost_work = 0.0
        #: run time whose progress was lost to failures (work lost / rate at the time)
        self.lost_seconds = 0.0
        #: work an in-memory reshard kept after a failure but a requeue would still lose
        #: (the job restarts from its checkpoint when the policy releases it instead)
        self.rollback_pending = 0.0
        # inference accounting
        self.load = spec.load.at(self.arrival) if spec.load is not None else 0.0
        self.svc_last = self.arrival
        self.offered = self.served = self.slo_seconds = 0.0

    @property
    def is_service(self) -> bool:
        return self.work is None

    @property
    def replicas(self) -> int:
        return len(self.alloc.replicas) if self.alloc is not None else 0

    @property
    def accelerator_type(self) -> str | None:
        return self.alloc.replicas[0].accelerator_type if self.alloc is not None and self.alloc.replicas else None


class FailureHandler(Protocol):
    """What a node failure does to a workload with replicas on the failed node."""

    def on_replicas_lost(self, sim: Simulator, job: SimJob, lost: Sequence[int]) -> None: ...


class RestartOnFailure:
    """``restart`` mode: the whole job stops and is requeued, keeping progress up to its last checkpoint.

    Inference services keep serving on their surviving replicas while at least
    ``gang_min`` remain (the policy may grow them back); otherwise they are requeued.
    """

    def on_replicas_lost(self, sim: Simulator, job: SimJob, lost: Sequence[int]) -> None:
        assert job.alloc is not None
        if job.is_service and len(job.alloc.replicas) - len(lost) >= job.workload.gang_min:
            sim.drop_replicas(job, lost)
            return
        sim.stop_job(job, lose_since_checkpoint=True)


#: a run stops with an error past this many cycles at one simulated instant
MAX_CYCLES_PER_INSTANT = 1_000

#: failure modes by name (``failures.mode`` in a scenario); extensions register theirs here
FAILURE_MODES: dict[str, Callable[[], FailureHandler]] = {"restart": RestartOnFailure}


def register_failure_mode(name: str, factory: Callable[[], FailureHandler]) -> None:
    """Make ``failures.mode: <name>`` available to scenarios (e.g. ``elastic``)."""
    FAILURE_MODES[name] = factory


class Observer:
    """Base class for plug-ins that watch a run and add figures to its report."""

    def on_start(self, sim: Simulator) -> None:
        return None

    def on_cycle(self, sim: Simulator, result: CycleResult) -> None:
        return None

    def on_job_finished(self, sim: Simulator, job: SimJob) -> None:
        return None

    def report(self, sim: Simulator) -> Mapping[str, Any]:
        return {}


@dataclasses.dataclass(frozen=True, slots=True)
class FailureProcess:
    """Independent exponential failures per node: mean time between failures and to repair."""

    mtbf_seconds: float
    mttr_seconds: float
    #: only nodes whose name starts with one of these fail (empty = all)
    node_prefixes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs of one run. Everything that changes a result is here (plus the seed)."""

    seed: int = 0
    #: stop at this simulated time (None: when every training job has finished)
    horizon_seconds: float | None = None
    #: round length for round-based policies (None: the policy's ``round_seconds``, else none)
    round_seconds: float | None = None
    #: cycles triggered by events are aligned to this grid (0: at the event's instant)
    schedule_interval_seconds: float = 0.0
    #: at most this many pending workloads (oldest first) are shown to the policy
    max_pending: int = 1000
    #: periodic checkpoint interval of training jobs (progress lost on failure since then)
    checkpoint_interval_seconds: float = 1800.0
    #: pause after a migration when the plan gives no estimate (else the workload's restart cost)
    migration_cost_seconds: float | None = None
    time_budget_seconds: float = 1.0
    #: also run a cycle when nothing is pending (rebalancing policies need this)
    cycle_when_idle: bool = False
    #: before each cycle, state each running training job's time left at its current size in
    #: the workload attribute ``tessera.dev/remaining-seconds`` (what an operator user may set
    #: by hand; the elastic policy weighs growth against it).  Off by default: it touches
    #: every running job each cycle.
    expose_remaining_seconds: bool = False
    #: queues and their quotas (tessera.core.quota): the engine enforces them, reclaims
    #: lent quota, as in the operator (None: no queues)
    quotas: QuotaTree | None = None


class _SimSnapshot(ClusterSnapshot):
    """A snapshot built from the simulator's incrementally maintained free capacity.

    Same type and same content as ``ClusterSnapshot(nodes, allocations)`` (a unit test
    checks it), without replaying every allocation each cycle.
    """

    __slots__ = ()

    def __init__(  # the parent's constructor would recompute ``free`` from scratch
        self,
        nodes: Mapping[str, Node],
        allocations: Mapping[str, Allocation],
        free: Mapping[str, NodeFree],
        now_seconds: float,
        quotas: QuotaTree | None = None,
    ) -> None:
        self._nodes = nodes
        self._allocations = allocations
        self._free = free
        self.now_seconds = now_seconds
        self.quotas = quotas
        self._inputs = allocations
        self._on_node = None  # a snapshot built from this one counts every node (previous= needs it)


class Simulator:
    """One simulated run of one policy over a cluster and a workload trace."""

    def __init__(
        self,
        nodes: Iterable[Node],
        workloads: Sequence[SimWorkload],
        policy: Policy,
        config: SimConfig | None = None,
        *,
        node_events: Sequence[NodeEvent] = (),
        failure_process: FailureProcess | None = None,
        failure_handler: FailureHandler | None = None,
        observers: Sequence[Observer] = (),
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.policy = policy
        self.now_seconds = 0.0
        self.queue = ev.EventQueue()
        self.rng = random.Random(self.config.seed * 7919 + 17)  # failures and other model draws
        self.engine = Engine(
            policy,
            self,
            seed=self.config.seed,
            time_budget_seconds=self.config.time_budget_seconds,
            deterministic=True,
            metrics=self,
        )
        self._nodes: dict[str, Node] = {}
        for node in nodes:
            if node.name in self._nodes:
                raise ValueError(f"node {node.name} listed twice")
            self._nodes[node.name] = node
        self._nodes_view: Mapping[str, Node] = MappingProxyType(dict(self._nodes))
        self._nodes_dirty = False
        self.ledger = CapacityLedger.empty(self._nodes.values())
        self.ledger.nodes = self._nodes  # one live node map, updated on failures
        self._free_cache: dict[str, NodeFree] = {n: self.ledger.free(n) for n in self._nodes}
        self._dirty_free: set[str] = set()
        self._node_jobs: dict[str, dict[SimJob, None]] = {n: {} for n in self._nodes}
        self._allocs: dict[str, Allocation] = {}

        self._specs = sorted_by_arrival(workloads)
        keys = [s.key for s in self._specs]
        if len(set(keys)) != len(keys):
            raise ValueError("workload keys must be unique")
        self._cursor = 0
        self.jobs: dict[str, SimJob] = {}
        self.pending_jobs: dict[str, SimJob] = {}
        self.running: dict[str, SimJob] = {}
        self.finished: list[SimJob] = []
        self._training_left = sum(1 for s in self._specs if not s.is_service)

        self._node_events = sorted(node_events, key=lambda e: e.time_seconds)
        self.failure_process = failure_process
        self.failure_handler: FailureHandler = failure_handler or RestartOnFailure()
        self.observers = list(observers)
        self._progress = progress

        self._handlers: dict[int, Callable[[Any], None]] = {
            ev.COMPLETION: self._on_completion,
            ev.NODE_FAILURE: self._on_node_failure,
            ev.NODE_RECOVERY: self._on_node_recovery,
            ev.LOAD_CHANGE: self._on_load_change,
            ev.ARRIVAL: self._on_arrival,
            ev.ROUND: self._on_round,
            ev.SCHEDULE: self._on_schedule,
            ev.HORIZON: self._on_horizon,
        }
        self._cycle_at: float | None = None
        self._followup_at = -1.0
        #: cycles run at the current instant (a policy that stops and restarts the same
        #: work at one instant would otherwise keep the clock from ever moving on)
        self._instant = (-1.0, 0)
        #: when a cycle is due for a borrower's minimum runtime to have passed (reclaim)
        self._reclaim_wake = -1.0
        self._stopped = False
        round_seconds = self.config.round_seconds
        if round_seconds is None:
            round_seconds = float(getattr(policy, "round_seconds", 0.0) or 0.0)
        self.round_seconds = round_seconds

        # accounting: accelerator-milli busy and available per type, integrated over time
        self._acct_last = 0.0
        self._busy_milli: dict[str, int] = {}
        self._cap_milli: dict[str, int] = {}
        self.busy_milli_seconds: dict[str, float] = {}
        self.capacity_milli_seconds: dict[str, float] = {}
        for node in self._nodes.values():
            if node.accelerator_type:
                t = node.accelerator_type
                self._busy_milli.setdefault(t, 0)
                self.busy_milli_seconds.setdefault(t, 0.0)
                self.capacity_milli_seconds.setdefault(t, 0.0)
                self._cap_milli[t] = self._cap_milli.get(t, 0) + (
                    node.accelerator_count * MILLI_PER_DEVICE if node.usable else 0
                )
        self.decision_seconds: list[float] = []
        self.cycles = 0
        self.rejected_actions = 0
        self.policy_errors: list[str] = []
        self.preemptions = self.migrations = self.reshards = self.node_failures = 0
        self.end_seconds = 0.0
        self.wall_seconds = 0.0
        #: CPU time of the run (what the machine's other load does not inflate)
        self.cpu_seconds = 0.0

    # ----- ports --------------------------------------------------------------------
    def now(self) -> float:
        """Clock port: simulated seconds."""
        return self.now_seconds

    def snapshot(self) -> ClusterSnapshot:
        """ClusterSource port: the current cluster, built from incrementally kept state."""
        if self._nodes_dirty:
            self._nodes_view = MappingProxyType(dict(self._nodes))
            self._nodes_dirty = False
        if self._dirty_free:
            free = self.ledger.free
            for name in self._dirty_free:
                self._free_cache[name] = free(name)
            self._dirty_free.clear()
        return _SimSnapshot(
            self._nodes_view,
            MappingProxyType(dict(self._allocs)),
            MappingProxyType(dict(self._free_cache)),
            self.now_seconds,
            self.config.quotas,
        )

    def pending(self) -> Sequence[Workload]:
        """ClusterSource port: the oldest ``max_pending`` waiting workloads."""
        return [job.workload for job in islice(self.pending_jobs.values(), self.config.max_pending)]

    def apply(self, result: CycleResult) -> None:
        """Actuator port: carry out an accepted plan in the order the engine validated it."""
        plan = result.plan
        jobs = self.jobs
        for pre in plan.preemptions:
            job = jobs[pre.workload]
            if not pre.after_failure:  # a release after failure is counted as the failure
                self.preemptions += 1
                job.preemptions += 1
            elif job.rollback_pending > 0.0:
                # kept in memory for a reshard that did not happen: the requeued job
                # restarts from its checkpoint like any other
                self._roll_back(job, job.rollback_pending)
            self.stop_job(job, lose_since_checkpoint=False)
            if pre.restart_on is not None:  # decision state kept with the workload, as in status
                job.workload = dataclasses.replace(job.workload, restart_intent=pre.restart_on)
        for rs in plan.resizes:
            self._fold_service(jobs[rs.workload])  # the run changes shape
            if rs.remove:
                self._remove_replicas(jobs[rs.workload], rs.remove)
        for mig in plan.migrations:
            self._migrate(jobs[mig.workload], mig.replica, mig.to, mig.estimated_cost_seconds)
        for pl in plan.placements:
            self._start(jobs[pl.workload], pl.replicas)
        for rs in plan.resizes:
            job = jobs[rs.workload]
            if rs.add:
                self._add_replicas(job, rs.add)
            self.reshards += 1
            job.reshards += 1
            # the resize time is state the elastic policy's hysteresis reads back
            assert job.alloc is not None
            job.alloc = dataclasses.replace(job.alloc, resized_at_seconds=self.now_seconds)
            self._allocs[job.key] = job.alloc
            job.stint_start = self.now_seconds  # a new checkpoint period on the new shape
            job.rollback_pending = 0.0
            # a checkpoint reload (restart cost) or, for a job that reshards in memory
            # (tessera.dev/reshard-cost-seconds), only the reshard pause
            self._after_change(job, penalty=resize_cost_seconds(job.workload))

    def record_cycle(self, result: CycleResult) -> None:
        """MetricsSink port."""
        self.cycles += 1
        self.decision_seconds.append(result.decision_seconds)
        self.rejected_actions += len(result.rejected)
        if result.error and len(self.policy_errors) < 20:
            self.policy_errors.append(result.error)

    # ----- extension API ----------------------------------------------------------------
    def schedule(self, time_seconds: float, kind: int, payload: Any = None) -> None:
        """Queue an event (``time_seconds`` is absolute simulated time, not before now)."""
        self.queue.push(max(time_seconds, self.now_seconds), kind, payload)

    def on(self, kind: int, handler: Callable[[Any], None]) -> None:
        """Handle events of ``kind`` (replaces the built-in handler for a built-in kind)."""
        self._handlers[kind] = handler

    def request_cycle(self) -> None:
        """Ask for a scheduling cycle as soon as the scheduling grid allows."""
        if self._cycle_at is not None:
            return
        interval = self.config.schedule_interval_seconds
        t = self.now_seconds
        if interval > 0:
            t = math.ceil(t / interval) * interval
        self._cycle_at = t
        self.queue.push(t, ev.SCHEDULE)

    def node(self, name: str) -> Node:
        return self._nodes[name]

    def set_node_ready(self, name: str, ready: bool) -> None:
        node = self._nodes[name]
        if node.ready == ready:
            return
        self._account()
        if node.accelerator_type:
            delta = node.accelerator_count * MILLI_PER_DEVICE * (1 if ready else -1)
            if node.schedulable:
                self._cap_milli[node.accelerator_type] += delta
            # replicas still held on a down node (the ``none`` mode keeps them) are not busy
            # accelerator time: without this, utilization exceeds 1 while the node is down
            held = sum(
                job.workload.demand.accelerator_milli
                for job in self._node_jobs.get(name, {})
                if job.alloc is not None
                for rp in job.alloc.replicas
                if rp.node == name
            )
            self._busy_milli[node.accelerator_type] += held if ready else -held
        self._nodes[name] = dataclasses.replace(node, ready=ready)
        self._nodes_dirty = True

    def jobs_on(self, node: str) -> list[SimJob]:
        return list(self._node_jobs[node])

    def work_since_checkpoint(self, job: SimJob) -> float:
        """The progress ``job`` made since its last periodic checkpoint (what a reload loses)."""
        self._advance(job)
        if job.is_service:
            return 0.0
        effective_start = max(job.stint_start, job.paused_until)
        ran = max(0.0, self.now_seconds - effective_start)
        interval = self.config.checkpoint_interval_seconds
        lost_seconds = ran % interval if interval > 0 else ran
        return min(job.progress, job.rate * lost_seconds)

    def lose_since_checkpoint(self, job: SimJob) -> None:
        """A failure hit ``job``: roll its progress back to its last periodic checkpoint."""
        if job.is_service:
            self._advance(job)
            return
        self._roll_back(job, self.work_since_checkpoint(job))
        job.failures += 1

    def keep_in_memory(self, job: SimJob) -> None:
        """A failure hit ``job``, whose surviving replicas hold its whole state: nothing is rolled
        back now (the in-flight step is part of the reshard pause), but if the job is released
        instead of resharded, the requeue restarts it from its checkpoint (``rollback_pending``)."""
        if job.is_service:
            self._advance(job)
            return
        job.rollback_pending = max(job.rollback_pending, self.work_since_checkpoint(job))
        job.failures += 1

    def _roll_back(self, job: SimJob, lost_work: float) -> None:
        lost = min(job.progress, lost_work)
        job.progress -= lost
        job.lost_work += lost
        job.lost_seconds += lost / job.rate if job.rate > 0 else 0.0
        job.rollback_pending = 0.0

    def stall_job(self, job: SimJob) -> None:
        """Stop ``job`` making progress while it keeps its replicas (it lost one and waits).

        Synchronous training cannot step with a replica missing; the job resumes through a
        resize (elastic) or :meth:`resume_job` (when its nodes come back).
        """
        self._advance(job)
        job.rate = 0.0
        job.version += 1  # invalidates the pending completion
        job.stint_start = self.now_seconds  # it resumes from a checkpoint: a new checkpoint period

    def resume_job(self, job: SimJob, penalty_seconds: float) -> None:
        """Continue a stalled job on its current replicas after ``penalty_seconds``."""
        job.stint_start = self.now_seconds
        self._after_change(job, penalty=penalty_seconds)

    def stop_job(self, job: SimJob, *, lose_since_checkpoint: bool) -> None:
        """Stop a running job and requeue it (preemption or failure)."""
        self._fold_service(job)
        self._advance(job)
        if lose_since_checkpoint:
            self.lose_since_checkpoint(job)
        if job.is_service:
            self._svc_advance(job)
        self._release_all(job)
        job.rollback_pending = 0.0
        job.state = PENDING
        job.rate = 0.0
        job.version += 1
        job.started_before = True
        job.queued_since = self.now_seconds
        del self.running[job.key]
        self.pending_jobs[job.key] = job
        self.request_cycle()

    def drop_replicas(self, job: SimJob, replicas: Sequence[int]) -> None:
        """Remove replicas from a running job without stopping it (progress continues)."""
        self._fold_service(job)
        self._remove_replicas(job, replicas)
        self._after_change(job, penalty=0.0 if job.is_service else job.workload.restart_cost_seconds)
        self.request_cycle()

    def set_load(self, job: SimJob, requests_per_second: float) -> None:
        """Change an inference service's request rate (visible to policies as ``attributes['request_rate']``)."""
        self._svc_advance(job)
        job.load = requests_per_second
        attrs = dict(job.workload.attributes)
        attrs["request_rate"] = f"{requests_per_second:g}"
        job.workload = dataclasses.replace(job.workload, attributes=MappingProxyType(attrs))
        if job.alloc is not None:
            job.alloc = dataclasses.replace(job.alloc, workload=job.workload)
            self._allocs[job.key] = job.alloc

    # ----- run ----------------------------------------------------------------------------
    def run(self) -> Simulator:
        """Run to the end (all training done, or the horizon). Returns ``self``."""
        started = time.perf_counter()
        cpu_started = time.process_time()
        for obs in self.observers:
            obs.on_start(self)
        if self._specs:
            self.queue.push(self._specs[0].arrival_seconds, ev.ARRIVAL)
        for node_event in self._node_events:
            self.queue.push(
                node_event.time_seconds, ev.NODE_RECOVERY if node_event.up else ev.NODE_FAILURE, node_event.node
            )
        if self.failure_process is not None:
            fp = self.failure_process
            for name in self._nodes:
                if not fp.node_prefixes or name.startswith(fp.node_prefixes):
                    self.queue.push(self.rng.expovariate(1.0 / fp.mtbf_seconds), ev.NODE_FAILURE, ("process", name))
        if self.round_seconds > 0:
            self.queue.push(0.0, ev.ROUND)
        if self.config.horizon_seconds is not None:
            self.queue.push(self.config.horizon_seconds, ev.HORIZON)
        handlers = self._handlers
        queue = self.queue
        pop = queue.pop
        report_every = 4096
        while queue and not self._stopped:
            t, _, _, kind, payload = pop()
            self.now_seconds = t
            handlers[kind](payload)
            if self._progress is not None and queue.popped % report_every == 0:
                self._progress(len(self.finished), len(self._specs))
        self._finish()
        self.wall_seconds = time.perf_counter() - started
        self.cpu_seconds = time.process_time() - cpu_started
        if self._progress is not None:
            self._progress(len(self.finished), len(self._specs))
        return self

    # ----- event handlers --------------------------------------------------------------------
    def _on_arrival(self, _: Any) -> None:
        spec = self._specs[self._cursor]
        self._cursor += 1
        if self._cursor < len(self._specs):
            self.queue.push(self._specs[self._cursor].arrival_seconds, ev.ARRIVAL)
        job = SimJob(spec)
        self.jobs[job.key] = job
        self.pending_jobs[job.key] = job
        if spec.load is not None:
            if "request_rate" not in job.workload.attributes:
                self.set_load(job, job.load)
            for t, rate in zip(spec.load.times_seconds, spec.load.rates_per_second, strict=True):
                if t > self.now_seconds:
                    self.queue.push(t, ev.LOAD_CHANGE, (job.key, rate))
        self.request_cycle()

    def _on_completion(self, payload: tuple[SimJob, int]) -> None:
        job, version = payload
        if version != job.version or job.state != RUNNING:
            return
        self._advance(job)
        job.progress = job.work or 0.0
        self._release_all(job)
        job.state = DONE
        job.finish = self.now_seconds
        job.version += 1
        del self.running[job.key]
        self.finished.append(job)
        self._training_left -= 1
        for obs in self.observers:
            obs.on_job_finished(self, job)
        if self._training_left == 0 and self._cursor >= len(self._specs) and self.config.horizon_seconds is None:
            self._stopped = True
            return
        self.request_cycle()

    def _on_node_failure(self, payload: Any) -> None:
        from_process = isinstance(payload, tuple)
        name = payload[1] if from_process else payload
        node = self._nodes[name]
        if from_process and self.failure_process is not None and self._active():
            self.queue.push(
                self.now_seconds + self.rng.expovariate(1.0 / self.failure_process.mttr_seconds),
                ev.NODE_RECOVERY,
                ("process", name),
            )
        if not node.ready:
            return
        self.node_failures += 1
        self.set_node_ready(name, False)
        for job in list(self._node_jobs[name]):
            if job.state != RUNNING or job.alloc is None:
                continue
            lost = [rp.replica for rp in job.alloc.replicas if rp.node == name]
            if lost:
                self.failure_handler.on_replicas_lost(self, job, lost)
        self.request_cycle()

    def _on_node_recovery(self, payload: Any) -> None:
        from_process = isinstance(payload, tuple)
        name = payload[1] if from_process else payload
        if from_process and self.failure_process is not None and self._active():
            self.queue.push(
                self.now_seconds + self.rng.expovariate(1.0 / self.failure_process.mtbf_seconds),
                ev.NODE_FAILURE,
                ("process", name),
            )
        if self._nodes[name].ready:
            return
        self.set_node_ready(name, True)
        on_recovered = getattr(self.failure_handler, "on_node_recovered", None)
        if on_recovered is not None:  # optional hook (the ``none`` mode resumes stalled jobs)
            on_recovered(self, name)
        self.request_cycle()

    def _on_load_change(self, payload: tuple[str, float]) -> None:
        key, rate = payload
        job = self.jobs.get(key)
        if job is not None and job.state != DONE:
            self.set_load(job, rate)
            self.request_cycle()

    def _on_round(self, _: Any) -> None:
        if self.pending_jobs or self.running:
            self._cycle()
        if self._active():  # after the cycle: it may have started the only job
            self.queue.push(self.now_seconds + self.round_seconds, ev.ROUND)

    def _on_schedule(self, _: Any) -> None:
        self._cycle_at = None
        if self.pending_jobs or (self.config.cycle_when_idle and self.running):
            self._cycle()

    def _on_horizon(self, _: Any) -> None:
        self._stopped = True

    def _cycle(self) -> None:
        at, count = self._instant
        self._instant = (self.now_seconds, count + 1 if at == self.now_seconds else 1)
        if self._instant[1] > MAX_CYCLES_PER_INSTANT:
            raise RuntimeError(
                f"policy {getattr(self.engine.policy, 'name', '?')} ran {MAX_CYCLES_PER_INSTANT} cycles at "
                f"t={self.now_seconds:.0f} s without the clock moving on: its plans keep stopping and "
                "restarting work at one instant (a preemption or move cycle)")
        if self.config.expose_remaining_seconds:
            self._expose_remaining_seconds()
        result = self.engine.run_cycle(self, self)
        for obs in self.observers:
            obs.on_cycle(self, result)
        plan = result.plan
        self._wake_for_reclaim(result)
        # room freed by preemptions or shrinking is offered once more at the same instant
        if (
            (plan.preemptions or any(rs.remove for rs in plan.resizes))
            and self.pending_jobs
            and self._followup_at != self.now_seconds
        ):
            self._followup_at = self.now_seconds
            self.queue.push(self.now_seconds, ev.SCHEDULE)
            self._cycle_at = self.now_seconds

    def _wake_for_reclaim(self, result: CycleResult) -> None:
        """Work waits for quota while borrowers are inside their minimum runtime before
        reclaim: cycle again when the first of them is past it, as the operator's periodic
        loop would, instead of at the next arrival or completion."""
        if self.config.quotas is None or not any("quota" in why for why in result.waiting.values()):
            return
        until = self.engine.reclaim_min_runtime_seconds
        soon = min((t for a in self._allocs.values()
                    if (t := a.stable_since_seconds + until) > self.now_seconds), default=None)
        if soon is not None and math.isfinite(soon) and soon != self._reclaim_wake:
            self._reclaim_wake = soon
            self.queue.push(soon, ev.SCHEDULE)

    def _expose_remaining_seconds(self) -> None:
        """Write each running training job's remaining run time into its workload attributes.

        Remaining = work left / current rate (plus any restart pause still ahead), i.e. the
        time to finish at the current size.  A stalled job (rate 0) keeps its last value.
        """
        for job in self.running.values():
            if job.work is None or job.rate <= 0.0 or job.alloc is None:
                continue
            self._advance(job)
            pause = max(0.0, job.paused_until - self.now_seconds)
            remaining = pause + max(0.0, job.work - job.progress) / job.rate
            value = f"{remaining:.0f}"
            if job.workload.attributes.get(REMAINING_SECONDS_ATTRIBUTE) == value:
                continue
            attrs = dict(job.workload.attributes)
            attrs[REMAINING_SECONDS_ATTRIBUTE] = value
            job.workload = dataclasses.replace(job.workload, attributes=MappingProxyType(attrs))
            job.alloc = dataclasses.replace(job.alloc, workload=job.workload)
            self._allocs[job.key] = job.alloc

    def _active(self) -> bool:
        """Can anything still change? (keeps self-rescheduling processes from running forever)."""
        if self.config.horizon_seconds is not None:
            return self.now_seconds < self.config.horizon_seconds
        if self._cursor < len(self._specs) or any(not j.is_service for j in self.running.values()):
            return True
        return self._training_left > 0 and (
            bool(self.running) or any(not n.ready for n in self._nodes.values())
        )

    # ----- state changes ---------------------------------------------------------------------------
    def _account(self) -> None:
        dt = self.now_seconds - self._acct_last
        if dt > 0:
            busy, cap = self.busy_milli_seconds, self.capacity_milli_seconds
            for t, milli in self._busy_milli.items():
                busy[t] += milli * dt
            for t, milli in self._cap_milli.items():
                cap[t] += milli * dt
            self._acct_last = self.now_seconds

    def _advance(self, job: SimJob) -> None:
        start = job.last_update if job.last_update > job.paused_until else job.paused_until
        if self.now_seconds > start and job.rate > 0.0:
            job.progress += job.rate * (self.now_seconds - start)
        job.last_update = self.now_seconds

    def _svc_advance(self, job: SimJob) -> None:
        t0, t1 = job.svc_last, self.now_seconds
        if t1 <= t0:
            return
        load = job.load
        job.offered += load * (t1 - t0)
        if job.state == RUNNING:
            active = t1 - min(t1, max(t0, job.paused_until))
            job.served += min(load, job.rate) * active
            if job.rate >= load:
                job.slo_seconds += active
        elif load <= 0.0:
            job.slo_seconds += t1 - t0
        job.svc_last = t1

    def _take(self, job: SimJob, index: int, assignment: ReplicaAssignment) -> ReplicaPlacement:
        node = self._nodes[assignment.node]
        devices = self.ledger.take(assignment.node, job.workload.demand, assignment.devices)
        self._dirty_free.add(assignment.node)
        self._node_jobs[assignment.node][job] = None
        if node.accelerator_type and node.ready:
            self._busy_milli[node.accelerator_type] += job.workload.demand.accelerator_milli
        return ReplicaPlacement(index, assignment.node, node.accelerator_type, devices)

    def _give_back(self, job: SimJob, rp: ReplicaPlacement) -> None:
        self.ledger.give_back(rp.node, job.workload.demand, rp.devices)
        self._dirty_free.add(rp.node)
        if rp.accelerator_type and self._nodes[rp.node].ready:  # a down node's share left busy already
            self._busy_milli[rp.accelerator_type] -= job.workload.demand.accelerator_milli

    def _unindex(self, job: SimJob, alloc: Allocation) -> None:
        for node in {rp.node for rp in alloc.replicas}:
            self._node_jobs[node].pop(job, None)

    def _fold_service(self, job: SimJob) -> None:
        """Put the current run's attained service into the workload's tally (the run ends or
        changes shape now), as the operator does in status.attainedService."""
        alloc = job.alloc
        if alloc is None:
            return
        job.workload = folded(alloc, self.now_seconds)
        job.alloc = dataclasses.replace(alloc, workload=job.workload, service_since_seconds=self.now_seconds)
        self._allocs[job.key] = job.alloc

    def _release_all(self, job: SimJob) -> None:
        alloc = job.alloc
        if alloc is None:
            return
        self._account()
        for rp in alloc.replicas:
            self._give_back(job, rp)
        self._unindex(job, alloc)
        job.alloc = None
        del self._allocs[job.key]

    def _start(self, job: SimJob, replicas: Sequence[ReplicaAssignment]) -> None:
        self._account()
        placed = tuple(self._take(job, i, a) for i, a in enumerate(replicas))
        if job.workload.restart_intent is not None:  # carried out
            job.workload = dataclasses.replace(job.workload, restart_intent=None)
        job.alloc = Allocation(job.workload, placed, self.now_seconds)
        self._allocs[job.key] = job.alloc
        del self.pending_jobs[job.key]
        self.running[job.key] = job
        job.state = RUNNING
        job.queued_seconds += self.now_seconds - job.queued_since
        if job.first_start is None:
            job.first_start = self.now_seconds
        penalty = 0.0
        if job.started_before:
            job.restarts += 1
            penalty = job.workload.restart_cost_seconds
        if job.is_service:
            self._svc_advance(job)
        job.stint_start = self.now_seconds
        job.last_update = self.now_seconds
        job.paused_until = self.now_seconds + penalty
        self._set_rate(job)

    def _bring_up_to_date(self, job: SimJob) -> Allocation:
        """Account a running job's progress (and service load) up to now before its replicas change."""
        alloc = job.alloc
        assert alloc is not None
        self._advance(job)
        if job.is_service:
            self._svc_advance(job)
        self._account()
        return alloc

    def _remove_replicas(self, job: SimJob, remove: Sequence[int]) -> None:
        alloc = self._bring_up_to_date(job)
        gone = set(remove)
        kept = []
        for rp in alloc.replicas:
            if rp.replica in gone:
                self._give_back(job, rp)
            else:
                kept.append(rp)
        self._unindex(job, alloc)
        job.alloc = dataclasses.replace(alloc, workload=job.workload, replicas=tuple(kept))
        for rp in kept:
            self._node_jobs[rp.node][job] = None
        self._allocs[job.key] = job.alloc

    def _add_replicas(self, job: SimJob, add: Sequence[ReplicaAssignment]) -> None:
        alloc = self._bring_up_to_date(job)
        next_index = max((rp.replica for rp in alloc.replicas), default=-1) + 1
        added = tuple(self._take(job, next_index + i, a) for i, a in enumerate(add))
        job.alloc = dataclasses.replace(alloc, workload=job.workload, replicas=alloc.replicas + added)
        self._allocs[job.key] = job.alloc

    def _migrate(self, job: SimJob, replica: int, to: ReplicaAssignment, estimate_seconds: float) -> None:
        alloc = self._bring_up_to_date(job)
        old = next(rp for rp in alloc.replicas if rp.replica == replica)
        new = self._take(job, replica, to)  # make before break
        self._give_back(job, old)
        self._unindex(job, alloc)
        # a migration keeps the run's start, last resize and service mark
        job.alloc = dataclasses.replace(
            alloc, workload=job.workload, replicas=tuple(new if rp.replica == replica else rp for rp in alloc.replicas))
        for rp in job.alloc.replicas:
            self._node_jobs[rp.node][job] = None
        self._allocs[job.key] = job.alloc
        self.migrations += 1
        job.migrations += 1
        penalty = estimate_seconds or (
            self.config.migration_cost_seconds
            if self.config.migration_cost_seconds is not None
            else job.workload.restart_cost_seconds
        )
        if job.is_service:
            # make-before-break: the old replica serves until the new one is warm
            self._set_rate(job)
        else:
            self._after_change(job, penalty=penalty)

    def _after_change(self, job: SimJob, penalty: float) -> None:
        """A running job changed shape: pause for ``penalty`` and continue at the new rate."""
        self._advance(job)
        if job.is_service:
            self._svc_advance(job)
        job.paused_until = max(job.paused_until, self.now_seconds + penalty)
        self._set_rate(job)

    def _set_rate(self, job: SimJob) -> None:
        alloc = job.alloc
        assert alloc is not None
        n = len(alloc.replicas)
        types = {rp.accelerator_type for rp in alloc.replicas}
        model = job.spec.model
        # synchronous data-parallel replicas go at the pace of the slowest type
        job.rate = min((model.rate(t, n) for t in types), default=0.0) if n else 0.0
        job.version += 1
        if job.work is not None and job.rate > 0.0:
            start = job.paused_until if job.paused_until > self.now_seconds else self.now_seconds
            finish = start + max(0.0, job.work - job.progress) / job.rate
            self.queue.push(finish, ev.COMPLETION, (job, job.version))

    def _finish(self) -> None:
        if self.config.horizon_seconds is not None and self._stopped:
            self.now_seconds = self.config.horizon_seconds
        self.end_seconds = self.now_seconds
        self._account()
        for job in self.jobs.values():
            if job.state == RUNNING:
                self._advance(job)
            if job.is_service and job.state != DONE:
                self._svc_advance(job)
