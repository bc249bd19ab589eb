"""One optional API group of custom objects (DRA's resource.k8s.io, Kueue's kueue.x-k8s.io)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

from kubernetes.client.rest import ApiException

from tessera.operator import labels as L
from tessera.operator.kube_base import _error, _json

log = logging.getLogger("tessera.operator")


class GroupApi:
    """Calls to one optional API group of custom objects (DRA, Kueue): a cluster may not
    serve it (404) or an older chart's RBAC may not allow reading it (403)."""

    def __init__(self, custom: Any, group: str, version: str, what: str,
                 wrote: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.custom, self.group, self.version, self.what = custom, group, version, what
        #: sees every object this process writes (the watch cache's assumed overlay)
        self.wrote = wrote or (lambda obj: None)
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

    def create_or_get(self, plural: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``body`` (then ``wrote`` sees it); on AlreadyExists the existing object and False."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            created = dict(_json(self.custom.create_namespaced_custom_object(
                self.group, self.version, namespace, plural, body, field_manager=L.FIELD_MANAGER,
                _preload_content=False)))
        except ApiException as err:
            if err.status != 409:
                raise _error(err, f"create {plural}.{self.group} {namespace}/{name}") from err
        else:
            self.wrote(created)
            return created, True
        try:
            return dict(_json(self.custom.get_namespaced_custom_object(
                self.group, self.version, namespace, plural, name, _preload_content=False))), False
        except ApiException as err:
            raise _error(err, f"get {plural}.{self.group} {namespace}/{name}") from err

    def patch_status(self, plural: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Merge-patch the status subresource with ``body`` (then ``wrote`` sees the answer)."""
        try:
            obj = dict(_json(self.custom.patch_namespaced_custom_object_status(
                self.group, self.version, namespace, plural, name, cast(Any, body), field_manager=L.FIELD_MANAGER,
                _preload_content=False)))
        except ApiException as err:
            raise _error(err, f"patch {plural}.{self.group} {namespace}/{name} status") from err
        self.wrote(obj)
