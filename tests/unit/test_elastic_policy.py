"""The elastic wrapper on tiny snapshots: shrink, release + requeue, grow with hysteresis."""

from __future__ import annotations

from dataclasses import replace

from tessera.core import (
    Allocation,
    ClusterSnapshot,
    Plan,
    Preemption,
    ReplicaPlacement,
    Resize,
    Workload,
    validate_plan,
)
from tessera.policies.elastic import (
    REMAINING_SECONDS_ATTRIBUTE,
    RESHARD_COST_ATTRIBUTE,
    ElasticBestFit,
    ElasticSettings,
    ElasticWrapper,
    replica_set_throughput,
)
from tessera.policies.greedy import BestFit
from tessera.policy import PolicyContext, load_policy
from tessera.testing.builders import gang, node, nodes


def job(key: str = "default/train", replicas: tuple[int, int] = (2, 4), batch: int | None = 64, **kw: object) -> Workload:
    w = gang(key, replicas, accelerators=8, types=["A100"], **kw)  # type: ignore[arg-type]
    return replace(w, global_batch_size=batch, micro_batch_size=8 if batch else None, tensor_parallel=8,
                   restart_cost_seconds=60.0,
                   attributes={REMAINING_SECONDS_ATTRIBUTE: "7200"})


def running(workload: Workload, node_names: list[str], started: float = 0.0,
            resized: float | None = None) -> Allocation:
    return Allocation(
        workload,
        tuple(ReplicaPlacement(i, n, "A100", tuple(range(8))) for i, n in enumerate(node_names)),
        started_at_seconds=started,
        resized_at_seconds=resized,
    )


def decide(snapshot: ClusterSnapshot, pending=(), now: float = 1000.0, policy=None, **params) -> Plan:
    policy = policy or ElasticWrapper(BestFit(), ElasticSettings(hysteresis_seconds=300.0))
    plan = policy.decide(snapshot, list(pending), PolicyContext(now_seconds=now, params=params))
    validated = validate_plan(snapshot, list(pending), plan)
    assert validated.ok, validated.rejected  # the engine would accept every action
    return plan


def test_registered_as_elastic_policy():
    registered = load_policy("elastic")
    assert registered.name == "elastic"


def test_no_failure_no_action():
    w = job(replicas=(2, 4))
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1", "n-2", "n-3"])], 1000.0)
    assert decide(snap).empty


def test_shrink_off_not_ready_node():
    w = job(replicas=(2, 4))
    cluster = [*nodes("n", 3), node("n-3", ready=False)]
    snap = ClusterSnapshot(cluster, [running(w, ["n-0", "n-1", "n-2", "n-3"])], 1000.0)
    plan = decide(snap)
    # 3 survivors: dp=3 does not divide 64 -> the plan keeps 2 (dp=2) and frees one
    (resize,) = plan.resizes
    assert resize.workload == w.key
    assert 3 in resize.remove and len(resize.remove) == 2 and not resize.add
    assert "lost 1 replica" in resize.reason and "4 -> 2" in resize.reason


def test_shrink_keeps_all_survivors_when_batch_divides():
    w = job(replicas=(2, 4), batch=96)  # dp=3 divides 96
    cluster = [*nodes("n", 3), node("n-3", ready=False)]
    snap = ClusterSnapshot(cluster, [running(w, ["n-0", "n-1", "n-2", "n-3"])], 1000.0)
    (resize,) = decide(snap).resizes
    assert resize.remove == (3,) and not resize.add


def test_deleted_and_cordoned_nodes_count_as_lost():
    w = job(replicas=(1, 4), batch=None)
    cluster = [node("n-0"), node("n-1", schedulable=False)]  # n-2 deleted, n-1 cordoned
    snap = ClusterSnapshot(cluster, [running(w, ["n-0", "n-1", "n-2"])], 1000.0)
    (resize,) = decide(snap).resizes
    assert resize.remove == (1, 2)


def test_replacement_on_free_capacity_in_the_same_reshard():
    w = job(replicas=(2, 4))
    cluster = [*nodes("n", 4), node("spare"), node("bad", ready=False)]
    snap = ClusterSnapshot(cluster, [running(w, ["n-0", "n-1", "n-2", "bad"])], 1000.0)
    (resize,) = decide(snap).resizes
    assert resize.remove == (3,)
    assert len(resize.add) == 1 and resize.add[0].node in {"n-3", "spare"}
    assert "1 replacement" in resize.reason


def test_replacement_keeps_accelerator_type_unless_mixing_allowed():
    w = replace(job(replicas=(2, 2), batch=None), options=(*job().options,))
    w = replace(w, options=(w.options[0], replace(w.options[0], accelerator_type="H100")))
    cluster = [node("a-0"), node("h-0", "H100"), node("a-1", ready=False)]
    snap = ClusterSnapshot(cluster, [running(w, ["a-0", "a-1"])], 1000.0)
    plan = decide(snap)
    # no A100 room: min 2 cannot be met without mixing -> release
    assert plan.preemptions and plan.preemptions[0].after_failure
    mixed = replace(w, allow_mixed_types=True)
    snap = ClusterSnapshot(cluster, [running(mixed, ["a-0", "a-1"])], 1000.0)
    (resize,) = decide(snap).resizes
    assert [a.node for a in resize.add] == ["h-0"]


def test_below_min_releases_and_requeues_even_if_not_preemptible():
    w = job(replicas=(3, 4), preemptible=False)
    cluster = [*nodes("n", 2), node("n-2", ready=False), node("n-3", ready=False)]
    snap = ClusterSnapshot(cluster, [running(w, ["n-0", "n-1", "n-2", "n-3"])], 1000.0)
    plan = decide(snap)
    (release,) = plan.preemptions
    assert isinstance(release, Preemption) and release.after_failure
    assert "2 survivor(s) cannot run the job (min 3)" in release.reason
    assert not plan.resizes


def test_after_failure_release_is_rejected_when_nothing_was_lost():
    w = job(preemptible=False)
    snap = ClusterSnapshot(nodes("n", 2), [running(w, ["n-0", "n-1"])], 0.0)
    bogus = Plan(preemptions=(Preemption(w.key, "no", after_failure=True),))
    validated = validate_plan(snap, [], bogus)
    assert not validated.ok and "lost no replica" in validated.rejected[0].reason


def test_released_capacity_goes_to_pending_work_in_the_same_cycle():
    w = job(replicas=(3, 3))
    cluster = [*nodes("n", 2), node("n-2", ready=False)]
    waiting = gang("default/next", 2, accelerators=8, types=["A100"])
    snap = ClusterSnapshot(cluster, [running(w, ["n-0", "n-1", "n-2"])], 1000.0)
    plan = decide(snap, [waiting])
    assert plan.preemptions[0].workload == w.key
    assert [p.workload for p in plan.placements] == ["default/next"]


def test_grow_back_when_node_returns_after_hysteresis():
    w = job(replicas=(2, 4))
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"], started=0.0, resized=900.0)], 1000.0)
    assert decide(snap, now=1000.0).empty  # 100 s since the last resize < 300 s hysteresis
    plan = decide(snap, now=1300.0)
    (resize,) = plan.resizes
    assert len(resize.add) == 2 and not resize.remove
    assert "grow 2 -> 4" in resize.reason


def test_hysteresis_from_params_and_state_not_memory():
    w = job(replicas=(2, 4))
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"], resized=900.0)], 1000.0)
    policy = ElasticWrapper()
    assert decide(snap, now=1000.0, policy=policy, elastic_hysteresis_seconds=50).resizes
    # a fresh instance (an operator restart) decides the same from the same snapshot
    assert decide(snap, now=1000.0, policy=ElasticWrapper(), elastic_hysteresis_seconds=50) == decide(
        snap, now=1000.0, policy=policy, elastic_hysteresis_seconds=50
    )


def test_no_grow_when_gain_below_restart_cost():
    w = replace(job(replicas=(2, 4)), attributes={REMAINING_SECONDS_ATTRIBUTE: "100"})
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"])], 1000.0)
    # doubling saves 50 s of 100 s remaining, less than the 60 s restart cost
    assert decide(snap).empty
    w = replace(w, attributes={REMAINING_SECONDS_ATTRIBUTE: "200"})
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"])], 1000.0)
    assert decide(snap).resizes


def test_in_memory_reshard_cost_replaces_the_restart_cost_in_the_growth_test():
    # 50 s saved: not worth a 60 s restart, worth a 10 s in-memory reshard
    w = replace(job(replicas=(2, 4)), attributes={REMAINING_SECONDS_ATTRIBUTE: "100", RESHARD_COST_ATTRIBUTE: "10"})
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"])], 1000.0)
    (resize,) = decide(snap).resizes
    assert "resize cost 10s" in resize.reason
    w = replace(w, attributes={REMAINING_SECONDS_ATTRIBUTE: "100", RESHARD_COST_ATTRIBUTE: "49"})
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"])], 1000.0)
    assert decide(snap).resizes
    w = replace(w, attributes={REMAINING_SECONDS_ATTRIBUTE: "100", RESHARD_COST_ATTRIBUTE: "51"})
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"])], 1000.0)
    assert decide(snap).empty
    # a malformed value falls back to the restart cost (the safe assumption)
    w = replace(w, attributes={REMAINING_SECONDS_ATTRIBUTE: "100", RESHARD_COST_ATTRIBUTE: "fast"})
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"])], 1000.0)
    assert decide(snap).empty


def test_grow_only_to_counts_that_shard_exactly():
    w = job(replicas=(2, 4))  # batch 64: 3 replicas is not a valid dp
    snap = ClusterSnapshot(nodes("n", 3), [running(w, ["n-0", "n-1"])], 1000.0)
    assert decide(snap).empty  # one free node: 2 -> 3 would break the global batch
    w96 = job(replicas=(2, 4), batch=96)
    snap = ClusterSnapshot(nodes("n", 3), [running(w96, ["n-0", "n-1"])], 1000.0)
    (resize,) = decide(snap).resizes
    assert len(resize.add) == 1


def test_pending_work_is_served_before_growth():
    w = job(replicas=(2, 4))
    waiting = gang("default/next", 2, accelerators=8, types=["A100"])
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"])], 1000.0)
    plan = decide(snap, [waiting])
    assert [p.workload for p in plan.placements] == ["default/next"]
    assert not plan.resizes


def test_two_failures_in_quick_succession():
    w = job(replicas=(1, 4))
    first = ClusterSnapshot([*nodes("n", 3), node("n-3", ready=False)], [running(w, ["n-0", "n-1", "n-2", "n-3"])],
                            1000.0)
    (resize,) = decide(first, now=1000.0).resizes
    kept = [f"n-{i}" for i in range(4) if i not in resize.remove]
    # applied: the job runs on `kept`, resized at 1000; 5 s later another node fails
    after = Allocation(w, tuple(ReplicaPlacement(i, n, "A100", tuple(range(8))) for i, n in enumerate(kept)),
                       started_at_seconds=0.0, resized_at_seconds=1000.0)
    second_nodes = [node(n, ready=(n != kept[-1])) for n in kept] + [node("n-3", ready=False)]
    second = ClusterSnapshot(second_nodes, [after], 1005.0)
    (resize2,) = decide(second, now=1005.0).resizes  # failures ignore hysteresis
    assert len(kept) - len(resize2.remove) >= 1


def test_non_training_workloads_are_left_to_the_inner_policy():
    from tessera.core import WorkloadKind

    svc = replace(job(replicas=(1, 2), batch=None), kind=WorkloadKind.INFERENCE)
    snap = ClusterSnapshot([node("n-0"), node("n-1", ready=False)], [running(svc, ["n-0", "n-1"])], 1000.0)
    assert decide(snap).empty


def test_throughput_uses_sharding_plan():
    w = job(replicas=(1, 4))
    four = replica_set_throughput(w, [(i, "A100") for i in range(4)])
    two = replica_set_throughput(w, [(i, "A100") for i in range(2)])
    assert four == 2 * two


def test_entry_point_class_wraps_best_fit():
    policy = ElasticBestFit()
    assert isinstance(policy.inner, BestFit)
    w = gang("default/a", 2, accelerators=8, types=["A100"])
    plan = policy.decide(ClusterSnapshot(nodes("n", 2)), [w], PolicyContext())
    assert [p.workload for p in plan.placements] == ["default/a"]
    assert isinstance(plan.resizes, tuple) and all(isinstance(r, Resize) for r in plan.resizes)


def test_property_random_snapshots_give_valid_exact_plans():
    """Seeded sweep: every action validates, every resized job shards exactly, releases are justified."""
    import random

    from tessera.core import lost_replicas
    from tessera.core.sharding import ShardingPlan
    from tessera.policies.elastic import sharding_for

    rng = random.Random(11)
    acted = 0
    for case in range(300):
        types = ["A100", "H100"]
        cluster = [node(f"n-{i}", rng.choice(types), 8, ready=rng.random() > 0.2, schedulable=rng.random() > 0.1)
                   for i in range(rng.randint(3, 9))]
        free = {n.name: 8 for n in cluster}
        allocations = []
        for j in range(rng.randint(1, 3)):
            per = rng.choice([2, 4, 8])
            lo = rng.randint(1, 3)
            hi = lo + rng.randint(0, 4)
            w = replace(
                gang(f"ns/job-{j}", (lo, hi), accelerators=per, types=[("A100", 1.0), ("H100", 2.0)],
                     mixed=rng.random() < 0.3),
                global_batch_size=rng.choice([None, 32, 48, 64, 96]), micro_batch_size=rng.choice([None, 2, 4]),
                tensor_parallel=rng.choice([1, 2, per]),
                attributes={REMAINING_SECONDS_ATTRIBUTE: str(rng.choice([100, 10000]))},
            )
            if w.global_batch_size is None:
                w = replace(w, micro_batch_size=None)
            placed = []
            for _ in range(rng.randint(lo, hi)):
                options = [n for n in cluster if free[n.name] >= per
                           and (w.allow_mixed_types or not placed or n.accelerator_type == placed[0].accelerator_type)]
                if not options:
                    break
                chosen = rng.choice(options)
                start = 8 - free[chosen.name]
                free[chosen.name] -= per
                placed.append(ReplicaPlacement(len(placed), chosen.name, chosen.accelerator_type,
                                               tuple(range(start, start + per))))
            if len(placed) >= w.gang_min:
                allocations.append(Allocation(w, tuple(placed), started_at_seconds=0.0,
                                              resized_at_seconds=rng.choice([None, 990.0])))
        # a deleted node, sometimes
        if rng.random() < 0.3 and len(cluster) > 1:
            cluster = cluster[1:]
        snap = ClusterSnapshot(cluster, allocations, 1000.0)
        pending = [gang("ns/wait", 1, accelerators=8, types=["A100", "H100"])] if rng.random() < 0.5 else []
        plan = decide(snap, pending, now=1000.0)  # asserts the engine accepts every action
        for resize in plan.resizes:
            acted += 1
            allocation = snap.allocations[resize.workload]
            kept = [(rp.replica, rp.accelerator_type) for rp in allocation.replicas if rp.replica not in resize.remove]
            nxt = max(rp.replica for rp in allocation.replicas) + 1
            added = [(nxt + k, snap.nodes[a.node].accelerator_type) for k, a in enumerate(resize.add)]
            after = kept + added
            assert len(after) >= allocation.workload.gang_min
            result = sharding_for(allocation.workload, after)
            if result is not None:
                assert isinstance(result, ShardingPlan), (case, result)
                assert len(result.replicas_used) == len(after), (case, result)
            assert not any(n not in snap.nodes or not snap.nodes[n].usable
                           for n in [rp.node for rp in allocation.replicas if rp.replica not in resize.remove])
        for release in plan.preemptions:
            if release.after_failure:
                acted += 1
                assert lost_replicas(snap, snap.allocations[release.workload])
        # every training job that lost replicas was acted on
        for allocation in snap.allocations.values():
            if lost_replicas(snap, allocation):
                assert allocation.key in {r.workload for r in plan.resizes} | {p.workload for p in plan.preemptions}
    assert acted > 100


def test_inner_placement_is_trimmed_to_a_size_that_keeps_the_batch():
    # best-fit alone would start the (2..4) job on all 3 free nodes; batch 64 needs dp | 64
    w = job(replicas=(2, 4))
    snap = ClusterSnapshot(nodes("n", 3), [], 1000.0)
    assert len(BestFit().decide(snap, [w], PolicyContext(now_seconds=1000.0)).placements[0].replicas) == 3
    (placement,) = decide(snap, [w]).placements
    assert len(placement.replicas) == 2
    assert "2 of 3 replicas keep the global batch exact" in placement.reason
    # a size that divides the batch is left alone
    (placement,) = decide(snap, [job(replicas=(2, 4), batch=96)]).placements
    assert len(placement.replicas) == 3


def test_inner_placement_without_any_plan_is_withdrawn():
    w = job(replicas=(3, 3), batch=64)  # 3 replicas can never split 64 exactly
    plan = decide(ClusterSnapshot(nodes("n", 3), [], 1000.0), [w])
    assert not plan.placements
    assert "no sharding plan" in plan.unplaced[w.key]


def test_grow_before_placement_lets_a_shrunk_job_take_capacity_back():
    w = job(replicas=(2, 4))
    waiting = gang("default/next", 2, accelerators=8, types=["A100"])
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1"])], 1000.0)
    plan = decide(snap, [waiting], elastic_grow_before_placement="true")
    (resize,) = plan.resizes
    assert resize.workload == w.key and len(resize.add) == 2
    assert not plan.placements  # nothing left for the pending job this cycle
    # a pending job of higher priority is still served first
    urgent = replace(waiting, priority=5)
    plan = decide(snap, [urgent], elastic_grow_before_placement=True)
    assert [p.workload for p in plan.placements] == [urgent.key] and not plan.resizes


def test_a_job_on_a_count_without_a_plan_still_grows_to_one():
    # placed on 3 replicas by some other policy; batch 64 has no dp=3 plan and min 3 leaves no
    # smaller one, so the current rate is 0: growing to 4 is the only way to run exactly
    w = job(replicas=(3, 4))
    snap = ClusterSnapshot(nodes("n", 4), [running(w, ["n-0", "n-1", "n-2"])], 1000.0)
    (resize,) = decide(snap).resizes
    assert len(resize.add) == 1 and not resize.remove
