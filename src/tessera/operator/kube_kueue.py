"""The ``kueue.x-k8s.io/v1beta2`` calls: Kueue Workloads and ResourceFlavors (raw JSON in and out).

API verbs used (the chart's ClusterRoles grant exactly these; tests/operator/test_rbac.py):
workloads.kueue.x-k8s.io, resourceflavors.kueue.x-k8s.io: list (watch with the watch cache);
workloads.kueue.x-k8s.io: create, get (the Workload of a Tessera workload, in its namespace);
workloads.kueue.x-k8s.io/status: patch (clearing an evicted Workload's reservation).

An API server without Kueue's CRDs (404), or an older chart's RBAC (403), means no Kueue:
listed as none, with a warning; workloads with the queue-name label then wait, saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kubernetes import client

from tessera.api.kueue import FLAVORS, GROUP, VERSION, WORKLOADS, KueueObjects
from tessera.operator.kube_group import GroupApi

log = logging.getLogger("tessera.operator")


class KueueApi(GroupApi):
    """Kueue Workloads and ResourceFlavors; ``wrote`` sees every Workload this process
    writes (the watch cache's assumed overlay)."""

    def __init__(self, custom: client.CustomObjectsApi, wrote: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(custom, GROUP, VERSION, "Kueue is taken as not installed", wrote)

    def list(self) -> KueueObjects | None:
        """Every Workload and ResourceFlavor; None when Kueue is not installed or RBAC refuses."""
        out = self.list_all((WORKLOADS, FLAVORS))
        return None if out is None else KueueObjects(out[WORKLOADS], out[FLAVORS])

    def create_workload(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create ``body``; on AlreadyExists return the existing Workload (``wrote`` sees it
        either way: the cycle's index must hold it, Tessera's or not)."""
        found, fresh = self.create_or_get(WORKLOADS, body)
        if not fresh:
            self.wrote(found)
        return found

    def patch_workload_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a Workload's status (the reservation of an evicted one, cleared)."""
        self.patch_status(WORKLOADS, namespace, name, {"status": status})
