"""What the kopf handlers of both kinds share: validate, wake the scheduler, clean up pods.

Handlers stay thin: they parse the object into its api model (a spec the model refuses
is logged; the loop records InvalidSpec on it), wake the scheduling loop, and on deletion
remove the workload's pods (the garbage collector may not run in every control plane).
They are idempotent, so it is harmless that every operator replica runs them; only the
Lease holder schedules.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import BaseModel, ValidationError

from tessera.api.models import GROUP
from tessera.operator import labels as L
from tessera.operator.kube import Kube, KubeError


class CheckedGenerations:
    """uid -> the generation whose spec was last checked (at most ``limit`` workloads).

    A workload's events are mostly its own status writes (the spec's generation does not
    change); checking its spec again for each would parse the whole object on kopf's event
    loop for nothing (a burst of 2,000 jobs makes thousands of such events)."""

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, object] = OrderedDict()

    def first(self, body: Mapping[str, Any]) -> bool:
        """Whether this uid and generation are new (and remember them)."""
        meta = body.get("metadata") or {}
        uid, generation = meta.get("uid"), meta.get("generation")
        if not uid:
            return True
        if uid in self._seen and self._seen[uid] == generation:
            return False
        self._seen[uid] = generation
        self._seen.move_to_end(uid)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True


def report_invalid(model: type[BaseModel], body: Mapping[str, Any],
                   logger: logging.Logger | logging.LoggerAdapter[Any], memo: Any = None) -> None:
    """Log when ``body`` does not parse into ``model``; the scheduling loop writes the
    InvalidSpec condition the user sees (one writer of status).  With the operator's
    ``memo``, each generation of a workload is checked once."""
    checked = getattr(memo, "checked", None)
    if isinstance(checked, CheckedGenerations) and not checked.first(body):
        return
    try:
        model.model_validate(dict(body))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        logger.warning("invalid spec at %s: %s", where, first.get("msg"))


def wake(memo: Any) -> None:
    """Ask the scheduling loop for a cycle now rather than at its next tick."""
    event = getattr(memo, "wake", None)
    if isinstance(event, asyncio.Event):
        event.set()


async def delete_pods(memo: Any, namespace: str, uid: str, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Delete the workload's pods when kopf reports its deletion (best effort: the handler is
    optional, no finalizer waits for it; the loop deletes the pods of a workload that is
    gone in any case, as orphans)."""
    kube: Kube = memo.kube
    try:
        count = await asyncio.to_thread(kube.delete_workload_pods, namespace, uid)
    except KubeError as err:
        raise kopf.TemporaryError(f"could not delete the pods: {err}", delay=5) from err
    if count:
        logger.info("deleted %d pod(s)", count)
    wake(memo)


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff base that keeps nothing (kopf's change detection is not used)."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf settings: watch timeouts, tessera.dev-prefixed finalizer and storage, quiet events."""
    # the API server closes a watch after server_timeout; client_timeout catches dead TCP links
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    settings.persistence.finalizer = L.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # no diff base: Tessera's handlers react to events, never to diffs, and kopf's
    # annotation diff base holds the whole spec, which fails near the 256 KiB annotation
    # limit and then blocks even the object's deletion (issue #15, finding 6)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Tessera posts its own Events (placements, failures); kopf's per-handler ones are noise
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 4


@kopf.on.login()
def login(memo: Any, settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """Credentials from the very client configuration the scheduler uses.

    kopf's own ``login_via_client`` tries the service account first and otherwise reads
    the kubeconfig the kubernetes package resolved *at import time* (``$KUBECONFIG`` then,
    else ``~/.kube/config``), ignoring ``--kubeconfig`` and ``--context``: the watches would
    then talk to a different cluster (or fail) while the scheduler binds on the right one.
    """
    kube = getattr(memo, "kube", None)
    if not isinstance(kube, Kube):
        return kopf.login_via_client(settings=settings, **kwargs)
    return connection_info(kube, trust_env=settings.networking.trust_env)


def connection_info(kube: Kube, *, trust_env: bool = False) -> kopf.ConnectionInfo:
    """kopf's ConnectionInfo for the server, CA, client certificate and token of ``kube``."""
    cfg = kube.api.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        trust_env=trust_env,
    )
