"""Status of what a cycle did not act on: workloads that keep waiting (and why), and running
workloads whose status must follow their pods.  Written through the one StatusWriter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

from tessera.api.models import InferenceService, ReplicaStatus
from tessera.core.admission import OVER_QUOTA
from tessera.operator import labels as L
from tessera.operator.actuator import CycleReport
from tessera.operator.state import SCALE_UP_SUFFIX, ClusterState, WorkloadView
from tessera.operator.status import (
    FULLY_SCALED,
    INSUFFICIENT,
    PREEMPTED,
    REQUEUED,
    SCHEDULED,
    SPEC_APPLIED,
    Phase,
    StatusWriter,
    condition,
)

#: Scheduled=False reason of a workload its queue cannot admit now (tessera.core.admission)
WAITING_FOR_QUOTA = "WaitingForQuota"

#: the scheduler's bulkhead: contains whatever acting on one workload raises
Bulkhead = Callable[[WorkloadView, str], AbstractContextManager[None]]


class Reporter:
    def __init__(self, status: StatusWriter) -> None:
        self.status = status

    def waiting(self, state: ClusterState, waiting: Mapping[str, str], report: CycleReport, bulkhead: Bulkhead) -> set[str]:
        """Status of what keeps waiting; returns the running services that cannot grow."""
        blocked: set[str] = set()
        present = state.snapshot.accelerator_types()
        for key, reason in waiting.items():
            view = state.workloads.get(state.pending_owner.get(key, key))
            if view is None or view.workload is None or view.key in report.failed:
                continue
            with bulkhead(view, "recording why it waits"):
                if key.endswith(SCALE_UP_SUFFIX):
                    # a running service that cannot grow: keep it Running, say why in a condition
                    conditions = self.status.conditions(view, FULLY_SCALED, "False", "Unschedulable", reason)
                    self.status.write(view, {"conditions": conditions, "message": reason},
                                      event=("Warning", "ScaleUpBlocked", reason))
                    blocked.add(view.key)
                    continue
                if view.placement or view.in_flight:
                    continue  # running (a move or a resize waits): its steady status says so
                allowed = set(view.workload.allowed_types)
                no_type = bool(allowed) and not (allowed & present)
                condition_reason = "NoMatchingAccelerator" if no_type else (
                    WAITING_FOR_QUOTA if reason.startswith(OVER_QUOTA) else "Unschedulable")
                preempted = condition(view.status, PREEMPTED)
                requeued = condition(view.status, REQUEUED)
                if not no_type and preempted.get("status") == "True":
                    # evicted and re-queued: say so until it runs again, with why it still waits
                    condition_reason = PREEMPTED
                    reason = f"{preempted.get('message', '')}; waiting to be placed again: {reason}"
                elif not no_type and requeued.get("status") == "True":
                    condition_reason = INSUFFICIENT  # released below min after a failure
                    reason = f"{requeued.get('message', '')}; waiting to be placed again: {reason}"
                extra = {"replicas": 0}
                if isinstance(view.model, InferenceService):
                    extra["selector"] = L.selector(view.uid)  # type: ignore[assignment]
                self.status.write(view, self.status.not_scheduled(view, condition_reason, reason, phase=Phase.PENDING,
                                                                  extra=extra),
                                  event=("Warning", condition_reason, reason))
        return blocked

    def steady(self, state: ClusterState, blocked: set[str], report: CycleReport, bulkhead: Bulkhead,
               settle: Callable[[WorkloadView], None]) -> None:
        """Running workloads not touched this cycle: keep status in line with the pods."""
        for view in state.workloads.values():
            if view.key in report.failed:
                continue
            with bulkhead(view, "recording its status"):
                self._steady(view, blocked)
                settle(view)

    def _steady(self, view: WorkloadView, blocked: set[str]) -> None:
        if view.gate and not view.error and not view.rollback_reason and not view.placement and not view.in_flight:
            # suspended, or waiting for Kueue's admission: say so (nothing is decided for it)
            self.status.write(view, self.status.not_scheduled(view, view.gate_code, view.gate, phase=Phase.PENDING,
                                                              extra={"replicas": 0}),
                              event=("Normal", view.gate_code, view.gate))
            return
        # lost replicas await the elastic policy's reshard: keep them in status until then
        if view.error or view.rollback_reason or view.in_flight or not view.placement or view.lost:
            if view.model is not None and isinstance(view.model, InferenceService) \
                    and view.model.spec.replicas == 0 and not view.placement and not view.error:
                self.status.write(view, self.status.not_scheduled(
                    view, "ScaledToZero", "spec.replicas is 0", phase=Phase.PENDING,
                    extra={"replicas": 0, "placement": [], "selector": L.selector(view.uid),
                           "message": "scaled to zero"}))
            return
        if view.status.get("phase") == Phase.BINDING.value:
            return  # being bound this cycle; the actuator writes the outcome
        full = sorted(view.placement.values(), key=lambda r: r.replica)
        scheduled = condition(view.status, SCHEDULED)
        kept = str(scheduled.get("message", ""))
        if view.status.get("phase") == Phase.RUNNING.value and scheduled.get("status") == "True" \
                and _describes(kept, full):
            message = kept
        else:  # never a stale message: after a scale-down or a lost replica it says what runs now
            message = f"{len(full)} replica(s) running: " + ", ".join(f"{r.pod} -> {r.node}" for r in full)
        status = self.status.running(view, full, message)
        if view.key in blocked:  # keep the scale-up explanation _write_waiting just wrote
            status["message"] = view.status.get("message", message)
        if isinstance(view.model, InferenceService) and len(full) >= view.model.spec.replicas:
            status["conditions"] = [c for c in status["conditions"] if c["type"] != FULLY_SCALED]
        if view.drift:  # the spec changed under running pods: say the change waits, never re-account
            status["conditions"] = self.status.conditions(view, SPEC_APPLIED, "False", "RunningWithOldSpec",
                                                          view.drift, base=status["conditions"])
        else:
            status["conditions"] = [c for c in status["conditions"] if c["type"] != SPEC_APPLIED]
        self.status.write(view, status)


def _describes(message: str, full: list[ReplicaStatus]) -> bool:
    """Whether a "pod -> node" message names exactly the replicas that run."""
    pairs = {part.strip() for part in message.split(":", 1)[-1].split(",") if "->" in part}
    return pairs == {f"{r.pod} -> {r.node}" for r in full}
