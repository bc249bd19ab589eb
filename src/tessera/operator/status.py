"""The one writer of workload status: phases, conditions and Events.

Every part of the operator (placement, preemption, reshard, requeue, moves, bulkheads)
writes a workload's status through :class:`StatusWriter`, so phase values, condition
transitions (``lastTransitionTime`` changes only when a condition's status flips, as
``meta.SetStatusCondition`` does) and Event de-duplication are defined once.

Event de-duplication is bounded: the last message per (workload uid, reason) is kept for
at most ``event_memory`` pairs, least recently used first out, so a long-running operator
does not grow without bound while a condition that keeps repeating is not re-posted every
cycle.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from tessera.api.models import ElasticJobStatus, InferenceService, InferenceServiceStatus, ReplicaStatus
from tessera.operator import labels as L
from tessera.operator.state import WorkloadView
from tessera.operator.views import attained_service_now, with_surges

log = logging.getLogger("tessera.operator.status")


class Phase(StrEnum):
    """``status.phase`` (the CRD's enum, :data:`tessera.api.models.Phase`)."""

    PENDING = "Pending"
    BINDING = "Binding"
    RUNNING = "Running"
    FAILED = "Failed"


#: condition types
SCHEDULED = "Scheduled"
#: a workload evicted by a preemption; True while it waits to be placed again, then False
#: with reason Rescheduled
PREEMPTED = "Preempted"
#: a job released below its minimum after a failure, waiting to be placed again
REQUEUED = "Requeued"
INSUFFICIENT = "InsufficientReplicas"
FULLY_SCALED = "FullyScaled"
#: reason of Scheduled=False when acting on the workload failed (a bulkhead caught it)
ACTION_FAILED = "ActionFailed"
INVALID_SPEC = "InvalidSpec"
#: False while running pods follow an older spec than the workload's (the change waits)
SPEC_APPLIED = "SpecApplied"


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Conditions with ``type_`` set; lastTransitionTime changes only when status flips."""
    out: list[dict[str, Any]] = []
    previous = None
    for c in conditions:
        if c.get("type") == type_:
            previous = c
        else:
            out.append(dict(c))
    transition = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    out.append({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition or now,
        "observedGeneration": generation,
    })
    return sorted(out, key=lambda c: c["type"])


def condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    """The condition of ``type_`` in a status, or an empty mapping."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def unchanged(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a status patch would change anything (ignoring condition timestamps)."""
    for key, value in wanted.items():
        have = current.get(key)
        if key == "conditions":
            strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in value]
            have_strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in have or []]
            if strip != have_strip:
                return False
        elif have != value:
            return False
    return True


#: the typed status of each kind (tessera.api): every patch the writer sends is checked against it
STATUS_MODELS: dict[str, type[BaseModel]] = {"ElasticJob": ElasticJobStatus, "InferenceService": InferenceServiceStatus}


class StatusPatchError(TypeError):
    """A status patch that does not match the kind's status model (a bug in the operator)."""


def check_patch(kind: str, status: Mapping[str, Any]) -> None:
    """Raise :class:`StatusPatchError` unless ``status`` is a valid merge patch of ``kind``'s
    status: known fields only, each of its declared type (``None`` removes a field)."""
    model = STATUS_MODELS.get(kind)
    if model is None:
        return
    unknown = sorted(set(status) - set(model.model_fields))
    if unknown:
        raise StatusPatchError(f"{kind} status has no field(s) {', '.join(unknown)}")
    try:
        model.model_validate({k: v for k, v in status.items() if v is not None}, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise StatusPatchError(f"{kind} status.{where}: {first.get('msg')}") from err


class StatusPort(Protocol):
    """The two API calls the writer needs (a subset of the operator's Kube port)."""

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> Any: ...

    def post_event(self, kind: str, raw: dict[str, Any], event_type: str, reason: str, message: str) -> None: ...


class BackgroundEvents:
    """Posts Events on a few threads, off the path of the decision that caused them, as
    client-go's event broadcaster does.  Bounded: with ``capacity`` Events waiting, a new one
    is dropped and counted (the workload's status and conditions say the same thing; an
    Event is a notification, never the record).  Posting failures are logged by the port."""

    def __init__(self, post: Callable[..., None], threads: int = 4, capacity: int = 2000) -> None:
        self._post = post
        self.capacity = capacity
        self.dropped = 0
        self._pending = 0
        self._idle = threading.Condition()
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="tessera-events")

    def __call__(self, *args: Any) -> None:
        with self._idle:
            if self._pending >= self.capacity:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("%d Event(s) dropped: %d already waiting to be posted", self.dropped, self.capacity)
                return
            self._pending += 1
        self._pool.submit(self._run, args)

    def _run(self, args: tuple[Any, ...]) -> None:
        try:
            self._post(*args)
        except Exception as err:  # an Event must never break anything
            log.warning("could not post an Event: %s", err)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def flush(self, timeout_seconds: float = 10.0) -> bool:
        """Wait until every Event handed in was posted (or failed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_seconds)


class StatusWriter:
    """Writes status patches and Events; keeps each view's ``raw`` in step with what it wrote."""

    def __init__(self, kube: StatusPort, clock: Callable[[], float], *, event_memory: int = 4096,
                 leader: Callable[[str], None] | None = None,
                 post_event: Callable[..., None] | None = None) -> None:
        self.kube = kube
        #: how Events are posted (default: at once, on the caller's thread; the operator
        #: hands them to :class:`BackgroundEvents`)
        self.post_event = post_event
        self.clock = clock
        #: raises LeaseLost when this replica no longer leads: a deposed leader never
        #: overwrites the decisions its successor recorded
        self.leader = leader
        self.event_memory = event_memory
        self._last_event: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()  # workloads are acted on by a pool of threads

    def now(self) -> str:
        return rfc3339(self.clock())

    # -- writing ---------------------------------------------------------------------

    def write(
        self,
        view: WorkloadView,
        status: dict[str, Any],
        *,
        event: tuple[str, str, str] | None = None,
        force: bool = False,
    ) -> None:
        """Merge-patch ``status`` (skipped when it changes nothing, unless ``force``)."""
        if not force and unchanged(view.status, status):
            return
        check_patch(view.kind, status)
        if self.leader is not None:
            self.leader("recording a decision")
        self.kube.patch_status(view.kind, view.namespace, view.name, status)
        merged = {**view.status, **status}  # a JSON merge patch: null removes the field
        view.raw = {**view.raw, "status": {k: v for k, v in merged.items() if v is not None}}
        if event:
            self.event(view, *event)

    def event(self, view: WorkloadView, event_type: str, reason: str, message: str) -> None:
        """Post an Event unless the same reason+message was the last one posted for it."""
        key = (view.uid, reason)
        with self._lock:
            if self._last_event.get(key) == message:
                self._last_event.move_to_end(key)
                return
            self._last_event[key] = message
            self._last_event.move_to_end(key)
            while len(self._last_event) > self.event_memory:
                self._last_event.popitem(last=False)
        (self.post_event or self.kube.post_event)(view.kind, dict(view.raw), event_type, reason, message)

    # -- building --------------------------------------------------------------------

    def conditions(self, view: WorkloadView, type_: str, status: str, reason: str, message: str,
                   base: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """``view``'s conditions (or ``base``) with one set."""
        current = view.status.get("conditions") or [] if base is None else base
        return set_condition(current, type_, status, reason, message, view.generation, self.now())

    def running(self, view: WorkloadView, full: list[ReplicaStatus], message: str) -> dict[str, Any]:
        """Status of a workload whose replicas ``full`` are all bound."""
        types = sorted({r.acceleratorType for r in full if r.acceleratorType})
        status: dict[str, Any] = {
            "phase": Phase.RUNNING.value,
            "startTime": view.status.get("startTime") or self.now(),
            "restartIntent": None,  # carried out (or overtaken): no later decision reads it
            "replicas": len(full),
            # surge replicas of moves in flight stay desired beside what runs (not counted)
            "placement": [r.model_dump() for r in with_surges(view, full)],
            "acceleratorType": ",".join(types),
            "observedGeneration": view.generation,
            "message": message,
            "conditions": self.conditions(view, SCHEDULED, "True", "Placed", message),
        }
        for released_type in (PREEMPTED, REQUEUED):  # evicted, or released below min after a failure
            released = condition(view.status, released_type)
            if released.get("status") == "True":
                status["conditions"] = self.conditions(view, released_type, "False", "Rescheduled",
                                                       str(released.get("message", "")), base=status["conditions"])
        if isinstance(view.model, InferenceService):
            status["selector"] = L.selector(view.uid)
        return status

    def released(self, view: WorkloadView, reason: str, condition_type: str, condition_reason: str) -> dict[str, Any]:
        """Status of a workload whose whole placement is given up (evicted, or requeued after a
        failure): Pending without placement, Scheduled=False and ``condition_type``=True, both
        with ``condition_reason`` and ``reason``."""
        conditions = self.conditions(view, SCHEDULED, "False", condition_reason, reason)
        conditions = self.conditions(view, condition_type, "True", condition_reason, reason, base=conditions)
        return {
            "phase": Phase.PENDING.value,
            # the run ends: its service goes into the tally least-attained-service policies read
            "attainedService": attained_service_now(view, self.clock()),
            "startTime": None,
            "placement": [],
            "replicas": 0,
            "acceleratorType": "",
            "observedGeneration": view.generation,
            "message": reason,
            "conditions": conditions,
        }

    def not_scheduled(self, view: WorkloadView, reason: str, message: str, *, phase: Phase | None = None,
                      extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Status with Scheduled=False for ``reason`` (and ``phase`` when given)."""
        status: dict[str, Any] = {
            "observedGeneration": view.generation,
            "message": message,
            "conditions": self.conditions(view, SCHEDULED, "False", reason, message),
        }
        status.update(extra or {})
        if phase is not None:
            status["phase"] = phase.value
        return status
