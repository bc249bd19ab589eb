"""Defragmentation moves a training replica through the elastic path on the real control
plane (kube-apiserver + kwok).

Four single-replica 4-GPU ElasticJobs sit one per A100 node (16 A100 GPUs free, but no
node with 8). An 8-GPU job then waits, blocked only by fragmentation. The operator's
rebalancing round (policy ``defrag``) moves one small job's replica next to another; the
move is carried out as a reshard of that job (status records it, the plan generation
goes up, the old pod goes, the new one is bound), and the big job is then placed. A
watcher checks that no node ever has more than 8 GPUs bound while this happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess, clean_up
from test_elastic import a100_nodes, generation, running_on, status_of
from test_preemption import BindingWatcher

pytestmark = pytest.mark.cluster


def job(name: str, gpus: int) -> str:
    return f"""
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata: {{name: {name}}}
spec:
  replicas: {{min: 1, max: 1}}
  acceleratorsPerReplica: {gpus}
  acceleratorTypes: [{{name: A100}}]
  globalBatchSize: 32
  microBatchSize: 8
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"""


@pytest.fixture
def operator(crds: Any, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    # cordons steer the small jobs onto chosen nodes here; with failure handling a cordon
    # counts as a node failure at once (docs/elastic.md) and would reshard them away
    proc = OperatorProcess(crds.kubeconfig, tmp_path / "operator.log", "--policy", "best-fit", "--no-failure-handling",
                           "--rebalance-period-seconds", "1", "--rebalance-policy", "defrag",
                           "--rebalance-param", "cooldown_seconds=5",
                           env={"KUBECONFIG": str(crds.kubeconfig)}).start()
    a100 = a100_nodes(crds)
    try:
        yield proc
    finally:
        crds.kubectl("uncordon", *a100, check=False)
        clean_up(crds, namespace, "elasticjobs", [proc])


def test_defrag_moves_a_training_replica_by_a_reshard_and_the_blocked_gang_starts(crds, namespace, operator):
    a100 = a100_nodes(crds)
    assert len(a100) == 4
    # one small job per A100 node: open one node at a time
    for i, node in enumerate(a100):
        crds.kubectl("cordon", *[n for n in a100 if n != node])
        crds.kubectl("uncordon", node)
        crds.apply(job(f"small-{i}", 4), namespace)
        crds.wait_for(lambda i=i: running_on(crds, f"small-{i}", namespace, 1), timeout=60,
                      what=f"small-{i} running on {node}")
    crds.kubectl("uncordon", *a100)
    before = {f"small-{i}": status_of(crds, f"small-{i}", namespace) for i in range(4)}
    assert sorted(s["placement"][0]["node"] for s in before.values()) == a100

    with BindingWatcher(crds) as watcher:
        crds.apply(job("big", 8), namespace)
        crds.wait_for(lambda: running_on(crds, "big", namespace, 1), timeout=90, what="the 8-GPU job running")
        after = {name: status_of(crds, name, namespace) for name in before}
    assert watcher.samples > 0 and max(watcher.peak.values()) <= 8, dict(watcher.peak)

    moved = [name for name, s in after.items() if s["placement"][0]["node"] != before[name]["placement"][0]["node"]]
    assert moved, "no small job moved, yet the big one found a free node"
    for name in moved:
        status = after[name]
        assert status["phase"] == "Running"
        assert generation(status) > generation(before[name])
        record = status["reshardHistory"][-1]
        assert "moved by defrag" in record["reason"]
        assert record["fromReplicas"] == record["toReplicas"] == 1
        assert record.get("runningAt") is not None
    # every small job still runs exactly one replica, and nothing else was touched
    for name, s in after.items():
        assert len(s["placement"]) == 1 and s["phase"] == "Running", (name, s)
    big_node = status_of(crds, "big", namespace)["placement"][0]["node"]
    assert big_node in a100 and all(s["placement"][0]["node"] != big_node for s in after.values())
