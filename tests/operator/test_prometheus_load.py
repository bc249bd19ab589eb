"""PrometheusLoadSource against a real Prometheus server scraping a real exporter.

The test starts a prometheus_client exporter on a free loopback port, then Debian's
``prometheus`` (installed by ``hack/install-prometheus.sh``) on another, scraping it every
second, and queries through the LoadSource. No Kubernetes is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge
from prometheus_server import ExporterServer, free_port, run_prometheus

from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement, WorkloadKind
from tessera.engine import with_load
from tessera.operator.load_prometheus import LoadSourceError, PrometheusLoadSource
from tessera.testing.builders import gang, node

ROOT = Path(__file__).resolve().parents[2]


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    command = ["bash", str(ROOT / "hack" / "install-prometheus.sh")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    found = shutil.which("prometheus")
    if found:
        return found
    reason = f"prometheus could not be installed: `{' '.join(command)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
    if os.environ.get("TESSERA_REQUIRE_CLUSTER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class Exporter(ExporterServer):
    def __init__(self) -> None:
        super().__init__()
        self.rps = Gauge("tessera_test_requests_per_second", "test load", ["namespace", "service", "pod"], registry=self.registry)
        self.requests = Counter("tessera_inference_requests", "test requests", ["namespace", "service"], registry=self.registry)


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    e.rps.labels("prod", "chat", "chat-0").set(3.0)
    e.rps.labels("prod", "chat", "chat-1").set(1.5)
    e.rps.labels("prod", "code", "code-0").set(0.25)
    e.rps.labels("dev", "chat", "chat-0").set(7.0)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = prometheus_binary()
    work = tmp_path_factory.mktemp("prometheus")
    with run_prometheus(binary, work, "exporter", f"127.0.0.1:{exporter.port}") as url:
        yield url


def wait_for_load(source: PrometheusLoadSource, expect_keys: set[str], timeout: float = 30.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        last = dict(source.load())
        if expect_keys <= set(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"no scrape of {expect_keys} within {timeout}s (last answer {last})")


def test_sum_by_service_keys_namespace_slash_service(prometheus: str):
    source = PrometheusLoadSource(prometheus, "sum by (namespace, service) (tessera_test_requests_per_second)")
    load = wait_for_load(source, {"prod/chat", "prod/code", "dev/chat"})
    assert load == {"prod/chat": 4.5, "prod/code": 0.25, "dev/chat": 7.0}


def test_key_labels_are_configurable(prometheus: str):
    source = PrometheusLoadSource(prometheus, "tessera_test_requests_per_second", key_labels=("pod",))
    load = wait_for_load(source, {"chat-0", "chat-1", "code-0"})
    # two series carry pod="chat-0" (namespaces prod and dev): they are summed under one key
    assert load == {"chat-0": 10.0, "chat-1": 1.5, "code-0": 0.25}


def test_rate_of_a_counter(exporter: Exporter, prometheus: str):
    # the default query's shape with a short window, so a few seconds of samples fill it
    source = PrometheusLoadSource(prometheus, "sum by (namespace, service) (rate(tessera_inference_requests_total[5s]))")
    started = time.monotonic()
    load: dict[str, float] = {}
    while time.monotonic() - started < 30:
        exporter.requests.labels("prod", "chat").inc(1)  # ~10 requests/s
        time.sleep(0.1)
        if time.monotonic() - started > 8:
            load = dict(source.load())
            if 7.0 < load.get("prod/chat", 0.0) < 13.0:
                break
    assert 7.0 < load["prod/chat"] < 13.0, load


def test_load_flows_into_the_snapshot(prometheus: str):
    source = PrometheusLoadSource(prometheus, "sum by (namespace, service) (tessera_test_requests_per_second)")
    load = wait_for_load(source, {"prod/chat"})
    svc = gang("prod/chat", 2, 1, ("A100",), kind=WorkloadKind.INFERENCE)
    snapshot = ClusterSnapshot(
        [node("a", "A100", 2)], [Allocation(svc, (ReplicaPlacement(0, "a", "A100", (0,)), ReplicaPlacement(1, "a", "A100", (1,))))]
    )
    assert with_load(snapshot, load).allocations["prod/chat"].observed_load_per_second == 4.5


def test_bad_query_reports_prometheus_error(prometheus: str):
    source = PrometheusLoadSource(prometheus, "sum by (service (broken")
    with pytest.raises(LoadSourceError, match="Prometheus rejected query"):
        source.load()


def test_range_vector_is_refused(prometheus: str):
    source = PrometheusLoadSource(prometheus, "tessera_test_requests_per_second[1m]")
    with pytest.raises(LoadSourceError, match="expected an instant vector"):
        source.load()


def test_unreachable_server_is_a_load_source_error():
    source = PrometheusLoadSource(f"http://127.0.0.1:{free_port()}", timeout_seconds=1.0)
    with pytest.raises(LoadSourceError, match=r"GET http://127\.0\.0\.1"):
        source.load()
