"""Rendering the Helm chart for tests: the real helm binary, no cluster.

Shared by the chart unit tests and the cluster tests in tests/operator/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tessera"
BIN = Path(os.environ.get("TESSERA_BIN_DIR", ROOT / ".local-cluster" / "bin"))
# `make tools` stamps helm's default Kubernetes version (v1.34); a helm found on PATH may
# not be, and then assumes v1.20, below the chart's kubeVersion: say it explicitly
KUBE_VERSION = "1.34.0"


def helm_binary() -> str:
    """The helm binary from `make tools` (or PATH); skip when there is none."""
    local = BIN / "helm"
    if local.exists():
        return str(local)
    found = shutil.which("helm")
    if found:
        return found
    if os.environ.get("TESSERA_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"helm not found in {BIN} or PATH (run 'make tools')")
    pytest.skip(f"helm not found in {BIN} or PATH (run 'make tools')")


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def render_text(values: dict[str, Any] | None = None, namespace: str = "tessera-system",
                release: str = "tessera", check: bool = True) -> subprocess.CompletedProcess[str]:
    """`helm template` with ``values`` given as a values file (JSON is YAML)."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    if values:
        args += ["--values", "/dev/stdin"]
        proc = subprocess.run([helm_binary(), *args], input=json.dumps(values), capture_output=True,
                              text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm template failed: {proc.stderr.strip()}")
        return proc
    return helm(*args, check=check)


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The rendered objects (templates only; CRDs are not part of `helm template` output)."""
    return [d for d in yaml.safe_load_all(render_text(values, **kwargs).stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """docs/metrics.md reference table: name -> (type, labels)."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        match = re.match(r"\|\s*`(tessera_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|\s*([^|]*)\|", line)
        if match:
            labels = tuple(re.findall(r"`([a-z_]+)`", match.group(3)))
            rows[match.group(1)] = (match.group(2), labels)
    return rows
