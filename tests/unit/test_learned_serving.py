"""No train/serve skew: the policy, fed core snapshots, makes the training environment's choices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tessera.core import (
    AcceleratorOption,
    Allocation,
    ClusterSnapshot,
    Node,
    ReplicaDemand,
    ReplicaPlacement,
    Workload,
    WorkloadKind,
)
from tessera.policies.learned.env import arrival_sequence, read_nodes, read_pods, subsample
from tessera.policies.learned.features import (
    ORDERING_FEATURES,
    PLACEMENT_FEATURES,
    Demand,
    NodeArrays,
    arrays_from_snapshot,
    commit_placement,
    expected_fragmentation,
    placement_features,
    target_workload,
)
from tessera.policies.learned.model import (
    LearnedModel,
    LinearScorer,
    edd_ordering_weights,
    fgd_equivalent_weights,
)
from tessera.policies.learned.policy import LearnedPolicy
from tessera.policy import PolicyContext


def core_nodes(arrays: NodeArrays) -> list[Node]:
    return [
        Node(name, arrays.type_names[t] if t >= 0 else None, int(c), cpu_milli=int(cpu), memory_mib=int(mem))
        for name, t, c, cpu, mem in zip(arrays.names, arrays.type_index, arrays.gpu_count, arrays.cpu_total,
                                        arrays.mem_total, strict=True)
    ]


def workload(key: str, d: Demand) -> Workload:
    replica = ReplicaDemand(
        accelerators=d.num_gpu if d.gpu_milli >= 1000 else 0,
        shared_milli=d.gpu_milli if d.shared else 0,
        cpu_milli=d.cpu_milli,
        memory_mib=d.memory_mib,
    )
    return Workload(key, WorkloadKind.POD, replica, options=tuple(AcceleratorOption(t) for t in d.types))


def model(weights: np.ndarray) -> LearnedModel:
    return LearnedModel("test", "0", LinearScorer.identity(PLACEMENT_FEATURES, weights),
                        LinearScorer.identity(ORDERING_FEATURES, edd_ordering_weights()))


@pytest.mark.data
@pytest.mark.parametrize("workload_name", ["default", "gpuspec25", "multigpu40"])
def test_policy_on_snapshots_matches_training_env(shared_data: Path, workload_name: str) -> None:
    csv = shared_data / "alibaba-gpu-v2023" / "csv"
    arrays = subsample(read_nodes(csv / "openb_node_list_all_node.csv"), 24)
    pods = read_pods(csv / f"openb_pod_list_{workload_name}.csv")[::24]
    sequence = arrival_sequence(pods, int(arrays.gpu_count.sum()) * 1000, seed=3)[:250]
    target = target_workload([p.demand for p in pods], arrays.type_names)
    weights = fgd_equivalent_weights() + 0.3 * np.arange(len(PLACEMENT_FEATURES)) / len(PLACEMENT_FEATURES)

    learned = model(weights)
    policy = LearnedPolicy(model=learned, target=[p.demand for p in pods])
    nodes = core_nodes(arrays)
    allocations: list[Allocation] = []
    state = arrays.copy()
    frag = expected_fragmentation(state.gpu_free, state.cpu_free, state.mem_free, state.type_index, target)
    placed = 0
    for i, d in enumerate(sequence):
        # training side: the environment's step
        candidates = placement_features(state, d, target, frag)
        env_node = None
        if len(candidates.rows):
            choice = int(np.argmin(learned.placement.score(candidates.features)))
            env_node = state.names[commit_placement(state, candidates, choice, d, frag)]
        # serving side: the policy on a core snapshot
        snap = ClusterSnapshot(nodes, allocations)
        w = workload(f"pod-{i}", d)
        plan = policy.decide(snap, [w], PolicyContext())
        served = plan.placements[0].replicas[0] if plan.placements else None
        assert (served.node if served else None) == env_node, f"step {i}: {d}"
        if served is not None:
            rp = ReplicaPlacement(0, served.node, snap.nodes[served.node].accelerator_type, served.devices)
            allocations.append(Allocation(w, (rp,)))
            placed += 1
    assert placed > 100
    final = arrays_from_snapshot(ClusterSnapshot(nodes, allocations))
    assert (final.gpu_free == state.gpu_free).all() and (final.cpu_free == state.cpu_free).all()
