"""Careless pod templates: the CRD's partial PodSpec schema and check_pod_template."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tessera.api.crdgen import crd_objects
from tessera.api.models import API_VERSION
from tessera.api.template import (
    CONTAINER_FIELDS,
    ENV_VAR_FIELDS,
    MAX_STRING_LENGTH,
    POD_SPEC_FIELDS,
    RESOURCE_REQUIREMENTS_FIELDS,
    check_pod_template,
)

GOOD = {
    "metadata": {"labels": {"app": "trainer", "example.com/team": "ml"}, "annotations": {"note": "x"}},
    "spec": {
        "containers": [{
            "name": "trainer",
            "image": "registry.example.com/trainer:1",
            "command": ["python", "train.py"],
            "args": ["--epochs", "3"],
            "env": [{"name": "LR", "value": "0.1"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": 2, "memory": "4e9"}},
        }],
        "initContainers": [{"name": "fetch", "image": "busybox", "args": ["true"]}],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "nodeSelector": {"zone": "a"},
    },
}


def with_container(**changes):
    template = copy.deepcopy(GOOD)
    template["spec"]["containers"][0].update(changes)
    return template


def test_a_good_template_has_no_problems():
    assert check_pod_template(GOOD) == []


# --- the four careless mistakes of issue #15 --------------------------------------------

def test_a_float_cpu_is_a_problem_and_an_integer_one_is_not():
    # `cpu: 0.5` is a YAML float; a quantity is a string ("500m"). An integer (`cpu: 2`) is
    # what the API server accepts too, so it is not reported.
    problems = check_pod_template(with_container(resources={"limits": {"cpu": 0.5}}))
    assert problems == ['spec.template.spec.containers[0].resources.limits.cpu must be a quantity string such '
                        'as "500m" or "2Gi"; quote it: "0.5" (got number 0.5)']
    assert check_pod_template(with_container(resources={"limits": {"cpu": 2}})) == []
    bad = check_pod_template(with_container(resources={"requests": {"memory": "2 GB"}}))
    assert bad and "spec.template.spec.containers[0].resources.requests.memory is not a quantity" in bad[0]


def test_an_env_value_that_is_a_number_is_a_problem():
    problems = check_pod_template(with_container(env=[{"name": "EPOCHS", "value": 5}]))
    assert problems == ['spec.template.spec.containers[0].env[0].value must be a string; quote it: value: "5" '
                        '(got number 5)']


def test_a_number_in_args_is_a_problem():
    problems = check_pod_template(with_container(args=["--epochs", 3]))
    assert problems == ['spec.template.spec.containers[0].args[1] must be a string; quote it: "3" (got number 3)']
    assert check_pod_template(with_container(command="python train.py")) == [
        "spec.template.spec.containers[0].command must be a list of strings (got string 'python train.py')"]


def test_a_typo_in_a_field_name_is_a_problem_with_a_suggestion():
    template = with_container(resource={"limits": {"cpu": "1"}})
    assert check_pod_template(template) == [
        "spec.template.spec.containers[0].resource: unknown Container field (did you mean 'resources'?)"]
    template = copy.deepcopy(GOOD)
    template["spec"]["nodeSelecter"] = {"a": "b"}
    template["spec"]["containers"][0]["env"][0]["valeu"] = "1"
    template["spec"]["containers"][0]["resources"]["limit"] = {}
    assert check_pod_template(template) == [
        "spec.template.spec.nodeSelecter: unknown PodSpec field (did you mean 'nodeSelector'?)",
        "spec.template.spec.containers[0].env[0].valeu: unknown EnvVar field (did you mean 'value'?)",
        "spec.template.spec.containers[0].resources.limit: unknown ResourceRequirements field "
        "(did you mean 'limits'?)",
    ]


# --- more of the same kind ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ({"spec": {}}, "spec.template.spec.containers must list at least one container"),
        ({"spec": {"containers": []}}, "spec.template.spec.containers must list at least one container"),
        ({"spec": {"containers": [{"image": "i"}]}}, "spec.template.spec.containers[0].name must be a DNS-1123"),
        ({"spec": {"containers": [{"name": "A_b", "image": "i"}]}}, "containers[0].name must be a DNS-1123"),
        ({"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}, "containers[1].name 'a' is used by another"),
        ({"spec": {"containers": [{"name": "a", "image": 3}]}}, "containers[0].image must be a string"),
        ({"spec": {"containers": [{"name": "a", "env": {"A": "1"}}]}}, "containers[0].env must be a list"),
        ({"spec": {"containers": [{"name": "a", "env": [{"value": "1"}]}]}}, "env[0].name is required"),
        ({"spec": {"containers": [{"name": "a", "args": ["x" * (MAX_STRING_LENGTH + 1)]}]}}, "longer than"),
        ({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": True}}}]}}, "quote it: \"true\""),
        ({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": -1}}}]}}, "must not be negative"),
        ({"spec": {"containers": [{"name": "a"}], "ephemeralContainers": [{"name": "d"}]}}, "ephemeralContainers"),
        ({"spec": {"containers": [{"name": "a"}], "nodeSelector": {"gpu": True}}}, "nodeSelector.gpu must be"),
        ({"spec": {"containers": [{"name": "a"}], "volumes": [{"emptyDir": {}}]}}, "volumes[0].name is required"),
        ({"spec": {"containers": [{"name": "a"}], "overhead": {"cpu": "lots"}}}, "overhead.cpu is not a quantity"),
        ({"metadata": {"labels": {"app": "x" * 64}}, "spec": {"containers": [{"name": "a"}]}}, "label value"),
        ({"metadata": {"labels": {"bad key!": "x"}}, "spec": {"containers": [{"name": "a"}]}}, "label key"),
        ({"metadata": {"annotations": {"n": 1}}, "spec": {"containers": [{"name": "a"}]}}, "annotations.n must"),
        ({"spec": "nginx"}, "spec.template.spec must be a PodSpec object"),
        ("nginx", "spec.template must be an object"),
    ],
)
def test_more_careless_templates(template, needle):
    problems = check_pod_template(template)
    assert any(needle in p for p in problems), problems


def test_the_path_prefix_is_the_callers():
    assert check_pod_template({"spec": {}}, path="x.template") == ["x.template.spec.containers must list at "
                                                                  "least one container"]


def test_field_lists_cover_the_kubernetes_client_the_operator_pins():
    # the operator's client (operator/requirements.txt) defines what a pod may carry; a field
    # it knows must never be reported as a typo (a newer cluster's field, say)
    client = pytest.importorskip("kubernetes.client")
    for model, known in [(client.V1PodSpec, POD_SPEC_FIELDS), (client.V1Container, CONTAINER_FIELDS),
                         (client.V1EnvVar, ENV_VAR_FIELDS), (client.V1ResourceRequirements, RESOURCE_REQUIREMENTS_FIELDS)]:
        missing = set(model.attribute_map.values()) - known
        assert not missing, f"{model.__name__}: add {sorted(missing)} to tessera.api.template"


@pytest.mark.parametrize("crd", ["tessera.dev_elasticjobs.yaml", "tessera.dev_inferenceservices.yaml"])
def test_the_crd_types_the_cheap_parts_of_the_pod_spec(crd):
    version = crd_objects()[crd]["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    assert spec["x-kubernetes-preserve-unknown-fields"] is True and spec["required"] == ["containers"]
    container = spec["properties"]["containers"]["items"]
    assert container["properties"]["args"]["items"]["type"] == "string"
    assert container["properties"]["env"]["items"]["properties"]["value"]["type"] == "string"
    quantity = container["properties"]["resources"]["properties"]["limits"]["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True and quantity["pattern"].startswith("^")


def test_the_examples_have_no_template_problems():
    root = Path(__file__).resolve().parents[2]
    checked = 0
    for path in sorted((root / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == API_VERSION:
                assert check_pod_template(doc["spec"]["template"]) == [], path
                checked += 1
    assert checked >= 3


def test_workload_problems_combine_the_name_and_the_template():
    from tessera.api.admission import workload_problems

    good = {"metadata": {"name": "llm"}, "spec": {"template": GOOD}}
    assert workload_problems(good) == []
    bad = {"metadata": {"name": "llm.v2"}, "spec": {"template": with_container(resource={})}}
    problems = workload_problems(bad)
    assert len(problems) == 2
    assert problems[0].startswith("metadata.name must be a DNS-1035 label")
    assert problems[1].startswith("spec.template.spec.containers[0].resource: unknown Container field")
    assert workload_problems({"metadata": {"name": "x"}, "spec": {}}) == ["spec.template is required"]


def test_inline_text_of_all_containers_is_bounded():
    from tessera.api.template import MAX_INLINE_TEXT

    chunk = "x" * (MAX_STRING_LENGTH - 16)
    template = with_container(args=[chunk] * 3, env=[{"name": "A", "value": chunk}])
    assert check_pod_template(template) == []  # 4 x (32 KiB - 16) plus the command fits
    template["spec"]["initContainers"][0]["args"] = [chunk, chunk]
    problems = check_pod_template(template)
    assert len(problems) == 1 and f"more than {MAX_INLINE_TEXT}" in problems[0], problems
    assert problems[0].startswith("spec.template.spec: command, args and env values")


def test_workload_problems_bound_the_spec_size():
    from tessera.api.admission import MAX_SPEC_BYTES, workload_problems

    big = copy.deepcopy(GOOD)
    big["spec"]["volumes"] = [{"name": f"v{i}", "emptyDir": {}} for i in range(MAX_SPEC_BYTES // 20)]
    problems = workload_problems({"metadata": {"name": "big"}, "spec": {"template": big}})
    assert len(problems) == 1 and problems[0].startswith("spec is ") and f"more than {MAX_SPEC_BYTES}" in problems[0]
