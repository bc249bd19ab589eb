"""The learned JCT dispatcher (``learned-jct``): features, decisions, artifact loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tessera.core import Allocation, ClusterSnapshot, Migration, Preemption, ReplicaPlacement, validate_plan
from tessera.policies.learned.jct_features import (
    MOVE_FEATURES,
    QUEUE_FEATURES,
    TYPE_FEATURES,
    TypeState,
    job_statics,
    move_row,
    queue_rows,
    type_row,
)
from tessera.policies.learned.jct_policy import (
    LearnedJct,
    jct_model,
    load_jct_model,
    start_weights,
)
from tessera.policies.learned.model import ModelLoadError
from tessera.policy import PolicyContext, load_policy
from tessera.testing import gang, node

TYPES = ("K80", "V100")


def cluster() -> list:
    return [node("k80-0", "K80", 4), node("k80-1", "K80", 4), node("v100-0", "V100", 4)]


def job(key: str, replicas: int = 1, submitted: float = 0.0):
    return gang(key, replicas, 1, [("V100", 3.0), ("K80", 1.0)], submitted=submitted)


def running(workload, node_name: str, accelerator_type: str, started: float = 0.0) -> Allocation:
    replicas = tuple(ReplicaPlacement(i, node_name, accelerator_type, (i,)) for i in range(workload.max_replicas))
    return Allocation(workload, replicas, started_at_seconds=started)


def ctx(now: float = 7_200.0) -> PolicyContext:
    return PolicyContext(now_seconds=now, deterministic=True)


def test_feature_rows():
    j = job_statics(job("a", 4), TYPES)
    assert j.gang_gpus == 4 and j.fastest == "V100" and j.log2_gang_gpus == 2.0
    assert j.log2_speedup == pytest.approx(math.log2(3.0))
    state = TypeState(free={"K80": 8.0, "V100": 2.0}, total={"K80": 8.0, "V100": 4.0})
    rows = queue_rows([j], [0.0], 7_200.0, state)
    assert rows.shape == (1, len(QUEUE_FEATURES))
    assert rows[0].tolist() == pytest.approx([2.0, 2.0, math.log2(3.0), 0.5])
    x = type_row(j, "K80", 12 * 3600.0, free=8.0, total=8.0, pressure=0.25)
    assert len(x) == len(TYPE_FEATURES)
    assert x == pytest.approx((1.0, 2 / 3, 2 / 3 * 0.5, 0.5, 0.5, 0.25))
    m = move_row(j, "K80", "V100", 48 * 3600.0, total=4.0, pressure=0.0)
    assert len(m) == len(MOVE_FEATURES)
    assert m == pytest.approx((1.0, 2 / 3, 1.0, 1.0, 0.0))


def test_start_weights_fifo_on_the_fastest_type_with_room():
    policy = LearnedJct(model=jct_model(*start_weights()))
    # V100 has room for one 4-GPU gang: the older job gets it, the younger one K80
    old, young = job("old", 4, submitted=0.0), job("young", 4, submitted=60.0)
    snap = ClusterSnapshot(cluster(), [], now_seconds=7_200.0)
    plan = policy.decide(snap, [young, old], ctx())
    assert not validate_plan(snap, [young, old], plan).rejected
    where = {p.workload: {snap.nodes[a.node].accelerator_type for a in p.replicas} for p in plan.placements}
    assert where == {"old": {"V100"}, "young": {"K80"}}


def test_a_positive_best_score_means_wait_for_a_faster_type():
    queue, types, moves = start_weights()
    types[TYPE_FEATURES.index("bias")] = -0.5  # slowdown 2/3 on K80 -> score +0.17: wait
    policy = LearnedJct(model=jct_model(queue, types, moves))
    busy = job("busy", 4)
    snap = ClusterSnapshot(cluster(), [running(busy, "v100-0", "V100")], now_seconds=7_200.0)
    plan = policy.decide(snap, [job("new", 2)], ctx())
    assert not plan.placements and "waiting for a faster type" in plan.unplaced["new"]


def test_moves_to_a_faster_type_migrate_one_replica_and_stop_a_gang():
    policy = LearnedJct(model=jct_model(*start_weights()))  # moves when >= 20% faster
    single, pair = job("single", 1), job("pair", 2)
    allocations = [running(single, "k80-0", "K80"), running(pair, "k80-1", "K80")]
    snap = ClusterSnapshot(cluster(), allocations, now_seconds=7_200.0)
    plan = policy.decide(snap, [], ctx())
    assert not validate_plan(snap, [], plan).rejected
    assert [(m.workload, snap.nodes[m.to.node].accelerator_type) for m in plan.migrations] == [("single", "V100")]
    assert all(isinstance(m, Migration) for m in plan.migrations)
    assert [p.workload for p in plan.preemptions] == ["pair"] and all(isinstance(p, Preemption) for p in plan.preemptions)
    # never moves: the bias alone above zero
    _, _, never = start_weights()
    never[:] = 0.0
    never[MOVE_FEATURES.index("bias")] = 1.0
    assert LearnedJct(model=jct_model(*start_weights()[:2], never)).decide(snap, [], ctx()).empty


def test_deterministic_and_registered():
    assert load_policy("learned-jct").artifact == load_jct_model().artifact == "gavel-jct@1"
    snap = ClusterSnapshot(cluster(), [], now_seconds=7_200.0)
    pending = [job(f"j{i}", 1 + i % 3, submitted=60.0 * i) for i in range(6)]
    assert LearnedJct().decide(snap, pending, ctx()) == LearnedJct().decide(snap, pending, ctx())


def test_missing_corrupt_and_mismatched_artifacts_fail_clearly(tmp_path: Path):
    with pytest.raises(ModelLoadError, match=r"not found.*make train-jct"):
        load_jct_model(tmp_path / "nothing")
    bad = tmp_path / "bad" / "weights.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable"):
        load_jct_model(bad)
    good = jct_model(*start_weights()).to_json()
    good["types"]["features"] = list(reversed(good["types"]["features"]))
    bad.write_text(json.dumps(good))
    with pytest.raises(ModelLoadError, match="trained on features"):
        load_jct_model(bad)
    good = jct_model(*start_weights()).to_json()
    good["feature_version"] = "0"
    bad.write_text(json.dumps(good))
    with pytest.raises(ModelLoadError, match="feature version"):
        load_jct_model(bad)
    with pytest.raises(ModelLoadError, match="not a learned JCT artifact"):
        load_jct_model(Path(__file__).resolve().parents[2] / "policies" / "learned" / "openb-dispatch-v1")


def test_round_trip(tmp_path: Path):
    model = jct_model(*start_weights(), name="x", version="3")
    loaded = load_jct_model(model.save(tmp_path / "x-v3"))
    assert loaded.artifact == "x@3"
    assert np.array_equal(loaded.moves.weights, model.moves.weights)


@pytest.mark.parametrize("seed", range(40))
def test_fast_whole_device_fill_matches_fill_type(seed):
    """The policy's fill for whole-device gangs gives fill_type's assignments and leaves the
    ledger as fill_type does, on random partly used nodes (CPU and memory can bind too)."""
    import random

    from tessera.core import CapacityLedger
    from tessera.policies.jct import fill_type
    from tessera.policies.learned.jct_policy import _fill_whole

    rng = random.Random(seed)
    nodes = [node(f"n{i}", "V100", rng.choice((1, 2, 4, 8)), cpu_milli=rng.choice((4_000, 16_000)),
                  memory_mib=rng.choice((8_000, 64_000))) for i in range(rng.randint(1, 6))]
    snapshot = ClusterSnapshot(nodes, ())
    used = snapshot.ledger()
    for n in nodes:  # some devices, CPU and memory already taken
        for _ in range(rng.randint(0, n.accelerator_count)):
            filler = gang("x", 1, 1, ["V100"], cpu_milli=rng.choice((0, 1_000)), memory_mib=rng.choice((0, 4_000)))
            if used.fits(n.name, filler.demand):
                used.take(n.name, filler.demand)
    frozen = used.freeze()
    names = [n.name for n in rng.sample(nodes, len(nodes))]
    for _ in range(5):
        workload = gang("g", rng.randint(1, 6), rng.choice((1, 2, 4)), ["V100"],
                        cpu_milli=rng.choice((0, 2_000, 6_000)), memory_mib=rng.choice((0, 16_000)))
        for replicas in range(1, workload.max_replicas + 1):
            a, b = CapacityLedger(snapshot.nodes, frozen), CapacityLedger(snapshot.nodes, frozen)
            assert _fill_whole(a, workload, names, replicas) == fill_type(b, workload, names, replicas)
            assert a.freeze() == b.freeze()
