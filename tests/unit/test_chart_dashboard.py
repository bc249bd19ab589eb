"""The Grafana dashboard queries only documented metrics, and uses all of them."""

from __future__ import annotations

import json
import re

from chart_helpers import CHART, documented_metrics

SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((CHART / "dashboards" / "tessera.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    names = set()
    for expr in exprs:
        for name in re.findall(r"\btessera_[a-z0-9_]+", expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in documented_metrics():
                    name = name[: -len(suffix)]
            names.add(name)
    return names


def test_documented_metrics_follow_prometheus_naming() -> None:
    docs = documented_metrics()
    assert len(docs) >= 12
    for name, (kind, _labels) in docs.items():
        assert kind in {"counter", "gauge", "histogram"}, name
        assert name.endswith("_total") == (kind == "counter"), f"{name}: counters and only counters end in _total"
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: histograms here measure time in seconds"


def test_dashboard_uses_only_documented_metrics() -> None:
    unknown = dashboard_metric_names() - set(documented_metrics())
    assert not unknown, f"dashboard queries undocumented metrics: {sorted(unknown)}"


def test_every_documented_metric_is_on_the_dashboard() -> None:
    unused = set(documented_metrics()) - dashboard_metric_names()
    assert not unused, f"documented metrics missing from the dashboard: {sorted(unused)}"


def test_dashboard_is_importable() -> None:
    dashboard = json.loads((CHART / "dashboards" / "tessera.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
