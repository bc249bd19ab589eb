"""Leader election with a coordination.k8s.io/v1 Lease: one scheduler at a time.

Only the scheduling loop is guarded (it is the only part that creates and binds pods);
kopf's handlers are idempotent and may run in every replica.  Writes use the Lease's
resourceVersion, so two candidates racing for an expired Lease cannot both win.  The
holder renews every cycle and checks it still holds the Lease right before it binds.
A crashed holder blocks scheduling for at most ``duration_seconds``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tessera.operator.ports import KubePort
from tessera.operator.state import parse_timestamp
from tessera.policy import DecidesInRounds, ResumesRounds

log = logging.getLogger("tessera.operator.lease")

#: annotations on the Lease that carry a leader's decision state to its successor
KEPT_PREFIX = "tessera.dev/"
#: the round clock: unix seconds of the last scheduling round (tessera.policy.ResumesRounds)
LAST_ROUND = KEPT_PREFIX + "last-round"


class LeaseLost(Exception):
    """This replica no longer holds the scheduler Lease: stop acting at once.

    Raised before a write that must not come from a deposed leader.  It is never treated
    as a workload's failure (no undo, no backoff): the new leader owns the cluster now, and
    undoing what it may already have done would break its work.
    """


def _micro_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire or renew the Lease ``namespace/name`` for ``identity``."""

    def __init__(
        self,
        kube: KubePort,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: int = 15,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_seconds = duration_seconds
        self.clock = clock
        self.is_leader = False
        self._renewed_at = 0.0
        self._lock = threading.RLock()  # binds run on a pool of threads; one renewal at a time
        #: decision state the leader keeps on the Lease (annotations, e.g. the round clock):
        #: written with every renewal, inherited by whoever takes the Lease over
        self.kept: dict[str, str] = {}

    def _spec(self, now: float, acquired: float, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_seconds,
            "acquireTime": _micro_time(acquired),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }

    def still_leader(self) -> bool:
        """True when our last successful renewal has not expired."""
        return self.is_leader and self.clock() - self._renewed_at < self.duration_seconds

    def require_leader(self, doing: str) -> None:
        """Raise :class:`LeaseLost` unless this replica still holds the Lease."""
        if not self.ensure_leader():
            raise LeaseLost(f"lost the scheduler lease while {doing}")

    def ensure_leader(self) -> bool:
        """Checked before each write that must not be duplicated (a bind): renews the Lease
        when a third of its duration has passed, so a long cycle does not outlive it."""
        with self._lock:
            if not self.is_leader:
                return False
            if self.clock() - self._renewed_at < self.duration_seconds / 3:
                return True
            try:
                return self.acquire_or_renew()
            except Exception:  # any API failure means we cannot prove we still lead
                log.exception("could not renew the scheduler lease")
                self.is_leader = False
                return False

    def acquire_or_renew(self) -> bool:
        with self._lock:
            return self._acquire_or_renew()

    def _acquire_or_renew(self) -> bool:
        now = self.clock()
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, now, 0),
            }
            return self._set(self.kube.create_lease(self.namespace, body), now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = parse_timestamp(spec.get("renewTime"))
        duration = int(spec.get("leaseDurationSeconds") or self.duration_seconds)
        transitions = int(spec.get("leaseTransitions") or 0)
        annotations = dict((lease.get("metadata") or {}).get("annotations") or {})
        if not self.is_leader:  # taking over (or back): continue from what the last leader kept
            self.kept = {k: str(v) for k, v in annotations.items() if k.startswith(KEPT_PREFIX)}
        lease.setdefault("metadata", {})["annotations"] = annotations | self.kept
        if holder == self.identity:
            lease["spec"] = self._spec(now, parse_timestamp(spec.get("acquireTime")) or now, transitions)
        elif not holder or renewed + duration < now:
            log.info("taking over the scheduler lease from %r", holder or "nobody")
            lease["spec"] = self._spec(now, now, transitions + 1)
        else:
            if self.is_leader:
                log.warning("lost the scheduler lease to %s", holder)
            return self._set(False, now)
        return self._set(self.kube.replace_lease(self.namespace, self.name, lease), now)

    def keep(self, key: str, value: str) -> None:
        """Keep decision state ``key`` (under :data:`KEPT_PREFIX`) on the Lease now, so a
        successor continues from it. A failed write is retried with the next renewal."""
        if not key.startswith(KEPT_PREFIX):
            raise ValueError(f"kept state goes under {KEPT_PREFIX}: {key}")
        with self._lock:
            if self.kept.get(key) == value:
                return
            self.kept[key] = value
            if self.is_leader:
                try:
                    self._acquire_or_renew()
                except Exception:  # the next renewal writes it
                    log.warning("could not write %s to the scheduler lease yet", key, exc_info=True)

    def release(self) -> None:
        """Give the Lease up on a clean shutdown so a successor need not wait for expiry."""
        if not self.is_leader:
            return
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            lease["spec"]["holderIdentity"] = None
            self.kube.replace_lease(self.namespace, self.name, lease)
        self.is_leader = False

    def _set(self, won: bool, now: float) -> bool:
        if won and not self.is_leader:
            log.info("became the scheduling leader (%s)", self.identity)
        self.is_leader = won
        if won:
            self._renewed_at = now
        return won


def resume_decision_state(policy: object, elector: LeaderElector) -> None:
    """Newly elected: continue the round clock the last leader kept on the Lease (the rest
    of the decision state, attained service and restart intents, is in workload status)."""
    kept = elector.kept.get(LAST_ROUND)
    if kept is None or not isinstance(policy, ResumesRounds):
        return
    try:
        last_round = float(kept)
    except ValueError:
        log.warning("ignoring an unreadable round clock on the lease: %r", kept)
        return
    policy.resume_rounds(last_round)
    log.info("continuing the last leader's round clock: last round at %s", kept)


def keep_decision_state(policy: object, elector: LeaderElector) -> None:
    """After a decision: keep the round clock on the Lease (written only when it moved)."""
    if not isinstance(policy, DecidesInRounds) or policy.round_seconds <= 0:
        return
    due = policy.next_round_seconds()
    if isinstance(due, int | float) and math.isfinite(due):
        elector.keep(LAST_ROUND, repr(float(due - policy.round_seconds)))
