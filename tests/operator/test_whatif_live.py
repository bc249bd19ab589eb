"""`tessera whatif` against the real control plane: reads the live cluster, plans with each
policy as the operator would, writes nothing; a saved snapshot gives the same plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from workload_views import pods_of, status_of

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def job(name: str, replicas: int, gpus: int, types: str) -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: {replicas}, max: {replicas}}}
  acceleratorsPerReplica: {gpus}
  acceleratorTypes: [{types}]
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1}}]
"""


def whatif(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera", "whatif", *args], capture_output=True, text=True,
                          env=cluster.env, cwd=ROOT, timeout=120, check=False)


def test_whatif_plans_on_the_live_cluster_and_writes_nothing(crds: Any, namespace: str, tmp_path: Path) -> None:
    # no operator runs: the jobs wait, and whatif only reads
    crds.apply(job("small", 1, 4, "{name: A100}"), namespace)
    crds.apply(job("wide", 2, 8, "{name: H100}"), namespace)
    crds.apply(job("impossible", 1, 8, "{name: Gaudi3}"), namespace)
    live, saved = tmp_path / "live.json", tmp_path / "snapshot.json"
    done = whatif(crds, "--kubeconfig", str(crds.kubeconfig), "--namespace", namespace, "--save", str(saved),
                  "--policy", "cpsat", "--policy", "best-fit", "--json", str(live))
    assert done.returncode == 0, done.stderr
    records = json.loads(live.read_text())
    for record in records:
        placed = {p["workload"]: p["replicas"] for p in record["placements"]}
        assert set(placed) == {f"{namespace}/small", f"{namespace}/wide"}, record
        assert all("(A100)" in r for r in placed[f"{namespace}/small"])
        assert len(placed[f"{namespace}/wide"]) == 2 and all("(H100)" in r for r in placed[f"{namespace}/wide"])
        assert "Gaudi3" in record["waiting"][f"{namespace}/impossible"]
    # read-only: no pod, no status
    for name in ("small", "wide", "impossible"):
        assert not pods_of(crds, namespace, name)
        assert not status_of(crds, name, namespace).get("phase")
    # the saved snapshot answers the same, without the cluster
    offline = tmp_path / "offline.json"
    again = whatif(crds, "--snapshot", str(saved), "--namespace", namespace, "--policy", "cpsat",
                   "--policy", "best-fit", "--json", str(offline))
    assert again.returncode == 0, again.stderr
    strip = [{k: v for k, v in r.items() if k != "decision_seconds"} for r in records]
    assert [{k: v for k, v in r.items() if k != "decision_seconds"} for r in json.loads(offline.read_text())] == strip
    crds.kubectl("delete", "elasticjobs", "--all", "-n", namespace, "--wait=false")
