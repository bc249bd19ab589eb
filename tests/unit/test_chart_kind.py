"""The kind path, as far as it can be tested without a Docker engine.

The kind config is loaded and validated by the real kind binary: a stand-in `docker` on
PATH answers kind's provider checks, so `kind create cluster` decodes (strictly) and
validates the config and stops at the first step that needs an engine. A broken config
must fail before that point, which shows the check can fail. The node fixtures kind-up.sh
applies are the local control plane's (tests/operator/test_control_plane.py applies them);
the kind values render through the chart's schema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from chart_helpers import BIN, ROOT, one, render

KIND_CONFIG = ROOT / "hack" / "kind-config.yaml"
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
  info) echo '{"CgroupVersion":"2","CgroupDriver":"systemd","MemoryLimit":true,"PidsLimit":true,"CPUShares":true,"SecurityOptions":[]}' ;;
  ps|inspect) exit 0 ;;
  *) echo "fake docker: no engine here" >&2; exit 1 ;;
esac
"""


def kind_binary() -> str:
    local = BIN / "kind"
    if local.exists():
        return str(local)
    found = shutil.which("kind")
    if found:
        return found
    pytest.skip(f"kind not found in {BIN} or PATH (run 'bash hack/kind-up.sh --tools-only')")


def kind_create(config: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    (fake / "docker").write_text(FAKE_DOCKER)
    (fake / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE_DOCKER_LOG": str(log)}
    proc = subprocess.run(
        [kind_binary(), "create", "cluster", "--config", str(config), "--name", "tessera-cfgcheck",
         "--kubeconfig", str(tmp_path / "kubeconfig")],
        capture_output=True, text=True, timeout=60, env=env,
    )
    return proc, log.read_text().splitlines()


def test_kind_config_is_accepted_by_kind(tmp_path: Path) -> None:
    proc, calls = kind_create(KIND_CONFIG, tmp_path)
    # kind got past decoding and validation to provisioning: it looked up the node image
    # and then asked the (fake) engine for its network
    assert proc.returncode != 0
    assert any(c.startswith("inspect --type=image kindest/node:") for c in calls), (calls, proc.stderr)
    assert "failed to ensure docker network" in proc.stderr, proc.stderr
    assert "invalid configuration" not in proc.stderr and "unable to decode config" not in proc.stderr


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("  - role: control-plane\n    labelz: {a: b}\n", "unable to decode config"),
        ("  - role: boss\n", "invalid configuration"),
    ],
)
def test_a_broken_kind_config_is_refused_before_provisioning(tmp_path: Path, broken: str, message: str) -> None:
    config = tmp_path / "kind.yaml"
    config.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n" + broken)
    proc, calls = kind_create(config, tmp_path)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not any(c.startswith("inspect") for c in calls)


def test_kind_values_keep_the_operator_on_the_real_node() -> None:
    values = yaml.safe_load((ROOT / "hack" / "kind-values.yaml").read_text())
    objects = render(values)  # passes the chart's values schema
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["imagePullPolicy"] == "Never"  # loaded with kind load docker-image
    config = yaml.safe_load(KIND_CONFIG.read_text())
    real_node_labels = config["nodes"][0]["labels"]
    assert pod["nodeSelector"].items() <= real_node_labels.items()
    # and no fake node carries that label
    for path in sorted((ROOT / "examples" / "nodes").glob("*.yaml")):
        for node in yaml.safe_load_all(path.read_text()):
            if node:
                assert not pod["nodeSelector"].items() <= node["metadata"]["labels"].items(), node["metadata"]["name"]


def test_kind_up_uses_the_shared_fixtures_and_chart() -> None:
    script = (ROOT / "hack" / "kind-up.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "hack" / "kind-up.sh")]).returncode == 0
    assert '"$ROOT/examples/nodes/"' in script
    assert '"$ROOT/helm/tessera"' in script and "--values \"$ROOT/hack/kind-values.yaml\"" in script
    assert "--file \"$ROOT/operator/Dockerfile\"" in script
    # fake nodes are managed by the in-cluster kwok through the same annotation the local
    # control plane's kwok selects on
    local = (ROOT / "hack" / "cluster-up.sh").read_text()
    assert "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" in local
    for path in sorted((ROOT / "examples" / "nodes").glob("*.yaml")):
        for node in yaml.safe_load_all(path.read_text()):
            if node:
                assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
                assert node["metadata"]["labels"]["type"] == "kwok"
