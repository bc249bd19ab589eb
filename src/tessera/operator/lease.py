"""Leader election with a coordination.k8s.io/v1 Lease: one scheduler at a time.

Only the scheduling loop is guarded (it is the only part that creates and binds pods);
kopf's handlers are idempotent and may run in every replica.  Writes use the Lease's
resourceVersion, so two candidates racing for an expired Lease cannot both win.  The
holder renews every cycle and checks it still holds the Lease right before it binds.
A crashed holder blocks scheduling for at most ``duration_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tessera.operator.ports import KubePort
from tessera.operator.state import parse_timestamp

log = logging.getLogger("tessera.operator.lease")


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
