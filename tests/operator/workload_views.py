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


def example_runs_then_goes(cluster: Any, namespace: str, name: str, lease: tuple[str, str], holder: str,
                           *, timeout: float, what: str) -> None:
    """An applied example ElasticJob ``name`` runs (2+ replicas bound and Running, scheduled by
    Tessera, the scheduler Lease ``lease`` = (namespace, name) held by ``holder``), then its
    deletion removes its pods: the operator under test did both."""

    def running() -> list[dict[str, Any]] | None:
        status = cluster.get_json("elasticjob", name, "-n", namespace).get("status") or {}
        pods = cluster.get_json("pods", "-n", namespace)["items"]
        bound = [p for p in pods if p["spec"].get("nodeName") and p["status"].get("phase") == "Running"]
        return bound if status.get("phase") == "Running" and len(bound) >= 2 else None

    pods = cluster.wait_for(running, timeout=timeout, what=f"{name} Running, {what}")
    assert all(p["spec"]["schedulerName"] == "tessera" for p in pods)
    assert cluster.get_json("lease", lease[1], "-n", lease[0])["spec"]["holderIdentity"] == holder
    # deletion goes through the finalizer and the pods are removed by the same operator
    cluster.kubectl("delete", "elasticjob", name, "-n", namespace, "--wait=false")
    cluster.wait_for(lambda: not cluster.get_json("pods", "-n", namespace)["items"], timeout=40,
                     what=f"the job's pods deleted, {what}")
