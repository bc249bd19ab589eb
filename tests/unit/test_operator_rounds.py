"""Round mode in the operator: when the loop wakes for a round, how `--policy-param` turns it
on, attained service after a restart, and the intentions a scale-up decision must not drop."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
from chart_helpers import render
from prometheus_client import CollectorRegistry

from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement
from tessera.engine import Engine
from tessera.operator.main import add_arguments, constructor_arguments, policy_params
from tessera.operator.metrics import OperatorMetrics
from tessera.operator.timing import ROUND_WAKE_SLACK_SECONDS, round_wait_seconds
from tessera.policies.cpsat import CpSat
from tessera.policy import PolicyContext, PolicyLoadError, load_policy
from tessera.testing import gang, node


class RoundPolicy:
    """A policy exposing only the DecidesInRounds capability."""

    round_seconds = 30.0

    def __init__(self, due: float | None) -> None:
        self.due = due

    def next_round_seconds(self) -> float | None:
        return self.due


def test_the_loop_wakes_just_after_the_next_round_is_due() -> None:
    # due in 0.7 s: sleep until just past it, not the 2 s interval
    assert round_wait_seconds(RoundPolicy(100.7), 100.0, 2.0) == pytest.approx(0.7 + ROUND_WAKE_SLACK_SECONDS)
    # due after the interval: the interval (or an earlier grace deadline passed as default) wins
    assert round_wait_seconds(RoundPolicy(130.0), 100.0, 2.0) == 2.0
    assert round_wait_seconds(RoundPolicy(130.0), 100.0, 0.3) == 0.3


@pytest.mark.parametrize("due", [None, -math.inf, 99.0, 100.0])
def test_no_round_ahead_leaves_the_interval(due: float | None) -> None:
    # off, none decided yet, or overdue (e.g. not the leader): the next cycle decides; no busy loop
    assert round_wait_seconds(RoundPolicy(due), 100.0, 2.0) == 2.0


def test_policies_without_rounds_leave_the_interval() -> None:
    assert round_wait_seconds(object(), 100.0, 2.0) == 2.0
    assert round_wait_seconds(CpSat(), 100.0, 2.0) == 2.0  # round mode off


def test_cpsat_says_when_its_next_round_is_due() -> None:
    policy = CpSat(round_seconds=5.0)
    assert policy.next_round_seconds() == -math.inf
    nodes = [node("fast-0", "A100", 4)]
    ctx = PolicyContext(now_seconds=1_000.0, deterministic=True, time_budget_seconds=2.0)
    policy.decide(ClusterSnapshot(nodes, now_seconds=1_000.0), [], ctx)
    assert policy.next_round_seconds() == 1_005.0
    assert round_wait_seconds(policy, 1_003.0, 2.0) == pytest.approx(2.0)
    assert round_wait_seconds(policy, 1_004.5, 2.0) == pytest.approx(0.5 + ROUND_WAKE_SLACK_SECONDS)
    # a decision between rounds does not move the boundary
    ctx = PolicyContext(now_seconds=1_002.0, deterministic=True, time_budget_seconds=2.0)
    policy.decide(ClusterSnapshot(nodes, now_seconds=1_002.0), [], ctx)
    assert policy.next_round_seconds() == 1_005.0
    assert policy.last_stats["round"] is False


def test_policy_param_round_seconds_reaches_the_constructor() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--policy", "cpsat", "--policy-param", "round_seconds=60",
                              "--policy-param", "max_moves=4", "--policy-param", "moves=false",
                              "--policy-param", "elastic_hysteresis_seconds=300"])
    arguments = constructor_arguments(args.policy, policy_params(args.policy_param))
    # converted to the type of the argument's default; keys it does not take stay context-only
    assert arguments == {"round_seconds": 60.0, "max_moves": 4, "moves": False}
    assert isinstance(arguments["max_moves"], int)
    policy = load_policy("cpsat", **arguments)
    assert isinstance(policy, CpSat) and policy.round_seconds == 60.0 and policy.next_round_seconds() == -math.inf


def test_a_bad_constructor_value_is_refused_with_its_name() -> None:
    with pytest.raises(PolicyLoadError, match=r"max_moves=2\.5: expected a whole number"):
        constructor_arguments("cpsat", {"max_moves": 2.5})


def test_a_fresh_policy_credits_running_jobs_with_their_run_since_start() -> None:
    """After an operator restart the first decision knows each job's service: the tally of its
    earlier runs (status.attainedService) plus its run since status.startTime."""
    types = [("A100", 2.0), ("T4", 1.0)]
    old, young = gang("ns/old", 1, 4, types), gang("ns/young", 1, 4, types)
    # 'old' ran 300 s on 4 A100s before an earlier preemption (4 x 300 service-seconds)
    old = dataclasses.replace(old, attained_service_seconds=1_200.0)
    nodes = [node("fast-0", "A100", 8)]
    running = [Allocation(old, (ReplicaPlacement(0, "fast-0", "A100", (0, 1, 2, 3)),), started_at_seconds=400.0),
               # start unknown (no status.startTime): the operator says so with service since now
               Allocation(young, (ReplicaPlacement(0, "fast-0", "A100", (4, 5, 6, 7)),), started_at_seconds=0.0,
                          service_since_seconds=1_000.0)]
    policy = CpSat(round_seconds=60.0)
    ctx = PolicyContext(now_seconds=1_000.0, deterministic=True, time_budget_seconds=2.0)
    policy.decide(ClusterSnapshot(nodes, running, now_seconds=1_000.0), [], ctx)
    planner = policy._rounds
    assert planner is not None
    assert planner.attained_seconds("ns/old") == pytest.approx(900.0)  # 300 earlier + 600 now, on its fastest type
    assert planner.attained_seconds("ns/young") == 0.0  # nothing credited for an unknown start


def test_record_cycle_counts_rounds() -> None:
    metrics = OperatorMetrics(registry=CollectorRegistry())
    policy = CpSat(round_seconds=5.0)
    nodes = [node("fast-0", "A100", 4)]

    class Clock:
        now_seconds = 1_000.0

        def now(self) -> float:
            return self.now_seconds

    clock = Clock()
    engine = Engine(policy, clock, metrics=metrics, time_budget_seconds=1.0)
    for t in (1_000.0, 1_002.0, 1_005.0):  # a round, in between, a round
        clock.now_seconds = t
        engine.decide(ClusterSnapshot(nodes, now_seconds=t), [])
    assert metrics.rounds.labels(policy="cpsat")._value.get() == 2


def test_a_decision_that_does_not_see_a_moving_job_keeps_its_reserved_type() -> None:
    """The operator's scale-up decisions see one service: a job the round stopped to move
    keeps its intended type for the follow-up decision."""
    types = [("A100", 4.0), ("T4", 1.0)]
    job = gang("ns/job", 1, 4, types)
    nodes = [node("fast-0", "A100", 4), node("slow-0", "T4", 4)]
    policy = CpSat(round_seconds=60.0)
    running = [Allocation(job, (ReplicaPlacement(0, "slow-0", "T4", (0, 1, 2, 3)),), started_at_seconds=900.0)]
    # a round while the fast type is taken by work it may not stop: the job stays (and
    # attains 100 s x 1/4 speed by the next round)
    blocker = gang("ns/blocker", 1, 4, [("A100", 1.0)], preemptible=False)
    held = Allocation(blocker, (ReplicaPlacement(0, "fast-0", "A100", (0, 1, 2, 3)),), started_at_seconds=900.0)
    ctx = PolicyContext(now_seconds=900.0, deterministic=True, time_budget_seconds=2.0)
    assert not policy.decide(ClusterSnapshot(nodes, [*running, held], now_seconds=900.0), [], ctx).preemptions
    ctx = PolicyContext(now_seconds=1_000.0, deterministic=True, time_budget_seconds=2.0)
    plan = policy.decide(ClusterSnapshot(nodes, running, now_seconds=1_000.0), [], ctx)
    assert [p.workload for p in plan.preemptions] == ["ns/job"]
    assert "restarts as 1 x A100" in plan.preemptions[0].reason
    # a scale-up style decision of another workload, with the job neither running nor pending
    other = gang("ns/other", 1, 1, [("T4", 1.0)])
    ctx = PolicyContext(now_seconds=1_000.5, deterministic=True, time_budget_seconds=2.0)
    policy.decide(ClusterSnapshot(nodes, now_seconds=1_000.5), [other], ctx)
    # the follow-up decision starts it on the type the round chose, although a new job
    # without attained service is worth more there (rival A100 + job T4 would score higher)
    rival = gang("ns/rival", 1, 4, types)
    ctx = PolicyContext(now_seconds=1_001.0, deterministic=True, time_budget_seconds=2.0)
    plan = policy.decide(ClusterSnapshot(nodes, now_seconds=1_001.0), [job, rival], ctx)
    assert sorted((p.workload, p.replicas[0].node) for p in plan.placements) == [
        ("ns/job", "fast-0"), ("ns/rival", "slow-0")]
    assert policy.last_stats["round"] is False


def test_helm_policy_params_become_policy_params_of_the_operator() -> None:
    values = {"policy": {"name": "cpsat", "timeBudgetSeconds": 1.0, "params": {"round_seconds": 60}}}
    deployment = next(o for o in render(values) if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--policy-param=round_seconds=60" in args
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = parser.parse_args([a for a in args[1:] if a.startswith("--policy")])
    assert constructor_arguments(parsed.policy, policy_params(parsed.policy_param)) == {"round_seconds": 60.0}
    # the default renders none
    default = next(o for o in render() if o["kind"] == "Deployment")
    assert not [a for a in default["spec"]["template"]["spec"]["containers"][0]["args"] if "--policy-param" in a]


def _on(workload, node_name: str, accelerator_type: str, n: int, started: float) -> Allocation:
    return Allocation(workload, tuple(ReplicaPlacement(i, node_name, accelerator_type, (i,)) for i in range(n)), started)


def test_round_resize_in_place_shrinks_an_elastic_job_instead_of_restarting_it() -> None:
    nodes = [node("fast-0", "A100", 8)]
    elastic = gang("ns/elastic", (1, 8), 1, [("A100", 1.0)])
    new = gang("ns/new", 4, 1, [("A100", 1.0)], submitted=1_190.0)
    snap = ClusterSnapshot(nodes, [_on(elastic, "fast-0", "A100", 8, 0.0)], now_seconds=1_200.0)
    ctx = PolicyContext(now_seconds=1_200.0, deterministic=True, time_budget_seconds=2.0)
    # the same round as test_solver_rounds' shrink, but the elastic job keeps 4 replicas running
    plan = CpSat(round_seconds=60.0, round_resize_in_place=True).decide(snap, [new], ctx)
    assert not plan.preemptions
    assert [(r.workload, r.remove, r.add) for r in plan.resizes] == [("ns/elastic", (4, 5, 6, 7), ())]
    assert plan.resizes[0].reason.startswith("round: shrinks to 4 x A100")
    assert [(p.workload, len(p.replicas)) for p in plan.placements] == [("ns/new", 4)]
    result = Engine(CpSat(round_seconds=60.0, round_resize_in_place=True), _Clock(1_200.0)).decide(snap, [new])
    assert [r.workload for r in result.plan.resizes] == ["ns/elastic"] and not result.rejected  # valid


def test_round_resize_in_place_grows_an_elastic_job_into_idle_room() -> None:
    nodes = [node("fast-0", "A100", 8)]
    elastic = gang("ns/elastic", (1, 8), 1, [("A100", 1.0)])
    snap = ClusterSnapshot(nodes, [_on(elastic, "fast-0", "A100", 2, 0.0)], now_seconds=100.0)
    ctx = PolicyContext(now_seconds=100.0, deterministic=True, time_budget_seconds=2.0)
    plan = CpSat(round_seconds=60.0, round_resize_in_place=True).decide(snap, [], ctx)
    assert not plan.preemptions and len(plan.resizes) == 1
    grow = plan.resizes[0]
    assert grow.remove == () and len(grow.add) == 6 and {a.node for a in grow.add} == {"fast-0"}
    # off (the default): the same round stops it to restart at 8
    plan = CpSat(round_seconds=60.0).decide(snap, [], ctx)
    assert not plan.resizes and "restarts as 8 x A100" in plan.preemptions[0].reason


class _Clock:
    def __init__(self, now_seconds: float) -> None:
        self.now_seconds = now_seconds

    def now(self) -> float:
        return self.now_seconds
