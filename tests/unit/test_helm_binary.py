"""The helm from `make tools` knows the pinned Kubernetes version without --kube-version.

helm reads its default Kubernetes version from build ldflags (pkg/chartutil); built from
the module proxy without them it assumes v1.20, and our chart (kubeVersion >= 1.27) refuses
to render.  hack/build-tools.sh stamps v1.34, so `helm template` works as users type it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from chart_helpers import BIN, CHART

HELM = BIN / "helm"


def local_helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        reason = f"helm missing in {BIN} (run 'make tools')"
        if os.environ.get("TESSERA_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def test_helm_template_renders_the_chart_without_kube_version() -> None:
    proc = local_helm("template", "t", str(CHART))
    assert proc.returncode == 0, proc.stderr
    assert "kind: Deployment" in proc.stdout


def test_helm_default_capabilities_are_the_pinned_kubernetes(tmp_path: Path) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        "data: {kube: {{ .Capabilities.KubeVersion.Version | quote }}}\n"
    )
    proc = local_helm("template", "p", str(chart))
    assert proc.returncode == 0, proc.stderr
    assert 'kube: "v1.34.0"' in proc.stdout


def test_helm_lint_strict_without_kube_version() -> None:
    # `make helm-lint` relies on it; lint's deprecation check uses the same stamp
    proc = local_helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_an_unsupported_kube_version_is_still_refused() -> None:
    # control: the chart's kubeVersion constraint is what the stamp satisfies
    proc = local_helm("template", "t", str(CHART), "--kube-version", "1.20.0")
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr, proc.stderr
