"""The ``resource.k8s.io/v1`` calls: DRA slices, classes and claims (raw JSON in and out).

API verbs used (the chart's ClusterRoles grant exactly these; tests/operator/test_rbac.py):
resourceslices, deviceclasses, resourceclaims: list (watch with the watch cache);
resourceclaims: create, get, delete (Tessera's own claims, in workload namespaces);
resourceclaims/status: patch (the allocation and reservation of Tessera's claims).

An API server that does not serve the group (404), or an older chart's RBAC (403), means
no DRA devices: listed as none, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client
from kubernetes.client.rest import ApiException

from tessera.api.dra import GROUP, VERSION, DraObjects
from tessera.operator.kube_base import _drain, _error
from tessera.operator.kube_group import GroupApi

log = logging.getLogger("tessera.operator")

SLICES, CLASSES, CLAIMS = "resourceslices", "deviceclasses", "resourceclaims"


class DraApi(GroupApi):
    """ResourceSlices, DeviceClasses and ResourceClaims; ``wrote`` sees every claim this
    process writes (the watch cache's assumed overlay)."""

    def __init__(self, custom: client.CustomObjectsApi, wrote: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(custom, GROUP, VERSION, "DRA devices are not counted", wrote)

    def list(self) -> DraObjects:
        """Every slice, claim and class; none when the API server has no DRA or RBAC refuses."""
        out = self.list_all((SLICES, CLAIMS, CLASSES))
        return DraObjects() if out is None else DraObjects(out[SLICES], out[CLAIMS], out[CLASSES])

    def create_claim(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``body``; on AlreadyExists return the existing claim and False."""
        return self.create_or_get(CLAIMS, body)

    def allocate_claim(self, namespace: str, name: str, resource_version: str, status: dict[str, Any]) -> None:
        """Write a claim's allocation and reservation, only over ``resource_version`` (a claim
        changed meanwhile answers 409 Conflict)."""
        self.patch_status(CLAIMS, namespace, name, {"metadata": {"resourceVersion": resource_version},
                                                    "status": status})

    def delete_claim(self, namespace: str, name: str, uid: str = "") -> None:
        """Delete one claim; a uid precondition never deletes a newer claim of that name."""
        options: dict[str, Any] = {"preconditions": {"uid": uid}} if uid else {}
        try:
            _drain(self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, CLAIMS, name,
                                                               body=cast(Any, options), _preload_content=False))
        except ApiException as err:
            if err.status in (404, 409):
                return
            raise _error(err, f"delete resourceclaim {namespace}/{name}") from err
