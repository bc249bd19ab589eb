"""kopf watches that wake the scheduling loop on failures: nodes, and Tessera's own pods.

A node turning NotReady, being cordoned, tainted or deleted, or a replica's pod failing
changes what the elastic policy decides, so the loop runs a cycle at once instead of at
its next tick.  The handlers only wake the loop; every decision is made from the listed
cluster state (the failure grace included, see :mod:`tessera.operator.elastic`).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from tessera.operator import labels as L
from tessera.operator.handlers import wake


def _health(body: kopf.Body) -> tuple[Any, ...]:
    """What of a node matters for scheduling: readiness, cordon, taints."""
    status = body.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    spec = body.get("spec") or {}
    taints = tuple(sorted((t.get("key", ""), t.get("effect", "")) for t in spec.get("taints") or []))
    return ready, bool(spec.get("unschedulable")), taints


_seen: dict[str, tuple[Any, ...]] = {}
_HANDLERS = ("node_event", "tessera_pod_event")


class _QuietWakeups(logging.Filter):
    """Drop kopf's per-event "Handler ... succeeded" lines of these wake-up handlers (noise)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno <= logging.INFO and any(f"Handler '{h}'" in message for h in _HANDLERS))


logging.getLogger("kopf.objects").addFilter(_QuietWakeups())


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Wake on a node added, deleted, or changing health (heartbeats alone are ignored)."""
    name = str(body.get("metadata", {}).get("name", ""))
    if event.get("type") == "DELETED":
        _seen.pop(name, None)
        wake(memo)
        return
    health = _health(body)
    if _seen.get(name) != health:
        _seen[name] = health
        wake(memo)


@kopf.on.event("", "v1", "pods", labels={L.WORKLOAD_UID: kopf.PRESENT})
async def tessera_pod_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Wake when one of Tessera's pods fails or goes away."""
    phase = (body.get("status") or {}).get("phase")
    if event.get("type") == "DELETED" or phase == "Failed":
        wake(memo)
