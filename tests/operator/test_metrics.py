"""The operator's /metrics after a real scheduling cycle serves every documented metric.

docs/metrics.md is the contract: each metric in its reference table must be served with
the documented type and label names, and the values must describe the cycle that just ran
(an example placed on the fixture cluster).
"""

from __future__ import annotations

import socket
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the chart helpers
from chart_helpers import ROOT, documented_metrics

operator_process = pytest.importorskip(
    "operator_process", reason="the operator (tests/operator/operator_process.py) is not in this tree yet"
)

EXAMPLE = ROOT / "examples" / "elasticjob-basic.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def cycles(port: int) -> float:
    family = scrape(port)["tessera_scheduling_cycle_duration_seconds"]
    return next(s.value for s in family.samples if s.name.endswith("_count"))


def family_name(metric: str, kind: str) -> str:
    # the exposition parser names counter families without their _total suffix
    return metric.removesuffix("_total") if kind == "counter" else metric


@pytest.fixture(scope="module")
def scheduled(crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int, int]]:
    """An operator with a metrics port, after it placed the example (then cleaned up).

    Module-scoped: one operator run serves all the checks below.
    """
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    crds.kubectl("create", "namespace", namespace)
    if crds.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode != 0:
        crds.kubectl("create", "serviceaccount", "default", "-n", namespace, check=False)
    port, health_port = free_port(), free_port()
    proc = operator_process.OperatorProcess(
        crds.kubeconfig, tmp_path_factory.mktemp("metrics") / "operator.log", "--metrics-port", str(port),
        "--liveness", f"http://127.0.0.1:{health_port}/healthz",
        "--lease-namespace", namespace, "--lease-name", "metrics-test",
    ).start()
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    try:
        crds.apply(EXAMPLE, namespace=namespace)
        crds.wait_for(
            lambda: (crds.get_json("elasticjob", name, "-n", namespace).get("status") or {}).get("phase") == "Running",
            timeout=60, what=f"{name} Running",
        )
        # two more cycles: the second one surely started after the job was running, so the
        # gauges describe it
        done = cycles(port)
        crds.wait_for(lambda: cycles(port) >= done + 2, timeout=20, what="two more scheduling cycles")
        yield crds, port, health_port
        crds.kubectl("delete", "elasticjob", name, "-n", namespace, "--wait=false")
        crds.wait_for(lambda: not crds.get_json("pods", "-n", namespace)["items"], timeout=40,
                      what="the example's pods deleted")
    finally:
        proc.stop()
        print(f"----- operator log\n{proc.log()[-6000:]}")
        crds.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_every_documented_metric_is_served_with_its_type_and_labels(scheduled: tuple[Any, int, int]) -> None:
    _cluster, port, _health = scheduled
    families = scrape(port)
    missing, wrong = [], []
    for metric, (kind, labels) in documented_metrics().items():
        family = families.get(family_name(metric, kind))
        if family is None:
            missing.append(metric)
            continue
        if family.type != kind:
            wrong.append(f"{metric}: type {family.type}, documented {kind}")
        for sample in family.samples:
            got = set(sample.labels) - {"le"}
            if got != set(labels):
                wrong.append(f"{metric}: labels {sorted(got)}, documented {sorted(labels)}")
                break
    assert not missing, f"documented but not served: {missing}"
    assert not wrong, wrong


def test_served_tessera_metrics_are_all_documented(scheduled: tuple[Any, int, int]) -> None:
    _cluster, port, _health = scheduled
    documented = {family_name(m, kind) for m, (kind, _labels) in documented_metrics().items()}
    # prometheus_client adds a <name>_created series to counters and histograms
    served = {name.removesuffix("_created") for name in scrape(port) if name.startswith("tessera_")}
    assert served <= documented, f"served but not in docs/metrics.md: {sorted(served - documented)}"


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    total = 0.0
    for sample in families[name].samples:
        if sample.name in (name, f"{name}_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
            total += sample.value
    return total


def test_metric_values_describe_the_cycle(scheduled: tuple[Any, int, int]) -> None:
    cluster, port, _health = scheduled
    families = scrape(port)
    job = yaml.safe_load(EXAMPLE.read_text())
    per_replica = job["spec"]["acceleratorsPerReplica"]
    # capacity: the fixture nodes, by accelerator type
    nodes = cluster.get_json("nodes")["items"]
    gpus = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in nodes)
    npus = sum(int(n["status"]["allocatable"].get("huawei.com/Ascend910", 0)) for n in nodes)
    capacity = sum(s.value for s in families["tessera_capacity_accelerators"].samples)
    assert capacity == gpus + npus
    # the example runs: its replicas hold accelerators of one allowed type
    allocated = {s.labels["accelerator_type"]: s.value for s in families["tessera_allocated_accelerators"].samples
                 if s.value}
    allowed = {t["name"] for t in job["spec"]["acceleratorTypes"]}
    assert set(allocated) <= allowed and len(allocated) == 1
    replicas = next(iter(allocated.values())) / per_replica
    assert job["spec"]["replicas"]["min"] <= replicas <= job["spec"]["replicas"]["max"]
    assert value(families, "tessera_placements") >= 1
    assert value(families, "tessera_pending_gangs") == 0
    assert families["tessera_scheduling_cycle_duration_seconds"].samples
    policy_samples = [s for s in families["tessera_decision_latency_seconds"].samples if s.name.endswith("_count")]
    assert policy_samples and policy_samples[0].labels["policy"] == "best-fit" and policy_samples[0].value >= 1


def test_the_probe_endpoint_the_chart_uses_answers(scheduled: tuple[Any, int, int]) -> None:
    """The chart's probes GET /healthz on --liveness: the operator serves it (kopf's probe)."""
    _cluster, _port, health_port = scheduled
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as response:
        assert response.status == 200
