"""The Queue CRD's CEL rules, bounds and defaults on the real API server (server-side dry run).

Every refusal is checked against an accepted control, and each message must name the field;
tests/unit/test_queue_api.py checks that the pydantic models refuse the same objects.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

QUEUE: dict[str, Any] = {
    "apiVersion": "tessera.dev/v1alpha1", "kind": "Queue",
    "metadata": {"name": "team-a"},
    "spec": {"parent": "org", "quotas": [{"acceleratorType": "H100", "nominal": 8, "lendingLimit": 4},
                                         {"acceleratorType": "A100", "nominal": 16, "borrowingLimit": 8}]},
}


def dry_run(cluster: Any, obj: dict[str, Any], namespace: str | None = None) -> Any:
    where = ["-n", namespace] if namespace else []
    return cluster.kubectl("create", "--dry-run=server", *where, "-o", "json", "-f", "-", input=json.dumps(obj),
                           check=False)


def with_spec(name: str = "team-a", **spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(QUEUE)
    obj["metadata"]["name"] = name
    obj["spec"].update(spec)
    return obj


def test_the_control_is_accepted_and_defaulted(crds: Any) -> None:
    proc = dry_run(crds, QUEUE)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)["spec"]
    assert spec["weight"] == 1 and spec["preemption"] == {"reclaimWithinTree": "Any", "withinQueue": "LowerPriority"}
    assert spec["quotas"][1]["nominal"] == 16 and "lendingLimit" not in spec["quotas"][1]
    # a parent without any spec: the server fills in the defaults
    proc = dry_run(crds, {"apiVersion": "tessera.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "org"}})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"] == {"parent": "", "weight": 1, "preemption": {
        "reclaimWithinTree": "Any", "withinQueue": "LowerPriority"}}
    # at the limits: lendingLimit == nominal, a 63-character name, a zero-quota borrower
    edge = with_spec("a" * 63, quotas=[{"acceleratorType": "H100", "nominal": 4, "lendingLimit": 4},
                                       {"acceleratorType": "L4", "borrowingLimit": 2}])
    proc = dry_run(crds, edge)
    assert proc.returncode == 0, proc.stderr
    # a quota in H100-equivalents beside the per-type ones
    proc = dry_run(crds, with_spec(normalizedQuota={"acceleratorType": "H100", "nominal": 40}))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"]["normalizedQuota"] == {"acceleratorType": "H100", "nominal": 40}


def test_queues_are_cluster_scoped(crds: Any) -> None:
    proc = crds.kubectl("api-resources", "--api-group=tessera.dev", "--namespaced=false", "-o", "name")
    assert "queues.tessera.dev" in proc.stdout.split()
    assert "elasticjobs.tessera.dev" not in proc.stdout.split()


@pytest.mark.parametrize(
    ("obj", "needles"),
    [
        (with_spec(quotas=[{"acceleratorType": "H100", "nominal": 4, "lendingLimit": 5}]),
         ["spec.quotas[0].lendingLimit", "lendingLimit may not exceed nominal"]),
        (with_spec(quotas=[{"acceleratorType": "H100", "nominal": 1}, {"acceleratorType": "H100", "nominal": 2}]),
         ["spec.quotas", "spec.quotas lists an acceleratorType twice"]),
        (with_spec("org", parent="org"), ["spec.parent", "spec.parent may not be the queue itself"]),
        (with_spec(quotas=[{"acceleratorType": "H100", "nominal": -1}]), ["spec.quotas[0].nominal"]),
        (with_spec(quotas=[{"acceleratorType": "H100", "nominal": 1, "borrowingLimit": -1}]),
         ["spec.quotas[0].borrowingLimit"]),
        (with_spec(quotas=[{"nominal": 1}]), ["spec.quotas[0].acceleratorType"]),
        (with_spec(quotas=[{"acceleratorType": f"t{i}"} for i in range(33)]), ["spec.quotas"]),
        (with_spec(weight=0), ["spec.weight"]),
        (with_spec(parent="Org"), ["spec.parent"]),
        (with_spec(preemption={"withinQueue": "Any"}), ["spec.preemption.withinQueue"]),
        (with_spec("team.a"), ["metadata.name", "DNS-1123 label"]),
        (with_spec("a" * 64), ["metadata.name", "DNS-1123 label"]),
        (with_spec(normalizedQuota={"acceleratorType": "H100", "nominal": 2, "lendingLimit": 3}),
         ["spec.normalizedQuota.lendingLimit", "lendingLimit may not exceed nominal"]),
        (with_spec(quotas=[{"acceleratorType": "H100-equivalent", "nominal": 2}]),
         ["spec.quotas", "may not end in -equivalent"]),
    ],
    ids=["lending-over-nominal", "duplicate-type", "own-parent", "negative-nominal", "negative-borrowing",
         "no-type", "too-many-quotas", "zero-weight", "bad-parent", "bad-preemption", "dotted-name", "long-name",
         "normalized-lending-over-nominal", "equivalent-as-a-type"],
)
def test_bad_queues_are_refused_naming_the_field(crds: Any, obj: dict[str, Any], needles: list[str]) -> None:
    proc = dry_run(crds, obj)
    assert proc.returncode != 0, f"the API server accepted {obj}"
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_a_workload_queue_name_must_be_a_queue_name(crds: Any, namespace: str) -> None:
    job = {"apiVersion": "tessera.dev/v1alpha1", "kind": "ElasticJob", "metadata": {"name": "j"},
           "spec": {"replicas": {"max": 1}, "acceleratorTypes": [{"name": "H100"}], "queueName": "team-a",
                    "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    proc = dry_run(crds, job, namespace)
    assert proc.returncode == 0, proc.stderr
    del job["spec"]["queueName"]
    proc = dry_run(crds, job, namespace)
    assert proc.returncode == 0, proc.stderr
    assert "queueName" not in json.loads(proc.stdout)["spec"]  # no server-side default
    job["spec"]["queueName"] = "Team-A"
    proc = dry_run(crds, job, namespace)
    assert proc.returncode != 0 and "spec.queueName" in proc.stderr, proc.stderr
