"""Tenants in the simulator: the operator's queues and quota rules on simulated runs.

A scenario's ``queues:`` become the same :class:`~tessera.core.quota.QuotaTree` the
operator builds from Queue objects; it goes into every snapshot (``SimConfig.quotas``), so
the engine enforces quotas, holds and reclaims lent quota exactly as in the operator,
whatever the policy.  ``workload.training.tenants`` maps a trace's tenant column (Philly's
``cluster``: the virtual cluster) to queues.

:class:`QueueObserver` samples each queue after every cycle and reports, time-weighted:

* ``jain_index``: Jain's fairness index over the queues with demand (running or pending
  work) of each queue's use divided by its weight x quota (accelerators, all types), the
  weighted normalized share; 1 is perfectly even;
* ``below_nominal_pending_seconds_max``: the longest stretch any queue spent below its
  quota while a pending job of its own fitted in the rest of its quota of one type the job
  accepts (what reclaim and holding room are for; 0 is the ideal);
* per queue: mean use, mean share, time with pending work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tessera.core.admission import quota_usage
from tessera.core.quota import MILLI, Queue, QuotaTree, TypeQuota
from tessera.engine import CycleResult
from tessera.sim.models import SimWorkload
from tessera.sim.simulator import Observer, Simulator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TypeQuotaSpec(_Strict):
    nominal: int = Field(ge=0)
    borrowing_limit: int | None = Field(default=None, ge=0)
    lending_limit: int | None = Field(default=None, ge=0)


class QueueSpec(_Strict):
    """One queue of a scenario, as a Queue object would say it (docs/queues.md)."""

    name: str
    parent: str = ""
    #: accelerator type -> nominal accelerators, or the full quota; a key "<type>-equivalent"
    #: is a quota in normalized units (docs/queues.md)
    quotas: dict[str, int | TypeQuotaSpec] = {}
    weight: float = Field(default=1.0, gt=0)


class TenantsSpec(_Strict):
    """Which queue each trace job goes to, by the trace's tenant column."""

    #: tenant (e.g. Philly's virtual cluster id) -> queue
    map: dict[str, str] = {}
    #: queue of jobs whose tenant is not in ``map`` ("" = no queue: not limited)
    default: str = ""


def quota_tree(specs: Sequence[QueueSpec]) -> QuotaTree | None:
    """The scenario's queues as the operator's quota tree (None without queues)."""
    if not specs:
        return None
    queues = []
    for q in specs:
        quotas = {t: TypeQuota(v) if isinstance(v, int) else
                  TypeQuota(v.nominal, borrowing_limit=v.borrowing_limit, lending_limit=v.lending_limit)
                  for t, v in q.quotas.items()}
        queues.append(Queue(q.name, q.parent, quotas, q.weight))
    tree = QuotaTree(queues)
    if tree.problems:
        raise ValueError("queues: " + "; ".join(f"{k}: {v}" for k, v in sorted(tree.problems.items())))
    return tree


def assign(workloads: Sequence[SimWorkload], tenants: Sequence[str], spec: TenantsSpec) -> list[SimWorkload]:
    """Each workload with its tenant's queue (``tenants``: one per workload)."""
    return [replace(w, workload=replace(w.workload, queue=spec.map.get(t, spec.default)))
            for w, t in zip(workloads, tenants, strict=True)]


class QueueObserver(Observer):
    """Per-queue figures of a run (see the module docstring)."""

    def __init__(self, tree: QuotaTree) -> None:
        self.tree = tree
        self.leaves = sorted(n for n in tree.queues if tree.is_leaf(n))
        self.types = list(tree.accelerator_types)  # not the normalized quotas
        self._last = 0.0
        self._jain_time = 0.0
        self._jain_sum = 0.0
        self._use_sum = dict.fromkeys(self.leaves, 0.0)
        self._pending_time = dict.fromkeys(self.leaves, 0.0)
        self._below_since: dict[str, float | None] = dict.fromkeys(self.leaves)
        self._below_max = dict.fromkeys(self.leaves, 0.0)
        self._state: tuple[dict[str, float], dict[str, bool], set[str]] | None = None
        #: (time, queue -> accelerators in use), at most one sample per ``sample_seconds``
        self.series: list[tuple[float, dict[str, float]]] = []
        self.sample_seconds = 3600.0

    def _quota(self, name: str) -> float:
        return sum(self.tree.quota(name, t) for t in self.types) / MILLI

    def on_cycle(self, sim: Simulator, result: CycleResult) -> None:
        now = sim.now_seconds
        self._integrate(now)
        after = sim.snapshot()  # what runs once the cycle's plan is carried out
        usage = quota_usage(after)
        used = {q: sum(self.tree.used(usage, q, t) for t in self.types) / MILLI for q in self.leaves}
        pending: dict[str, bool] = dict.fromkeys(self.leaves, False)
        fits: set[str] = set()
        present = after.accelerator_types()
        for job in sim.pending_jobs.values():
            w = job.workload
            if w.queue not in pending or w.key not in result.waiting:
                continue  # no queue, or placed by this very cycle
            pending[w.queue] = True
            # its smallest gang fits in what is left of its queue's own quota of one type it accepts
            need = max(1, w.gang_min) * w.demand.accelerator_milli
            allowed = {o.accelerator_type for o in w.options} or present
            if any(self.tree.used(usage, w.queue, t) + need <= self.tree.quota(w.queue, t) for t in allowed):
                fits.add(w.queue)
        self._state = (used, pending, fits)
        for q in self.leaves:
            below = q in fits and used[q] < self._quota(q)
            since = self._below_since[q]
            if below and since is None:
                self._below_since[q] = now
            elif not below and since is not None:
                self._below_max[q] = max(self._below_max[q], now - since)
                self._below_since[q] = None

    def _integrate(self, now: float) -> None:
        span = now - self._last
        self._last = now
        if self._state is None or span <= 0:
            return
        used, pending, _fits = self._state
        shares = [used[q] / (self.tree.queues[q].weight * max(self._quota(q), 1e-9))
                  for q in self.leaves if pending[q] or used[q] > 0]
        if shares and sum(s * s for s in shares) > 0:
            self._jain_sum += span * (sum(shares) ** 2 / (len(shares) * sum(s * s for s in shares)))
            self._jain_time += span
        for q in self.leaves:
            self._use_sum[q] += span * used[q]
            if pending[q]:
                self._pending_time[q] += span
        if not self.series or now - self.series[-1][0] >= self.sample_seconds:
            self.series.append((now, {q: used[q] for q in self.leaves}))

    def report(self, sim: Simulator) -> Mapping[str, Any]:
        now = sim.now_seconds
        self._integrate(now)
        for q, since in self._below_since.items():
            if since is not None:
                self._below_max[q] = max(self._below_max[q], now - since)
        total = max(now, 1e-9)
        return {
            "round_seconds": sim.config.round_seconds,
            "jain_index": round(self._jain_sum / self._jain_time, 4) if self._jain_time else None,
            "below_nominal_pending_seconds_max": round(max(self._below_max.values(), default=0.0), 1),
            "queues": {q: {"quota": self._quota(q), "mean_used": round(self._use_sum[q] / total, 2),
                           "pending_hours": round(self._pending_time[q] / 3600, 2),
                           "below_nominal_pending_seconds_max": round(self._below_max[q], 1)}
                       for q in self.leaves},
        }
