"""Pod Security Admission is the control for workload pod specs (docs/security.md).

Creating an ElasticJob is creating pods of any spec, as with every controller; a namespace
labelled ``pod-security.kubernetes.io/enforce: baseline`` makes the API server refuse the
operator's pod create when the template asks for host namespaces or hostPath.  The pod is
built with the operator's own ``build_pod`` from the object the API server stored, and
sent with ``kubectl apply --dry-run=server`` (what the operator's create would meet).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

JOB = """
apiVersion: tessera.dev/v1alpha1
kind: ElasticJob
metadata:
  name: {name}
spec:
  replicas: {{min: 1, max: 2}}
  acceleratorsPerReplica: 1
  acceleratorTypes: [{{name: H100}}]
  template:
    spec:
      containers: [{{name: trainer, image: trainer:1, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"""

HOSTILE = {"hostNetwork": True,
           "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}


def baseline_namespace(cluster: Any, name: str) -> None:
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=baseline",
                    "pod-security.kubernetes.io/enforce-version=latest")


def stored_job(cluster: Any, namespace: str, name: str, hostile: bool) -> dict[str, Any]:
    """Create the job (the API server accepts it: a template is not a pod) and read it back."""
    job = yaml.safe_load(JOB.format(name=name))
    if hostile:
        spec = job["spec"]["template"]["spec"]
        spec.update(copy.deepcopy(HOSTILE))
        spec["containers"][0]["volumeMounts"] = [{"name": "host", "mountPath": "/host"}]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    return cluster.get_json("elasticjob", name, "-n", namespace)


def operator_pod(raw: dict[str, Any]) -> dict[str, Any]:
    """The pod the operator creates for replica 0 of ``raw`` (tessera.operator.pods.build_pod)."""
    pods = pytest.importorskip("tessera.operator.pods", reason="the operator is not in this tree")
    state = pytest.importorskip("tessera.operator.state", reason="the operator is not in this tree")
    view = state.workload_view("ElasticJob", raw)
    assert not view.error, view.error
    return pods.build_pod(view, 0, "gpu-0", "H100", "nvidia.com/gpu", 1)


def dry_run(cluster: Any, pod: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)


def test_baseline_namespace_refuses_the_pod_of_a_hostile_template(crds: Any, namespace: str) -> None:
    cluster = crds
    baseline_namespace(cluster, namespace)
    raw = stored_job(cluster, namespace, "hostile", hostile=True)
    pod = operator_pod(raw)
    # the operator's pod carries the template's host access unchanged: Tessera adds no
    # privilege and removes none, admission decides
    assert pod["spec"]["hostNetwork"] is True
    assert pod["spec"]["schedulerName"] == "tessera"
    proc = dry_run(cluster, pod)
    assert proc.returncode != 0, "the API server admitted a hostNetwork/hostPath pod in a baseline namespace"
    assert 'violates PodSecurity "baseline:latest"' in proc.stderr, proc.stderr
    assert "hostNetwork=true" in proc.stderr and "hostPath volumes" in proc.stderr, proc.stderr


def test_baseline_namespace_admits_the_pod_of_a_plain_template(crds: Any, namespace: str) -> None:
    # control: the same job without host access passes, so the refusal above is PSA's
    cluster = crds
    baseline_namespace(cluster, namespace)
    pod = operator_pod(stored_job(cluster, namespace, "plain", hostile=False))
    proc = dry_run(cluster, pod)
    assert proc.returncode == 0, proc.stderr


def test_without_a_pod_security_level_the_hostile_pod_is_admitted(crds: Any, namespace: str) -> None:
    # control: the namespace label is what refuses it (docs/security.md: label namespaces)
    cluster = crds
    pod = operator_pod(stored_job(cluster, namespace, "hostile", hostile=True))
    proc = dry_run(cluster, pod)
    assert proc.returncode == 0, proc.stderr
