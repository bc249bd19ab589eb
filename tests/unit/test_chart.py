"""The Helm chart, rendered by the real helm binary: lint, values, schema, RBAC, security."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import pytest
from chart_helpers import CHART, KUBE_VERSION, ROOT, by_kind, helm, one, render, render_text

NON_DEFAULT: dict[str, Any] = {
    "fullnameOverride": "sched",
    "replicaCount": 2,
    "image": {"repository": "registry.example.com/tessera", "digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "pull"}],
    "serviceAccount": {"create": True, "name": "tessera-sa", "annotations": {"iam.example.com/role": "r"}},
    "policy": {"name": "best-fit", "timeBudgetSeconds": 0.5, "seed": 7},
    "scheduling": {"intervalSeconds": 5},
    "rebalancing": {"periodSeconds": 60, "policy": "rebalance-cost-blind", "params": {"cooldown_seconds": 900},
                    "readyTimeoutSeconds": 120,
                    "load": {"prometheusUrl": "http://prometheus.monitoring:9090",
                             "query": 'sum by (namespace, svc) (rate(requests_total{job="vllm"}[2m]))',
                             "keyLabels": ["namespace", "svc"]}},
    "leaderElection": {"leaseDurationSeconds": 30},
    "logLevel": "DEBUG",
    "metrics": {
        "port": 9100,
        "service": {"enabled": True, "type": "ClusterIP", "port": 8443, "annotations": {"a": "b"}},
        "serviceMonitor": {"enabled": True, "namespace": "monitoring", "interval": "15s",
                           "scrapeTimeout": "5s", "labels": {"release": "prom"}},
        "dashboard": {"enabled": True, "namespace": "grafana", "labels": {"grafana_dashboard": "1"}},
    },
    "health": {"port": 8081},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}],
    "podAnnotations": {"x": "y"},
    "podLabels": {"team": "ml"},
    "extraEnv": [{"name": "TESSERA_EXTRA", "value": "1"}],
    "extraArgs": ["--context=prod"],
}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def args_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for arg in container(objects)["args"][1:]:
        key, _, value = arg.partition("=")
        out[key] = value
    return out


def test_helm_lint_strict() -> None:
    proc = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in proc.stdout


def test_helm_lint_strict_with_non_default_values(tmp_path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps(NON_DEFAULT))
    helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "--values", str(values))


def test_default_render_has_the_expected_objects() -> None:
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Role",
         "RoleBinding", "Service", "Deployment"]
    )
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tessera"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "tessera-system"


def test_default_operator_arguments_carry_the_policy_configuration() -> None:
    objects = render()
    c = container(objects)
    assert c["image"] == "tessera-operator:0.1.0"  # appVersion when no tag is given
    assert c["args"][0] == "operator"
    args = args_of(objects)
    assert args["--policy"] == "cpsat"
    assert float(args["--time-budget-seconds"]) == 1.0
    assert args["--seed"] == "0"
    assert float(args["--interval-seconds"]) == 2.0
    assert args["--lease-namespace"] == "tessera-system"
    assert args["--lease-name"] == "tessera-scheduler"
    assert args["--identity"] == "$(POD_NAME)"
    assert args["--metrics-port"] == "9090"
    assert args["--liveness"] == "http://0.0.0.0:8080/healthz"
    # out of the box the operator places with CP-SAT and reshards on node failures
    assert "--failure-handling" in c["args"] and "--no-failure-handling" not in c["args"]
    off = container(render({"scheduling": {"failureHandling": False}}))["args"]
    assert "--no-failure-handling" in off and "--failure-handling" not in off


def test_non_default_values_reach_the_objects() -> None:
    objects = render(NON_DEFAULT)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds.count("ServiceMonitor") == 1 and kinds.count("ConfigMap") == 1
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert deployment["metadata"]["name"] == "sched" and deployment["spec"]["replicas"] == 2
    assert c["image"] == "registry.example.com/tessera@sha256:" + "ab" * 32
    assert pod["serviceAccountName"] == "tessera-sa"
    assert pod["imagePullSecrets"] == [{"name": "pull"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"x": "y"}
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert {"name": "TESSERA_EXTRA", "value": "1"} in c["env"]
    args = args_of(objects)
    assert args["--policy"] == "best-fit" and float(args["--time-budget-seconds"]) == 0.5
    assert args["--seed"] == "7" and float(args["--interval-seconds"]) == 5
    assert args["--lease-duration-seconds"] == "30" and args["--lease-name"] == "sched-scheduler"
    assert args["--metrics-port"] == "9100" and args["--log-level"] == "DEBUG"
    assert args["--liveness"] == "http://0.0.0.0:8081/healthz"
    assert c["args"][-1] == "--context=prod"
    assert float(args["--rebalance-period-seconds"]) == 60 and args["--rebalance-policy"] == "rebalance-cost-blind"
    assert args["--rebalance-param"] == "cooldown_seconds=900" and float(args["--migration-ready-timeout-seconds"]) == 120
    assert args["--load-prometheus-url"] == "http://prometheus.monitoring:9090"
    assert args["--load-query"] == 'sum by (namespace, svc) (rate(requests_total{job="vllm"}[2m]))'
    assert args["--load-key-labels"] == "namespace,svc"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9100, "health": 8081}
    sa = one(objects, "ServiceAccount")
    assert sa["metadata"]["name"] == "tessera-sa"
    assert sa["metadata"]["annotations"] == {"iam.example.com/role": "r"}
    for binding in by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tessera-sa", "namespace": "tessera-system"}]
    lease_rule = one(objects, "Role")["rules"][1]
    assert lease_rule["resourceNames"] == ["sched-scheduler"]


def test_service_monitor_selects_the_metrics_service() -> None:
    objects = render(NON_DEFAULT)
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["tessera-system"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "5s"
    # the Service reaches the container's metrics port by name, whatever its number
    assert service["spec"]["ports"][0] == {"name": "metrics", "port": 8443, "targetPort": "metrics", "protocol": "TCP"}
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_dashboard_configmap_carries_the_dashboard_file() -> None:
    objects = render(NON_DEFAULT)
    cm = one(objects, "ConfigMap")
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["tessera.json"] == (CHART / "dashboards" / "tessera.json").read_text().rstrip("\n")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"policy": {"name": "best-fit", "timeBudgetSeconds": 0}}, "timeBudgetSeconds"),
        ({"policy": {"name": "Best Fit", "timeBudgetSeconds": 1}}, "/policy/name"),
        ({"logLevel": "chatty"}, "logLevel"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"leaderElection": {"leaseDurationSeconds": 1}}, "leaseDurationSeconds"),
        ({"watchEverything": True}, "additional properties 'watchEverything' not allowed"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    proc = render_text(values, check=False)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert message in proc.stderr, proc.stderr


def test_service_monitor_without_service_fails_with_a_reason() -> None:
    proc = render_text({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}, check=False)
    assert proc.returncode != 0 and "metrics.service.enabled" in proc.stderr


def test_security_context_is_restricted() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # the only writable path is an emptyDir
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    assert "emptyDir" in pod["volumes"][0]
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_probes_and_resources() -> None:
    c = container(render())
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]


# --- RBAC -------------------------------------------------------------------------------

def rendered_rules(objects: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    """(scope, group, resource, verb, resourceName or '') for every rule."""
    out = set()
    for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
        scope = ("release namespace" if role["kind"] == "Role"
                 else "workload namespaces" if role["metadata"]["name"].endswith("-workloads") else "cluster")
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [""]:
                            out.add((scope, group, resource, verb, name))
    return out


def documented_rules() -> set[tuple[str, str, str, str, str]]:
    """The RBAC table of docs/helm.md, expanded the same way (release name 'tessera')."""
    text = (ROOT / "docs" / "helm.md").read_text()
    table = text[text.index("<!-- rbac-table"):]
    out = set()
    for line in table.splitlines()[3:]:
        if not line.startswith("|"):
            break
        group, resources, verbs, scope = (c.strip() for c in line.strip("|").split("|")[:4])
        group = "" if group == "core" else group.strip("`")
        names = re.findall(r"only `<fullname>-([a-z-]+)`", resources)
        resource_list = re.findall(r"`([a-z./]+)`", re.sub(r"\(only[^)]*\)", "", resources))
        for resource in resource_list:
            for verb in (v.strip() for v in verbs.split(",")):
                out.add((scope, group, resource, verb, f"tessera-{names[0]}" if names else ""))
    return out


def test_rbac_matches_the_documented_table() -> None:
    # release "tessera": the full name is "tessera", the Lease "tessera-scheduler"
    assert rendered_rules(render()) == documented_rules()


def test_rbac_has_no_wildcards_secrets_or_escalation() -> None:
    rules = rendered_rules(render())
    for _scope, group, resource, verb, _name in rules:
        assert "*" not in (group, resource, verb)
        assert resource not in {"secrets", "serviceaccounts/token", "pods/exec", "pods/attach",
                                "roles", "clusterroles", "rolebindings", "clusterrolebindings"}
        assert verb not in {"escalate", "bind", "impersonate", "deletecollection"}
    node_verbs = {verb for _s, g, r, verb, _n in rules if (g, r) == ("", "nodes")}
    assert node_verbs == {"get", "list", "watch"}
    # elastic plan delivery: ConfigMaps and Services are created/updated, never deleted or listed
    configmap_verbs = {verb for _s, g, r, verb, _n in rules if (g, r) == ("", "configmaps")}
    assert configmap_verbs == {"get", "create", "patch"}
    assert {verb for _s, g, r, verb, _n in rules if (g, r) == ("", "services")} == {"get", "create"}
    # every write is a workload-namespace right, never a cluster-scope one, except the
    # status of the cluster-scoped Queues (a RoleBinding cannot grant that)
    writes = {(g, r, verb) for scope, g, r, verb, _n in rules
              if scope == "cluster" and verb not in {"get", "list", "watch"}}
    assert writes == {("tessera.dev", "queues/status", "patch"), ("tessera.dev", "queues/status", "update")}, writes
    # Queues themselves are the admin's: read-only to the operator
    assert {verb for _s, g, r, verb, _n in rules if (g, r) == ("tessera.dev", "queues")} == {"get", "list", "watch"}


def bindings(objects: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(kind, namespace or '') -> role name, for every binding of the chart's ServiceAccount."""
    out = {}
    for binding in by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tessera", "namespace": "tessera-system"}]
        out[(binding["kind"], binding["metadata"].get("namespace", ""), binding["roleRef"]["name"])] = \
            binding["roleRef"]["kind"]
    return out


def test_by_default_the_workload_rights_are_cluster_wide() -> None:
    # documented as such (docs/helm.md, docs/security.md): kube-system included
    assert bindings(render()) == {
        ("ClusterRoleBinding", "", "tessera"): "ClusterRole",
        ("ClusterRoleBinding", "", "tessera-workloads"): "ClusterRole",
        ("RoleBinding", "tessera-system", "tessera-leader"): "Role",
    }


def test_rbac_namespaces_grant_the_workload_rights_only_there() -> None:
    objects = render({"rbac": {"create": True, "namespaces": ["team-a", "team-b"]}})
    assert bindings(objects) == {
        ("ClusterRoleBinding", "", "tessera"): "ClusterRole",
        ("RoleBinding", "team-a", "tessera-workloads"): "ClusterRole",
        ("RoleBinding", "team-b", "tessera-workloads"): "ClusterRole",
        ("RoleBinding", "tessera-system", "tessera-leader"): "Role",
    }
    # the rules themselves do not change with the scope
    assert rendered_rules(objects) == rendered_rules(render())
    # nothing grants the workload rights cluster-wide any more
    workloads = next(r for r in by_kind(objects, "ClusterRole") if r["metadata"]["name"] == "tessera-workloads")
    assert not [b for b in by_kind(objects, "ClusterRoleBinding") if b["roleRef"]["name"] == workloads["metadata"]["name"]]
    # and the operator schedules (and runs kopf's handlers) in those namespaces only
    args = container(objects)["args"]
    assert [a for a in args if a.startswith("--namespace=")] == ["--namespace=team-a", "--namespace=team-b"]
    assert not [a for a in container(render())["args"] if a.startswith("--namespace")]


@pytest.mark.parametrize("namespaces", [["Team-A"], ["a", "a"], "team-a", [""], ["x" * 64]])
def test_schema_rejects_bad_rbac_namespaces(namespaces: Any) -> None:
    proc = render_text({"rbac": {"create": True, "namespaces": namespaces}}, check=False)
    assert proc.returncode != 0, f"helm accepted rbac.namespaces={namespaces!r}"
    assert "rbac" in proc.stderr and "namespaces" in proc.stderr, proc.stderr


def test_rbac_can_be_left_to_the_user() -> None:
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}})
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "Role")
    assert not by_kind(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"



@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_rendered_arguments_are_accepted_by_the_operator_cli(values: dict[str, Any] | None) -> None:
    """The Deployment's args parse with `tessera operator`'s own argument parser."""
    main = pytest.importorskip("tessera.operator.main", reason="the operator is not in this tree yet")
    parser = argparse.ArgumentParser(prog="tessera operator", exit_on_error=False)
    main.add_arguments(parser)
    args = container(render(values))["args"]
    assert args[0] == "operator"
    parsed = parser.parse_args([a.replace("$(POD_NAME)", "pod-0") for a in args[1:]])
    expected = {**{"policy": "cpsat", "time_budget_seconds": 1.0, "seed": 0, "interval_seconds": 2.0,
                   "failure_handling": True,
                   "metrics_port": 9090, "lease_name": "tessera-scheduler", "lease_duration_seconds": 15,
                   "liveness": "http://0.0.0.0:8080/healthz", "identity": "pod-0"},
                **({"policy": "best-fit", "time_budget_seconds": 0.5, "seed": 7, "interval_seconds": 5.0,
                    "metrics_port": 9100, "lease_name": "sched-scheduler", "lease_duration_seconds": 30,
                    "liveness": "http://0.0.0.0:8081/healthz", "context": "prod", "rebalance_period_seconds": 60.0,
                    "rebalance_param": ["cooldown_seconds=900"], "load_key_labels": "namespace,svc"} if values else
                   {"rebalance_period_seconds": 0.0, "load_prometheus_url": ""})}
    for key, value in expected.items():
        assert getattr(parsed, key) == value, key
