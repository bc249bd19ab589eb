"""The chart against the real API server: server-side dry run, Pod Security, helm install."""

from __future__ import annotations

import copy
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the chart helpers
from chart_helpers import CHART, helm, one, render, render_text
from test_chart import NON_DEFAULT

# The API server has no Prometheus Operator CRDs, so the ServiceMonitor cannot be checked
# server-side; tests/unit/test_chart.py checks it selects the metrics Service.
NOT_ON_THIS_SERVER = {"ServiceMonitor"}


def dry_run(cluster: Any, rendered: str) -> tuple[str, int]:
    """Server-side dry run of helm's own output (not re-serialised), document by document."""
    docs = [d for d in rendered.split("\n---\n") if yaml.safe_load(d)]
    kept = [d for d in docs if yaml.safe_load(d)["kind"] not in NOT_ON_THIS_SERVER]
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input="\n---\n".join(kept), check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, len(kept)


@pytest.fixture
def second_namespace(cluster: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_default_render_passes_server_side_dry_run(cluster: Any, namespace: str) -> None:
    out, count = dry_run(cluster, render_text(namespace=namespace, release=f"d{namespace[2:]}").stdout)
    assert count == 9 and out.count("(server dry run)") == count  # 2 ClusterRoles, 2 ClusterRoleBindings


def test_non_default_render_passes_server_side_dry_run(cluster: Any, namespace: str, second_namespace: str) -> None:
    values = copy.deepcopy(NON_DEFAULT)
    values["fullnameOverride"] = f"n{namespace[2:]}"
    values["metrics"]["dashboard"]["namespace"] = second_namespace  # e.g. Grafana's namespace
    values["metrics"]["serviceMonitor"]["namespace"] = second_namespace
    rendered = render_text(values, namespace=namespace).stdout
    assert "kind: ServiceMonitor" in rendered
    out, count = dry_run(cluster, rendered)
    assert count == 10 and out.count("(server dry run)") == count  # + the dashboard ConfigMap


def test_a_broken_manifest_fails_server_side_dry_run(cluster: Any, namespace: str) -> None:
    # the dry run validates against the server's schemas: show that it can fail
    objects = render(namespace=namespace, release=f"b{namespace[2:]}")
    deployment = one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "metrics"
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(deployment), check=False)
    assert proc.returncode != 0


def restricted_namespace(cluster: Any, name: str) -> None:
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")


def pod_from(objects: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    template = one(objects, "Deployment")["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "operator-pss-check", "namespace": namespace, "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


def test_operator_pod_meets_the_restricted_pod_security_standard(cluster: Any, namespace: str) -> None:
    restricted_namespace(cluster, namespace)
    # the ServiceAccount must exist for the pod to be admitted
    cluster.kubectl("create", "serviceaccount", "tessera", "-n", namespace)
    pod = pod_from(render(namespace=namespace), namespace)
    proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "would violate" not in proc.stderr  # no PodSecurity warning either


def test_pod_security_admission_refuses_a_weaker_context(cluster: Any, namespace: str) -> None:
    # control: the same pod with privilege escalation allowed is refused in that namespace
    restricted_namespace(cluster, namespace)
    cluster.kubectl("create", "serviceaccount", "tessera", "-n", namespace)
    pod = pod_from(render({"securityContext": {"allowPrivilegeEscalation": True}}, namespace=namespace), namespace)
    proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, proc.stderr


def test_helm_install_into_the_cluster(cluster: Any, namespace: str) -> None:
    release = f"i{namespace[2:]}"
    # replicaCount=0: this control plane has no container runtime to run the image; the
    # operator runs out of cluster under the chart's identity in test_rbac.py
    proc = helm("install", release, str(CHART), "--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig),
                "--set", "replicaCount=0", "--wait", "--timeout", "60s", env=cluster.env)
    assert "STATUS: deployed" in proc.stdout
    # NOTES.txt rendered with the release's names
    assert f"rollout status deployment/{release}-tessera" in proc.stdout
    assert f"{namespace}/{release}-tessera-scheduler" in proc.stdout
    try:
        fullname = f"{release}-tessera"
        assert cluster.get_json("deployment", fullname, "-n", namespace)["spec"]["replicas"] == 0
        cluster.get_json("serviceaccount", fullname, "-n", namespace)
        cluster.get_json("service", f"{fullname}-metrics", "-n", namespace)
        cluster.get_json("clusterrole", fullname)
        binding = cluster.get_json("clusterrolebinding", fullname)
        assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": fullname, "namespace": namespace}
        cluster.get_json("role", f"{fullname}-leader", "-n", namespace)
        # the CRDs come with the chart (crds/) when it carries any
        for path in sorted((CHART / "crds").glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
        # the documented CRD upgrade step works on CRDs Helm created
        upgrade = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        assert upgrade.stdout.count("serverside-applied") == len(list((CHART / "crds").glob("*.yaml")))
        # an upgrade with other values goes through too (and keeps the schema check)
        proc = helm("upgrade", release, str(CHART), "--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig),
                    "--set", "replicaCount=0", "--set-json", "policy.timeBudgetSeconds=2.5", env=cluster.env)
        args = cluster.get_json("deployment", fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--time-budget-seconds=2.5" in args
        bad = helm("upgrade", release, str(CHART), "--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig),
                   "--set", "policy.timeBudgetSeconds=-1", env=cluster.env, check=False)
        assert bad.returncode != 0 and "timeBudgetSeconds" in bad.stderr
    finally:
        helm("uninstall", release, "--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig), env=cluster.env,
             check=False)

