"""Deadline-aware queue orderings: EDD and MDD baselines.

Both order the queue, then place each workload in that order with the type-aware best fit of
:mod:`tessera.policies.gang` (a workload that does not fit is skipped, later ones may still
start). Priority always comes first: deadlines order workloads of equal priority.

The remaining run time of a workload, needed by MDD, comes from ``ctx.params["work_seconds"]``
(workload key -> seconds, e.g. the simulator's performance model), else from the workload's
``estimated_seconds`` attribute, else one hour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from tessera.core import ClusterSnapshot, Placement, Plan, Workload, explain_unfit
from tessera.policies.gang import place_gang
from tessera.policy import Decision, PolicyContext

DEFAULT_WORK_SECONDS = 3_600.0
_NO_DEADLINE = float("inf")


def estimated_work_seconds(workload: Workload, ctx: PolicyContext) -> float:
    """Remaining run time of ``workload`` as the caller knows it (see the module docstring)."""
    work = ctx.params.get("work_seconds")
    if isinstance(work, dict) and workload.key in work:
        return float(work[workload.key])
    try:
        return float(workload.attributes.get("estimated_seconds", DEFAULT_WORK_SECONDS))
    except ValueError:
        return DEFAULT_WORK_SECONDS


def _deadline(w: Workload) -> float:
    return w.deadline_seconds if w.deadline_seconds is not None else _NO_DEADLINE


def edd_key(w: Workload, ctx: PolicyContext) -> tuple[float, ...]:
    """Earliest due date first; workloads without a deadline after all that have one."""
    return (-w.priority, _deadline(w), w.submitted_at_seconds)


def mdd_key(w: Workload, ctx: PolicyContext) -> tuple[float, ...]:
    """Modified due date (Baker & Bertrand 1982): max(deadline, now + remaining work), smallest first.

    Jobs that can still finish on time are ordered by deadline; those that cannot, by when they
    would finish (shortest first), which lowers total tardiness compared with EDD.
    """
    finish = ctx.now_seconds + estimated_work_seconds(w, ctx)
    due = _deadline(w)
    return (-w.priority, max(due, finish) if due != _NO_DEADLINE else _NO_DEADLINE, finish, w.submitted_at_seconds)


def _place_in_order(snapshot: ClusterSnapshot, ordered: Sequence[Workload], label: str) -> Plan:
    ledger = snapshot.ledger()
    placements: list[Placement] = []
    unplaced: dict[str, str] = {}
    for workload in ordered:
        assignments = place_gang(ledger, workload)
        if assignments is None:
            unplaced[workload.key] = explain_unfit(ledger, workload)
        else:
            placements.append(Placement(workload.key, assignments, reason=label))
    return Plan(placements=tuple(placements), unplaced=unplaced)


SortKey = Callable[[Workload, PolicyContext], tuple[float, ...]]


class _DeadlineOrdering:
    label: ClassVar[str]

    def sort_key(self, workload: Workload, ctx: PolicyContext) -> tuple[float, ...]:
        raise NotImplementedError

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        ordered = sorted(pending, key=lambda w: (*self.sort_key(w, ctx), w.key))
        return _place_in_order(snapshot, ordered, self.label)


class EarliestDueDate(_DeadlineOrdering):
    """EDD: earliest deadline first (priority first), best-fit placement; a deadline baseline."""

    name: ClassVar[str] = "edd"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.ORDERING, Decision.PLACEMENT})
    label: ClassVar[str] = "earliest due date"

    def sort_key(self, workload: Workload, ctx: PolicyContext) -> tuple[float, ...]:
        return edd_key(workload, ctx)


class ModifiedDueDate(_DeadlineOrdering):
    """MDD: smallest max(deadline, now + remaining work) first, best-fit placement; a deadline baseline."""

    name: ClassVar[str] = "mdd"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.ORDERING, Decision.PLACEMENT})
    label: ClassVar[str] = "modified due date"

    def sort_key(self, workload: Workload, ctx: PolicyContext) -> tuple[float, ...]:
        return mdd_key(workload, ctx)
