"""One optional API group of custom objects (DRA's resource.k8s.io, Kueue's kueue.x-k8s.io)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes.client.rest import ApiException

from tessera.operator.kube_base import _error, _json

log = logging.getLogger("tessera.operator")


class GroupApi:
    """Calls to one optional API group of custom objects (DRA, Kueue): a cluster may not
    serve it (404) or an older chart's RBAC may not allow reading it (403)."""

    def __init__(self, custom: Any, group: str, version: str, what: str) -> None:
        self.custom, self.group, self.version, self.what = custom, group, version, what
        #: False once a LIST answered 404/403 (warned once, until it answers again)
        self.installed = True

    def list_call(self, plural: str) -> Callable[..., Any]:
        """The LIST (and, with watch=True, WATCH) of ``plural`` across namespaces."""
        def call(**kwargs: Any) -> Any:
            return self.custom.list_cluster_custom_object(self.group, self.version, plural, **kwargs)
        return call

    def list_all(self, plurals: Sequence[str]) -> dict[str, list[dict[str, Any]]] | None:
        """Every object of each plural; None when the group is not served or not readable."""
        out: dict[str, list[dict[str, Any]]] = {}
        for plural in plurals:
            try:
                out[plural] = list(_json(self.list_call(plural)(_preload_content=False))["items"])
            except ApiException as err:
                if err.status not in (403, 404):
                    raise _error(err, f"list {plural}.{self.group}") from err
                if self.installed:
                    log.warning(
                        "cannot list %s.%s (%s): %s", plural, self.group, err.status, self.what)
                self.installed = False
                return None
        self.installed = True
        return out
