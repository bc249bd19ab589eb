"""The API models: validation mirrors the CEL rules, conversion to core workloads, CRD generation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tessera.api import elastic_contract as contract
from tessera.api.convert import elasticjob_workload, inferenceservice_workload, pod_spec_requests
from tessera.api.crdgen import crd_objects, drift, render_crds
from tessera.api.models import (
    MAX_ACCELERATOR_TYPES,
    MAX_ACCELERATORS_PER_REPLICA,
    MAX_BATCH_SIZE,
    MAX_PRIORITY,
    MAX_REPLICAS,
    ElasticJob,
    ElasticJobSpec,
    InferenceService,
    InferenceServiceSpec,
)
from tessera.api.names import (
    CHILD_NAME_SUFFIXES,
    DNS1035_LABEL,
    MAX_WORKLOAD_NAME_LENGTH,
    REPLICA_INDEX_DIGITS,
    name_problems,
)
from tessera.api.schema import structural_schema
from tessera.core import Spread, WorkloadKind

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = {"spec": {"containers": [{"name": "c", "image": "i",
                                     "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}}}]}}


def ej_spec(**overrides):
    spec = {"replicas": {"min": 2, "max": 4}, "acceleratorsPerReplica": 8,
            "acceleratorTypes": [{"name": "H100", "relativeThroughput": 2}, {"name": "A100"}],
            "template": TEMPLATE}
    spec.update(overrides)
    return spec


def test_elasticjob_defaults_and_conversion():
    spec = ElasticJobSpec.model_validate(ej_spec())
    assert spec.parallelism.tensor == 1 and spec.priority == 0 and not spec.allowMixedTypes
    w = elasticjob_workload("ns/job", spec, submitted_at_seconds=5.0)
    assert w.kind is WorkloadKind.TRAINING
    assert (w.min_replicas, w.max_replicas) == (2, 4)
    assert w.demand.accelerators == 8 and w.demand.cpu_milli == 500 and w.demand.memory_mib == 2048
    assert w.throughput_on("H100") == 2.0 and w.throughput_on("A100") == 1.0
    assert w.allowed_types == ("H100", "A100")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"replicas": {"min": 5, "max": 2}}, "spec.replicas.min must be <= spec.replicas.max"),
        ({"acceleratorsPerReplica": 0}, "acceleratorsPerReplica"),
        ({"acceleratorsPerReplica": -1}, "acceleratorsPerReplica"),
        ({"acceleratorTypes": []}, "acceleratorTypes"),
        ({"acceleratorTypes": [{"name": "H100"}, {"name": "H100"}]}, "twice"),
        ({"gpus": 3}, "gpus"),
        ({"parallelism": {"tensor": 3}}, "spec.parallelism.tensor must divide"),
        ({"globalBatchSize": 10, "microBatchSize": 4}, "multiple of spec.microBatchSize"),
    ],
)
def test_elasticjob_invalid(overrides, needle):
    with pytest.raises(ValidationError, match=needle.replace(".", r"\.")):
        ElasticJobSpec.model_validate(ej_spec(**overrides))


def test_inferenceservice_bounds_and_spread():
    spec = InferenceServiceSpec.model_validate({
        "replicas": 3, "replicaRange": {"min": 1, "max": 6},
        "acceleratorTypes": [{"name": "A100", "capacityPerReplica": 40}], "template": TEMPLATE})
    w = inferenceservice_workload("ns/svc", spec)
    assert w.kind is WorkloadKind.INFERENCE and w.spread is Spread.NODE
    assert (w.min_replicas, w.target_replicas, w.max_replicas) == (1, 3, 6)
    assert w.throughput_on("A100") == 40
    # scale-up of a running service: only the missing replicas, each independent
    extra = inferenceservice_workload("ns/svc+", spec, replicas=2, min_replicas=1)
    assert (extra.min_replicas, extra.target_replicas, extra.max_replicas) == (1, 2, 2)
    with pytest.raises(ValidationError, match=r"spec\.replicas must lie within"):
        InferenceServiceSpec.model_validate({**spec.model_dump(by_alias=True), "replicas": 9})


def test_inferenceservice_without_range_uses_desired_count():
    spec = InferenceServiceSpec.model_validate({"replicas": 2, "acceleratorTypes": [{"name": "L4"}],
                                                "template": TEMPLATE})
    w = inferenceservice_workload("ns/svc", spec)
    assert (w.min_replicas, w.target_replicas, w.max_replicas) == (1, 2, 2)


def test_full_objects_parse_with_status():
    obj = {"apiVersion": "tessera.dev/v1alpha1", "kind": "ElasticJob",
           "metadata": {"name": "j", "namespace": "default", "uid": "u"},
           "spec": ej_spec(), "status": {"phase": "Running", "replicas": 2, "newerField": 1}}
    job = ElasticJob.model_validate(obj)
    assert job.status.phase == "Running" and job.status.replicas == 2
    isvc = InferenceService.model_validate({"metadata": {}, "spec": {"acceleratorTypes": [{"name": "A100"}],
                                                                      "template": TEMPLATE}})
    assert isvc.status.selector == ""


def test_pod_requests_sum_containers_and_max_init():
    spec = {"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                           {"resources": {"limits": {"cpu": "2"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "8", "memory": "512Mi"}}}]}
    assert pod_spec_requests(spec) == (8000, 1024)


def _walk(node, path="$"):
    yield path, node
    for key in ("properties",):
        for name, sub in node.get(key, {}).items():
            yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("model", [ElasticJobSpec, InferenceServiceSpec])
def test_schema_is_structural(model):
    for path, node in _walk(structural_schema(model)):
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, path
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert forbidden not in node, f"{path} has {forbidden}"
        assert node.get("additionalProperties", True) is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_crds_have_names_columns_subresources_and_cel():
    crds = crd_objects()
    ej = crds["tessera.dev_elasticjobs.yaml"]["spec"]
    isvc = crds["tessera.dev_inferenceservices.yaml"]["spec"]
    assert ej["names"]["shortNames"] == ["ej", "ejob"]
    assert "isvc" not in isvc["names"]["shortNames"]  # KServe's short name
    assert ej["names"]["categories"] == ["tessera"]
    assert isvc["versions"][0]["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = [c["name"] for c in ej["versions"][0]["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and "Age" in columns
    schema = ej["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = schema["properties"]["replicas"]["x-kubernetes-validations"]
    assert rules[0]["message"] == "spec.replicas.min must be <= spec.replicas.max"
    assert schema["properties"]["template"]["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"]
    status = ej["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert all("default" not in node for _, node in _walk(status))


def test_committed_crds_match_the_models():
    stale = drift(ROOT / "crds")
    assert not stale, f"crds/ is out of date ({stale}); run `make crds`"
    for text in render_crds().values():
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


def test_examples_parse_into_the_models():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("apiVersion") != "tessera.dev/v1alpha1":
                continue
            model = {"ElasticJob": ElasticJob, "InferenceService": InferenceService}[doc["kind"]]
            model.model_validate(doc)
            assert name_problems(doc["metadata"]["name"]) == [], path


def test_elasticjob_deadline_is_optional_rfc3339_and_reaches_the_workload():
    assert elasticjob_workload("ns/j", ElasticJobSpec.model_validate(ej_spec())).deadline_seconds is None
    for text, epoch_seconds in [("2026-11-23T18:00:00Z", 1795456800.0),
                                ("2026-11-23T19:30:00.5+01:30", 1795456800.5)]:
        spec = ElasticJobSpec.model_validate(ej_spec(deadline=text))
        assert spec.deadline == text
        # the same clock as submitted_at_seconds (creationTimestamp): seconds since the epoch
        assert elasticjob_workload("ns/j", spec).deadline_seconds == epoch_seconds
    # the CRD declares the format, so the API server refuses a bad deadline before the operator sees it
    crd = crd_objects()["tessera.dev_elasticjobs.yaml"]["spec"]["versions"][0]
    field = crd["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["deadline"]
    assert field["type"] == "string" and field["format"] == "date-time"


@pytest.mark.parametrize("bad", ["tomorrow", "2026-11-23", "2026-11-23T18:00:00", "2026-13-01T00:00:00Z",
                                 "1795456800"])
def test_elasticjob_bad_deadline_is_rejected_naming_the_field(bad):
    with pytest.raises(ValidationError, match=r"spec\.deadline must be an RFC 3339 time"):
        ElasticJobSpec.model_validate(ej_spec(deadline=bad))


# --- issue #15: numbers with bounds, names the operator can use -------------------------

@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"replicas": {"min": 1, "max": MAX_REPLICAS + 1}}, "max"),
        ({"acceleratorsPerReplica": MAX_ACCELERATORS_PER_REPLICA + 8}, "acceleratorsPerReplica"),
        ({"acceleratorTypes": [{"name": "H100", "relativeThroughput": 1e308}]}, "relativeThroughput"),
        ({"acceleratorTypes": [{"name": "x" * 64}]}, "name"),
        ({"acceleratorTypes": [{"name": f"t{i}"} for i in range(MAX_ACCELERATOR_TYPES + 1)]}, "acceleratorTypes"),
        ({"globalBatchSize": MAX_BATCH_SIZE * 2, "microBatchSize": 2}, "globalBatchSize"),
        ({"microBatchSize": MAX_BATCH_SIZE + 1}, "microBatchSize"),
        ({"priority": MAX_PRIORITY + 1}, "priority"),
        ({"priority": -MAX_PRIORITY - 1}, "priority"),
        ({"parallelism": {"pipeline": 10**6}}, "pipeline"),
    ],
)
def test_elasticjob_numbers_have_upper_bounds(overrides, field):
    with pytest.raises(ValidationError, match=field):
        ElasticJobSpec.model_validate(ej_spec(**overrides))


def test_inferenceservice_numbers_have_upper_bounds():
    base = {"acceleratorTypes": [{"name": "A100"}], "template": TEMPLATE}
    for bad, field in [({"acceleratorTypes": [{"name": "A100", "capacityPerReplica": 1e308}]}, "capacityPerReplica"),
                       ({"replicas": MAX_REPLICAS + 1}, "replicas"),
                       ({"replicaRange": {"min": 1, "max": MAX_REPLICAS + 1}, "replicas": 1}, "max"),
                       ({"priority": 2**63}, "priority")]:
        with pytest.raises(ValidationError, match=field):
            InferenceServiceSpec.model_validate({**base, **bad})
    # the limits themselves are accepted
    InferenceServiceSpec.model_validate({**base, "replicas": MAX_REPLICAS, "priority": MAX_PRIORITY,
                                         "acceleratorTypes": [{"name": "A100", "capacityPerReplica": 1e9}]})


def test_the_crds_carry_the_bounds():
    ej = crd_objects()["tessera.dev_elasticjobs.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = ej["properties"]["spec"]["properties"]
    assert spec["replicas"]["properties"]["max"]["maximum"] == MAX_REPLICAS
    assert spec["acceleratorTypes"]["items"]["properties"]["relativeThroughput"]["maximum"] == 1e6
    assert spec["acceleratorTypes"]["maxItems"] == MAX_ACCELERATOR_TYPES
    assert spec["priority"]["minimum"] == -MAX_PRIORITY and spec["priority"]["maximum"] == MAX_PRIORITY
    isvc = crd_objects()["tessera.dev_inferenceservices.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    types = isvc["properties"]["spec"]["properties"]["acceleratorTypes"]["items"]["properties"]
    assert types["capacityPerReplica"]["maximum"] == 1e9


def test_the_name_limit_comes_from_the_longest_child_suffix():
    # grep the operator's naming helpers: every child suffix is in CHILD_NAME_SUFFIXES
    assert contract.headless_service_name("j").removeprefix("j") in CHILD_NAME_SUFFIXES
    assert contract.configmap_name("j").removeprefix("j") in CHILD_NAME_SUFFIXES
    assert len(contract.pod_name("j", 10**REPLICA_INDEX_DIGITS - 1)) - 1 <= max(map(len, CHILD_NAME_SUFFIXES))
    assert MAX_WORKLOAD_NAME_LENGTH == 63 - len("-tessera-plan") == 50
    longest = "a" * MAX_WORKLOAD_NAME_LENGTH
    for child in (contract.headless_service_name(longest), contract.configmap_name(longest),
                  contract.pod_name(longest, 10**REPLICA_INDEX_DIGITS - 1)):
        assert len(child) <= 63 and re.fullmatch(DNS1035_LABEL.strip("^$"), child), child


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("a" * (MAX_WORKLOAD_NAME_LENGTH + 1), "at most 50 characters"),
        ("llama.finetune", "DNS-1035 label"),
        ("7b-finetune", "DNS-1035 label"),
        ("Llama", "DNS-1035 label"),
        ("job-", "DNS-1035 label"),
    ],
)
def test_names_the_operator_cannot_use_are_problems(name, needle):
    problems = name_problems(name)
    assert problems and any(needle in p and p.startswith("metadata.name") for p in problems), problems


def test_good_names_are_not_problems():
    for name in ("a", "llama-7b-finetune", "a" * MAX_WORKLOAD_NAME_LENGTH):
        assert name_problems(name) == []


@pytest.mark.parametrize("crd", ["tessera.dev_elasticjobs.yaml", "tessera.dev_inferenceservices.yaml"])
def test_the_crds_check_metadata_name_with_cel_at_the_root(crd):
    root = crd_objects()[crd]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = root["x-kubernetes-validations"]
    assert [r["fieldPath"] for r in rules] == [".metadata.name", ".metadata.name"]
    assert f"size() <= {MAX_WORKLOAD_NAME_LENGTH}" in rules[0]["rule"]
    assert rules[0]["message"].startswith("metadata.name must be at most 50 characters")
    assert DNS1035_LABEL in rules[1]["rule"]
    # create only: an object stored before the rules must stay updatable (its finalizer)
    assert all(r["optionalOldSelf"] is True and r["rule"].startswith("oldSelf.hasValue() || ") for r in rules)
    # a CRD may constrain metadata only through name/generateName
    assert set(root["properties"]["metadata"].get("properties", {})) <= {"name", "generateName"}
