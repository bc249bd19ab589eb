"""Node failure processes for the simulator: seeded MTBF/MTTR and availability series.

Everything here is pure and deterministic for a given seed: a failure process is turned
into a sorted list of :class:`NodeTransition` (a node goes down or comes back at a time)
before the run starts, so the same scenario gives the same failures under every mode
(``elastic``, ``restart``, ``none``) and the comparison between modes is paired.

Two sources:

* :func:`mtbf_mttr_transitions`: per node, alternating exponential up-times (mean MTBF) and
  down-times (mean MTTR); node classes may have their own MTBF/MTTR
  (:class:`FailureClass`, matched by name prefix).  Each node draws from its own
  generator seeded by ``(seed, node name)``, so adding a node does not reshuffle the
  failures of the others.
* :func:`availability_transitions`: a series of *how many* nodes are available over time
  (for instance derived from the Philly node sequence in the Helios artifact, see
  :mod:`tessera.sim.loaders.helios`) mapped onto concrete nodes: when the count drops,
  seeded-random up nodes go down; when it rises, the nodes down longest come back first.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import replace as _replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tessera.core import WorkloadKind
from tessera.core.elastic import DP_STATE_ATTRIBUTE, RESHARD_COST_ATTRIBUTE, in_memory_reshard_seconds
from tessera.policies.elastic import ElasticSettings, ElasticWrapper
from tessera.policy import Policy
from tessera.sim.simulator import Observer, RestartOnFailure, register_failure_mode

if TYPE_CHECKING:
    from tessera.sim.models import SimWorkload
    from tessera.sim.simulator import SimJob, Simulator


@dataclass(frozen=True, slots=True, order=True)
class NodeTransition:
    """Node ``node`` goes down (``up=False``) or comes back (``up=True``) at ``time_seconds``.

    Same fields as the simulator's scripted ``NodeEvent``, so converting is one call per event.
    """

    time_seconds: float
    node: str
    up: bool


@dataclass(frozen=True, slots=True)
class FailureClass:
    """MTBF/MTTR of the nodes whose name starts with ``node_prefix`` ("" = every node)."""

    mtbf_seconds: float
    mttr_seconds: float
    node_prefix: str = ""

    def __post_init__(self) -> None:
        if self.mtbf_seconds <= 0 or self.mttr_seconds <= 0:
            raise ValueError("MTBF and MTTR must be positive")


def _class_for(node: str, classes: Sequence[FailureClass]) -> FailureClass | None:
    """The most specific (longest prefix) class matching ``node``."""
    matching = [c for c in classes if node.startswith(c.node_prefix)]
    return max(matching, key=lambda c: len(c.node_prefix)) if matching else None


def mtbf_mttr_transitions(
    nodes: Iterable[str],
    classes: Sequence[FailureClass],
    horizon_seconds: float,
    seed: int,
    start_seconds: float = 0.0,
) -> list[NodeTransition]:
    """Independent exponential failure/repair cycles per node up to ``horizon_seconds``.

    Nodes matching no class never fail.  A repair that would end after the horizon is
    still emitted (the node comes back after the run), so every failure has its recovery.
    """
    out: list[NodeTransition] = []
    for node in sorted(set(nodes)):
        failure_class = _class_for(node, classes)
        if failure_class is None:
            continue
        rng = random.Random(f"tessera-failures:{seed}:{node}")
        t = start_seconds
        while True:
            t += rng.expovariate(1.0 / failure_class.mtbf_seconds)
            if t >= horizon_seconds:
                break
            out.append(NodeTransition(t, node, False))
            t += rng.expovariate(1.0 / failure_class.mttr_seconds)
            out.append(NodeTransition(t, node, True))
    out.sort()
    return out


def availability_transitions(
    series: Sequence[tuple[float, int]],
    nodes: Sequence[str],
    seed: int,
) -> list[NodeTransition]:
    """Map an available-node-count series onto ``nodes``.

    ``series`` is ``(time_seconds, available)`` in time order; ``available`` is clipped to
    ``[0, len(nodes)]``.  All nodes start up; the first point may already take some down.
    Which node fails is a seeded draw among the up nodes; recoveries are first-down,
    first-up, so a short dip brings back the very nodes that left.
    """
    rng = random.Random(f"tessera-availability:{seed}")
    up = list(nodes)
    down: list[str] = []  # in the order they went down
    out: list[NodeTransition] = []
    last_time = float("-inf")
    for time_seconds, available in series:
        if time_seconds < last_time:
            raise ValueError("availability series must be in time order")
        last_time = time_seconds
        target = max(0, min(len(nodes), int(available)))
        while len(up) > target:
            node = up.pop(rng.randrange(len(up)))
            down.append(node)
            out.append(NodeTransition(time_seconds, node, False))
        while len(up) < target:
            node = down.pop(0)
            up.append(node)
            out.append(NodeTransition(time_seconds, node, True))
    return out


def downtime_fraction(transitions: Sequence[NodeTransition], nodes: Sequence[str], horizon_seconds: float) -> float:
    """Share of node-seconds in ``[0, horizon)`` that nodes were down (a scenario summary)."""
    if not nodes or horizon_seconds <= 0:
        return 0.0
    down_since: dict[str, float] = {}
    total = 0.0
    for tr in sorted(transitions):
        t = min(tr.time_seconds, horizon_seconds)
        if not tr.up and tr.node not in down_since:
            down_since[tr.node] = t
        elif tr.up and tr.node in down_since:
            total += t - down_since.pop(tr.node)
    total += sum(horizon_seconds - t for t in down_since.values())
    return total / (len(nodes) * horizon_seconds)


# ----- failure modes: what a lost replica does to a training job ------------------------------


#: how an elastic job recovers its state on a reshard (``failures.elastic.rollback``)
ROLLBACK_CHECKPOINT, ROLLBACK_IN_MEMORY = "checkpoint", "in_memory"


class ElasticOnFailure:
    """``elastic`` mode: the job stalls and the policy reshards it at the next cycle.

    What the failure costs depends on where the job's state survives:

    * through its checkpoint (default): progress rolls back to the last periodic checkpoint,
      and the resize pauses it for its restart cost (reload, rebuild the groups);
    * in memory (the workload carries ``tessera.dev/reshard-cost-seconds``, set by
      :func:`workloads_for_mode` under ``failures.elastic.rollback: in_memory``): every
      surviving data-parallel replica holds the whole model and optimizer state, so
      nothing is rolled back and the resize pauses it for the reshard pause only.  If the
      policy releases the job instead (fewer than ``min`` survive), the requeue restarts it
      from its checkpoint after all (:meth:`Simulator.keep_in_memory`).

    The policy run in this mode is wrapped in :class:`~tessera.policies.elastic.ElasticWrapper`
    (see :func:`policy_for_mode`), which at the next cycle shrinks the job onto its
    survivors (plus replacements) or releases it when fewer than ``min_replicas`` survive,
    and later grows it back.  Inference services behave as in ``restart``.
    """

    def on_replicas_lost(self, sim: Simulator, job: SimJob, lost: Sequence[int]) -> None:
        if job.is_service:
            RestartOnFailure().on_replicas_lost(sim, job, lost)
            return
        if in_memory_reshard_seconds(job.workload) is not None:
            sim.keep_in_memory(job)
        else:
            sim.lose_since_checkpoint(job)
        sim.stall_job(job)
        sim.request_cycle()


class StallUntilRecovered:
    """``none`` mode: no failure handling.  The job keeps its replicas, makes no progress while
    any of its nodes is down, and resumes from its checkpoint (after the restart cost) once
    all of them are back."""

    def __init__(self) -> None:
        self._stalled: dict[str, SimJob] = {}

    def on_replicas_lost(self, sim: Simulator, job: SimJob, lost: Sequence[int]) -> None:
        if job.is_service:
            RestartOnFailure().on_replicas_lost(sim, job, lost)
            return
        if job.key not in self._stalled:
            sim.lose_since_checkpoint(job)
            sim.stall_job(job)
            self._stalled[job.key] = job

    def on_node_recovered(self, sim: Simulator, node: str) -> None:
        for key, job in list(self._stalled.items()):
            if job.alloc is None:
                del self._stalled[key]
                continue
            if all(sim.node(rp.node).ready for rp in job.alloc.replicas):
                del self._stalled[key]
                sim.resume_job(job, job.workload.restart_cost_seconds)


#: failure modes compared by ``tessera sim run`` / ``bench/bench_elastic.py``
FAILURE_MODE_NAMES = ("elastic", "restart", "none")
register_failure_mode("elastic", ElasticOnFailure)
register_failure_mode("none", StallUntilRecovered)


def policy_for_mode(mode: str, policy: Policy, settings: ElasticSettings | None = None) -> Policy:
    """The policy a mode runs: ``elastic`` wraps it so it reshards; the others run it as is."""
    if mode == "elastic" and not isinstance(policy, ElasticWrapper):
        return ElasticWrapper(policy, settings)
    return policy


def workloads_for_mode(
    mode: str,
    workloads: Sequence[SimWorkload],
    *,
    rigid_baselines: bool,
    reshard_pause_seconds: float | None = None,
) -> list[SimWorkload]:
    """The workloads a mode runs.

    With ``rigid_baselines``, ``restart`` and ``none`` run training jobs as fixed-size gangs
    (min = max replicas): that is how a job without elastic support runs, killed and
    restarted at its configured size.  Without it they keep the elastic range (a restart
    may come back smaller, but nothing grows it again).

    ``reshard_pause_seconds`` (not None: ``failures.elastic.rollback: in_memory``) marks the
    ``elastic`` mode's training jobs as resharding in memory with that pause
    (``tessera.dev/reshard-cost-seconds``), except those whose data-parallel replicas shard
    the state (``tessera.dev/dp-state: sharded``), which keep the checkpoint reload.
    Restart and none always reload the checkpoint: a killed job has no survivors to copy from.
    """
    out = []
    for spec in workloads:
        w = spec.workload
        if w.kind is WorkloadKind.TRAINING:
            if rigid_baselines and mode in ("restart", "none") and w.min_replicas != w.max_replicas:
                w = _replace(w, min_replicas=w.max_replicas, desired_replicas=None)
            if (
                mode == "elastic"
                and reshard_pause_seconds is not None
                and w.attributes.get(DP_STATE_ATTRIBUTE, "replicated") != "sharded"
            ):
                attributes = {**w.attributes, RESHARD_COST_ATTRIBUTE: f"{reshard_pause_seconds:g}"}
                w = _replace(w, attributes=MappingProxyType(attributes))
            if w is not spec.workload:
                spec = _replace(spec, workload=w)
        out.append(spec)
    return out


class GoodputObserver(Observer):
    """Adds ``goodput`` figures to a run's record.

    Goodput is useful accelerator-hours: for each training job, the share of its work that
    was done and kept (rolled-back work excluded) times the accelerator-hours the whole job
    needs at its requested size on its fastest allowed type.  Lost work is reported the
    same way.  A job is credited for the work done, not for the accelerators it held, so
    stalls, restart pauses and requeue waits all count against it.
    """

    def report(self, sim: Simulator) -> dict[str, Any]:
        useful = lost = 0.0
        for job in sim.jobs.values():
            if job.is_service or not job.work:
                continue
            seconds_per_work = _accelerator_seconds_per_work(job)
            useful += job.progress * seconds_per_work
            lost += job.lost_work * seconds_per_work
        capacity = sum(sim.capacity_milli_seconds.values()) / 1000.0
        return {
            "goodput": useful / 3600.0,
            "goodput_fraction": useful / capacity if capacity > 0 else 0.0,
            "lost_work_accelerator_hours": lost / 3600.0,
            "job_failures": sum(j.failures for j in sim.jobs.values()),
        }


def _accelerator_seconds_per_work(job: SimJob) -> float:
    workload = job.workload
    replicas = workload.max_replicas
    types = [o.accelerator_type for o in workload.options] or list(job.spec.model.per_replica) or [""]
    rate = max(job.spec.model.rate(t, replicas) for t in types)
    if rate <= 0:
        return 0.0
    accelerators = replicas * max(1, workload.demand.accelerators)
    return accelerators / rate
