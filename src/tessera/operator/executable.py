"""What of a validated plan the operator carries out now, and why the rest waits.

The operator binds only into room that is free *now* and evicts only when the eviction
alone makes room for its beneficiary (docs/operator.md, "Preemption protocol").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tessera.core import Placement, Plan, Preemption, Workload, validate_plan
from tessera.core.reclaim import RECLAIM
from tessera.engine import CycleResult
from tessera.operator.state import SCALE_UP_SUFFIX, ClusterState


@dataclass(frozen=True)
class Executable:
    """What the operator carries out of one decision, and why the rest waits."""

    #: placements that fit in room that is free now
    placements: tuple[Placement, ...]
    #: evictions to carry out this cycle (their beneficiaries are placed in a later cycle)
    preemptions: tuple[Preemption, ...] = ()
    #: pending key -> why it waits although the plan placed it
    waiting: dict[str, str] = field(default_factory=dict)


def executable_placements(
    result: CycleResult, pending: Sequence[Workload], *, leaving_pods: int = 0, evict: bool = True
) -> Executable:
    """Split a validated plan into what this operator does now and what waits.

    Placements are bound only into room that is free *now*: a placement that fits only
    because the same plan evicts, resizes or moves running work waits, since the victims'
    pods still hold their nodes until they are gone.  Preemptions are carried out when
    they are enough to make room for their beneficiary (resizes and migrations are not
    carried out yet, so a beneficiary that also needs those keeps waiting and nothing is
    evicted for it); the beneficiary is placed by a later cycle once the snapshot shows
    the victims' pods gone.  Preemptions without a beneficiary (a gang stopped to move to
    a faster type, a release after a failure) are carried out as they are.  While
    ``leaving_pods`` of earlier evictions or repairs are still going, no new eviction
    starts: their room does not look free yet, so the policy would evict more work for
    the same beneficiary.  ``evict=False`` (scale-up decisions) never evicts.
    """
    plan = result.plan
    if not (plan.preemptions or plan.resizes or plan.migrations):
        return Executable(plan.placements)
    alone = validate_plan(result.snapshot, pending, Plan(placements=plan.placements))
    fit_now = {p.workload for p in alone.accepted.placements}
    with_evictions = validate_plan(result.snapshot, pending,
                                   Plan(placements=plan.placements, preemptions=plan.preemptions))
    freed_by_evictions = {p.workload for p in with_evictions.accepted.placements} - fit_now
    preemptions: list[Preemption] = []
    if evict and not leaving_pods:
        for pre in with_evictions.accepted.preemptions:
            # a reclaim makes quota room (its beneficiary's queue gets back what others borrow),
            # not necessarily node room for a placement in this plan
            if not pre.beneficiary or pre.beneficiary in freed_by_evictions or pre.reason.startswith(RECLAIM):
                preemptions.append(pre)
    evicting_for = {p.beneficiary for p in preemptions if p.beneficiary}
    waiting: dict[str, str] = {}
    for rejection in alone.rejected:
        key = rejection.action.workload
        if key in evicting_for:
            victims = ", ".join(p.workload for p in preemptions if p.beneficiary == key)
            waiting[key] = f"preempting {victims} to make room; placed once their pods are gone"
        elif key in freed_by_evictions and evict:
            waiting[key] = (f"needs room that {result.policy} would free by preempting running work; waiting for "
                            f"{leaving_pods} pod(s) being deleted to go before evicting more")
        else:
            waiting[key] = (f"needs room that {result.policy} would free by resizing or moving running work; "
                            "resizes are carried out first and it is placed once their room is free "
                            "(moves of single replicas are not carried out yet)")
    return Executable(alone.accepted.placements, tuple(preemptions), waiting)


def old_pods_going(state: ClusterState, key: str) -> str:
    """Why a workload's new placement waits for its own terminating pods, or "".

    A workload placed again soon after it was stopped (a round restarting it on another
    type, a re-queued victim finding room) would create pods under the names its old pods,
    still terminating, hold: the create would meet the old pod and fail the bind.  Its
    placement waits until they are gone instead (their pod events wake the loop).
    """
    view = state.workloads.get(state.pending_owner.get(key, ""))
    if view is None or key.endswith(SCALE_UP_SUFFIX):
        return ""
    going = sorted(p.name for p in state.leaving if p.workload_uid == view.uid)
    if not going:
        return ""
    return f"placed once its previous pods are gone ({', '.join(going)} still terminating)"
