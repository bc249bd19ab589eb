"""Queues inside the placement model: quota rows and a fair-share term in the same solve.

:class:`QuotaTerms` adds to a :class:`~tessera.solver.placement.PlacementModel`, for
the queues of ``snapshot.quotas`` (tessera.core.quota, whose rules this restates as
linear constraints on the model's ``units`` variables, per accelerator type ``t``, with
``U(N)`` = what runs under queue ``N`` plus what the model starts there):

* every non-root queue ``N`` with a borrowing limit, and every root: ``U(N) <= cap(N)``;
* under every parent ``P``: ``sum over children C of max(0, U(C) - guaranteed(C)) <=
  nominal(P) + sum lend(C) + max(0, U(P) - quota(P))`` (the last term only below a root);
* a rule the running work already breaks (a quota lowered under it) takes nothing more
  under that queue, as :meth:`QuotaTree.why_not` refuses it;
* a normalized quota ("<type>-equivalent") has the same rows, each unit counted by its
  workload's speed on the pool's type over its speed on the reference type.

So the model never proposes a set of placements the engine's quota check would cut:
two gangs that each fit a queue's quota alone but not together are decided between in
the solve (Kueue#4329's lesson, on placements rather than sums).

The fair-share term (Gavel's heterogeneity-aware max-min, OSDI'20, for one decision) is
``fair_share x z`` with ``z`` at most every queue's normalised share, in thousandths, over
the queues with a gang in the model: a queue's share is its accelerators in use weighted
by each workload's speed there relative to its fastest allowed type (an hour of K80 is
worth 0.15 of a V100-hour to a ResNet, 1 to a job as fast on both), divided by its
weight x its quota (all types).  Raising the worst-off queue's share is worth as much as
``fair_share`` per thousandth.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from ortools.sat.python import cp_model

from tessera.core import ClusterSnapshot, Workload
from tessera.core.admission import equivalent_milli, give, normalised_use, quota_usage, relative_speed
from tessera.core.quota import MILLI, QuotaTree, QuotaUsage, TypeQuota, equivalent
from tessera.solver.instance import PlacementInstance
from tessera.solver.limits import upper_bound

#: the model's variables a quota row is written over: (coefficient, units variable)
_Terms = list[tuple[int, cp_model.IntVar]]
#: one variable's use: (workload, accelerator type, milli per unit of the variable, variable)
Entry = tuple[Workload, str | None, int, cp_model.IntVar]


@dataclass(frozen=True, slots=True)
class QueueState:
    """What the model needs of the queues: the tree, what runs, its normalised value."""

    tree: QuotaTree
    usage: QuotaUsage
    #: leaf queue -> accelerators in use x relative speed, in milli
    value: Mapping[str, int]

    @classmethod
    def of(cls, snapshot: ClusterSnapshot, exclude: Collection[str] = ()) -> QueueState | None:
        """The snapshot's queues (None without queues); ``exclude``: running workloads the
        model re-decides (their use is the model's, not a given)."""
        tree = snapshot.quotas
        if tree is None:
            return None
        usage = quota_usage(snapshot)
        for key in exclude:
            allocation = snapshot.allocations.get(key)
            if allocation is not None:
                give(snapshot, usage, allocation.workload, [rp.node for rp in allocation.replicas])
        return cls(tree, usage, normalised_use(snapshot, exclude))


class QuotaTerms:
    """The quota rows and the fair-share term of one placement model (module docstring)."""

    def __init__(self, state: QueueState, fair_share: int) -> None:
        self.state = state
        self.fair_share = fair_share
        #: how many quota rows were added, and how many forced additions to zero
        self.rows = 0
        self.closed = 0

    def add(self, model: cp_model.CpModel, instance: PlacementInstance,
            units: Mapping[tuple[int, int], cp_model.IntVar], objective: list[tuple[int, cp_model.IntVar]]) -> None:
        """The rows and term over the placement model's ``units[g, p]``."""
        pool_type = {p.index: p.accelerator_type for p in instance.pools}
        self.add_entries(model, [(instance.gangs[g].workload, pool_type[p], instance.gangs[g].unit_demand_milli, var)
                                 for (g, p), var in units.items()], objective)

    def add_entries(self, model: cp_model.CpModel, entries: Iterable[Entry],
                    objective: list[tuple[int, cp_model.IntVar]]) -> None:
        """The rows and term over any model's variables: each entry is (workload, accelerator
        type, milli-accelerators per unit of the variable, variable)."""
        tree = self.state.tree
        added: dict[tuple[str, str], _Terms] = defaultdict(list)  # (leaf, type) -> milli terms
        valued: dict[str, _Terms] = defaultdict(list)  # leaf -> normalised milli terms
        for w, t, milli, var in entries:
            if not t or w.queue not in tree.queues or not milli:
                continue
            added[(w.queue, t)].append((milli, var))
            valued[w.queue].append((round(milli * relative_speed(w, t)), var))
            for reference in tree.references:  # normalized quotas: what a unit counts as there
                added[(w.queue, equivalent(reference))].append((equivalent_milli(w, t, milli, reference), var))
        types = sorted({t for _, t in added})
        for t in types:
            under = self._under(added, t)
            for name in tree.queues:
                if under.get(name):
                    self._cap_row(model, name, t, under[name])
            for parent, children in tree.children.items():
                if parent and any(under.get(c) for c in children):
                    self._pool_row(model, parent, children, t, under)
        if self.fair_share > 0 and valued:
            self._fair_share(model, valued, objective)

    def _under(self, added: Mapping[tuple[str, str], _Terms], t: str) -> dict[str, _Terms]:
        """Queue -> the model's additions of type ``t`` under it (its own and its descendants')."""
        tree = self.state.tree
        out: dict[str, _Terms] = defaultdict(list)
        for (leaf, tt), terms in added.items():
            if tt != t:
                continue
            node = leaf
            while node:
                out[node].extend(terms)
                node = tree.queues[node].parent
        return out

    def _cap_row(self, model: cp_model.CpModel, name: str, t: str, terms: _Terms) -> None:
        tree = self.state.tree
        cap = tree.borrowing_cap(name, t)
        if cap is None:
            return
        room = cap - tree.used(self.state.usage, name, t)
        self._at_most(model, terms, room)

    def _at_most(self, model: cp_model.CpModel, terms: _Terms, room: int) -> None:
        self.rows += 1
        if room <= 0:
            self.closed += 1
        model.add(cp_model.LinearExpr.weighted_sum([v for _, v in terms], [c for c, _ in terms]) <= max(0, room))

    def _pool_row(self, model: cp_model.CpModel, parent: str, children: tuple[str, ...], t: str,
                  under: Mapping[str, _Terms]) -> None:
        tree, usage = self.state.tree, self.state.usage
        pool = (tree.queues[parent].quotas.get(t, TypeQuota()).nominal * MILLI
                + sum(tree.lend(c, t) for c in children))
        beyond: list[cp_model.LinearExprT] = []
        constant = before = 0
        for c in children:
            over = tree.used(usage, c, t) - tree.guaranteed(c, t)
            before += max(0, over)
            terms = under.get(c)
            if not terms:
                constant += max(0, over)
                continue
            top = max(0, over) + sum(coef * upper_bound(v) for coef, v in terms)
            var = model.new_int_var(0, top, f"beyond[{c},{t}]")
            model.add(var >= over + cp_model.LinearExpr.weighted_sum([v for _, v in terms], [k for k, _ in terms]))
            beyond.append(var)
        all_terms = [term for c in children for term in under.get(c, [])]
        borrows_now = tree.borrowed(usage, parent, t) if tree.queues[parent].parent else 0
        if before > pool + borrows_now:
            self._at_most(model, all_terms, 0)  # broken already: nothing more under it
            return
        self.rows += 1
        if not tree.queues[parent].parent:
            model.add(sum(beyond) + constant <= pool)
            return
        # below a root the parent may itself borrow: max(0, U(P) - quota(P)) more room
        excess = tree.used(usage, parent, t) - tree.quota(parent, t)
        top = max(0, excess) + sum(coef * upper_bound(v) for coef, v in all_terms)
        level = model.new_int_var(min(0, excess), max(0, top), f"excess[{parent},{t}]")
        model.add(level == excess + cp_model.LinearExpr.weighted_sum([v for _, v in all_terms], [k for k, _ in all_terms]))
        borrows = model.new_int_var(0, max(0, top), f"borrows[{parent},{t}]")
        model.add_max_equality(borrows, [level, 0])
        model.add(sum(beyond) + constant <= pool + borrows)

    def _fair_share(self, model: cp_model.CpModel, valued: Mapping[str, _Terms],
                    objective: list[tuple[int, cp_model.IntVar]]) -> None:
        tree = self.state.tree
        rows = []
        for queue, terms in valued.items():
            quota = sum(tree.quota(queue, t) for t in tree.accelerator_types)
            if quota <= 0:
                continue  # no quota of its own: no share to be fair about
            rows.append((queue, terms, max(1, round(100 * tree.queues[queue].weight)) * quota))
        if not rows:
            return
        # z in thousandths of a share: z x weight x quota <= 1000 x value (weight in hundredths)
        top = max(100 * 1000 * (self.state.value.get(q, 0) + sum(c * upper_bound(v) for c, v in terms)) // d
                  for q, terms, d in rows)
        z = model.new_int_var(0, top, "fair_share")
        for queue, terms, denominator in rows:
            value = cp_model.LinearExpr.weighted_sum([v for _, v in terms], [c for c, _ in terms])
            model.add(z * denominator <= 100 * 1000 * (self.state.value.get(queue, 0) + value))
        objective.append((self.fair_share, z))
