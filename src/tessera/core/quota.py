"""Quotas per accelerator type in a tree of queues: what each queue may use, and may borrow.

Pure (stdlib only).  A :class:`Queue` has, per accelerator type, a ``nominal`` quota and
optional ``borrowing_limit`` / ``lending_limit`` (in accelerators); queues form a tree
through ``parent`` and only leaves hold workloads.  The rules, per type, with ``u(N)`` the
accelerators in use under node ``N``:

* ``quota(N)``      = nominal(N) + the sum of quota(C) over its children C;
* ``lend(N)``       = lending_limit(N) when set (capped at quota(N)), else quota(N): how
  much of N's quota the rest of the tree may use while N does not;
* ``guaranteed(N)`` = quota(N) - lend(N): what N never lends;
* a node may use at most quota(N) + borrowing_limit(N) (no limit when unset);
* under a parent P the children's use beyond what each is guaranteed comes out of P's
  shared pool, nominal(P) + the sum of lend(C), plus what P itself borrows from its own
  parent, max(0, u(P) - quota(P)):  sum over C of max(0, u(C) - guaranteed(C)) <= that;
* a root queue never borrows: u(root) <= quota(root).

So a queue always gets its guaranteed part, may use idle quota of its siblings up to
their lending limits, and two trees never share anything.  A type that no queue of a tree
names has quota 0 there: its workloads cannot use it.  Workloads whose queue is not in
the tree (``""``: no queue) are not limited (a cluster without queues works as before).

Usage is counted in milli-accelerators (a shared replica counts its fraction); quotas are
given in whole accelerators.  A quota in normalized units ("<type>-equivalent", see
:func:`equivalent`) is one more key with the same rules.  :meth:`QuotaTree.why_not` answers whether one more
reservation fits; :class:`QuotaUsage` is the mutable tally a plan validation keeps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MILLI = 1000
_NO_QUOTAS: Mapping[str, TypeQuota] = MappingProxyType({})

#: a quota in normalized units is kept under the key "<reference type>-equivalent" (e.g.
#: "H100-equivalent") beside the accelerator types, with the same rules: a replica on a type
#: counts its accelerators x its workload's throughput there over its throughput on the
#: reference type (tessera.core.admission)
EQUIVALENT = "-equivalent"


def equivalent(reference: str) -> str:
    """The quota key of ``reference``-equivalents."""
    return f"{reference}{EQUIVALENT}"


def reference_of(key: str) -> str | None:
    """The reference type of an equivalents key (None for an accelerator type)."""
    return key[: -len(EQUIVALENT)] if key.endswith(EQUIVALENT) else None


@dataclass(frozen=True, slots=True)
class TypeQuota:
    """A queue's quota for one accelerator type, in accelerators."""

    nominal: int = 0
    #: at most this many beyond the quota may be borrowed (None: no limit)
    borrowing_limit: int | None = None
    #: at most this much of the quota may be lent to others (None: all of it)
    lending_limit: int | None = None

    def __post_init__(self) -> None:
        if self.nominal < 0 or (self.borrowing_limit or 0) < 0 or (self.lending_limit or 0) < 0:
            raise ValueError("quotas and limits are never negative")


@dataclass(frozen=True, slots=True)
class Queue:
    """One node of the queue tree; ``quotas`` maps an accelerator type to its quota."""

    name: str
    parent: str = ""
    quotas: Mapping[str, TypeQuota] = field(default_factory=lambda: _NO_QUOTAS)
    #: fair-share weight among siblings
    weight: float = 1.0
    #: whom its workloads may preempt to get back quota other queues of the tree borrow:
    #: "Never", "LowerPriority" or "Any" (tessera.core.reclaim)
    reclaim_within_tree: str = "Any"
    #: whom its workloads may preempt within the queue: "Never" or "LowerPriority"
    within_queue: str = "LowerPriority"

    def may_preempt(self, within: bool, mine: int, theirs: int) -> bool:
        """Whether a workload of this queue at priority ``mine`` may preempt one at
        ``theirs``, of this queue (``within``) or of another queue that borrows."""
        rule = self.within_queue if within else self.reclaim_within_tree
        return rule == "Any" or (rule == "LowerPriority" and theirs < mine)


class QuotaUsage:
    """Milli-accelerators in use per (queue, type): the leaves' own use; inner nodes sum."""

    __slots__ = ("_used",)

    def __init__(self, used: Mapping[tuple[str, str], int] | None = None) -> None:
        self._used: defaultdict[tuple[str, str], int] = defaultdict(int, used or {})

    def add(self, queue: str, accelerator_type: str, milli: int) -> None:
        self._used[(queue, accelerator_type)] += milli

    def of(self, queue: str, accelerator_type: str) -> int:
        return self._used.get((queue, accelerator_type), 0)

    def copy(self) -> QuotaUsage:
        return QuotaUsage(dict(self._used))

    def items(self) -> Iterable[tuple[tuple[str, str], int]]:
        return self._used.items()


class QuotaTree:
    """The queues, checked into a forest; queues in a parent cycle or under a missing parent
    are left out and named in :attr:`problems` (their workloads are then not admitted)."""

    def __init__(self, queues: Iterable[Queue]) -> None:
        by_name: dict[str, Queue] = {}
        problems: dict[str, str] = {}
        for q in queues:
            if q.name in by_name:
                problems[q.name] = f"queue {q.name} is defined twice"
            by_name[q.name] = q
        for name, q in by_name.items():
            seen = [name]
            parent = q.parent
            while parent and name not in problems:
                if parent not in by_name:
                    problems[name] = f"parent queue {parent} does not exist" if parent == q.parent else (
                        f"an ancestor's parent queue {parent} does not exist")
                elif parent in seen:
                    problems[name] = "its parents form a cycle: " + " -> ".join([*seen, parent])
                else:
                    seen.append(parent)
                    parent = by_name[parent].parent
        self.queues: Mapping[str, Queue] = MappingProxyType({n: q for n, q in by_name.items() if n not in problems})
        self.problems: Mapping[str, str] = MappingProxyType(problems)
        children: dict[str, list[str]] = defaultdict(list)
        for name, q in self.queues.items():
            children[q.parent].append(name)
        self.children: Mapping[str, tuple[str, ...]] = MappingProxyType(
            {k: tuple(sorted(v)) for k, v in children.items()})
        types = {t for q in self.queues.values() for t in q.quotas}
        #: reference types of the normalized quotas some queue of the forest sets
        self.references: tuple[str, ...] = tuple(sorted(r for t in types if (r := reference_of(t))))
        #: the accelerator types some queue has a quota of (without the equivalents)
        self.accelerator_types: tuple[str, ...] = tuple(sorted(t for t in types if reference_of(t) is None))
        self._quota: dict[tuple[str, str], int] = {}
        for t in types:
            for root in self.children.get("", ()):
                self._sum_quota(root, t)

    def _sum_quota(self, name: str, t: str) -> int:
        own = self.queues[name].quotas.get(t, TypeQuota()).nominal * MILLI
        total = own + sum(self._sum_quota(c, t) for c in self.children.get(name, ()))
        self._quota[(name, t)] = total
        return total

    # --- the numbers of the rules (milli) -------------------------------------------------

    def root(self, name: str) -> str:
        """The root of the tree ``name`` is in (queues of different roots share nothing)."""
        while self.queues[name].parent:
            name = self.queues[name].parent
        return name

    def is_leaf(self, name: str) -> bool:
        return name in self.queues and not self.children.get(name)

    def quota(self, name: str, t: str) -> int:
        return self._quota.get((name, t), 0)

    def lend(self, name: str, t: str) -> int:
        limit = self.queues[name].quotas.get(t, TypeQuota()).lending_limit
        total = self.quota(name, t)
        return total if limit is None else min(total, limit * MILLI)

    def guaranteed(self, name: str, t: str) -> int:
        return self.quota(name, t) - self.lend(name, t)

    def borrowing_cap(self, name: str, t: str) -> int | None:
        """The most ``name`` may use (None: no own limit; the pool still bounds it)."""
        limit = self.queues[name].quotas.get(t, TypeQuota()).borrowing_limit
        if not self.queues[name].parent:
            return self.quota(name, t)  # a root never borrows
        return None if limit is None else self.quota(name, t) + limit * MILLI

    def used(self, usage: QuotaUsage, name: str, t: str) -> int:
        """Use under ``name`` (its own and its descendants')."""
        return usage.of(name, t) + sum(self.used(usage, c, t) for c in self.children.get(name, ()))

    def borrowed(self, usage: QuotaUsage, name: str, t: str) -> int:
        return max(0, self.used(usage, name, t) - self.quota(name, t))

    def why_not(self, usage: QuotaUsage, queue: str, t: str, milli: int) -> str:
        """Why ``milli`` more of type ``t`` in leaf ``queue`` breaks a rule ("" when it fits).

        Only the nodes on the queue's path change, so only their rules are checked; a
        rule already broken before (a quota lowered under running work) refuses any more.
        """
        if queue not in self.queues or milli <= 0:
            return ""
        trial = usage.copy()
        trial.add(queue, t, milli)
        node = queue
        while node:
            q = self.queues[node]
            used = self.used(trial, node, t)
            cap = self.borrowing_cap(node, t)
            if cap is not None and used > cap:
                what = "its quota" if not q.parent else "its quota plus its borrowing limit"
                return (f"queue {node}: {t} in use would be {_acc(used)}, over {what} ({_acc(cap)}; "
                        f"nominal {_acc(self.quota(node, t))})")
            parent = q.parent
            if parent:
                # what the parent borrows itself (a root never does: rule 1 there)
                borrows = self.borrowed(trial, parent, t) if self.queues[parent].parent else 0
                pool = (self.queues[parent].quotas.get(t, TypeQuota()).nominal * MILLI
                        + sum(self.lend(c, t) for c in self.children[parent]) + borrows)
                beyond = sum(max(0, self.used(trial, c, t) - self.guaranteed(c, t)) for c in self.children[parent])
                if beyond > pool:
                    return (f"queue {node}: no {t} quota left to borrow under {parent} (its queues would use "
                            f"{_acc(beyond)} beyond what each is guaranteed; {_acc(pool)} can be shared)")
            node = parent
        return ""


def _acc(milli: int) -> str:
    return f"{milli // MILLI}" if milli % MILLI == 0 else f"{milli / MILLI:.2f}"
