"""The Queue kind (tessera.api.queue): model validation mirrors the CEL rules, the core
conversion, the cluster-scoped CRD, spec.queueName on the workloads and the docs example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tessera.api.convert import elasticjob_workload, inferenceservice_workload
from tessera.api.crdgen import crd_objects, render_crds
from tessera.api.models import ElasticJobSpec, InferenceServiceSpec
from tessera.api.names import DNS1123_LABEL, MAX_QUEUE_NAME_LENGTH, QUEUE_REFERENCE, queue_name_problems
from tessera.api.queue import (
    MAX_QUEUE_QUOTAS,
    AcceleratorQuota,
    Queue,
    QueueSpec,
    QueueStatus,
    queue_core,
)
from tessera.api.schema import structural_schema
from tessera.core.quota import Queue as CoreQueue
from tessera.core.quota import QuotaTree, QuotaUsage, TypeQuota

ROOT = Path(__file__).resolve().parents[2]
CRD = "tessera.dev_queues.yaml"
TEMPLATE = {"spec": {"containers": [{"name": "c", "image": "i"}]}}


def queue(name: str = "team-a", **spec: Any) -> dict[str, Any]:
    base = {"parent": "org", "quotas": [{"acceleratorType": "H100", "nominal": 8, "lendingLimit": 4}]}
    return {"apiVersion": "tessera.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name},
            "spec": {**base, **spec}}


def crd_spec() -> dict[str, Any]:
    spec: dict[str, Any] = crd_objects()[CRD]["spec"]
    return spec


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd_spec()["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


# --- the models ------------------------------------------------------------------------

def test_a_valid_queue_parses_with_defaults() -> None:
    q = Queue.model_validate(queue(weight=2, namespaceSelector={"team": "a"}))
    assert q.spec.parent == "org" and q.spec.weight == 2 and q.spec.namespaceSelector == {"team": "a"}
    h100 = q.spec.quotas[0]
    assert (h100.acceleratorType, h100.nominal, h100.lendingLimit, h100.borrowingLimit) == ("H100", 8, 4, None)
    assert q.spec.preemption.reclaimWithinTree == "Any" and q.spec.preemption.withinQueue == "LowerPriority"
    assert q.status.pending == 0 and q.status.fairShare == 0.0 and q.status.usage == []
    # a parent needs no spec at all; the status tolerates fields a newer operator wrote
    org = Queue.model_validate({"metadata": {"name": "org"}, "status": {"admitted": 3, "newerField": 1,
                                                                       "usage": [{"acceleratorType": "H100",
                                                                                  "used": 2.5}]}})
    assert org.spec == QueueSpec() and org.status.admitted == 3 and org.status.usage[0].used == 2.5


@pytest.mark.parametrize(
    ("quota", "needle"),
    [
        ({"acceleratorType": "H100", "nominal": -1}, "nominal"),
        ({"acceleratorType": "H100", "nominal": 1, "borrowingLimit": -1}, "borrowingLimit"),
        ({"acceleratorType": "H100", "nominal": 1, "lendingLimit": -1}, "lendingLimit"),
        ({"acceleratorType": "H100", "nominal": 4, "lendingLimit": 5}, "lendingLimit may not exceed nominal"),
        ({"acceleratorType": "", "nominal": 1}, "acceleratorType"),
        ({"nominal": 1}, "acceleratorType"),
        ({"acceleratorType": "H100", "nominal": 10**7}, "nominal"),
        ({"acceleratorType": "H100", "gpus": 1}, "gpus"),
    ],
)
def test_bad_quotas_are_refused_naming_the_field(quota: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        AcceleratorQuota.model_validate(quota)
    with pytest.raises(ValidationError, match=needle):
        Queue.model_validate(queue(quotas=[quota]))


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"quotas": [{"acceleratorType": "H100"}, {"acceleratorType": "H100", "nominal": 2}]},
         "spec.quotas lists an acceleratorType twice"),
        ({"quotas": [{"acceleratorType": f"t{i}"} for i in range(MAX_QUEUE_QUOTAS + 1)]}, "quotas"),
        ({"quotas": [{"acceleratorType": "H100-equivalent"}]}, "may not end in -equivalent"),
        ({"weight": 0}, "weight"),
        ({"weight": -1}, "weight"),
        ({"parent": "Org"}, "parent"),
        ({"parent": "org.example"}, "parent"),
        ({"parent": "a" * (MAX_QUEUE_NAME_LENGTH + 1)}, "parent"),
        ({"preemption": {"withinQueue": "Any"}}, "withinQueue"),
        ({"preemption": {"reclaimWithinTree": "Sometimes"}}, "reclaimWithinTree"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Queue.model_validate(queue(**spec))


def test_a_queue_may_not_be_its_own_parent() -> None:
    with pytest.raises(ValidationError, match=r"spec\.parent may not be the queue itself"):
        Queue.model_validate(queue("org", parent="org"))


def test_lending_limit_equal_to_nominal_and_zero_nominal_borrowers_are_fine() -> None:
    Queue.model_validate(queue(quotas=[{"acceleratorType": "H100", "nominal": 4, "lendingLimit": 4},
                                       {"acceleratorType": "A100", "borrowingLimit": 8}]))


@pytest.mark.parametrize(("name", "ok"), [("team-a", True), ("7b", True), ("a" * 63, True), ("a" * 64, False),
                                          ("Team-A", False), ("team.a", False), ("team-", False), ("", False)])
def test_queue_names_are_dns_1123_labels(name: str, ok: bool) -> None:
    problems = queue_name_problems(name)
    assert (problems == []) is ok, problems
    assert all(p.startswith("metadata.name") for p in problems)
    assert (re.fullmatch(DNS1123_LABEL.strip("^$"), name) is not None and len(name) <= 63) is ok


# --- to the core -----------------------------------------------------------------------

def test_queue_core_builds_the_core_queue() -> None:
    q = Queue.model_validate(queue(weight=3, quotas=[
        {"acceleratorType": "H100", "nominal": 8, "lendingLimit": 4},
        {"acceleratorType": "A100", "nominal": 16, "borrowingLimit": 2},
    ]))
    core = queue_core(q)
    assert core == CoreQueue(name="team-a", parent="org", weight=3.0, quotas={
        "H100": TypeQuota(8, borrowing_limit=None, lending_limit=4),
        "A100": TypeQuota(16, borrowing_limit=2, lending_limit=None),
    })
    assert queue_core(Queue.model_validate({"metadata": {"name": "org"}})) == CoreQueue(name="org")


def test_the_docs_example_parses_and_builds_the_tree_it_describes() -> None:
    text = (ROOT / "docs" / "crds.md").read_text()
    section = text[text.index("## Queue ("):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    docs = [d for d in yaml.safe_load_all(block[:block.index("```")]) if d]
    queues = [Queue.model_validate(d) for d in docs]
    assert all(queue_name_problems(q.metadata["name"]) == [] for q in queues)
    tree = QuotaTree(queue_core(q) for q in queues)
    assert not tree.problems and tree.children[""] == ("org",) and tree.children["org"] == ("team-a", "team-b")
    # the docs' numbers: org holds 16 H100 and 16 A100; team-a never lends more than 4 H100
    assert tree.quota("org", "H100") == 16_000 and tree.quota("org", "A100") == 16_000
    assert tree.guaranteed("team-a", "H100") == 4_000 and tree.guaranteed("team-b", "H100") == 0
    busy = QuotaUsage({("team-b", "H100"): 12_000})
    assert tree.why_not(busy, "team-b", "H100", 1_000)  # team-a's 4 are never lent
    assert tree.why_not(busy, "team-a", "H100", 4_000) == ""


# --- spec.queueName on the workloads ----------------------------------------------------

def test_workloads_name_their_queue_and_it_reaches_the_core_workload() -> None:
    ej = {"replicas": {"max": 2}, "acceleratorTypes": [{"name": "H100"}], "template": TEMPLATE}
    isvc = {"acceleratorTypes": [{"name": "A100"}], "template": TEMPLATE}
    assert ElasticJobSpec.model_validate(ej).queueName == ""
    assert elasticjob_workload("ns/j", ElasticJobSpec.model_validate({**ej, "queueName": "team-a"})).queue == "team-a"
    assert inferenceservice_workload(
        "ns/s", InferenceServiceSpec.model_validate({**isvc, "queueName": "team-b"})).queue == "team-b"
    assert inferenceservice_workload("ns/s", InferenceServiceSpec.model_validate(isvc)).queue == ""
    for bad in ("Team-A", "team.a", "a" * 64):
        with pytest.raises(ValidationError, match="queueName"):
            ElasticJobSpec.model_validate({**ej, "queueName": bad})
        with pytest.raises(ValidationError, match="queueName"):
            InferenceServiceSpec.model_validate({**isvc, "queueName": bad})


@pytest.mark.parametrize("crd", ["tessera.dev_elasticjobs.yaml", "tessera.dev_inferenceservices.yaml"])
def test_the_workload_crds_carry_queue_name_without_a_server_side_default(crd: str) -> None:
    spec = crd_objects()[crd]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = spec["properties"]["queueName"]
    assert field["type"] == "string" and field["maxLength"] == MAX_QUEUE_NAME_LENGTH
    assert field["pattern"] == QUEUE_REFERENCE and "Queue" in field["description"]
    # a default would change every stored workload's spec when the CRDs are upgraded
    assert "default" not in field
    assert "queueName" not in spec.get("required", [])


# --- the CRD ---------------------------------------------------------------------------

def _walk(node: dict[str, Any], path: str = "$") -> Any:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("schema", [structural_schema(QueueSpec), structural_schema(QueueStatus, defaults=False),
                                    root_schema()], ids=["spec", "status", "root"])
def test_queue_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        assert "type" in node, path
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert forbidden not in node, f"{path} has {forbidden}"
        assert node.get("additionalProperties", True) is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_the_queue_crd_is_cluster_scoped_with_names_status_and_columns() -> None:
    spec = crd_spec()
    assert crd_objects()[CRD]["metadata"]["name"] == "queues.tessera.dev"
    assert spec["scope"] == "Cluster"
    assert spec["names"] == {"kind": "Queue", "listKind": "QueueList", "plural": "queues", "singular": "queue",
                             "shortNames": ["tq"], "categories": ["tessera"]}
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {"Parent": ("string", ".spec.parent"), "Weight": ("number", ".spec.weight"),
                       "Pending": ("integer", ".status.pending"), "Admitted": ("integer", ".status.admitted"),
                       "Share": ("number", ".status.fairShare"),
                       "Age": ("date", ".metadata.creationTimestamp")}
    # the other kinds stay namespaced
    assert {n: c["spec"]["scope"] for n, c in crd_objects().items()} == {
        "tessera.dev_elasticjobs.yaml": "Namespaced", "tessera.dev_inferenceservices.yaml": "Namespaced", CRD: "Cluster"}


def test_the_queue_crd_carries_the_cel_rules() -> None:
    root = root_schema()
    spec = root["properties"]["spec"]
    quotas = spec["properties"]["quotas"]
    [lending] = quotas["items"]["x-kubernetes-validations"]
    assert lending == {"rule": "!has(self.lendingLimit) || self.lendingLimit <= self.nominal",
                       "message": "lendingLimit may not exceed nominal", "fieldPath": ".lendingLimit"}
    [unique, not_equivalent] = quotas["x-kubernetes-validations"]
    assert "exists_one" in unique["rule"] and unique["message"].startswith("spec.quotas")
    assert "endsWith('-equivalent')" in not_equivalent["rule"]  # the key of a normalized quota
    assert quotas["maxItems"] == MAX_QUEUE_QUOTAS  # bounds the cost of the O(n^2) uniqueness rule
    assert quotas["items"]["properties"]["acceleratorType"]["maxLength"] == 63
    # root rules: the name (on create only, like the workloads') and parent != name
    rules = root["x-kubernetes-validations"]
    assert [r["fieldPath"] for r in rules] == [".metadata.name", ".spec.parent"]
    assert rules[0]["optionalOldSelf"] is True and rules[0]["rule"].startswith("oldSelf.hasValue() || ")
    assert DNS1123_LABEL in rules[0]["rule"] and "size() <= 63" in rules[0]["rule"]
    assert rules[1]["message"] == "spec.parent may not be the queue itself"
    # spec may be left out (a parent with no quota of its own), and is defaulted then
    assert "required" not in root and spec["default"] == {}
    assert spec["properties"]["weight"] == {**spec["properties"]["weight"], "minimum": 0, "exclusiveMinimum": True,
                                            "default": 1.0}
    # status is the operator's: no server-side defaults there
    assert all("default" not in node for _, node in _walk(root["properties"]["status"]))
    assert set(root["properties"]["metadata"].get("properties", {})) <= {"name", "generateName"}


def test_the_queue_crd_is_rendered_into_crds_and_the_chart() -> None:
    text = render_crds()[CRD]
    assert text.startswith("# GENERATED") and "src/tessera/api/queue.py" in text
    for folder in (ROOT / "crds", ROOT / "helm" / "tessera" / "crds"):
        assert (folder / CRD).read_text() == text, f"{folder}/{CRD} is stale: run `make crds`"
