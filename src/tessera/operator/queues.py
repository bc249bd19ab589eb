"""Queues in the operator: the Queue objects as a quota tree, each workload's queue, and
what each queue uses, borrows and holds waiting (its status and metrics).

Enforcement is not here: the tree goes into the cycle's snapshot and the engine checks
every plan against it (tessera.core.admission), whatever the policy.  This module only
reads and reports:

* :func:`queue_tree`: the Queue objects (cluster-scoped) as a
  :class:`~tessera.core.quota.QuotaTree`; an object the models refuse is left out and
  reported on its own status.  No Queue objects: no tree, nothing is limited by quota.
* :func:`resolve_queue`: ``spec.queueName``; else the first leaf queue (by name) whose
  ``namespaceSelector`` matches the workload's namespace labels; else the operator's
  default queue (``--default-queue``) when it exists; else none.
* :class:`QueueReporter`: after each cycle, per queue and accelerator type the use (its
  own and its descendants'), what it borrows and its quota; pending and admitted counts;
  a ``Valid`` condition saying why a queue admits nothing.  Written only when it changed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tessera.api.queue import Queue, queue_core
from tessera.core import ClusterSnapshot, Workload
from tessera.core.admission import fair_share, normalised_use, quota_usage
from tessera.core.quota import MILLI, QuotaTree
from tessera.core.reclaim import reclaiming_queue
from tessera.operator.kube import KubeError, now_rfc3339

log = logging.getLogger("tessera.operator.queues")

#: the default of ``--default-queue``: workloads without spec.queueName go there when it exists
DEFAULT_QUEUE = "default"


@dataclass
class Queues:
    """The Queue objects of one cycle."""

    tree: QuotaTree | None
    #: name -> the raw object (for status writes)
    raw: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    #: name -> the parsed model
    models: dict[str, Queue] = field(default_factory=dict)
    #: name -> why the object itself is refused (the models' validation)
    invalid: dict[str, str] = field(default_factory=dict)

    def needs_namespace_labels(self) -> bool:
        return any(m.spec.namespaceSelector for m in self.models.values())


def queue_tree(objects: Iterable[Mapping[str, Any]]) -> Queues:
    """Parse the listed Queue objects (see the module docstring)."""
    raw: dict[str, Mapping[str, Any]] = {}
    models: dict[str, Queue] = {}
    invalid: dict[str, str] = {}
    for obj in objects:
        name = str((obj.get("metadata") or {}).get("name", ""))
        raw[name] = obj
        try:
            models[name] = Queue.model_validate(obj)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            invalid[name] = f"invalid Queue ({where}): {first.get('msg')}"
    if not raw:
        return Queues(None)
    tree = QuotaTree(queue_core(m) for m in models.values())
    return Queues(tree, raw, models, invalid)


def resolve_queue(workload: Workload, namespace: str, queues: Queues,
                  namespace_labels: Mapping[str, Mapping[str, str]], default_queue: str) -> str:
    """The queue ``workload`` is admitted through (see the module docstring)."""
    if workload.queue or queues.tree is None:
        return workload.queue
    labels = namespace_labels.get(namespace) or {}
    for name in sorted(queues.models):
        selector = queues.models[name].spec.namespaceSelector
        if selector and queues.tree.is_leaf(name) and all(labels.get(k) == v for k, v in selector.items()):
            return name
    if default_queue and (default_queue in queues.models or default_queue in queues.invalid):
        return default_queue
    return ""


class QueueReporter:
    """Writes each queue's status and sets the queue gauges after a cycle."""

    def __init__(self, kube: Any, metrics: Any) -> None:
        self.kube = kube
        self.metrics = metrics
        self._reported: set[str] = set()

    def report(self, queues: Queues, snapshot: ClusterSnapshot, pending: Iterable[Workload],
               waiting: Mapping[str, str]) -> None:
        tree = queues.tree
        names = set(queues.raw)
        if tree is None:
            self._forget(names)
            return
        usage = quota_usage(snapshot)
        use = normalised_use(snapshot)
        admitted: Counter[str] = Counter(a.workload.queue for a in snapshot.allocations.values() if a.workload.queue)
        waiting_by_queue: Counter[str] = Counter(w.queue for w in pending if w.queue and w.key in waiting)
        types = sorted({t for q in tree.queues.values() for t in q.quotas}
                       | {t for (_q, t), milli in usage.items() if milli})
        for name in sorted(names):
            status: dict[str, Any] = {"observedGeneration": int((queues.raw[name].get("metadata") or {})
                                                                  .get("generation", 0) or 0)}
            problem = queues.invalid.get(name) or tree.problems.get(name, "")
            rows = []
            if not problem:
                for t in types:
                    used, quota = tree.used(usage, name, t), tree.quota(name, t)
                    if used or quota:
                        rows.append({"acceleratorType": t, "used": round(used / MILLI, 3),
                                     "borrowed": round(tree.borrowed(usage, name, t) / MILLI, 3),
                                     "nominal": quota // MILLI})
            status["usage"] = rows
            status["pending"] = self._subtree_count(tree, name, waiting_by_queue)
            status["admitted"] = self._subtree_count(tree, name, admitted)
            status["fairShare"] = 0.0 if problem else round(fair_share(tree, use, name), 3)
            status["conditions"] = self._conditions(queues.raw[name], problem)
            self._write(name, queues.raw[name], status)
            self.metrics.record_queue(name, rows, status["pending"], status["admitted"])
        self._forget(names)

    @staticmethod
    def _subtree_count(tree: QuotaTree, name: str, counts: Mapping[str, int]) -> int:
        return counts.get(name, 0) + sum(QueueReporter._subtree_count(tree, c, counts)
                                         for c in tree.children.get(name, ()))

    @staticmethod
    def _conditions(raw: Mapping[str, Any], problem: str) -> list[dict[str, Any]]:
        previous = {c.get("type"): c for c in ((raw.get("status") or {}).get("conditions") or [])}
        state = "False" if problem else "True"
        reason = "Invalid" if problem else "Valid"
        message = problem or "the queue admits workloads within its quota"
        old = previous.get("Valid") or {}
        since = old.get("lastTransitionTime") if old.get("status") == state else None
        return [{"type": "Valid", "status": state, "reason": reason, "message": message,
                 "lastTransitionTime": since or now_rfc3339()}]

    def _write(self, name: str, raw: Mapping[str, Any], status: dict[str, Any]) -> None:
        current = raw.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return
        try:
            self.kube.patch_queue_status(name, status)
        except KubeError as err:
            log.warning("queue %s: could not write its status: %s", name, err)

    def _forget(self, names: set[str]) -> None:
        for gone in self._reported - names:
            self.metrics.forget_queue(gone)
        self._reported = set(names)


def count_reclaim(metrics: Any, reason: str) -> None:
    """A preemption or shrink the operator carried out: counted for the reclaiming queue
    when it was a reclaim (tessera.core.reclaim)."""
    queue = reclaiming_queue(reason)
    if queue:
        metrics.queue_reclaims.labels(queue=queue).inc()


def count_admission(metrics: Any, workload: Workload | None, now_seconds: float) -> None:
    """A queued workload was placed: how long it waited since it was submitted."""
    if workload is not None and workload.queue:
        metrics.queue_admission_wait.labels(queue=workload.queue).observe(
            max(0.0, now_seconds - workload.submitted_at_seconds))
