"""The out-of-tree example plugin scheduling on the real control plane.

The plugin is pip-installed (offline) into a temporary folder put on the operator's
PYTHONPATH; the operator is started with ``--policy spread-first`` and must place two
2-GPU jobs on two different A100 nodes (worst fit), where the built-in best fit would
stack them on one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "policies" / "examples" / "tessera-example-policy"

pytestmark = pytest.mark.cluster

JOB = """
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: 1, max: 1}}
  acceleratorsPerReplica: 2
  acceleratorTypes: [{{name: A100}}]
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"""


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(tmp_path / "site"), str(source)], check=True)
    return tmp_path / "site"


def bound_node(cluster: Any, namespace: str, workload: str) -> str | None:
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"tessera.dev/workload={workload}")["items"]
    return pods[0]["spec"].get("nodeName") if pods else None


def test_operator_schedules_with_the_installed_plugin(crds: Any, namespace: str, plugin_site: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    operator = OperatorProcess(crds.kubeconfig, tmp_path / "operator.log", "--policy", "spread-first", env=env).start()
    try:
        crds.apply(JOB.format(name="first"), namespace)
        first = crds.wait_for(lambda: bound_node(crds, namespace, "first"), timeout=40, what="first job bound")
        crds.apply(JOB.format(name="second"), namespace)
        second = crds.wait_for(lambda: bound_node(crds, namespace, "second"), timeout=40, what="second job bound")
        assert first.startswith("a100-") and second.startswith("a100-")
        assert first != second, "spread-first puts the second job on an emptier node"
        assert operator.alive
    finally:
        crds.kubectl("delete", "elasticjobs", "--all", "-n", namespace, "--wait=false", check=False)
        crds.wait_for(lambda: not crds.get_json("pods", "-n", namespace)["items"], timeout=40, what="pods removed")
        operator.stop()
        print(operator.log()[-4000:])
