"""Units of the learned dispatcher's feature module (shared by training and serving)."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.core import Allocation, ClusterSnapshot, ReplicaDemand, ReplicaPlacement
from tessera.policies.learned.features import (
    ORDERING_FEATURES,
    PLACEMENT_FEATURES,
    Demand,
    arrays_from_snapshot,
    demand_of,
    expected_fragmentation,
    feasible_nodes,
    node_arrays,
    ordering_features,
    place_on_devices,
    placement_features,
    target_workload,
)
from tessera.testing import gang, node


def one_node(free: list[int], cpu: int = 32_000, mem: int = 65_536, gpu_type: str = "A100"):
    return node_arrays(["n"], [gpu_type], [len(free)], [free], [cpu], [mem], [cpu], [mem])


def frag(free: list[int], shape: Demand, cpu: int = 32_000) -> float:
    arrays = one_node(free, cpu=cpu)
    target = target_workload([shape], arrays.type_names)
    return float(expected_fragmentation(arrays.gpu_free, arrays.cpu_free, arrays.mem_free, arrays.type_index, target)[0])


def test_fragmentation_follows_fgd_definition() -> None:
    free = [1000, 500, 0, 300]
    # a 0.6-GPU task fits (device 0); devices with less than 600 free are fragments: 500 + 300
    assert frag(free, Demand(1000, 1000, 1, 600)) == 800
    # a 1-GPU task fits; partially used devices are fragments
    assert frag(free, Demand(1000, 1000, 1, 1000)) == 800
    # a 2-GPU task does not fit: every free milli is a fragment
    assert frag(free, Demand(1000, 1000, 2, 1000)) == 1800
    # a 0.2-GPU task fits everywhere there is room: nothing is a fragment
    assert frag(free, Demand(1000, 1000, 1, 200)) == 0
    # a task whose CPU does not fit: all free GPU is fragmented
    assert frag(free, Demand(64_000, 1000, 1, 200)) == 1800
    # a CPU-only task that fits leaves no GPU fragment
    assert frag(free, Demand(1000, 1000, 0, 0)) == 0


def test_expected_fragmentation_weighs_shapes_by_popularity_and_types() -> None:
    arrays = one_node([1000, 500])
    shapes = [Demand(0, 0, 1, 1000)] * 3 + [Demand(0, 0, 1, 600, ("T4",))]
    target = target_workload(shapes, ["A100", "T4"])
    assert target.probability.sum() == pytest.approx(1.0)
    # 3/4 x 500 (whole-GPU shape fits, the half device is a fragment) + 1/4 x 1500 (T4-only shape
    # cannot use an A100 node at all)
    arrays = node_arrays(["n"], ["A100"], [2], [[1000, 500]], [1], [1], [1], [1])
    target = target_workload(shapes, ["A100", "T4"])
    value = expected_fragmentation(arrays.gpu_free, arrays.cpu_free, arrays.mem_free, np.array([0]), target)[0]
    assert value == pytest.approx(0.75 * 500 + 0.25 * 1500)
    assert target.type_demand[0] == pytest.approx(3000 / 3600)


def test_device_choice_mirrors_the_core_ledger() -> None:
    free = np.array([[1000, 400, 700, 400]])
    after, device = place_on_devices(free, Demand(0, 0, 1, 300))
    assert device[0] == 1 and after.tolist() == [[1000, 100, 700, 400]]  # fullest device with room, lowest index
    after, _ = place_on_devices(np.array([[0, 1000, 500, 1000, 1000]]), Demand(0, 0, 2, 1000))
    assert after.tolist() == [[0, 0, 500, 0, 1000]]
    ledger = ClusterSnapshot([node("n", "A100", 4)]).ledger()
    ledger.take("n", ReplicaDemand(accelerators=0, shared_milli=600))
    ledger.take("n", ReplicaDemand(accelerators=0, shared_milli=600))
    taken = ledger.take("n", ReplicaDemand(accelerators=0, shared_milli=300))
    assert taken == (0,)  # the ledger agrees: fullest device with room


def test_feasibility_respects_type_cpu_memory_and_usability() -> None:
    arrays = node_arrays(
        ["a", "b", "c", "d"], ["A100", "T4", None, "A100"], [2, 2, 0, 2],
        [[1000, 1000], [1000, 200], [], [1000, 1000]], [8000, 8000, 8000, 500], [1000] * 4,
        [8000] * 4, [1000] * 4, [True, True, True, True],
    )
    assert feasible_nodes(arrays, Demand(1000, 10, 2, 1000)).tolist() == [0]
    assert feasible_nodes(arrays, Demand(1000, 10, 1, 500)).tolist() == [0, 1]
    assert feasible_nodes(arrays, Demand(1000, 10, 1, 500, ("T4",))).tolist() == [1]
    assert feasible_nodes(arrays, Demand(1000, 10, 0, 0)).tolist() == [0, 1, 2]
    arrays.usable[0] = False
    assert feasible_nodes(arrays, Demand(1000, 10, 1, 1000)).tolist() == [1]


def test_snapshot_arrays_carry_running_allocations() -> None:
    job = gang("ns/j", 1, 0, shared_milli=250, cpu_milli=1000, memory_mib=10)
    snap = ClusterSnapshot([node("b", "T4", 2, cpu_milli=4000, memory_mib=100), node("a", None, 0)],
                           [Allocation(job, (ReplicaPlacement(0, "b", "T4", (1,)),))])
    arrays = arrays_from_snapshot(snap)
    assert arrays.names == ["a", "b"] and arrays.type_index.tolist() == [-1, 0]
    assert arrays.gpu_free[1].tolist() == [1000, 750] and arrays.cpu_free[1] == 3000
    assert demand_of(job) == Demand(1000, 10, 1, 250)


def test_placement_features_shape_and_meaning() -> None:
    arrays = node_arrays(["idle", "busy"], ["A100", "A100"], [2, 2], [[1000, 1000], [1000, 300]],
                         [8000, 8000], [1000, 1000], [8000, 8000], [1000, 1000])
    target = target_workload([Demand(0, 0, 1, 1000)], arrays.type_names)
    before = expected_fragmentation(arrays.gpu_free, arrays.cpu_free, arrays.mem_free, arrays.type_index, target)
    c = placement_features(arrays, Demand(2000, 100, 1, 300), target, before)
    assert c.features.shape == (2, len(PLACEMENT_FEATURES))
    f = dict(zip(PLACEMENT_FEATURES, c.features.T, strict=True))
    assert f["gpu_left_gpus"].tolist() == [1.7, 1.0]
    assert f["whole_gpus_broken"].tolist() == [1, 0]  # on "busy" it lands on the 300-milli device
    assert f["node_was_idle"].tolist() == [1, 0]
    assert f["cpu_left_frac"].tolist() == [0.75, 0.75]
    # "busy": filling the 300 device removes a 300-milli fragment; "idle": creates a 700 one
    assert f["frag_delta_gpus"].tolist() == pytest.approx([0.7, -0.3])


def test_ordering_features() -> None:
    late = gang("ns/late", 1, 2, submitted=0.0, deadline=7_200.0)
    x = ordering_features([late, gang("ns/free", 1, 1)], now_seconds=3_600.0, work_seconds={"ns/late": 7_200.0})
    row = dict(zip(ORDERING_FEATURES, x[0], strict=True))
    assert row["slack_hours"] == -1.0 and row["overdue"] == 1.0 and row["has_deadline"] == 1.0
    assert row["gpus"] == 2.0 and row["waited_hours"] == 1.0
    assert x[1, ORDERING_FEATURES.index("has_deadline")] == 0.0
