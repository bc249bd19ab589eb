"""Fuzz: no workload, however careless or hostile, stops a good one or over-commits a node.

Hypothesis draws ElasticJob objects over (and beyond) the CRD's schema: replica ranges,
accelerator counts and types, extreme throughputs and batch sizes, and pod templates
with the mistakes people make (unquoted numbers, ints in args and env, typos, accelerators
in second and init containers).  Each runs through the real operator core on the
in-memory cluster behind the Kube port (tests/unit/fake_kube.py) beside a good job in
another namespace.  The good job must run within its normal few cycles and no node may
ever hold more accelerators than it has.  A few hundred examples run in ``make test``;
``TESSERA_FUZZ_EXAMPLES`` raises the count for a longer run.
"""

from __future__ import annotations

import os
from typing import Any

from fake_kube import FakeKube, elasticjob, gpu_node
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from test_operator_core import Clock, bound_gpus, running, scheduler

EXAMPLES = int(os.environ.get("TESSERA_FUZZ_EXAMPLES", "200"))

numbers = st.one_of(st.integers(-3, 40), st.sampled_from([0, 1, 8, 2**31, 10**12]),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 1e-308]))
quantities = st.one_of(numbers, st.sampled_from(["2", "500m", "2x", "", "1Gi", "-1", "1e308", "NaN"]))
resources = st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "resource", "gpu"]), quantities,
                            max_size=3)
container = st.fixed_dictionaries(
    {"name": st.sampled_from(["c", "side", "C!"]), "image": st.sampled_from(["i:1", "", "x"])},
    optional={
        "resources": st.fixed_dictionaries({}, optional={"requests": resources, "limits": resources}),
        "resource": resources,  # the typo
        "args": st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
        "env": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["A", "B"]),
                                               "value": st.one_of(st.text(max_size=5), st.integers())}),
                        max_size=2),
    },
)
template = st.fixed_dictionaries(
    {"spec": st.fixed_dictionaries({"containers": st.lists(container, min_size=0, max_size=3)},
                                   optional={"initContainers": st.lists(container, max_size=2)})},
    optional={"metadata": st.fixed_dictionaries({}, optional={"labels": st.dictionaries(
        st.sampled_from(["a", "tessera.dev/workload"]), st.text(max_size=3), max_size=2)})},
)
spec = st.fixed_dictionaries(
    {
        "replicas": st.fixed_dictionaries({"min": numbers, "max": numbers}),
        "acceleratorsPerReplica": numbers,
        "acceleratorTypes": st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["H100", "A100", "TPUv5", ""])},
            optional={"relativeThroughput": numbers}), max_size=3),
        "template": template,
    },
    optional={"priority": numbers, "globalBatchSize": numbers, "microBatchSize": numbers,
              "allowMixedTypes": st.booleans(), "parallelism": st.fixed_dictionaries(
                  {}, optional={"tensor": numbers, "pipeline": numbers})},
)
names = st.sampled_from(["bad", "good", "9lives", "a.b", "x" * 70])


@seed(20261207)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bad_spec=spec, bad_name=names, second=st.booleans())
def test_no_input_stops_a_good_job_or_overcommits_a_node(bad_spec: dict[str, Any], bad_name: str,
                                                         second: bool) -> None:
    kube, clock = FakeKube([gpu_node("h0"), gpu_node("h1")]), Clock()
    bad = elasticjob(bad_name, "hostile", created="2026-01-01T00:00:00Z")
    bad["spec"] = bad_spec
    kube.add(bad)
    if second:  # a second careless one, older still, so it is handled first
        twin = elasticjob(bad_name, "hostile-2", created="2025-12-31T00:00:00Z")
        twin["spec"] = bad_spec
        kube.add(twin)
    kube.add(elasticjob("good", "team", accelerators=4, replicas=2, created="2026-01-02T00:00:00Z",
                        priority=0))
    s = scheduler(kube, clock)
    for _ in range(4):
        s.run_cycle()
        assert max(bound_gpus(kube).values(), default=0) <= 8, bound_gpus(kube)
        clock.t += 2
    good = kube.workload("good", "team")
    assert running(kube, "good", "team") or _outranked(kube), good.get("status")


def _outranked(kube: FakeKube) -> bool:
    """The good job may wait only because the other job is valid, higher priority and holds
    the room (a legitimate outcome, not a stopped cycle)."""
    status = kube.workload("good", "team").get("status") or {}
    reasons = {c.get("reason") for c in status.get("conditions") or []}
    others = [raw for (kind, ns, _), raw in kube.workloads.items() if ns.startswith("hostile")]
    return "Unschedulable" in reasons and any((raw.get("status") or {}).get("phase") == "Running"
                                              for raw in others)
