"""Reclaim: a queue waiting for its own quota gets it back from the queues that borrow it.

Pure (stdlib only); the engine runs it after the policy, for every policy
(tessera.engine.Engine).  A pending workload ``W`` of leaf queue ``Q`` **reclaims** on an
accelerator type ``t`` it accepts when its smallest gang fits in ``Q``'s own quota of
``t`` (``used(Q, t) + need <= quota(Q, t)``) but the quota rules refuse it, because other
queues of the tree borrow what ``Q`` lends.  Then:

* **Reservation.** Every pending workload whose smallest gang fits in what is left of its
  queue's own quota holds that room (:func:`reservations`): it counts as used by ``Q`` for
  everyone else's placements, so no other queue borrows it while ``W`` waits, whatever the
  policy proposes (a queue lends only what its own waiting work does not need).  ``W``'s
  own placement is checked without it.
* **Victims** (:func:`reclaim_actions`): workloads of queues of the same tree that use
  more than their quota of ``t`` (they borrow), preemptible, running for at least
  ``min_runtime_seconds``, fewest lost work first: lowest priority, then the smallest
  restart cost, then the most recently (re)started (the least progress since it last
  started).  An elastic job above its minimum is **shrunk** (a Resize removing just enough
  replicas on ``t``) before any job is stopped; a job is preempted whole otherwise.
  Victims are taken until the rules admit ``W``'s gang on ``t``; if they cannot, nothing
  is touched for ``W``.

**No preemption cycles.** A victim's queue borrows (uses more than its quota) before the
reclaim; the reclaimer asks only for room inside its own quota, so once placed it does not
borrow and can never be a victim of the queue it reclaimed from for that room; and a
queue below its quota is never a victim.  Each reclaim therefore moves quota from a queue
above its quota to one below it, and strictly lowers the total borrowed in the tree: it
cannot go round in circles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

from tessera.core.admission import Reservation, gang_problem, quota_usage
from tessera.core.model import (
    Allocation,
    Workload,
)
from tessera.core.plan import Preemption, Resize
from tessera.core.quota import QuotaTree, QuotaUsage
from tessera.core.snapshot import ClusterSnapshot

#: the reason a reclaim's preemptions and resizes carry (prefix; the queue and workload follow)
RECLAIM = "reclaim"


def reclaiming_queue(reason: str) -> str:
    """The queue a reclaim action's reason names ("" for any other reason)."""
    prefix = f"{RECLAIM}: queue "
    return reason[len(prefix):].split(" ", 1)[0] if reason.startswith(prefix) else ""


def _types(snapshot: ClusterSnapshot, workload: Workload) -> list[str]:
    present = snapshot.accelerator_types()
    allowed = {o.accelerator_type for o in workload.options} or set(present)
    return sorted(t for t in allowed if t in present)


def reservations(snapshot: ClusterSnapshot, pending: Sequence[Workload]) -> list[Reservation]:
    """The room each pending workload holds in its queue's own quota (see the module
    docstring), highest priority and oldest first; one type per workload (the first, by
    name, where its gang fits in what is left of its queue's quota)."""
    tree = snapshot.quotas
    if tree is None:
        return []
    usage = quota_usage(snapshot)
    out: list[Reservation] = []
    for w in sorted(pending, key=lambda w: (-w.priority, w.submitted_at_seconds, w.key)):
        if not tree.is_leaf(w.queue) or not w.demand.accelerator_milli:
            continue
        need = max(1, w.gang_min) * w.demand.accelerator_milli
        for t in _types(snapshot, w):
            if tree.used(usage, w.queue, t) + need > tree.quota(w.queue, t):
                continue  # beyond its own quota: it would borrow, which waits
            out.append(Reservation(w.key, w.queue, t, need))
            usage.add(w.queue, t, need)  # the next reclaimer counts this one's room as taken
            break
    return out


def reclaim_actions(snapshot: ClusterSnapshot, pending: Mapping[str, Workload], held: Sequence[Reservation],
                    min_runtime_seconds: float, busy: Iterable[str] = ()) -> list[Preemption | Resize]:
    """Shrinks and preemptions that give each reservation's queue its room back.

    ``busy``: workloads a plan already acts on (never chosen).  The actions of each
    reservation are all or nothing; a later reservation sees the earlier ones' effect.
    """
    tree = snapshot.quotas
    if tree is None or not held:
        return []
    usage = quota_usage(snapshot)
    taken = set(busy)
    actions: list[Preemption | Resize] = []
    for r in held:
        w = pending.get(r.workload)
        if w is None or not w.preempts:
            usage.add(r.queue, r.accelerator_type, r.milli)  # it still holds its room while it waits
            continue  # gone, or it never preempts
        trial = usage.copy()
        chosen: list[Preemption | Resize] = []
        fits = partial(_fits, snapshot, trial, w, r.accelerator_type)

        rules = tree.queues[r.queue]
        for victim in _victims(snapshot, tree, trial, r, min_runtime_seconds, taken):
            if not rules.may_preempt(False, w.priority, victim.workload.priority):
                continue  # spec.preemption.reclaimWithinTree: Never, or only lower priority
            if fits():
                break
            if tree.borrowed(trial, victim.workload.queue, r.accelerator_type) <= 0:
                continue  # its queue no longer borrows: what it runs is within its quota
            chosen.append(_give_back(tree, trial, victim, r, w, fits))
        if chosen and fits():
            actions.extend(chosen)
            taken.update(a.workload for a in chosen)
            usage = trial
        usage.add(r.queue, r.accelerator_type, r.milli)  # its room, for the reclaimers after it
    return actions


def _fits(snapshot: ClusterSnapshot, usage: QuotaUsage, w: Workload, accelerator_type: str) -> bool:
    return not gang_problem(snapshot, usage, w, accelerator_type, max(1, w.gang_min))


def _victims(snapshot: ClusterSnapshot, tree: QuotaTree, usage: QuotaUsage, r: Reservation,
             min_runtime_seconds: float, taken: set[str]) -> list[Allocation]:
    root = tree.root(r.queue)
    now = snapshot.now_seconds
    out = []
    for a in snapshot.allocations.values():
        q = a.workload.queue
        if a.key in taken or q == r.queue or q not in tree.queues or tree.root(q) != root:
            continue
        if not a.workload.preemptible or now - a.stable_since_seconds < min_runtime_seconds:
            continue
        on_type = [rp for rp in a.replicas if rp.accelerator_type == r.accelerator_type]
        if on_type and tree.borrowed(usage, q, r.accelerator_type) > 0:
            out.append(a)
    # fewest lost work first; elastic jobs that can shrink before anything is stopped
    return sorted(out, key=lambda a: (len(a.replicas) <= a.workload.gang_min, a.workload.priority,
                                      a.workload.restart_cost_seconds, -a.stable_since_seconds, a.key))


def _give_back(tree: QuotaTree, usage: QuotaUsage, victim: Allocation, r: Reservation, w: Workload,
               fits: Callable[[], bool]) -> Preemption | Resize:
    """One victim's action, applied to ``usage``: an elastic job above its minimum loses
    replicas on the type one at a time (highest index first) until the reclaimer fits, it
    is at its minimum, or its queue no longer borrows; any other victim is preempted whole."""
    per_replica = victim.workload.demand.accelerator_milli
    spare = len(victim.replicas) - victim.workload.gang_min
    on_type = sorted((rp for rp in victim.replicas if rp.accelerator_type == r.accelerator_type),
                     key=lambda rp: -rp.replica)
    why = f"{RECLAIM}: queue {r.queue} takes back its {r.accelerator_type} quota for {w.key}"
    if spare > 0 and on_type:
        removed: list[int] = []
        for rp in on_type[:spare]:
            if removed and tree.borrowed(usage, victim.workload.queue, r.accelerator_type) <= 0:
                break
            removed.append(rp.replica)
            usage.add(victim.workload.queue, r.accelerator_type, -per_replica)
            if fits():
                break
        return Resize(victim.key, remove=tuple(removed), reason=why)
    for rp in victim.replicas:
        if rp.accelerator_type:
            usage.add(victim.workload.queue, rp.accelerator_type, -per_replica)
    return Preemption(victim.key, why, beneficiary=w.key)
