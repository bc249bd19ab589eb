"""The learned placement scorer on the FGD protocol runner's fast path.

``tessera.sim.fgd.run_protocol`` runs :class:`~tessera.policies.placement.PlacementPolicy`
subclasses on its incremental :class:`~tessera.policies.placement.PlacementArrays` (one pod at a
time, ``--batch 1``) instead of rebuilding a core snapshot per pod. :class:`LearnedPlacement`
plugs the learned scorer into that path: it reads the runner's arrays through a zero-copy
:class:`~tessera.policies.learned.features.NodeArrays` view and calls the same
:func:`~tessera.policies.learned.features.placement_features` as training and the ``learned``
policy, so the protocol's figures measure the very model that serves.

It is a benchmark adapter, not a registered policy: one-pod-at-a-time placement only (no gangs,
no spread); the registered ``learned`` policy handles every workload shape.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from tessera.policies.learned.features import (
    Demand,
    NodeArrays,
    TargetWorkload,
    expected_fragmentation,
    place_on_devices,
    placement_features,
    target_workload,
)
from tessera.policies.learned.model import LearnedModel, load_model
from tessera.policies.placement import PlacementArrays, PlacementPolicy, PodShape
from tessera.policies.placement import TargetWorkload as FgdTarget
from tessera.policy import Decision


def demand_of_shape(shape: PodShape) -> Demand:
    return Demand(shape.cpu_milli, shape.memory_mib, shape.gpu_count, shape.gpu_milli, tuple(shape.allowed_types))


class LearnedPlacement(PlacementPolicy):
    """The learned placement scorer, run by the FGD protocol runner on its arrays."""

    name: ClassVar[str] = "learned"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT})
    cacheable = False  # scores depend on memory and on the node's fragmentation, not only the shape

    def __init__(self, model: LearnedModel | None = None, *, weights: str | None = None,
                 target: Iterable[Demand] | None = None) -> None:
        """``target``: the demands the training side built its target workload from (the pod list);
        without it the runner's target (FGD's most popular shapes) is converted."""
        self.model = model if model is not None else load_model(weights)
        self._target_demands = None if target is None else list(target)
        self._arrays: PlacementArrays | None = None
        self._view: NodeArrays | None = None
        self._target: TargetWorkload | None = None
        self._frag = np.zeros(0)
        self._frag_version = np.zeros(0, dtype=np.int64)

    @property
    def artifact(self) -> str:
        return self.model.artifact

    def prepare(self, arrays: PlacementArrays, target: FgdTarget | None) -> None:
        self._arrays = arrays
        # zero-copy: the runner mutates these buffers in place as it places pods
        self._view = NodeArrays(
            names=arrays.names,
            type_names=list(arrays.type_names),
            type_index=np.where(arrays.type_idx == arrays.no_type, -1, arrays.type_idx),
            gpu_count=arrays.gpu_count,
            gpu_free=arrays.gpu_free,
            cpu_free=arrays.cpu_free,
            mem_free=arrays.memory_free,
            cpu_total=arrays.cpu_capacity,
            mem_total=arrays.memory_capacity,
            usable=arrays.usable,
        )
        if self._target_demands is not None:
            self._target = target_workload(self._target_demands, self._view.type_names)
        else:
            shapes = target.shapes if target is not None else ()
            weights = target.weights if target is not None else ()
            # expand the runner's frequencies into a demand sample (1,000 draws' worth, rounded)
            sample = [demand_of_shape(s) for s, w in zip(shapes, weights, strict=True) for _ in range(max(1, round(1000 * w)))]
            self._target = target_workload(sample, self._view.type_names)
        v = self._view
        self._frag = expected_fragmentation(v.gpu_free, v.cpu_free, v.mem_free, v.type_index, self._target)
        self._frag_version = arrays.version.copy()

    def score(
        self, arrays: PlacementArrays, nodes: np.ndarray, shape: PodShape, rng: random.Random
    ) -> tuple[np.ndarray, np.ndarray]:
        if arrays is not self._arrays or self._view is None or self._target is None:
            self.prepare(arrays, None)
        assert self._view is not None and self._target is not None
        view = self._view
        stale = nodes[arrays.version[nodes] != self._frag_version[nodes]]
        if len(stale):
            self._frag[stale] = expected_fragmentation(view.gpu_free[stale], view.cpu_free[stale], view.mem_free[stale],
                                                       view.type_index[stale], self._target)
            self._frag_version[stale] = arrays.version[stale]
        demand = demand_of_shape(shape)
        candidates = placement_features(view, demand, self._target, self._frag, rows=nodes)
        scores = self.model.placement.score(candidates.features)
        if shape.shares_gpu:
            _, device = place_on_devices(view.gpu_free[nodes], demand)
        else:
            device = np.full(len(nodes), -1, dtype=np.int64)
        # the runner keeps the highest score; ours is lowest-best
        return -scores, device.astype(np.int64)
