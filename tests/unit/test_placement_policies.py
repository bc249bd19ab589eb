"""The FGD-paper placement policies on tiny instances whose scores are worked out by hand."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from tessera.cli import main as tessera_main
from tessera.core import Allocation, ClusterSnapshot, Node, ReplicaPlacement, validate_plan
from tessera.policies.placement import (
    NODE_ORDER_PARAM,
    TARGET_WORKLOAD_PARAM,
    DotProductPolicy,
    FgdPolicy,
    FragmentationMeter,
    GpuClusteringPolicy,
    GpuPackingPolicy,
    PlacementArrays,
    PodShape,
    RandomFitPolicy,
    ResourceBestFitPolicy,
    ScoreCache,
    TargetWorkload,
    choose_node,
    node_order,
)
from tessera.policy import PolicyContext, available_policies, load_policy
from tessera.testing.builders import gang

BUILT_IN = {"random", "dot-product", "gpu-clustering", "gpu-packing", "resource-best-fit", "fgd"}


def cluster(*specs: tuple[str, int, int]) -> PlacementArrays:
    """Nodes named a, b, c, ... from (gpu type, gpu count, cpu milli); memory is plentiful."""
    names = [chr(ord("a") + i) for i in range(len(specs))]
    return PlacementArrays(names, [t for t, _, _ in specs], [c for _, c, _ in specs],
                           [cpu for _, _, cpu in specs], [1_000_000] * len(specs))


def share(milli: int, cpu: int = 0, types: tuple[str, ...] = ()) -> PodShape:
    return PodShape(cpu, 0, 1, milli, types)


def whole(count: int, cpu: int = 0) -> PodShape:
    return PodShape(cpu, 0, count, 1000)


def scores_of(policy, arrays: PlacementArrays, shape: PodShape) -> list[int]:
    nodes = np.arange(arrays.n_nodes)
    return [int(s) for s in policy.score(arrays, nodes, shape, random.Random(0))[0]]


def test_arrays_track_feasibility_and_placement() -> None:
    arrays = cluster(("T4", 2, 8000), (None, 0, 32000))
    assert arrays.total_gpu_milli == 2000
    assert list(arrays.feasible(share(600, cpu=4000))) == [True, False]
    assert list(arrays.feasible(PodShape(16000, 0, 0, 0))) == [False, True]
    assert list(arrays.feasible(share(600, types=("V100M32",)))) == [False, False]
    arrays.place(0, share(600, cpu=4000), (1,))
    assert list(arrays.gpu_free[0]) == [1000, 400] and arrays.cpu_free[0] == 4000
    assert list(arrays.feasible(whole(2))) == [False, False]
    assert arrays.best_fit_gpu(0, share(300)) == 1  # the fuller device with room
    arrays.release(0, share(600, cpu=4000), (1,))
    assert list(arrays.gpu_free[0]) == [1000, 1000] and arrays.version[0] == 2


def test_resource_best_fit_prefers_the_node_left_emptiest_of_cpu_and_gpu() -> None:
    arrays = cluster(("T4", 2, 64000), ("T4", 8, 96000))
    arrays.place(0, whole(1), (1,))  # node a: one GPU left
    # a: 1 - (56000/128000 + 0/8000)/2 = 0.78125 -> 78; b: 1 - (88000/128000 + 7000/8000)/2 -> 21
    assert scores_of(ResourceBestFitPolicy(), arrays, whole(1, cpu=8000)) == [78, 21]


def test_dot_product_prefers_the_smallest_product_with_the_request() -> None:
    arrays = cluster(("T4", 2, 64000), ("T4", 8, 96000))
    arrays.place(0, whole(1), (1,))
    # a: 1 - (0.5*0.0625 + 0.125*0.125)/2 = 0.9765625 -> 97; b: 1 - (0.75*0.0625 + 1*0.125)/2 -> 91
    assert scores_of(DotProductPolicy(), arrays, whole(1, cpu=8000)) == [97, 91]


def test_gpu_packing_fills_shared_gpus_then_used_nodes_then_idle_nodes() -> None:
    arrays = cluster(("T4", 4, 64000), ("T4", 4, 64000), ("T4", 4, 64000))
    arrays.place(1, share(700), (0,))  # b: one GPU with 300 free
    arrays.place(2, whole(1), (0,))  # c: one GPU taken whole
    # a idle: max(33 - 4, 4) = 29; b shared GPU: 100 - (300*100//1000)//10 = 97; c: max(50 - 1, 33) = 49
    assert scores_of(GpuPackingPolicy(), arrays, share(200)) == [29, 97, 49]
    # two whole GPUs: b and c both use two free GPUs of a used node -> 48
    assert scores_of(GpuPackingPolicy(), arrays, whole(2)) == [29, 48, 48]
    assert scores_of(GpuPackingPolicy(), arrays, PodShape(1000, 0, 0, 0)) == [0, 0, 0]


def test_gpu_clustering_keeps_one_gpu_shape_per_node() -> None:
    arrays = cluster(("T4", 8, 96000), ("T4", 8, 96000), ("T4", 8, 96000), ("T4", 8, 96000))
    arrays.place(1, share(500), (0,))  # b: only shares
    arrays.place(2, share(500), (0,))
    arrays.place(2, whole(1), (1,))  # c: shares and 1-GPU pods
    arrays.place(3, whole(1), (0,))  # d: only 1-GPU pods
    # fullness = 25*(8000 - free)//8000, plus 75 (same shape only), 50 (mixed), 25 (idle), 0 (other)
    assert scores_of(GpuClusteringPolicy(), arrays, share(200)) == [25, 76, 54, 3]
    assert scores_of(GpuClusteringPolicy(), arrays, whole(1)) == [25, 1, 54, 78]


def test_random_fit_is_uniform_over_feasible_nodes_and_devices() -> None:
    arrays = cluster(("T4", 2, 64000), ("T4", 2, 64000), ("T4", 2, 64000), ("T4", 2, 1000))
    arrays.place(0, share(700), (0,))
    rng = random.Random(3)
    policy = RandomFitPolicy()
    picks = Counter()
    devices = Counter()
    for _ in range(3000):
        choice = choose_node(arrays, share(200, cpu=4000), policy, rng, node_rank=node_order(4, rng))
        assert choice is not None
        picks[choice.node] += 1
        if choice.node == 0:
            devices[choice.devices] += 1
    assert set(picks) == {0, 1, 2}  # d lacks CPU
    assert all(850 < n < 1150 for n in picks.values()), picks
    assert set(devices) == {(0,), (1,)}  # both devices of a have room for 200


def test_fgd_measures_fragmentation_against_the_target_workload() -> None:
    arrays = cluster(("T4", 2, 64000), ("T4", 2, 64000))
    arrays.place(0, share(500), (0,))  # a: free [500, 1000]
    target = TargetWorkload.from_counts({whole(1): 3, PodShape(2000, 0, 0, 0): 1})
    meter = FragmentationMeter(arrays, target)
    # a: 3/4 * 500 (the half GPU is useless to whole-GPU pods) + 1/4 * 1500 (CPU pods use no GPU)
    assert meter.node_fragmentation(np.arange(2)).tolist() == [750.0, 500.0]
    assert meter.cluster_fragmentation() == 1250.0


def test_fgd_puts_a_share_where_it_removes_fragmentation() -> None:
    arrays = cluster(("T4", 2, 64000), ("T4", 2, 64000))
    arrays.place(0, share(500), (0,))  # a: [500, 1000]; b: [1000, 1000]
    policy = FgdPolicy()
    policy.prepare(arrays, TargetWorkload.from_counts({whole(1): 1}))
    scores, gpus = policy.score(arrays, np.arange(2), share(500), random.Random(0))
    # a, device 0: fragmentation 500 -> 0: int(100*sigmoid(0.5)) = 62;
    # b: 0 -> 500 whichever device: int(100*sigmoid(-0.5)) = 37
    assert scores.tolist() == [62, 37] and gpus.tolist() == [0, 0]
    choice = choose_node(arrays, share(500), policy, random.Random(0))
    assert choice is not None and (choice.node, choice.devices) == (0, (0,))


def test_fgd_needs_a_target_workload() -> None:
    with pytest.raises(ValueError, match="target workload"):
        FgdPolicy().prepare(cluster(("T4", 1, 1000)), None)


def test_target_workload_keeps_the_most_frequent_shapes() -> None:
    shapes = [whole(1)] * 60 + [share(500)] * 30 + [whole(8)] * 6 + [share(100)] * 4
    target = TargetWorkload.from_shapes(shapes, popularity=0.95)
    assert target.shapes == (whole(1), share(500), whole(8))  # 60 + 30 + 6 >= 95
    assert target.counts == (60, 30, 6)
    assert sum(target.weights) == pytest.approx(1.0)


def test_ties_go_to_the_lowest_ranked_node_when_ordered() -> None:
    arrays = cluster(("T4", 1, 1000), ("T4", 1, 1000), ("T4", 1, 1000))
    rank = np.array([2, 0, 1])
    choice = choose_node(arrays, whole(1), GpuPackingPolicy(), random.Random(0), node_rank=rank)
    assert choice is not None and choice.node == 1


def test_score_cache_rescores_only_changed_nodes() -> None:
    arrays = cluster(("T4", 2, 64000), ("T4", 2, 64000))
    calls: list[list[int]] = []

    class Counting(ResourceBestFitPolicy):
        def score(self, arrays, nodes, shape, rng):
            calls.append(nodes.tolist())
            return super().score(arrays, nodes, shape, rng)

    cache = ScoreCache(arrays)
    policy = Counting()
    cache.scores(policy, np.arange(2), whole(1), random.Random(0))
    cache.scores(policy, np.arange(2), whole(1), random.Random(0))
    arrays.place(1, whole(1), (0,))
    values, _ = cache.scores(policy, np.arange(2), whole(1), random.Random(0))
    assert calls == [[0, 1], [1]]
    assert values.tolist() == scores_of(ResourceBestFitPolicy(), arrays, whole(1))


def _snapshot() -> ClusterSnapshot:
    nodes = [Node("a", "T4", 2, cpu_milli=64000, memory_mib=100_000),
             Node("b", "V100M32", 4, cpu_milli=64000, memory_mib=100_000),
             Node("c", None, 0, cpu_milli=32000, memory_mib=100_000)]
    running = gang("running", shared_milli=600, cpu_milli=1000)
    return ClusterSnapshot(nodes, [Allocation(running, (ReplicaPlacement(0, "a", "T4", (1,)),))])


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_decide_returns_valid_plans(name: str) -> None:
    snapshot = _snapshot()
    arrays = PlacementArrays.from_snapshot(snapshot)
    assert list(arrays.gpu_free[0][:2]) == [1000, 400] and arrays.affinity[0, 0] == 1
    pending = [
        gang("share", shared_milli=300, cpu_milli=2000),
        gang("two", accelerators=2, cpu_milli=2000, types=["V100M32"]),
        gang("cpu", accelerators=0, cpu_milli=30000),
        gang("too-big", accelerators=8, cpu_milli=1000),
        gang("pair", replicas=2, accelerators=2, cpu_milli=1000),
    ]
    policy = load_policy(name)
    plan = policy.decide(snapshot, pending, PolicyContext(rng=random.Random(5)))
    validated = validate_plan(snapshot, pending, plan)
    assert validated.ok, validated.rejected
    placed = {p.workload: p for p in plan.placements}
    assert set(placed) | set(plan.unplaced) == {w.key for w in pending}
    assert "too-big" in plan.unplaced and "two" in placed
    assert placed["two"].replicas[0].node == "b"


def test_gangs_are_all_or_nothing_in_decide() -> None:
    snapshot = _snapshot()
    pending = [gang("pair", replicas=2, accelerators=4, cpu_milli=1000)]  # only b has 4 GPUs
    plan = ResourceBestFitPolicy().decide(snapshot, pending, PolicyContext(rng=random.Random(0)))
    assert not plan.placements and "pair" in plan.unplaced


def test_decide_honours_a_given_node_order_and_target() -> None:
    snapshot = ClusterSnapshot([Node(n, "T4", 1, cpu_milli=1000, memory_mib=1000) for n in ("x", "y", "z")])
    ctx = PolicyContext(rng=random.Random(0), params={NODE_ORDER_PARAM: ("z", "x", "y")})
    plan = GpuPackingPolicy().decide(snapshot, [gang("p", accelerators=1)], ctx)
    assert plan.placements[0].replicas[0].node == "z"
    target = TargetWorkload.from_counts({whole(1): 1})
    ctx = PolicyContext(rng=random.Random(0), params={TARGET_WORKLOAD_PARAM: target})
    assert FgdPolicy().target_for(snapshot, [], ctx) is target


def test_every_built_in_policy_is_registered_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    registered = {p.name for p in available_policies()}
    assert BUILT_IN | {"best-fit"} <= registered
    assert tessera_main(["policies", "list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert listed >= BUILT_IN
