"""The operator's /metrics after a real scheduling cycle serves every documented metric.

docs/metrics.md is the contract: each metric in its reference table must be served with
the documented type and label names, and the values must describe the cycle that just ran
(an example placed on the fixture cluster).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_server import free_port, run_prometheus

from tessera.operator.main import DEFAULT_POLICY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the chart helpers
from chart_helpers import CHART, ROOT, documented_metrics

operator_process = pytest.importorskip(
    "operator_process", reason="the operator (tests/operator/operator_process.py) is not in this tree yet"
)

EXAMPLE = ROOT / "examples" / "elasticjob-basic.yaml"


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
    # the example runs: its replicas hold accelerators of one allowed type, and the gauge
    # counts them (pods other tests left terminating on the shared cluster may count too)
    allocated = {s.labels["accelerator_type"]: s.value for s in families["tessera_allocated_accelerators"].samples
                 if s.value}
    [example] = [j for j in cluster.get_json("elasticjobs", "-A")["items"]
                 if j["metadata"]["name"] == job["metadata"]["name"] and (j.get("status") or {}).get("phase") == "Running"]
    accelerator_type, replicas = example["status"]["acceleratorType"], example["status"]["replicas"]
    assert accelerator_type in {t["name"] for t in job["spec"]["acceleratorTypes"]}
    assert job["spec"]["replicas"]["min"] <= replicas <= job["spec"]["replicas"]["max"]
    assert allocated.get(accelerator_type, 0) >= replicas * per_replica, allocated
    assert value(families, "tessera_placements") >= 1
    assert value(families, "tessera_pending_gangs") == 0
    assert families["tessera_scheduling_cycle_duration_seconds"].samples
    policy_samples = [s for s in families["tessera_decision_latency_seconds"].samples if s.name.endswith("_count")]
    assert policy_samples and policy_samples[0].labels["policy"] == DEFAULT_POLICY and policy_samples[0].value >= 1


def test_the_probe_endpoint_the_chart_uses_answers(scheduled: tuple[Any, int, int]) -> None:
    """The chart's probes GET /healthz on --liveness: the operator serves it (kopf's probe)."""
    _cluster, _port, health_port = scheduled
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as response:
        assert response.status == 200


# --- Prometheus itself: naming lint and the dashboard's queries -------------------------

def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not on PATH (make prometheus: hack/install-prometheus.sh)")
    return found


def test_exposition_passes_promtool_naming_lint(scheduled: tuple[Any, int, int]) -> None:
    """`promtool check metrics`: Prometheus' own naming rules (base units, _total on counters only)."""
    _cluster, port, _health = scheduled
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    proc = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def prometheus(scheduled: tuple[Any, int, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the operator every second; yields its URL after 3 scrapes."""
    _cluster, port, _health = scheduled
    work = tmp_path_factory.mktemp("prometheus")
    with run_prometheus(tool("prometheus"), work, "tessera", f"127.0.0.1:{port}") as url:
        deadline = time.monotonic() + 60
        while True:
            try:
                if float(promql(url, 'count_over_time(up{job="tessera"}[1m])')[0]["value"][1]) >= 3:
                    break
            except (OSError, IndexError, KeyError):
                pass
            assert time.monotonic() < deadline, "prometheus did not scrape the operator 3 times in 60s"
            time.sleep(0.5)
        yield url


def promql(url: str, expr: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:  # 400: the expression does not parse
        raise AssertionError(f"{expr}: {err.read().decode()}") from err
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((CHART / "dashboards" / "tessera.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_dashboard_query_runs_on_prometheus(prometheus: str) -> None:
    # Grafana's variables, as Grafana would substitute them
    answered = {}
    for title, expr in dashboard_queries():
        concrete = expr.replace("$__rate_interval", "30s").replace("$policy", ".*")
        answered[(title, expr)] = promql(prometheus, concrete)
    # and the panels that must show something once a job runs do
    with_data = {title for (title, _expr), result in answered.items() if result}
    for title in ("Accelerator utilisation", "Scheduling cycle duration", "Decision latency p95 by policy",
                  "Allocated accelerators by type and node pool", "Utilisation by accelerator type",
                  "Placements (1h)", "Scheduler leader"):
        assert title in with_data, f"dashboard panel {title!r} shows no data"
    utilisation = promql(prometheus, "sum(tessera_allocated_accelerators) / sum(tessera_capacity_accelerators)")
    assert 0 < float(utilisation[0]["value"][1]) < 1
