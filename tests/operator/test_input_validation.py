"""Careless and hostile workloads are refused by the real API server (issue #15).

The CRDs' CEL rule on metadata.name, the numeric bounds and the typed parts of the pod
template, each sent to kube-apiserver with a server-side dry run; every refusal is checked
against an accepted control, and each message must name the field.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessera.api.crdgen import crd_objects
from tessera.api.names import MAX_WORKLOAD_NAME_LENGTH

JOB: dict[str, Any] = {
    "apiVersion": "tessera.dev/v1alpha1", "kind": "ElasticJob",
    "metadata": {"name": "ok"},
    "spec": {
        "replicas": {"min": 1, "max": 2},
        "acceleratorTypes": [{"name": "H100", "relativeThroughput": 2.0}],
        "template": {"spec": {"containers": [{
            "name": "trainer", "image": "trainer:1", "args": ["--epochs", "3"],
            "env": [{"name": "LR", "value": "0.1"}],
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": 2}},
        }]}},
    },
}
SERVICE: dict[str, Any] = {
    "apiVersion": "tessera.dev/v1alpha1", "kind": "InferenceService",
    "metadata": {"name": "ok"},
    "spec": {"replicas": 1, "acceleratorTypes": [{"name": "A100", "capacityPerReplica": 40}],
             "template": {"spec": {"containers": [{"name": "server", "image": "server:1"}]}}},
}


def create(cluster: Any, namespace: str, obj: dict[str, Any]) -> Any:
    return cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj),
                           check=False)


def changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = obj
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return obj


@pytest.mark.parametrize("base", [JOB, SERVICE], ids=["ElasticJob", "InferenceService"])
def test_the_controls_are_accepted(crds: Any, namespace: str, base: dict[str, Any]) -> None:
    proc = create(crds, namespace, base)
    assert proc.returncode == 0, proc.stderr
    longest = changed(base, "metadata.name", "a" * MAX_WORKLOAD_NAME_LENGTH)
    proc = create(crds, namespace, longest)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("base", [JOB, SERVICE], ids=["ElasticJob", "InferenceService"])
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a" * (MAX_WORKLOAD_NAME_LENGTH + 1), "metadata.name must be at most 50 characters"),
        ("llama.finetune", "metadata.name must be a DNS-1035 label"),
        ("7b-finetune", "metadata.name must be a DNS-1035 label"),
    ],
)
def test_names_the_operator_cannot_use_are_refused(crds: Any, namespace: str, base: dict[str, Any],
                                                   name: str, message: str) -> None:
    proc = create(crds, namespace, changed(base, "metadata.name", name))
    assert proc.returncode != 0, f"the API server accepted the name {name!r}"
    assert message in proc.stderr, proc.stderr


def test_a_generated_name_is_checked_too(crds: Any, namespace: str) -> None:
    # generateName makes the name before validation: a long prefix is refused
    obj = copy.deepcopy(JOB)
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "a" * 50 + "-"
    proc = create(crds, namespace, obj)
    assert proc.returncode != 0 and "metadata.name must be at most 50 characters" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("base", "path", "value", "field"),
    [
        (JOB, "spec.acceleratorTypes.0.relativeThroughput", 1e308, "spec.acceleratorTypes[0].relativeThroughput"),
        (JOB, "spec.replicas.max", 10**9, "spec.replicas.max"),
        (JOB, "spec.acceleratorsPerReplica", 10**6, "spec.acceleratorsPerReplica"),
        (JOB, "spec.priority", 2**62, "spec.priority"),
        (JOB, "spec.globalBatchSize", 10**12, "spec.globalBatchSize"),
        (SERVICE, "spec.acceleratorTypes.0.capacityPerReplica", 1e308, "spec.acceleratorTypes[0].capacityPerReplica"),
        (SERVICE, "spec.replicas", 10**9, "spec.replicas"),
    ],
)
def test_numbers_out_of_range_are_refused(crds: Any, namespace: str, base: dict[str, Any], path: str,
                                          value: Any, field: str) -> None:
    proc = create(crds, namespace, changed(base, path, value))
    assert proc.returncode != 0, f"the API server accepted {path}={value}"
    assert field in proc.stderr and "less than or equal to" in proc.stderr, proc.stderr


CONTAINER = "spec.template.spec.containers.0"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (f"{CONTAINER}.env", [{"name": "EPOCHS", "value": 5}], "spec.template.spec.containers[0].env[0].value"),
        (f"{CONTAINER}.args", ["--epochs", 3], "spec.template.spec.containers[0].args[1]"),
        (f"{CONTAINER}.resources", {"limits": {"cpu": 0.5}}, "spec.template.spec.containers[0].resources.limits.cpu"),
        (f"{CONTAINER}.resources", {"requests": {"memory": "2 GB"}},
         "spec.template.spec.containers[0].resources.requests.memory"),
        ("spec.template.spec.containers", [], "spec.template.spec.containers"),
        ("spec.template.spec.containers", [{"image": "x"}], "spec.template.spec.containers[0].name"),
        (f"{CONTAINER}.args", ["x" * 40_000], "spec.template.spec.containers[0].args[0]"),
    ],
)
def test_careless_templates_are_refused(crds: Any, namespace: str, path: str, value: Any, field: str) -> None:
    proc = create(crds, namespace, changed(JOB, path, value))
    assert proc.returncode != 0, f"the API server accepted {path}={value!r}"
    assert field in proc.stderr, proc.stderr


def test_an_integer_cpu_is_accepted_as_for_pods(crds: Any, namespace: str) -> None:
    # `cpu: 2` is an integer quantity; the API server accepts it in a Pod, so the CRD does too
    proc = create(crds, namespace, changed(JOB, f"{CONTAINER}.resources", {"limits": {"cpu": 2, "memory": 2**30}}))
    assert proc.returncode == 0, proc.stderr
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "int-cpu"},
           "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 2}}}]}}
    proc = create(crds, namespace, pod)
    assert proc.returncode == 0, proc.stderr


def test_a_typo_in_the_template_passes_the_schema_but_not_check_pod_template(crds: Any, namespace: str) -> None:
    # a schema that preserves unknown fields cannot see `resource:`; with strict field
    # validation kubectl refuses nothing here either (the field is under a preserved node)
    from tessera.api.template import check_pod_template

    typo = changed(JOB, f"{CONTAINER}.resource", {"limits": {"cpu": "1"}})
    proc = create(crds, namespace, typo)
    assert proc.returncode == 0, proc.stderr
    assert check_pod_template(typo["spec"]["template"]) == [
        "spec.template.spec.containers[0].resource: unknown Container field (did you mean 'resources'?)"]


def test_too_much_inline_text_is_refused(crds: Any, namespace: str) -> None:
    from tessera.api.template import MAX_INLINE_TEXT, MAX_STRING_LENGTH

    chunk = "x" * MAX_STRING_LENGTH
    count = MAX_INLINE_TEXT // MAX_STRING_LENGTH  # exactly the limit in args alone
    fits = changed(JOB, f"{CONTAINER}.args", [chunk] * count)
    fits["spec"]["template"]["spec"]["containers"][0]["env"] = []
    proc = create(crds, namespace, fits)
    assert proc.returncode == 0, proc.stderr[-2000:]
    over = copy.deepcopy(fits)
    over["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "ONE_MORE", "value": "x"}]
    proc = create(crds, namespace, over)
    assert proc.returncode != 0, "the API server accepted more inline text than the limit"
    assert "command, args and env values of all containers together must be at most" in proc.stderr, \
        proc.stderr[-2000:]


def test_a_workload_stored_before_the_rules_can_still_be_updated_and_deleted(crds: Any, namespace: str) -> None:
    """Upgrade path: objects an older, laxer CRD stored (a name, numbers and a template the
    current rules refuse) keep working after the CRDs are upgraded: labels, status and,
    above all, the removal of their finalizer, or they could never be deleted.

    The root name rules and the inline-text rule run on create only (optionalOldSelf);
    the API server ratchets type, bound and length checks of unchanged fields."""
    cluster = crds
    path = "tessera.dev_elasticjobs.yaml"
    old_crd = crd_objects()[path]
    root = old_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del root["x-kubernetes-validations"]
    root["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    new_crd = Path(__file__).resolve().parents[2] / "crds" / path

    def install(manifest: str) -> None:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest)
        cluster.kubectl("wait", "--for=condition=Established", "crd/elasticjobs.tessera.dev", "--timeout=60s")

    legacy = changed(JOB, "metadata.name", "llama.v2")
    legacy["metadata"]["finalizers"] = ["tessera.dev/test"]
    legacy["spec"]["priority"] = 2**40
    legacy = changed(legacy, "spec.acceleratorTypes.0.relativeThroughput", 1e308)
    legacy = changed(legacy, f"{CONTAINER}.env", [{"name": "EPOCHS", "value": 5}])
    legacy = changed(legacy, f"{CONTAINER}.resources", {"limits": {"cpu": 0.5}})
    legacy = changed(legacy, f"{CONTAINER}.args", ["x" * 40_000] * 5)
    try:
        install(yaml.safe_dump(old_crd))
        cluster.wait_for(lambda: cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(legacy),
                                                 check=False).returncode == 0,
                         timeout=30, what="the old CRD to be served and take the legacy object")
    finally:
        install(new_crd.read_text())
    # the current CRD refuses such an object when it is new ...
    cluster.wait_for(lambda: create(cluster, namespace, changed(legacy, "metadata.name", "llama.v3")).returncode != 0,
                     timeout=30, what="the current CRD to be served")
    assert create(cluster, namespace, changed(legacy, "metadata.name", "llama-v3")).returncode != 0
    # ... while the stored one can be labelled, get status, and be deleted through its finalizer
    cluster.kubectl("label", "elasticjob", "llama.v2", "-n", namespace, "touched=yes")
    cluster.kubectl("patch", "elasticjob", "llama.v2", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", '{"status": {"phase": "Failed", "message": "invalid spec"}}')
    cluster.kubectl("delete", "elasticjob", "llama.v2", "-n", namespace, "--wait=false")
    cluster.kubectl("patch", "elasticjob", "llama.v2", "-n", namespace, "--type=merge",
                    "-p", '{"metadata": {"finalizers": null}}')
    cluster.wait_for(lambda: cluster.kubectl("get", "elasticjob", "llama.v2", "-n", namespace,
                                             check=False).returncode != 0, timeout=30, what="llama.v2 deleted")
