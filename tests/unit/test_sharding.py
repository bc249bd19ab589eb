"""Sharding plans: the global batch is preserved exactly, or the answer says why not."""

from __future__ import annotations

import random

import pytest

from tessera.core.sharding import (
    ShardingInfeasible,
    ShardingPlan,
    divisors,
    largest_feasible_plan,
    plan_sharding,
    plan_throughput,
)


def _check_invariants(plan: ShardingPlan) -> None:
    assert plan.samples_per_step == plan.global_batch_size
    assert len(plan.rank_micro_batches) == plan.dp == len(plan.rank_replicas)
    assert all(k >= 1 for k in plan.rank_micro_batches)
    assert plan.grad_accum_steps == max(plan.rank_micro_batches)
    assert plan.global_batch_size % plan.micro_batch == 0
    # every device is in exactly one model copy
    assert plan.dp * plan.tp * plan.pp == len(plan.replicas_used) * plan.devices_per_replica
    assert sorted({i for r in plan.rank_replicas for i in r}) == sorted(plan.replicas_used)


def test_divisors():
    assert divisors(1) == [1]
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(49) == [1, 7, 49]


def test_even_split_uses_largest_micro_batch_that_fits():
    plan = plan_sharding(8, global_batch_size=512, max_micro_batch=8)
    assert isinstance(plan, ShardingPlan)
    assert (plan.dp, plan.micro_batch, plan.grad_accum_steps) == (8, 8, 8)
    assert plan.balanced
    _check_invariants(plan)


def test_shrink_increases_accumulation_to_keep_global_batch():
    full = plan_sharding(8, global_batch_size=512, max_micro_batch=8)
    half = plan_sharding(4, global_batch_size=512, max_micro_batch=8)
    assert isinstance(full, ShardingPlan) and isinstance(half, ShardingPlan)
    assert half.grad_accum_steps == 2 * full.grad_accum_steps
    assert half.micro_batch == full.micro_batch


def test_micro_batch_shrinks_when_accumulation_cannot_absorb():
    # 96 over 8 ranks = 12 per rank; the largest divisor of 12 that is <= 8 is 6
    plan = plan_sharding(8, global_batch_size=96, max_micro_batch=8)
    assert isinstance(plan, ShardingPlan)
    assert (plan.micro_batch, plan.grad_accum_steps) == (6, 2)


def test_not_divisible_gives_reason_and_nearest_plans():
    result = plan_sharding(7, global_batch_size=512, max_micro_batch=8)
    assert isinstance(result, ShardingInfeasible)
    assert "does not split evenly over dp=7" in result.reason
    fewer = result.alternatives[0].plan
    assert len(fewer.replicas_used) == 4 and fewer.dp == 4  # 6 and 5 do not divide 512 either
    _check_invariants(fewer)
    uneven = result.alternatives[1].plan
    assert len(uneven.replicas_used) == 7 and not uneven.balanced
    _check_invariants(uneven)
    assert result.nearest_global_batch_sizes == (511, 518)
    text = str(result)
    assert "run on 4 of the 7 replicas" in text and "511, 518" in text


def test_allow_uneven_keeps_global_batch_on_all_replicas():
    plan = plan_sharding(7, global_batch_size=512, max_micro_batch=8, allow_uneven=True)
    assert isinstance(plan, ShardingPlan)
    assert plan.dp == 7
    assert max(plan.rank_micro_batches) - min(plan.rank_micro_batches) == 1
    _check_invariants(plan)


def test_balanced_split_preferred_over_larger_uneven_micro_batch():
    # m=12 would need an uneven 2/1/1/1 split; m=5 splits 60 evenly over 4 ranks
    plan = plan_sharding(4, global_batch_size=60, max_micro_batch=12, allow_uneven=True)
    assert isinstance(plan, ShardingPlan)
    assert plan.balanced and plan.micro_batch == 5


def test_global_batch_smaller_than_dp():
    result = plan_sharding(8, global_batch_size=4, max_micro_batch=4)
    assert isinstance(result, ShardingInfeasible)
    assert "smaller than dp=8" in result.reason
    assert result.alternatives[0].plan.dp == 4


def test_tp_pp_must_tile_replicas():
    result = plan_sharding(4, global_batch_size=64, max_micro_batch=4, tensor_parallel=3, devices_per_replica=8)
    assert isinstance(result, ShardingInfeasible)
    assert "does not tile replicas of 8 devices" in result.reason
    assert not result.alternatives


def test_replica_holds_several_ranks():
    # 8 devices per pod, tp=2 pp=2 -> two model copies per pod
    plan = plan_sharding(3, global_batch_size=96, max_micro_batch=4, tensor_parallel=2, pipeline_parallel=2,
                         devices_per_replica=8)
    assert isinstance(plan, ShardingPlan)
    assert plan.dp == 6 and plan.world_size == 24
    assert plan.rank_replicas == ((0,), (0,), (1,), (1,), (2,), (2,))
    _check_invariants(plan)


def test_rank_spanning_replicas_leaves_remainder_unused():
    # tp=8 pp=2 on 8-device pods: a model copy spans 2 pods; 5 survivors -> 2 ranks on 4 pods
    result = plan_sharding(5, global_batch_size=64, max_micro_batch=4, tensor_parallel=8, pipeline_parallel=2,
                           devices_per_replica=8, replica_indices=[0, 2, 3, 5, 6])
    assert isinstance(result, ShardingInfeasible)
    assert "leave 1 unused" in result.reason
    best = largest_feasible_plan(5, global_batch_size=64, max_micro_batch=4, tensor_parallel=8,
                                 pipeline_parallel=2, devices_per_replica=8, replica_indices=[0, 2, 3, 5, 6])
    assert isinstance(best, ShardingPlan)
    assert best.dp == 2 and best.replicas_used == (0, 2, 3, 5)
    assert best.rank_replicas == ((0, 2), (3, 5))
    _check_invariants(best)


def test_heterogeneous_split_follows_throughput():
    plan = plan_sharding(["H100", "H100", "A100"], global_batch_size=512, max_micro_batch=16,
                         throughput={"H100": 2.0, "A100": 1.0})
    assert isinstance(plan, ShardingPlan)
    _check_invariants(plan)
    h1, h2, a = (k * plan.micro_batch for k in plan.rank_micro_batches)
    assert h1 == h2
    # in proportion 2:2:1 up to one micro-batch of rounding
    assert abs(h1 - 2 * 512 / 5) <= plan.micro_batch and abs(a - 512 / 5) <= plan.micro_batch
    assert plan.rank_accelerator_types == ("H100", "H100", "A100")


def test_heterogeneous_prefers_large_micro_batch_within_tolerance():
    # 2:1 over three ranks of 384 splits exactly at 96/... : a large micro-batch wins
    plan = plan_sharding(["H100", "A100", "A100"], global_batch_size=384, max_micro_batch=96,
                         throughput={"H100": 2.0, "A100": 1.0})
    assert isinstance(plan, ShardingPlan)
    assert plan.micro_batch == 96 and plan.rank_micro_batches == (2, 1, 1)


def test_heterogeneous_ranks_do_not_mix_types_within_a_rank():
    plan = plan_sharding(["H100", "A100", "H100", "A100"], global_batch_size=48, max_micro_batch=8,
                         tensor_parallel=16, devices_per_replica=8, throughput={"H100": 2.0, "A100": 1.0})
    assert isinstance(plan, ShardingPlan)
    assert plan.rank_replicas == ((0, 2), (1, 3))
    assert plan.rank_accelerator_types == ("H100", "A100")
    _check_invariants(plan)


def test_nonpositive_throughput_is_infeasible():
    result = plan_sharding(["X", "Y"], global_batch_size=8, max_micro_batch=2, throughput={"X": 0.0, "Y": 1.0})
    assert isinstance(result, ShardingInfeasible) and "throughput must be positive" in result.reason


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tensor_parallel": 0}, "parallel degrees"),
        ({"devices_per_replica": 0}, "at least one device"),
        ({"global_batch_size": 0}, "global batch size must be >= 1"),
        ({"max_micro_batch": 0}, "micro-batch size must be >= 1"),
    ],
)
def test_bad_inputs_give_reasons(kwargs, fragment):
    args = {"global_batch_size": 8, "max_micro_batch": 2, **kwargs}
    result = plan_sharding(2, **args)
    assert isinstance(result, ShardingInfeasible) and fragment in result.reason


def test_no_replicas_and_below_minimum():
    assert "no usable replicas" in str(plan_sharding(0, global_batch_size=8, max_micro_batch=2))
    result = plan_sharding(2, global_batch_size=8, max_micro_batch=2, min_replicas=3)
    assert isinstance(result, ShardingInfeasible) and "fewer than the minimum 3" in result.reason


def test_subset_respects_minimum():
    # 7 replicas, only 4 (or fewer) keep 512 exact; with min 5 there is no subset
    result = largest_feasible_plan(7, global_batch_size=512, max_micro_batch=8, min_replicas=5)
    assert isinstance(result, ShardingInfeasible)


def test_replica_indices_and_generation_carried():
    plan = plan_sharding(3, global_batch_size=12, max_micro_batch=4, replica_indices=[4, 1, 7], generation=5)
    assert isinstance(plan, ShardingPlan)
    assert plan.replicas_used == (4, 1, 7) and plan.generation == 5
    bumped = plan.with_generation(6)
    assert bumped.generation == 6 and bumped.same_layout(plan) and bumped != plan


def test_json_round_trip():
    plan = plan_sharding(["H100", "A100"], global_batch_size=30, max_micro_batch=5, throughput={"H100": 2.0},
                         generation=3)
    assert isinstance(plan, ShardingPlan)
    assert ShardingPlan.from_dict(plan.to_dict()) == plan
    assert '"generation":3' in plan.to_json()


def test_plan_throughput_rises_with_replicas_and_faster_types():
    four = plan_sharding(4, global_batch_size=64, max_micro_batch=4)
    eight = plan_sharding(8, global_batch_size=64, max_micro_batch=4)
    assert isinstance(four, ShardingPlan) and isinstance(eight, ShardingPlan)
    assert plan_throughput(eight) == pytest.approx(2 * plan_throughput(four))
    mixed = plan_sharding(["H100", "A100"], global_batch_size=64, max_micro_batch=4, throughput={"H100": 3.0})
    assert isinstance(mixed, ShardingPlan)
    assert plan_throughput(mixed, {"H100": 3.0}) > plan_throughput(plan_sharding(2, global_batch_size=64,
                                                                                   max_micro_batch=4))  # type: ignore[arg-type]


def test_property_grid_every_plan_preserves_global_batch():
    """Seeded sweep: every valid plan keeps the batch exact; every refusal names a reason."""
    rng = random.Random(20261122)
    seen_plans = seen_refusals = 0
    for _ in range(1500):
        devices = rng.choice([1, 2, 4, 8])
        tp = rng.choice([1, 2, 4, 8])
        pp = rng.choice([1, 2, 4])
        replicas = rng.randint(0, 12)
        types = [rng.choice(["H100", "A100", "MI300"]) for _ in range(replicas)]
        hetero = rng.random() < 0.4
        kwargs = {
            "global_batch_size": rng.choice([1, 6, 7, 64, 96, 100, 256, 512, 1000, 1024]),
            "max_micro_batch": rng.choice([1, 2, 3, 4, 8, 16]),
            "tensor_parallel": tp,
            "pipeline_parallel": pp,
            "devices_per_replica": devices,
            "allow_uneven": rng.random() < 0.3,
            "throughput": {"H100": 2.0, "A100": 1.0, "MI300": 1.5} if hetero else None,
        }
        replica_types = types if hetero else replicas
        for result in (plan_sharding(replica_types, **kwargs), largest_feasible_plan(replica_types, **kwargs)):
            if isinstance(result, ShardingPlan):
                seen_plans += 1
                _check_invariants(result)
                assert result.micro_batch <= kwargs["max_micro_batch"]
                assert len(result.replicas_used) <= replicas
                if not kwargs["allow_uneven"] and not hetero:
                    assert result.balanced
            else:
                seen_refusals += 1
                assert result.reason
                for alternative in result.alternatives:
                    _check_invariants(alternative.plan)
                    assert len(alternative.plan.replicas_used) <= replicas
    # the grid exercises both outcomes
    assert seen_plans > 500 and seen_refusals > 200


def test_property_homogeneous_feasibility_matches_brute_force():
    """A plan exists exactly when some micro-batch m <= max divides G and dp divides G/m."""
    rng = random.Random(7)
    for _ in range(600):
        replicas = rng.randint(1, 16)
        batch = rng.randint(1, 300)
        max_micro = rng.randint(1, 20)
        exists = any(batch % m == 0 and (batch // m) % replicas == 0 for m in range(1, max_micro + 1))
        result = plan_sharding(replicas, global_batch_size=batch, max_micro_batch=max_micro)
        assert isinstance(result, ShardingPlan) == exists, (replicas, batch, max_micro, result)
        if isinstance(result, ShardingPlan):
            # the largest such micro-batch: fewest accumulation steps
            best = max(m for m in range(1, max_micro + 1) if batch % m == 0 and (batch // m) % replicas == 0)
            assert result.micro_batch == best
