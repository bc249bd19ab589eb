"""The real kube-scheduler (built by `make tools`) against the test control plane.

Started and stopped with hack/kube-scheduler-up.sh, the helper benchmarks use to compare
against kube-scheduler.  Plain pods (default schedulerName) stay Pending without it and are
bound to kwok nodes with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TESSERA_BIN_DIR", ROOT / ".local-cluster" / "bin"))
HELPER = ROOT / "hack" / "kube-scheduler-up.sh"


def helper(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TESSERA_CLUSTER_DIR": str(cluster.dir), "TESSERA_BIN_DIR": str(BIN)}
    return subprocess.run(["bash", str(HELPER), *args], env=env, capture_output=True, text=True, timeout=120)


@contextmanager
def running_kube_scheduler(cluster: Any) -> Iterator[str]:
    """kube-scheduler running against ``cluster`` inside the block; yields its health URL."""
    if not (BIN / "kube-scheduler").exists():
        reason = f"kube-scheduler missing in {BIN} (run 'make tools')"
        if os.environ.get("TESSERA_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # the other tests rely on nothing but Tessera binding pods: stop it whatever happens
    try:
        started = helper(cluster)
        assert started.returncode == 0, started.stderr
        yield started.stdout.strip()
    finally:
        helper(cluster, "--down")


def test_kube_scheduler_reports_the_pinned_version() -> None:
    if not (BIN / "kube-scheduler").exists():
        pytest.skip(f"kube-scheduler missing in {BIN} (run 'make tools')")
    out = subprocess.run([str(BIN / "kube-scheduler"), "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "Kubernetes v1.34.4", out.stdout + out.stderr


def plain_pod(name: str, resources: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "registry.example/none:1",
                                 "resources": {"requests": resources, "limits": resources}}]},
    }


def test_kube_scheduler_binds_a_plain_pod_to_a_kwok_node(cluster: Any, namespace: str) -> None:
    gpu = {"cpu": "1", "nvidia.com/gpu": "8"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(plain_pod("plain", {"cpu": "100m"})))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(plain_pod("whole-gpu-node", gpu)))
    # control: nothing in the test cluster binds default-scheduler pods on its own
    time.sleep(2)
    assert not cluster.get_json("pod", "plain", "-n", namespace)["spec"].get("nodeName")

    with running_kube_scheduler(cluster) as health:
        assert health.startswith("https://127.0.0.1:")
        nodes = {n["metadata"]["name"]: n for n in cluster.get_json("nodes")["items"]}

        def bound(name: str) -> Any:
            def check() -> Any:
                pod = cluster.get_json("pod", name, "-n", namespace)
                return pod if pod["spec"].get("nodeName") and pod["status"].get("phase") == "Running" else None
            return cluster.wait_for(check, timeout=60, what=f"{name} bound by kube-scheduler and Running")

        pod = bound("plain")
        assert pod["spec"]["schedulerName"] == "default-scheduler"
        assert pod["spec"]["nodeName"] in nodes
        # a request only a GPU node can take lands on one (the scheduler's resource fit)
        node = nodes[bound("whole-gpu-node")["spec"]["nodeName"]]
        assert node["status"]["allocatable"].get("nvidia.com/gpu") == "8"
        events = cluster.get_json("events", "-n", namespace, "--field-selector", "reason=Scheduled")["items"]
        sources = {e.get("reportingComponent") or e.get("source", {}).get("component") for e in events}
        assert "default-scheduler" in sources, events
