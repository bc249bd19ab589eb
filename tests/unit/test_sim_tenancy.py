"""Tenants in the simulator (tessera.sim.tenancy): scenario queues become the operator's quota
tree, trace tenants map to queues, and the queue observer's figures move with reclaim."""

from __future__ import annotations

import dataclasses

import pytest

from tessera.core.quota import QuotaTree
from tessera.policy import load_policy
from tessera.sim.loaders.philly import job_workload
from tessera.sim.simulator import SimConfig, Simulator
from tessera.sim.tenancy import QueueObserver, QueueSpec, TenantsSpec, TypeQuotaSpec, assign, quota_tree
from tessera.testing.builders import nodes

HOUR = 3600.0


def tree() -> QuotaTree:
    t = quota_tree([QueueSpec(name="org"), QueueSpec(name="a", parent="org", quotas={"H100": 8}),
                    QueueSpec(name="b", parent="org", quotas={"H100": TypeQuotaSpec(nominal=8, lending_limit=8)})])
    assert t is not None
    return t


def test_scenario_queues_become_the_operator_s_quota_tree():
    t = tree()
    assert t.quota("org", "H100") == 16_000 and t.lend("b", "H100") == 8_000
    assert quota_tree([]) is None
    with pytest.raises(ValueError, match="does not exist"):
        quota_tree([QueueSpec(name="x", parent="missing")])


def test_trace_tenants_map_to_queues_with_a_default():
    jobs = [job_workload(f"j{i}", 0.0, 60.0, 1) for i in range(3)]
    out = assign(jobs, ["vc1", "vc2", "vc9"], TenantsSpec(map={"vc1": "a", "vc2": "b"}, default="other"))
    assert [w.workload.queue for w in out] == ["a", "b", "other"]


def run(reclaim: bool) -> tuple[dict, Simulator]:
    def job(key: str, queue: str, at: float, hours: float) -> object:
        w = job_workload(key, at, hours * HOUR, 8, accelerator_types=("H100",))
        return dataclasses.replace(w, workload=dataclasses.replace(w.workload, queue=queue))

    # a borrows b's idle quota for 10 h; b's job arrives after 1 h and needs its own 8 back
    workloads = [job("a1", "a", 0.0, 10), job("a2", "a", 0.0, 10), job("b1", "b", HOUR, 2)]
    observer = QueueObserver(tree())
    sim = Simulator(nodes("h", 2, "H100", 8), workloads, load_policy("best-fit"), SimConfig(quotas=tree()),
                    observers=[observer])
    if not reclaim:
        sim.engine.reclaim_min_runtime_seconds = float("inf")
    sim.run()
    return dict(observer.report(sim)), sim


def test_reclaim_gives_a_lender_its_quota_back_and_the_observer_sees_the_difference():
    with_reclaim, sim = run(True)
    b1 = sim.jobs["b1"]
    assert b1.finish is not None and b1.finish - b1.arrival < 3 * HOUR  # started at once, ran 2 h
    assert with_reclaim["below_nominal_pending_seconds_max"] == 0.0
    without, sim = run(False)
    b1 = sim.jobs["b1"]
    assert b1.finish is not None and b1.finish - b1.arrival >= 10 * HOUR  # waited for a's job to end
    assert without["below_nominal_pending_seconds_max"] >= 8 * HOUR
    assert without["queues"]["b"]["below_nominal_pending_seconds_max"] >= 8 * HOUR
    assert with_reclaim["jain_index"] > without["jain_index"]


def test_the_shipped_multi_tenant_scenario_queues_every_job():
    from pathlib import Path

    from tessera.sim.scenario import ScenarioError, load_scenario

    path = Path(__file__).resolve().parents[2] / "sim" / "scenarios" / "multi-tenant-philly.yaml"
    try:
        scenario = load_scenario(path)
        workloads, _ = scenario.workloads(0)
    except ScenarioError as err:  # the public traces are read from ../shared/data
        pytest.skip(f"the Philly trace is not available here: {err}")
    assert scenario.quotas is not None and scenario.config(0).quotas is not None
    queues = {w.workload.queue for w in workloads}
    assert queues == {"team-b436b2", "team-7f04ca", "team-6214e9", "other"} and len(workloads) == 800
    # every job has a Gavel job type and its measured speed on each type; the seed draws the types
    assert all(w.workload.attributes.get("job_type") for w in workloads)
    speeds = {round(w.workload.throughput_on("K80") / w.workload.throughput_on("V100"), 2)
              for w in workloads if w.workload.throughput_on("K80") and w.workload.throughput_on("V100")}
    assert min(speeds) < 0.2 and max(speeds) > 1.0  # K80: far slower for most, faster for Recommendation
    other, _ = scenario.workloads(1)
    assert [w.workload.attributes["job_type"] for w in other] != [w.workload.attributes["job_type"] for w in workloads]


def test_a_lender_whose_borrowers_are_inside_their_minimum_runtime_gets_its_quota_when_it_ends():
    # b's job arrives 10 s after a's borrowers started, inside their 600 s before reclaim;
    # nothing else happens for 10 h, yet the simulator cycles again when the 600 s are up
    def job(key: str, queue: str, at: float, hours: float) -> object:
        w = job_workload(key, at, hours * HOUR, 8, accelerator_types=("H100",))
        return dataclasses.replace(w, workload=dataclasses.replace(w.workload, queue=queue))

    workloads = [job("a1", "a", 0.0, 10), job("a2", "a", 0.0, 10), job("b1", "b", 10.0, 2)]
    observer = QueueObserver(tree())
    sim = Simulator(nodes("h", 2, "H100", 8), workloads, load_policy("best-fit"), SimConfig(quotas=tree()),
                    observers=[observer])
    sim.engine.reclaim_min_runtime_seconds = 600.0
    sim.run()
    assert observer.report(sim)["below_nominal_pending_seconds_max"] == 590.0
    assert sim.jobs["b1"].first_start == 600.0
