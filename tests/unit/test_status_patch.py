"""Every status patch the operator writes is typed: checked against the kind's status model
(tessera.api) before it is sent, so a misspelt field or a wrong type is a bug caught at the
writer, never a status kubectl shows or a later cycle misreads. And a refused status write
(409, 429 after retries) loses nothing: the next cycle writes it again."""

from __future__ import annotations

import pytest
from fake_kube import FakeKube, elasticjob, gpu_node
from test_operator_core import Clock, bound_gpus, running, scheduler

from tessera.operator.kube import KubeError
from tessera.operator.status import StatusPatchError, check_patch


@pytest.mark.parametrize("patch, message", [
    ({"phase": "Runing"}, "status.phase"),
    ({"replicas": "2"}, "status.replicas"),
    ({"placement": [{"replica": 0, "pod": "p", "node": 3}]}, "status.placement.0.node"),
    ({"plcement": []}, "no field(s) plcement"),
    ({"migrations": []}, "no field(s) migrations"),  # an InferenceService field, not an ElasticJob one
])
def test_a_patch_that_does_not_match_the_model_is_refused(patch: dict, message: str) -> None:
    with pytest.raises(StatusPatchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_patch("ElasticJob", patch)


def test_valid_patches_and_removals_pass() -> None:
    check_patch("ElasticJob", {"phase": "Running", "replicas": 2, "startTime": None, "restartIntent": None,
                               "attainedService": 12.5, "lastResizeTime": "2026-01-01T00:00:00Z"})
    check_patch("InferenceService", {"selector": "a=b", "migrations": []})


def test_a_status_write_refused_with_409_is_written_again_next_cycle() -> None:
    kube, clock = FakeKube([gpu_node("h0")]), Clock()
    kube.add(elasticjob("a"))
    refused = iter([True])
    kube.fail("patch_status", lambda *args: next(refused, False),
              KubeError("patch status of ElasticJob ns/a: 409 Conflict: the object has been modified", 409))
    s = scheduler(kube, clock)
    s.run_cycle()
    assert kube.calls["patch_status"] >= 1
    for _ in range(4):
        clock.t += 3  # past the workload's backoff
        s.run_cycle()
    assert running(kube, "a")
    assert bound_gpus(kube)["h0"] == 8 and len(kube.pods_of("a")) == 2  # nothing bound twice
