"""Read-only views of workloads and pods on the test cluster, shared by the operator tests."""

from __future__ import annotations

from typing import Any


def pods_of(cluster: Any, namespace: str, workload: str) -> list[dict[str, Any]]:
    """The pods Tessera created for ``workload`` (by its workload label)."""
    return list(cluster.get_json("pods", "-n", namespace, "-l", f"tessera.dev/workload={workload}")["items"])


def status_of(cluster: Any, name: str, namespace: str) -> dict[str, Any]:
    """The ElasticJob's status ({} before the operator wrote one)."""
    return dict(cluster.get_json("elasticjob", name, "-n", namespace).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of ``type_`` in ``status`` ({} when absent)."""
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def gpus(pod: dict[str, Any]) -> int:
    """Whole GPUs the pod's containers are limited to."""
    return sum(int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
               for c in pod["spec"].get("containers") or [])
