"""The simulator keeps decision state with the workloads, as the operator keeps it in status:
a policy that forgets everything between decisions (a new leader before every decision,
handed only the round clock the operator keeps on its Lease) decides exactly as one that
remembers. Attained service (tessera.core.service) and restart intents travel with the
workload; a policy that kept them in memory would decide differently here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tessera.core import ClusterSnapshot, Plan, Workload
from tessera.policies.jct import GavelLAS
from tessera.policy import PolicyContext, load_policy
from tessera.sim.generators import synthetic_training
from tessera.sim.simulator import SimConfig, Simulator
from tessera.testing import nodes


class NewLeaderEveryDecision:
    """Decides with a fresh instance each time, continuing only the round clock."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.current = factory()
        self.name, self.version, self.decides = self.current.name, self.current.version, self.current.decides
        self.round_seconds = self.current.round_seconds
        self.fresh_instances = 0

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        fresh = self.factory()
        due = self.current.next_round_seconds()
        if due is not None and math.isfinite(due):
            fresh.resume_rounds(due - self.round_seconds)
        self.current = fresh
        self.fresh_instances += 1
        return fresh.decide(snapshot, pending, ctx)


def outcome(policy: Any) -> dict[str, tuple[float | None, int, int, float]]:
    models = {"m1": {"H100": 2.0, "A100": 1.0}, "m2": {"H100": 1.0, "A100": 0.9}}
    workloads = synthetic_training(jobs=24, jobs_per_hour=40, seed=3, models=models, median_duration_seconds=1800)
    cluster = nodes("h", 1, "H100", 8) + nodes("a", 1, "A100", 8)
    sim = Simulator(cluster, workloads, policy, SimConfig(seed=3, round_seconds=300.0)).run()
    return {k: (j.finish, j.preemptions, j.restarts, j.workload.attained_service_seconds)
            for k, j in sorted(sim.jobs.items())}


FACTORIES: dict[str, Callable[[], Any]] = {
    "gavel": lambda: GavelLAS(round_seconds=300.0),
    "cpsat-rounds": lambda: load_policy("cpsat", round_seconds=300.0),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_policy_with_no_memory_decides_as_one_that_remembers(name: str) -> None:
    remembers = outcome(FACTORIES[name]())
    forgetful = NewLeaderEveryDecision(FACTORIES[name])
    forgets = outcome(forgetful)
    assert forgetful.fresh_instances > 10
    # the run must exercise the state: some job was stopped (and attained service decided who)
    assert any(preempted for _, preempted, _, _ in remembers.values()), remembers
    # a stopped job's run went into its tally, as the operator's status.attainedService
    assert all(tally > 0 for _, preempted, _, tally in remembers.values() if preempted)
    assert forgets == remembers
