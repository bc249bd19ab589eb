"""Queues inside the CP-SAT placement model (tessera.solver.quota): quota rows decided in the
same solve as placement, agreeing with the engine's quota rules (per type and in normalized
units), and the fair-share term."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core import Allocation, ClusterSnapshot, ReplicaPlacement, Workload
from tessera.core.admission import give, placement_problem, quota_usage, take
from tessera.core.quota import Queue, QuotaTree, TypeQuota
from tessera.policies.cpsat import CpSat
from tessera.policy import PolicyContext
from tessera.solver import (
    PlacementModel,
    QueueState,
    QuotaTerms,
    SolverLimits,
    build_instance,
)
from tessera.solver.limits import upper_bound
from tessera.testing.builders import gang, nodes

LIMITS = SolverLimits(time_limit_seconds=10, deterministic=True, seed=0)


def queued(workload: Workload, queue: str) -> Workload:
    return dataclasses.replace(workload, queue=queue)


def started(snapshot: ClusterSnapshot, pending: list[Workload], fair_share: int = 0,
            queues: bool = True) -> dict[str, dict[str, int]]:
    """What the model starts: workload -> accelerator type -> replicas."""
    instance = build_instance(snapshot.ledger(), pending, now_seconds=0)
    state = QueueState.of(snapshot) if queues else None
    model = PlacementModel(instance, QuotaTerms(state, fair_share) if state is not None else None)
    solution = model.solve(LIMITS)
    assert solution.outcome.has_solution, solution.outcome
    pools = {p.index: p for p in instance.pools}
    out: dict[str, dict[str, int]] = {}
    for g, counts in solution.units.items():
        gang_spec = instance.gangs[g]
        for p, units in counts.items():
            t = pools[p].accelerator_type or ""
            out.setdefault(gang_spec.key, {}).setdefault(t, 0)
            out[gang_spec.key][t] += units * gang_spec.unit_replicas
    return out


def test_upper_bound_reads_the_domain_s_last_value():
    model = PlacementModel(build_instance(ClusterSnapshot(nodes("h", 1, "H100", 8)).ledger(),
                                          [gang("ns/a", 1, 8, ["H100"])], now_seconds=0))
    assert upper_bound(model.units[0, 0]) == 1


def test_a_partly_used_pool_never_takes_more_than_it_has_in_the_model():
    # 2 of h-0's 8 GPUs are in use, so its pool is not fresh (no fragmentation row bounds it):
    # only the pool capacity row keeps two 4-GPU gangs from both landing in 6 free GPUs
    busy = Allocation(gang("ns/busy", 1, 2, ["H100"]), (ReplicaPlacement(0, "h-0", "H100", (0, 1)),))
    snapshot = ClusterSnapshot(nodes("h", 1, "H100", 8), [busy])
    pending = [gang("ns/a", 1, 4, ["H100"], submitted=0), gang("ns/b", 1, 4, ["H100"], submitted=1)]
    assert len(started(snapshot, pending, queues=False)) == 1


def test_two_gangs_that_each_fit_the_quota_but_not_together_are_decided_between_in_the_solve():
    quotas = QuotaTree([Queue("team", quotas={"H100": TypeQuota(8)})])  # a root: never borrows
    snapshot = ClusterSnapshot(nodes("h", 2, "H100", 8), quotas=quotas)
    pending = [queued(gang(f"ns/{k}", 1, 8, ["H100"], submitted=i), "team") for i, k in enumerate("xy")]
    assert len(started(snapshot, pending)) == 1
    assert len(started(snapshot, pending, queues=False)) == 2  # the nodes alone would take both


def test_a_queue_borrows_its_sibling_s_idle_quota_in_the_model_and_no_more():
    quotas = QuotaTree([Queue("org"), Queue("a", "org", {"H100": TypeQuota(8)}),
                        Queue("b", "org", {"H100": TypeQuota(8)})])
    snapshot = ClusterSnapshot(nodes("h", 4, "H100", 8), quotas=quotas)
    pending = [queued(gang(f"ns/a{i}", 1, 8, ["H100"], submitted=i), "a") for i in range(3)]
    assert len(started(snapshot, pending)) == 2  # its own 8 and b's idle 8, although 32 are free


def test_a_rule_running_work_already_breaks_takes_nothing_more():
    quotas = QuotaTree([Queue("team", quotas={"H100": TypeQuota(4)})])  # lowered under 8 running
    running = Allocation(queued(gang("ns/old", 1, 8, ["H100"]), "team"),
                         (ReplicaPlacement(0, "h-0", "H100"),))
    snapshot = ClusterSnapshot(nodes("h", 2, "H100", 8), [running], quotas=quotas)
    assert started(snapshot, [queued(gang("ns/new", 1, 1, ["H100"]), "team")]) == {}


def test_the_fair_share_term_starts_the_worst_off_queue_s_gang_first():
    tree = QuotaTree([Queue("org"), Queue("rich", "org", {"V100": TypeQuota(16)}),
                      Queue("poor", "org", {"V100": TypeQuota(16)})])
    # rich already runs 8; room for one more 8-GPU gang; rich's has waited longer (queue order)
    running = Allocation(queued(gang("ns/r0", 1, 8, ["V100"]), "rich"), (ReplicaPlacement(0, "v-0", "V100"),))
    snapshot = ClusterSnapshot(nodes("v", 2, "V100", 8), [running], quotas=tree)
    pending = [queued(gang("ns/r1", 1, 8, ["V100"], submitted=0), "rich"),
               queued(gang("ns/p1", 1, 8, ["V100"], submitted=1), "poor")]
    assert list(started(snapshot, pending, fair_share=100)) == ["ns/p1"]
    assert list(started(snapshot, pending, fair_share=0)) == ["ns/r1"]  # without it: queue order


def test_the_share_counts_speed_relative_to_each_job_s_fastest_type():
    tree = QuotaTree([Queue("org"), Queue("rich", "org", {"V100": TypeQuota(8), "K80": TypeQuota(8)}),
                      Queue("poor", "org", {"V100": TypeQuota(8), "K80": TypeQuota(8)})])
    # poor runs 8 K80 for a job 10x faster on V100 (worth 0.8 of a V100); rich runs 4 K80 for a
    # job as fast on both: in accelerators poor holds more, in what they are worth it holds less
    slow = Allocation(queued(gang("ns/p0", 1, 8, [("V100", 10.0), ("K80", 1.0)]), "poor"),
                      (ReplicaPlacement(0, "k-0", "K80"),))
    fine = Allocation(queued(gang("ns/r0", 1, 4, [("V100", 1.0), ("K80", 1.0)]), "rich"),
                      (ReplicaPlacement(0, "k-1", "K80"),))
    snapshot = ClusterSnapshot([*nodes("v", 1, "V100", 8), *nodes("k", 2, "K80", 8)], [slow, fine], quotas=tree)
    state = QueueState.of(snapshot)
    assert state is not None and state.value == {"poor": 800, "rich": 4000}
    pending = [queued(gang("ns/r1", 1, 8, [("V100", 1.0)], submitted=0), "rich"),
               queued(gang("ns/p1", 1, 8, [("V100", 1.0)], submitted=1), "poor")]
    assert list(started(snapshot, pending, fair_share=100)) == ["ns/p1"]  # one V100 node: poor's


@st.composite
def _case(draw: st.DrawFn) -> tuple[QuotaTree, list[Allocation], list[Workload]]:
    def limit() -> int | None:
        return draw(st.one_of(st.none(), st.integers(0, 8)))

    leaves = []
    for name in ("l0", "l1", "l2"):
        # sometimes a quota in H100-equivalents beside the per-type ones
        keys = ("H100", "A100", "H100-equivalent") if draw(st.booleans()) else ("H100", "A100")
        nominal = {t: draw(st.integers(0, 12)) for t in keys}
        leaves.append(Queue(name, draw(st.sampled_from(["org", "org", "sub"])), {
            t: TypeQuota(n, limit(), draw(st.one_of(st.none(), st.integers(0, n)))) for t, n in nominal.items()}))
    tree = QuotaTree([Queue("org"), Queue("sub", "org", {"H100": TypeQuota(draw(st.integers(0, 4)))}), *leaves])
    running = []
    for i in range(draw(st.integers(0, 3))):
        t = draw(st.sampled_from(["H100", "A100"]))
        node = f"{t[0].lower()}-{i}"
        running.append(Allocation(queued(gang(f"ns/r{i}", 1, draw(st.sampled_from([2, 4])), [t]),
                                         draw(st.sampled_from(["l0", "l1", "l2"]))), (ReplicaPlacement(0, node, t),)))
    pending = [queued(gang(f"ns/w{i}", draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 4, 8])),
                           draw(st.sampled_from([["H100"], ["A100"], ["H100", "A100"],
                                                 [("H100", 3.0), ("A100", 1.0)]])), submitted=i),
                      draw(st.sampled_from(["l0", "l1", "l2"])))
               for i in range(draw(st.integers(1, 8)))]
    return tree, running, pending


@settings(max_examples=60, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_cpsat_never_proposes_placements_the_engine_s_quota_check_refuses(
        case: tuple[QuotaTree, list[Allocation], list[Workload]]) -> None:
    tree, running, pending = case
    snapshot = ClusterSnapshot([*nodes("h", 4, "H100", 8), *nodes("a", 4, "A100", 8)], running, quotas=tree)
    plan = CpSat(preemption=False, moves=False).decide(
        snapshot, pending, PolicyContext(now_seconds=0.0, time_budget_seconds=10.0, deterministic=True))
    usage = quota_usage(snapshot)
    by_key = {w.key: w for w in pending}
    for placement in plan.placements:
        nodes_used = [a.node for a in placement.replicas]
        assert placement_problem(snapshot, usage, by_key[placement.workload], nodes_used) == ""
        take(snapshot, usage, by_key[placement.workload], nodes_used)


@settings(max_examples=40, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_cpsat_s_round_mode_never_proposes_placements_the_engine_s_quota_check_refuses(
        case: tuple[QuotaTree, list[Allocation], list[Workload]]) -> None:
    tree, running, pending = case
    running = [dataclasses.replace(a, started_at_seconds=-3600.0) for a in running]  # movable this round
    snapshot = ClusterSnapshot([*nodes("h", 4, "H100", 8), *nodes("a", 4, "A100", 8)], running, quotas=tree)
    plan = CpSat(round_seconds=60.0).decide(
        snapshot, pending, PolicyContext(now_seconds=0.0, time_budget_seconds=10.0, deterministic=True))
    usage = quota_usage(snapshot)
    for stop in plan.preemptions:  # what the round stops gives its quota back
        allocation = snapshot.allocations[stop.workload]
        give(snapshot, usage, allocation.workload, [rp.node for rp in allocation.replicas])
    by_key = {w.key: w for w in pending}
    for placement in plan.placements:
        nodes_used = [a.node for a in placement.replicas]
        assert placement_problem(snapshot, usage, by_key[placement.workload], nodes_used) == ""
        take(snapshot, usage, by_key[placement.workload], nodes_used)


@pytest.mark.parametrize("rich", ["x", "y"])
def test_round_mode_s_fair_share_gives_the_one_free_node_to_the_worse_off_queue(rich: str) -> None:
    poor = "y" if rich == "x" else "x"
    tree = QuotaTree([Queue("org"), Queue("x", "org", {"V100": TypeQuota(16)}), Queue("y", "org", {"V100": TypeQuota(16)})])
    # the rich queue already runs 8 (not preemptible: the round keeps it); one node is free
    held = Allocation(queued(gang("ns/held", 1, 8, ["V100"], preemptible=False), rich),
                      (ReplicaPlacement(0, "v-0", "V100"),), started_at_seconds=-3600.0)
    snapshot = ClusterSnapshot(nodes("v", 2, "V100", 8), [held], quotas=tree)
    pending = [queued(gang("ns/x1", 1, 8, ["V100"], submitted=0), "x"),
               queued(gang("ns/y1", 1, 8, ["V100"], submitted=0), "y")]
    plan = CpSat(round_seconds=60.0).decide(
        snapshot, pending, PolicyContext(now_seconds=0.0, time_budget_seconds=10.0, deterministic=True))
    assert [p.workload for p in plan.placements] == [f"ns/{poor}1"]
