"""The round model (one configuration per job, type capacity, tiers) and cpsat's round mode."""

from tessera.core import (
    AcceleratorOption,
    Allocation,
    ClusterSnapshot,
    ReplicaDemand,
    ReplicaPlacement,
    Workload,
    WorkloadKind,
)
from tessera.policies.cpsat import CpSat
from tessera.policies.cpsat_rounds import _speedup, candidate_sizes
from tessera.policy import PolicyContext
from tessera.solver import RoundConfig, RoundJob, RoundModel, SolverLimits, config_value
from tessera.testing import gang, node

LIMITS = SolverLimits(time_limit_seconds=5.0, deterministic=True, seed=1)
ONE_GPU = {"devices": 1}


def job(key: str, *configs: tuple[str, int, int], tier: int = 0, current: tuple[str, int] | None = None) -> RoundJob:
    return RoundJob(key, [RoundConfig(t, n, v) for t, n, v in configs], ONE_GPU, current=current, tier=tier)


def test_one_configuration_per_job_within_type_capacity():
    jobs = [job("a", ("fast", 4, 10), ("slow", 4, 6)), job("b", ("fast", 4, 8), ("slow", 4, 1))]
    choice = RoundModel(jobs, {"fast": {"devices": 4}, "slow": {"devices": 4}}).solve(LIMITS)
    # 10 + 1 < 8 + 6: the job that loses more on the slow type gets the fast one
    assert choice.outcome.status == "OPTIMAL"
    assert {k: c.accelerator_type for k, c in choice.chosen.items()} == {"a": "slow", "b": "fast"}


def test_capacity_leaves_a_job_out_when_nothing_fits():
    jobs = [job("a", ("fast", 3, 5)), job("b", ("fast", 2, 4))]
    choice = RoundModel(jobs, {"fast": {"devices": 4}}).solve(LIMITS)
    assert list(choice.chosen) == ["a"]


def test_a_higher_tier_outranks_any_lower_tier_value():
    jobs = [job("low", ("fast", 4, 1_000)), job("high", ("fast", 4, 1), tier=1)]
    choice = RoundModel(jobs, {"fast": {"devices": 4}}).solve(LIMITS)
    assert list(choice.chosen) == ["high"]


def test_hint_objective_is_the_value_of_changing_nothing():
    jobs = [job("a", ("fast", 4, 7), ("slow", 4, 2), current=("slow", 4))]
    model = RoundModel(jobs, {"fast": {"devices": 4}, "slow": {"devices": 4}})
    assert model.add_hint({"a": ("slow", 4)}) == 2
    assert model.solve(LIMITS).chosen["a"].accelerator_type == "fast"


def test_config_value_charges_restarts_and_rewards_keeping():
    assert config_value(1.0, 0.5, 0.0) == 50_000
    assert config_value(1.0, 0.5, 0.1) == 45_000
    assert config_value(1.0, 0.5, -0.1) == 55_000
    assert config_value(1.0, 0.0, 0.0) == 0


def _running(workload, node_name: str, accelerator_type: str, n: int, started: float) -> Allocation:
    return Allocation(workload, tuple(ReplicaPlacement(i, node_name, accelerator_type, (i,)) for i in range(n)), started)


def test_round_mode_moves_a_job_to_the_fast_type_and_lets_the_newest_job_wait():
    nodes = [node("fast-0", "A100", 4), node("slow-0", "T4", 4)]
    types = [("A100", 6.0), ("T4", 1.0)]
    old = gang("ns/old", 4, 1, types)
    new = gang("ns/new", 4, 1, types, submitted=590.0)
    policy = CpSat(round_seconds=60.0, service_scale_seconds=600.0)
    ctx = PolicyContext(now_seconds=0.0, deterministic=True, time_budget_seconds=2.0)
    # first decision: "old" starts on the fast type
    plan = policy.decide(ClusterSnapshot(nodes), [old], ctx)
    assert [(p.workload, p.replicas[0].node) for p in plan.placements] == [("ns/old", "fast-0")]
    # ten minutes later "new" arrives: the round gives it the fast type (no service yet)
    # and stops "old" (it has had 600 s at full speed), which then waits on the slow type
    snap = ClusterSnapshot(nodes, [_running(old, "fast-0", "A100", 4, 0.0)], now_seconds=600.0)
    ctx = PolicyContext(now_seconds=600.0, deterministic=True, time_budget_seconds=2.0)
    plan = policy.decide(snap, [new], ctx)
    assert [p.workload for p in plan.preemptions] == ["ns/old"]
    assert "restarts as 4 x T4" in plan.preemptions[0].reason
    assert [(p.workload, p.replicas[0].node) for p in plan.placements] == [("ns/new", "fast-0")]
    assert policy.last_stats["round"] and policy.last_stats["status"] == "OPTIMAL"
    # the follow-up decision at the same instant places "old" on the room it was given
    snap = ClusterSnapshot(nodes, [_running(new, "fast-0", "A100", 4, 600.0)], now_seconds=600.0)
    plan = policy.decide(snap, [old], ctx)
    assert [(p.workload, p.replicas[0].node) for p in plan.placements] == [("ns/old", "slow-0")]
    assert policy.last_stats["round"] is False


def test_round_mode_is_off_by_default():
    assert CpSat().round_seconds == 0.0


def test_elastic_jobs_may_run_at_halvings_of_their_target_and_powers_of_two():
    assert candidate_sizes(gang("ns/e", (1, 12), 1)) == [12, 8, 6, 4, 3, 2, 1]
    assert candidate_sizes(gang("ns/e", (3, 8), 1)) == [8, 4, 3]
    assert candidate_sizes(gang("ns/r", 6, 1)) == [6]
    # an elastic job that may grow past its target is also offered bigger sizes
    assert candidate_sizes(gang("ns/g", (1, 12), 1, desired=6)) == [12, 8, 6, 4, 3, 2, 1]


def test_round_mode_shrinks_an_elastic_job_to_start_a_new_one_and_reports_solves():
    nodes = [node("fast-0", "A100", 8)]
    elastic = gang("ns/elastic", (1, 8), 1, [("A100", 1.0)])
    policy = CpSat(round_seconds=60.0)
    ctx = PolicyContext(now_seconds=1_200.0, deterministic=True, time_budget_seconds=2.0)
    snap = ClusterSnapshot(nodes, [_running(elastic, "fast-0", "A100", 8, 0.0)], now_seconds=1_200.0)
    plan = policy.decide(snap, [gang("ns/new", 4, 1, [("A100", 1.0)], submitted=1_190.0)], ctx)
    # 1 200 s of service: weight 1/3; 8 replicas kept are worth 1/3 x 1.1, 4 replicas of a
    # new job (weight 1, at its target) plus 4 of the elastic one 1 + 1/6 x 0.9
    assert [p.workload for p in plan.preemptions] == ["ns/elastic"]
    assert "restarts as 4 x A100" in plan.preemptions[0].reason
    assert [(p.workload, len(p.replicas)) for p in plan.placements] == [("ns/new", 4)]
    follow = ClusterSnapshot(nodes, [_running(gang("ns/new", 4, 1, [("A100", 1.0)]), "fast-0", "A100", 4, 1_200.0)],
                             now_seconds=1_200.0)
    plan = policy.decide(follow, [elastic], ctx)
    assert [(p.workload, len(p.replicas)) for p in plan.placements] == [("ns/elastic", 4)]
    assert policy.round_solves == {"solves": 2, "optimal": 2, "max_gap": 0.0, "no_solution": 0}


def test_gang_throughput_is_measured_per_count_or_linear():
    w = Workload("ns/y", WorkloadKind.TRAINING, ReplicaDemand(accelerators=1), min_replicas=1, max_replicas=4,
                 options=(AcceleratorOption("A100", 43.75, ((1, 81.0), (2, 162.0), (4, 175.0))),
                          AcceleratorOption("T4", 8.0)))
    assert w.gang_throughput_on("A100", 2) == 162.0 and w.gang_throughput_on("A100", 3) == 3 * 43.75
    assert w.gang_throughput_on("T4", 4) == 32.0
    # round mode: 2 A100 replicas are almost as good as 4 for this job
    assert _speedup(w, "A100", 4) == 1.0 and round(_speedup(w, "A100", 2), 3) == round(162 / 175, 3)
