"""The chart's identity on the real API server: enough to schedule, and nothing more.

The chart is installed with helm; the tests then use a token of its ServiceAccount
(`kubectl create token`), not impersonation, so authentication and authorization are
exactly what the operator gets in a pod.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from workload_views import example_runs_then_goes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the chart helpers
from chart_helpers import CHART, ROOT, helm
from prometheus_server import free_port

EXAMPLES = ROOT / "examples"

#: What every authenticated user may do (system:basic-user, system:discovery,
#: system:public-info-viewer); it shows up in any rules review.
AUTHENTICATED = {
    ("authorization.k8s.io", "selfsubjectaccessreviews", "create", ""),
    ("authorization.k8s.io", "selfsubjectrulesreviews", "create", ""),
    ("authentication.k8s.io", "selfsubjectreviews", "create", ""),
}


@dataclass
class Identity:
    """The chart's ServiceAccount, with a kubeconfig holding one of its tokens."""

    release: str
    namespace: str
    service_account: str
    kubeconfig: Path

    @property
    def fullname(self) -> str:
        return f"{self.release}-tessera"




def token_kubeconfig(cluster: Any, namespace: str, service_account: str, path: Path) -> Path:
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": service_account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def identity(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    release = f"r{uuid.uuid4().hex[:6]}"
    namespace = f"tessera-{release}"
    helm("install", release, str(CHART), "--namespace", namespace, "--create-namespace",
         "--kubeconfig", str(cluster.kubeconfig), "--set", "replicaCount=0", env=cluster.env)
    sa = f"{release}-tessera"
    kubeconfig = token_kubeconfig(cluster, namespace, sa, tmp_path_factory.mktemp("sa") / "kubeconfig")
    try:
        yield Identity(release, namespace, sa, kubeconfig)
    finally:
        helm("uninstall", release, "--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig),
             env=cluster.env, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def access(cluster: Any, who: Identity, checks: list[tuple[str, str, str | None, str | None]],
           workload_namespace: str) -> list[bool]:
    """SelfSubjectAccessReviews sent with the ServiceAccount's own token, all in one request.

    Each check is (verb, "resource[.group][/subresource]", where, name); ``where`` is "ws"
    (a workload namespace), "own" (the release namespace), another namespace, or None
    (all namespaces / cluster scope); name "lease" means the chart's own Lease.
    """
    items = []
    for verb, target, where, name in checks:
        resource, _, subresource = target.partition("/")
        resource, _, group = resource.partition(".")
        attributes = {"verb": verb, "resource": resource, "group": group, "subresource": subresource,
                      "namespace": {"ws": workload_namespace, "own": who.namespace}.get(where or "", where or ""),
                      "name": f"{who.fullname}-scheduler" if name == "lease" else (name or "")}
        items.append({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": attributes}})
    proc = cluster.kubectl("--kubeconfig", str(who.kubeconfig), "create", "-f", "-", "-o", "json",
                           input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    # kubectl prints one JSON object per created review, back to back
    decoder, text, answers, pos = json.JSONDecoder(), proc.stdout, [], 0
    while pos < len(text.rstrip()):
        obj, pos = decoder.raw_decode(text, pos)
        answers.append(obj)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    assert len(answers) == len(checks), proc.stdout
    return [bool(a["status"].get("allowed")) for a in answers]


def rules_in(cluster: Any, who: Identity, namespace: str) -> set[tuple[str, str, str, str]]:
    """(group, resource, verb, resourceName) the identity holds in ``namespace``, per the API server."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    proc = cluster.kubectl("--kubeconfig", str(who.kubeconfig), "create", "-f", "-", "-o", "json",
                           input=json.dumps(review))
    status = json.loads(proc.stdout)["status"]
    assert not status.get("incomplete"), status
    out = set()
    for rule in status["resourceRules"]:
        for group in rule.get("apiGroups", [""]):
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        out.add((group, resource, verb, name))
    return out


def chart_rules(who: Identity, with_lease: bool) -> set[tuple[str, str, str, str]]:
    """The rules the chart grants, expanded from the rendered ClusterRole (and Role)."""
    out = set()
    rendered = helm("template", who.release, str(CHART), "--namespace", who.namespace, "--kube-version", "1.34.0")
    for obj in yaml.safe_load_all(rendered.stdout):
        if obj and (obj["kind"] == "ClusterRole" or (with_lease and obj["kind"] == "Role")):
            for rule in obj["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            for name in rule.get("resourceNames") or [""]:
                                out.add((group, resource, verb, name))
    return out


def test_the_identity_holds_exactly_the_chart_rules_in_a_workload_namespace(cluster: Any, identity: Identity,
                                                                            namespace: str) -> None:
    held = rules_in(cluster, identity, namespace)
    assert held - AUTHENTICATED == chart_rules(identity, with_lease=False)


def test_the_identity_holds_exactly_the_chart_rules_in_its_own_namespace(cluster: Any, identity: Identity) -> None:
    held = rules_in(cluster, identity, identity.namespace)
    assert held - AUTHENTICATED == chart_rules(identity, with_lease=True)


NEEDED = [
    ("list", "nodes", None, None),
    ("watch", "nodes", None, None),
    ("list", "pods", None, None),
    ("create", "pods", "ws", None),
    ("delete", "pods", "ws", None),
    ("create", "pods/binding", "ws", None),
    ("list", "elasticjobs.tessera.dev", None, None),
    ("watch", "inferenceservices.tessera.dev", None, None),
    ("patch", "elasticjobs.tessera.dev", "ws", None),
    ("patch", "elasticjobs.tessera.dev/status", "ws", None),
    ("update", "elasticjobs.tessera.dev/finalizers", "ws", None),
    ("patch", "inferenceservices.tessera.dev/status", "ws", None),
    ("list", "queues.tessera.dev", None, None),
    ("list", "namespaces", None, None),
    ("list", "priorityclasses.scheduling.k8s.io", None, None),
    ("watch", "priorityclasses.scheduling.k8s.io", None, None),
    ("watch", "queues.tessera.dev", None, None),
    ("patch", "queues.tessera.dev/status", None, None),
    ("create", "events", "ws", None),
    ("get", "configmaps", "ws", None),
    ("create", "configmaps", "ws", None),
    ("patch", "configmaps", "ws", None),
    ("create", "services", "ws", None),
    ("get", "services", "ws", None),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("list", "resourceslices.resource.k8s.io", None, None),
    ("watch", "deviceclasses.resource.k8s.io", None, None),
    ("watch", "resourceclaims.resource.k8s.io", None, None),
    ("get", "resourceclaims.resource.k8s.io", "ws", None),
    ("create", "resourceclaims.resource.k8s.io", "ws", None),
    ("delete", "resourceclaims.resource.k8s.io", "ws", None),
    ("patch", "resourceclaims.resource.k8s.io/status", "ws", None),
    ("watch", "workloads.kueue.x-k8s.io", None, None),
    ("list", "resourceflavors.kueue.x-k8s.io", None, None),
    ("create", "workloads.kueue.x-k8s.io", "ws", None),
    ("patch", "workloads.kueue.x-k8s.io/status", "ws", None),
    ("create", "leases.coordination.k8s.io", "own", None),
    ("update", "leases.coordination.k8s.io", "own", "lease"),
    ("get", "leases.coordination.k8s.io", "own", "lease"),
]

FORBIDDEN = [
    ("get", "secrets", "ws", None),
    ("list", "secrets", None, None),
    ("get", "secrets", "own", None),
    ("delete", "configmaps", "ws", None),
    ("delete", "services", "ws", None),
    ("patch", "services", "ws", None),
    ("patch", "nodes", None, None),
    ("update", "nodes", None, None),
    ("delete", "nodes", None, None),
    ("patch", "nodes/status", None, None),
    ("update", "pods", "ws", None),
    ("patch", "pods", "ws", None),
    ("create", "pods/exec", "ws", None),
    ("get", "pods/exec", "ws", None),
    ("create", "pods/eviction", "ws", None),
    ("get", "pods/log", "ws", None),
    ("create", "deployments.apps", "ws", None),
    ("create", "serviceaccounts/token", "own", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None, None),
    ("impersonate", "serviceaccounts", "ws", None),
    ("delete", "elasticjobs.tessera.dev", "ws", None),
    ("create", "elasticjobs.tessera.dev", "ws", None),
    ("create", "queues.tessera.dev", None, None),
    ("delete", "queues.tessera.dev", None, None),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("update", "leases.coordination.k8s.io", "own", "kube-scheduler"),
    ("update", "leases.coordination.k8s.io", "kube-system", "kube-controller-manager"),
    ("get", "leases.coordination.k8s.io", "ws", None),
    # DRA: only its own claims and their status; never what a driver or an admin publishes
    ("create", "resourceslices.resource.k8s.io", None, None),
    ("delete", "resourceslices.resource.k8s.io", None, None),
    ("create", "deviceclasses.resource.k8s.io", None, None),
    ("update", "resourceclaims.resource.k8s.io", "ws", None),
    ("patch", "resourceclaims.resource.k8s.io", "ws", None),
    ("update", "resourceclaims.resource.k8s.io/status", "ws", None),
    ("create", "resourceclaimtemplates.resource.k8s.io", "ws", None),
    # Kueue: its own Workloads' creation and status only; never Kueue's queues or quotas
    ("delete", "workloads.kueue.x-k8s.io", "ws", None),
    ("patch", "workloads.kueue.x-k8s.io", "ws", None),
    ("update", "clusterqueues.kueue.x-k8s.io", None, None),
    ("patch", "clusterqueues.kueue.x-k8s.io/status", None, None),
    ("create", "localqueues.kueue.x-k8s.io", "ws", None),
    ("create", "resourceflavors.kueue.x-k8s.io", None, None),
]


def _resolve(identity: Identity, workload_ns: str, namespace: str | None, name: str | None) -> tuple[str | None, str | None]:
    ns = {"ws": workload_ns, "own": identity.namespace}.get(namespace or "", namespace)
    return ns, (f"{identity.fullname}-scheduler" if name == "lease" else name)


def test_the_identity_may_do_what_the_operator_needs(cluster: Any, identity: Identity, namespace: str) -> None:
    answers = access(cluster, identity, NEEDED, namespace)
    refused = [check for check, allowed in zip(NEEDED, answers, strict=True) if not allowed]
    assert not refused, f"the chart's identity lacks: {refused}"


def test_the_identity_may_not_do_more(cluster: Any, identity: Identity, namespace: str) -> None:
    answers = access(cluster, identity, FORBIDDEN, namespace)
    allowed = [check for check, ok in zip(FORBIDDEN, answers, strict=True) if ok]
    assert not allowed, f"the chart's identity may do more than it needs: {allowed}"


def test_the_access_checks_can_fail(cluster: Any, identity: Identity, namespace: str) -> None:
    # control: the admin is allowed everything the ServiceAccount is refused
    assert access(cluster, identity, FORBIDDEN[:3], namespace) == [False, False, False]
    admin = Identity(identity.release, identity.namespace, "admin", cluster.kubeconfig)
    assert access(cluster, admin, FORBIDDEN[:3], namespace) == [True, True, True]


def test_reading_a_secret_with_the_token_is_refused(cluster: Any, identity: Identity, namespace: str) -> None:
    # not only the review: a real request with the token gets 403
    cluster.kubectl("create", "secret", "generic", "s", "-n", namespace, "--from-literal=k=v")
    proc = cluster.kubectl("--kubeconfig", str(identity.kubeconfig), "get", "secret", "s", "-n", namespace, check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr
    proc = cluster.kubectl("--kubeconfig", str(identity.kubeconfig), "label", "node", "cpu-0", "x=y", check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr


# --- the operator itself, running as the chart's identity ------------------------------

def test_the_operator_schedules_the_examples_as_the_chart_identity(
    crds: Any, identity: Identity, namespace: str, tmp_path: Path
) -> None:
    """Sufficiency, end to end: `tessera operator` out of cluster with only the SA token,
    started with the arguments of the Deployment that `helm install` created."""
    operator_process = pytest.importorskip("operator_process", reason="the operator (tests/operator/operator_process.py) is not in this tree yet")
    cluster = crds
    manifest = helm("get", "manifest", identity.release, "--namespace", identity.namespace,
                    "--kubeconfig", str(cluster.kubeconfig), env=cluster.env).stdout
    deployment = next(o for o in yaml.safe_load_all(manifest) if o and o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "operator"
    chart_args = [a.replace("$(POD_NAME)", "rbac-test") for a in args[1:]]
    # only the ports move (this machine may use the chart's 9090/8080); the kubeconfig
    # carries the ServiceAccount token instead of the pod's mounted one
    proc = operator_process.OperatorProcess(
        identity.kubeconfig, tmp_path / "operator.log", *chart_args,
        "--metrics-port=0", f"--liveness=http://127.0.0.1:{free_port()}/healthz",
    ).start()
    example = EXAMPLES / "elasticjob-basic.yaml"
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    try:
        cluster.apply(example, namespace=namespace)
        example_runs_then_goes(cluster, namespace, name,
                               (identity.namespace, f"{identity.fullname}-scheduler"), "rbac-test",
                               timeout=60, what="under the chart's identity")
        log = proc.log()
        assert "403" not in log and "forbidden" not in log.lower(), log[-4000:]
    finally:
        proc.stop()
        print(f"----- operator log\n{proc.log()[-6000:]}")


# --- rbac.namespaces: the workload rights only where the admin lists them ----------------

#: every write the operator makes where workloads live (the chart's <fullname>-workloads)
WORKLOAD_WRITES = [
    ("create", "pods"), ("delete", "pods"), ("create", "pods/binding"),
    ("patch", "elasticjobs.tessera.dev"), ("patch", "inferenceservices.tessera.dev"),
    ("patch", "elasticjobs.tessera.dev/status"), ("update", "elasticjobs.tessera.dev/finalizers"),
    ("get", "configmaps"), ("create", "configmaps"), ("patch", "configmaps"),
    ("get", "services"), ("create", "services"), ("create", "events"),
]
#: what stays cluster-wide (capacity and the workloads are read everywhere; the Queues are
#: cluster-scoped, and so is the one write on them, their status)
CLUSTER_READS = [("list", "nodes", None), ("watch", "pods", None), ("get", "pods", "kube-system"),
                 ("list", "elasticjobs.tessera.dev", None), ("watch", "queues.tessera.dev", None),
                 ("patch", "queues.tessera.dev/status", None)]


@dataclass
class NarrowIdentity:
    release: str
    namespace: str
    service_account: str
    listed: str
    unlisted: str


@pytest.fixture(scope="module")
def narrow(cluster: Any) -> Iterator[NarrowIdentity]:
    """A release with rbac.namespaces=[listed]; another namespace stays unlisted."""
    release = f"n{uuid.uuid4().hex[:6]}"
    namespace, listed, unlisted = f"tessera-{release}", f"{release}-team", f"{release}-other"
    for ns in (listed, unlisted):
        cluster.kubectl("create", "namespace", ns)
    helm("install", release, str(CHART), "--namespace", namespace, "--create-namespace",
         "--kubeconfig", str(cluster.kubeconfig), "--set", "replicaCount=0",
         "--set", f"rbac.namespaces={{{listed}}}", env=cluster.env)
    try:
        yield NarrowIdentity(release, namespace, f"{release}-tessera", listed, unlisted)
    finally:
        helm("uninstall", release, "--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig),
             env=cluster.env, check=False)
        for ns in (namespace, listed, unlisted):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def can_i(cluster: Any, who: NarrowIdentity, verb: str, target: str, namespace: str | None) -> bool:
    """`kubectl auth can-i --as system:serviceaccount:...` (the admin asks for the ServiceAccount)."""
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    resource, _, subresource = target.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    proc = cluster.kubectl("auth", "can-i", verb, resource, *extra, *where,
                           f"--as=system:serviceaccount:{who.namespace}:{who.service_account}", check=False)
    answer = proc.stdout.strip()
    assert answer in {"yes", "no"}, (proc.stdout, proc.stderr)
    return answer == "yes"


def test_narrowed_identity_may_write_in_a_listed_namespace(cluster: Any, narrow: NarrowIdentity) -> None:
    refused = [(v, r) for v, r in WORKLOAD_WRITES if not can_i(cluster, narrow, v, r, narrow.listed)]
    assert not refused, f"rbac.namespaces=[{narrow.listed}] lacks there: {refused}"


@pytest.mark.parametrize("where", ["unlisted", "kube-system", "default", "release"])
def test_narrowed_identity_may_not_write_elsewhere(cluster: Any, narrow: NarrowIdentity, where: str) -> None:
    namespace = {"unlisted": narrow.unlisted, "release": narrow.namespace}.get(where, where)
    allowed = [(v, r) for v, r in WORKLOAD_WRITES if can_i(cluster, narrow, v, r, namespace)]
    assert not allowed, f"rbac.namespaces=[{narrow.listed}] still allows in {namespace}: {allowed}"


def test_narrowed_identity_keeps_the_cluster_wide_reads(cluster: Any, narrow: NarrowIdentity) -> None:
    refused = [(v, r, ns) for v, r, ns in CLUSTER_READS if not can_i(cluster, narrow, v, r, ns)]
    assert not refused, refused


def test_narrowed_identity_is_refused_a_real_pod_in_kube_system(cluster: Any, narrow: NarrowIdentity,
                                                                tmp_path: Path) -> None:
    # not only the review: a real create with the ServiceAccount's token is refused (403),
    # in kube-system and in the unlisted namespace; a dry run in the listed one passes
    kubeconfig = token_kubeconfig(cluster, narrow.namespace, narrow.service_account, tmp_path / "kubeconfig")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
           "spec": {"schedulerName": "tessera", "containers": [{"name": "c", "image": "busybox"}]}}
    for ns in ("kube-system", narrow.unlisted):
        proc = cluster.kubectl("--kubeconfig", str(kubeconfig), "create", "-n", ns, "-f", "-",
                               input=json.dumps(pod), check=False)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr
    cluster.kubectl("--kubeconfig", str(kubeconfig), "create", "-n", narrow.listed, "--dry-run=server",
                    "-f", "-", input=json.dumps(pod))


def test_default_identity_may_write_in_kube_system_as_documented(cluster: Any, identity: Identity) -> None:
    # the default (rbac.namespaces empty) is cluster-wide, kube-system included: docs/helm.md
    # and docs/security.md say so; this test keeps them honest
    who = NarrowIdentity(identity.release, identity.namespace, identity.service_account, "", "")
    assert can_i(cluster, who, "create", "pods", "kube-system")
    assert can_i(cluster, who, "patch", "configmaps", "kube-system")
