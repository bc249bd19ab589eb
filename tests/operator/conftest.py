"""A real control plane for the operator tests: etcd + kube-apiserver (+ controller manager) + kwok.

The session starts a private cluster (its own folder and loopback ports) with
``hack/cluster-up.sh`` and stops it at the end, so tests never touch a developer's
``make cluster-up`` cluster.  Binaries come from ``make tools``; when they are missing
the tests are skipped with that reason, except under ``make test``/CI
(TESSERA_REQUIRE_CLUSTER=1), where a missing control plane is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TESSERA_BIN_DIR", ROOT / ".local-cluster" / "bin"))
REQUIRED = ("etcd", "kube-apiserver", "kubectl", "kwok")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.cluster)


@dataclass
class LocalCluster:
    """Handle on the running test cluster."""

    dir: Path
    kubeconfig: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (the operator, kubectl) talking to this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": f"{BIN}:{os.environ['PATH']}"}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: str | Path, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
        ns = ["-n", namespace] if namespace else []
        if isinstance(manifest, Path):
            return self.kubectl("apply", *ns, "-f", str(manifest))
        return self.kubectl("apply", *ns, "-f", "-", input=manifest)

    def wait_for(self, predicate: Any, timeout: float = 30, interval: float = 0.2, what: str = "condition") -> Any:
        """Poll ``predicate()`` until it returns a truthy value; fail with ``what`` on timeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextmanager
def local_cluster(state: Path, **env_extra: str) -> Iterator[LocalCluster]:
    """A private control plane in ``state`` (hack/cluster-up.sh with ``env_extra``), stopped afterwards."""
    missing = [b for b in REQUIRED if not (BIN / b).exists()]
    if missing:
        reason = f"control-plane binaries missing in {BIN}: {', '.join(missing)} (run 'make tools')"
        if os.environ.get("TESSERA_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # the extended-resource pools only, unless a test asks for more (tests/operator/test_dra.py)
    env = {**os.environ, "TESSERA_CLUSTER_DIR": str(state), "TESSERA_BIN_DIR": str(BIN),
           "TESSERA_NODES": str(ROOT / "examples" / "nodes"), **env_extra}
    env.pop("TESSERA_PORT_BASE", None)
    up = subprocess.run(["bash", str(ROOT / "hack" / "cluster-up.sh")], env=env, capture_output=True, text=True, timeout=300)
    if up.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (state / "logs").glob("*.log"))
        subprocess.run(["bash", str(ROOT / "hack" / "cluster-down.sh")], env=env, capture_output=True, timeout=60)
        pytest.fail(f"hack/cluster-up.sh failed:\n{up.stderr}\n{logs}")
    try:
        yield LocalCluster(state, state / "kubeconfig")
    finally:
        subprocess.run(["bash", str(ROOT / "hack" / "cluster-down.sh")], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster")) as handle:
        yield handle


@pytest.fixture(scope="session")
def crds(cluster: LocalCluster) -> LocalCluster:
    """The cluster with Tessera's CRDs installed (from the committed crds/ folder)."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    for crd in ("elasticjobs.tessera.dev", "inferenceservices.tessera.dev", "queues.tessera.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    return cluster


def fresh_namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # the ServiceAccount admission plugin needs "default"; the controller manager makes it,
    # but not instantly, and it may not run at all
    if cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        cluster.kubectl("create", "serviceaccount", "default", "-n", name, check=False)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount) for one test."""
    yield from fresh_namespace(cluster)


@pytest.fixture
def other_namespace(cluster: LocalCluster) -> Iterator[str]:
    """A second fresh namespace, for tests where another team's workload must not suffer."""
    yield from fresh_namespace(cluster)
