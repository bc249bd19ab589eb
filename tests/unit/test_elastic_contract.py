"""The pod contract: env vars and ConfigMap data for a job, a plan and a replica."""

from __future__ import annotations

import json

import pytest

from tessera.api.elastic_contract import (
    PLAN_MOUNT_PATH,
    configmap_data,
    configmap_name,
    headless_service_name,
    master_addr,
    next_generation,
    node_rank,
    pod_env,
)
from tessera.core.sharding import ShardingPlan, plan_sharding


def make_plan(replicas=(0, 1, 2, 3), generation: int = 1) -> ShardingPlan:
    plan = plan_sharding(len(replicas), replica_indices=list(replicas), global_batch_size=64, max_micro_batch=4,
                         tensor_parallel=4, devices_per_replica=8, generation=generation)
    assert isinstance(plan, ShardingPlan)
    return plan


def test_names():
    assert headless_service_name("llama") == "llama-headless"
    assert configmap_name("llama") == "llama-tessera-plan"


def test_env_for_each_replica_follows_torchrun_conventions():
    plan = make_plan()
    envs = [pod_env("llama", "team-a", plan, i) for i in range(4)]
    assert {e["WORLD_SIZE"] for e in envs} == {"32"}
    assert [e["RANK"] for e in envs] == ["0", "8", "16", "24"]
    assert [e["PET_NODE_RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"8"} == {e["PET_NPROC_PER_NODE"] for e in envs}
    assert {e["MASTER_ADDR"] for e in envs} == {"llama-0.llama-headless.team-a.svc"}
    assert {e["MASTER_PORT"] for e in envs} == {"29500"}
    assert envs[2]["TESSERA_REPLICA_INDEX"] == "2"
    assert envs[0]["TESSERA_PLAN_GENERATION"] == "1"
    assert envs[0]["TESSERA_PLAN_DIR"] == PLAN_MOUNT_PATH
    doc = json.loads(envs[0]["TESSERA_PLAN"])
    assert (doc["dp"], doc["tp"], doc["pp"]) == (8, 4, 1)
    assert doc["micro_batch"] * sum(doc["rank_micro_batches"]) == 64
    assert doc["generation"] == 1 and doc["master_addr"] == envs[0]["MASTER_ADDR"]
    assert all(isinstance(v, str) for e in envs for v in e.values())


def test_survivors_get_dense_ranks_and_master_moves_off_lost_replica():
    plan = make_plan(replicas=(1, 3), generation=2)
    assert master_addr("llama", "ns", plan) == "llama-1.llama-headless.ns.svc"
    assert node_rank(plan, 3) == 1
    env = pod_env("llama", "ns", plan, 3)
    assert env["RANK"] == "8" and env["WORLD_SIZE"] == "16" and env["NNODES"] == "2"
    with pytest.raises(ValueError, match="replica 0 is not part of plan generation 2"):
        pod_env("llama", "ns", plan, 0)


def test_configmap_matches_env_plan():
    plan = make_plan()
    data = configmap_data("llama", "ns", plan)
    assert data["generation"] == "1"
    assert data["plan.json"] == pod_env("llama", "ns", plan, 0)["TESSERA_PLAN"]
    assert ShardingPlan.from_dict(json.loads(data["plan.json"])) == plan


def test_generation_only_moves_on_layout_change():
    first = next_generation(None, make_plan(generation=0))
    assert first.generation == 1
    same = next_generation(first, make_plan(generation=0))
    assert same.generation == 1
    shrunk = next_generation(first, make_plan(replicas=(0, 1), generation=0))
    assert shrunk.generation == 2


def test_reshard_history_is_bounded_and_measures_recovery():
    from tessera.api.elastic_contract import append_history, reshard_record

    history: list[dict] = []
    for i in range(25):
        history = append_history(history, reshard_record(reason=f"r{i}", from_replicas=4, to_replicas=3,
                                                         generation=i + 1, detected_at_seconds=100.0 * i,
                                                         running_at_seconds=100.0 * i + 1.5))
    assert len(history) == 20 and history[0]["reason"] == "r5" and history[-1]["generation"] == 25
    assert history[-1]["recoverySeconds"] == 1.5
    pending = reshard_record(reason="x", from_replicas=3, to_replicas=4, generation=2, detected_at_seconds=1.0)
    assert pending["recoverySeconds"] is None
    assert append_history(None, pending, limit=0) == []


def test_env_carries_torchrun_elastic_launch():
    plan = make_plan(replicas=(1, 3), generation=2)
    env = pod_env("llama", "team-a", plan, 3, min_replicas=2, max_replicas=4)
    assert env["PET_NNODES"] == "2:4"  # elastic: torchrun admits any count in the job's range
    assert env["PET_NPROC_PER_NODE"] == "8"
    assert env["PET_RDZV_BACKEND"] == "c10d"
    # the store lives on the plan's first replica (replica 0 was lost), at torchrun's port
    assert env["PET_RDZV_ENDPOINT"] == "llama-1.llama-headless.team-a.svc:29400"
    assert env["PET_RDZV_ID"] == "team-a-llama"
    assert int(env["PET_MAX_RESTARTS"]) > 0
    # without the range (a caller that does not know it) the plan's size, fixed
    assert pod_env("llama", "team-a", plan, 3)["PET_NNODES"] == "2"
    assert pod_env("llama", "team-a", plan, 3, min_replicas=4, max_replicas=4)["PET_NNODES"] == "4"
    with pytest.raises(ValueError, match="min <= max"):
        pod_env("llama", "team-a", plan, 3, min_replicas=5, max_replicas=4)
