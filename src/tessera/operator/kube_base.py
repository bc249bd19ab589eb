"""What every API facade module shares: the error type and reading raw responses."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client.rest import ApiException


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when unknown)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(response: Any) -> Any:
    data = response.data if hasattr(response, "data") else response
    return json.loads(data) if data else {}


def _drain(response: Any) -> None:
    """Read a response nobody needs and hand its connection back to the pool.

    With ``_preload_content=False`` the client leaves that to the caller: an unread response
    keeps its connection checked out, and the next request opens a new TLS connection (a
    burst then paid a handshake for every other request, on both sides)."""
    with contextlib.suppress(Exception):
        response.read()
    release = getattr(response, "release_conn", None)
    if release is not None:
        with contextlib.suppress(Exception):
            release()


def _error(err: ApiException, what: str) -> KubeError:
    detail = ""
    try:
        detail = json.loads(err.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        detail = str(err.body or "")
    return KubeError(f"{what}: {err.status} {err.reason}: {detail}".strip(), err.status or 0)

