"""The common ``decide()`` of the vectorised placement policies."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

from tessera.core import ClusterSnapshot, Placement, Plan, ReplicaAssignment, Spread, Workload, describe_unfit
from tessera.policies.fitting import fitting_by_type, lookup
from tessera.policies.placement.arrays import (
    IntArray,
    PlacementArrays,
    PodShape,
    ScoreCache,
    TargetWorkload,
    choose_node,
    node_order,
)
from tessera.policies.placement.lineage import ArraysByLineage
from tessera.policy import Decision, PolicyContext

#: ctx.params key under which a caller may pass the :class:`TargetWorkload` (FGD uses it)
TARGET_WORKLOAD_PARAM = "target_workload"
#: ctx.params key: "ordered" (default) or "random" tie-breaking between equal scores
TIE_BREAK_PARAM = "tie_break"
#: ctx.params key: node names in tie-break order (first wins); default: a permutation drawn from ctx.rng
NODE_ORDER_PARAM = "node_order"

TieBreak = Literal["ordered", "random"]


class PlacementPolicy:
    """Base of the FGD-paper baselines: place pending pods one by one, in the order given.

    Subclasses implement :meth:`score` (vectorised over nodes) and may override
    :meth:`select_gpu` and :meth:`prepare`.  ``decide`` builds :class:`PlacementArrays` from
    the snapshot and calls :func:`choose_node` for each replica, exactly as the FGD
    protocol runner does on its incremental arrays.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT})
    cacheable: bool = True
    #: decide()'s arrays, followed along the snapshots' lineage (made on first use)
    _lineage: ArraysByLineage | None = None

    def prepare(self, arrays: PlacementArrays, target: TargetWorkload | None) -> None:
        """Hook called once per cluster state before scoring."""

    def score(
        self, arrays: PlacementArrays, nodes: IntArray, shape: PodShape, rng: random.Random
    ) -> tuple[IntArray, IntArray]:
        raise NotImplementedError

    def select_gpu(self, arrays: PlacementArrays, node: int, shape: PodShape, rng: random.Random) -> int:
        """Best fit among devices: the fullest one with room for the share."""
        return arrays.best_fit_gpu(node, shape)

    def target_for(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> TargetWorkload:
        """The target workload: ``ctx.params['target_workload']`` if given, else the shapes of
        the running and pending workloads (one per replica)."""
        given = ctx.params.get(TARGET_WORKLOAD_PARAM)
        if isinstance(given, TargetWorkload):
            return given
        shapes: list[PodShape] = []
        for allocation in snapshot.allocations.values():
            shapes += [PodShape.of(allocation.workload)] * len(allocation.replicas)
        for workload in pending:
            shapes += [PodShape.of(workload)] * workload.target_replicas
        return TargetWorkload.from_shapes(shapes)

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        # the arrays of the last snapshot decided on, brought up to this one (see .lineage)
        lineage = self._lineage
        if lineage is None:
            lineage = self._lineage = ArraysByLineage()
        arrays = lineage.sync(snapshot)
        target = self.target_for(snapshot, pending, ctx)
        if target is not lineage.target:  # scores may depend on the target: cached ones are void
            lineage.cache, lineage.target = ScoreCache(arrays), target
        self.prepare(arrays, target)
        node_rank = self._cached_rank(lineage, arrays, ctx)
        placements: list[Placement] = []
        missed: list[Workload] = []
        journal: list[tuple[int, PodShape, tuple[int, ...]]] = []
        try:
            for i, workload in enumerate(pending):
                assignments = self._place_gang(arrays, workload, ctx.rng, node_rank, lineage.zones, lineage.cache,
                                               journal, final=i == len(pending) - 1)
                if assignments is None:
                    missed.append(workload)
                    continue
                placements.append(Placement(workload.key, assignments, reason=self.name))
        finally:
            for node, shape, devices in reversed(journal):  # back to the snapshot's state, exactly
                arrays.release(node, shape, devices)
        # explained on the snapshot's free capacity, as explain_unfit(snapshot.ledger(), w) does
        unplaced = {w.key: self._reason(lineage, arrays, w) for w in missed}
        return Plan(placements=tuple(placements), unplaced=unplaced)

    @staticmethod
    def _reason(lineage: ArraysByLineage, arrays: PlacementArrays, workload: Workload) -> str:
        """Why ``workload`` waits, memoised while the arrays hold the snapshot's state (a full
        cluster turns away many pods of the same shape in a row)."""
        key = (workload.demand, workload.allowed_types, workload.gang_min, workload.spread, workload.allow_mixed_types)
        reason = lineage.reasons.get(key)
        if reason is None:
            reason = lineage.reasons[key] = describe_unfit(workload, lineage.types, lookup(fitting_by_type(
                arrays.usable, arrays.type_idx, arrays.type_names, arrays.gpu_free, arrays.cpu_free, arrays.memory_free,
                workload)))
        return reason

    def _cached_rank(self, lineage: ArraysByLineage, arrays: PlacementArrays, ctx: PolicyContext) -> IntArray | None:
        """:meth:`node_rank`, reused while the node order given is the same object (and the arrays)."""
        names = ctx.params.get(NODE_ORDER_PARAM)
        if names is None or ctx.params.get(TIE_BREAK_PARAM, "ordered") == "random":
            return self.node_rank(arrays, ctx)
        if lineage.rank is None or lineage.rank[0] is not names:
            rank = self.node_rank(arrays, ctx)
            assert rank is not None
            lineage.rank = (names, rank)
        return lineage.rank[1]

    @staticmethod
    def node_rank(arrays: PlacementArrays, ctx: PolicyContext) -> IntArray | None:
        """The tie-break rank per node (lowest wins), or None for uniformly random ties."""
        if ctx.params.get(TIE_BREAK_PARAM, "ordered") == "random":
            return None
        names = ctx.params.get(NODE_ORDER_PARAM)
        if names is None:
            return node_order(arrays.n_nodes, ctx.rng)
        position = {name: i for i, name in enumerate(names)}
        unknown = len(position)
        return np.array([position.get(name, unknown) for name in arrays.names], dtype=np.int64)

    def _place_gang(
        self,
        arrays: PlacementArrays,
        workload: Workload,
        rng: random.Random,
        node_rank: IntArray | None,
        zones: np.ndarray | None = None,
        cache: ScoreCache | None = None,
        journal: list[tuple[int, PodShape, tuple[int, ...]]] | None = None,
        final: bool = False,
    ) -> tuple[ReplicaAssignment, ...] | None:
        """Place ``workload``'s replicas one by one on ``arrays`` (all or nothing).  ``final``:
        nothing reads the arrays after this gang, so its last replica is not placed on them
        (``journal`` lists what was, for the caller to undo)."""
        shape = PodShape.of(workload)
        taken: list[tuple[int, tuple[int, ...]]] = []
        # replicas that must spread rule out the nodes (or zones) earlier replicas took
        excluded = np.zeros(arrays.n_nodes, dtype=bool) if workload.spread is not Spread.NONE else None
        for replica in range(workload.target_replicas):
            if taken and shape.gpu_count and not workload.allow_mixed_types:
                # later replicas of a gang stay on the first replica's GPU model
                first_type = arrays.type_names[int(arrays.type_idx[taken[0][0]])]
                shape = PodShape(shape.cpu_milli, shape.memory_mib, shape.gpu_count, shape.gpu_milli, (first_type,))
            choice = choose_node(arrays, shape, self, rng, cache, node_rank=node_rank, excluded=excluded)
            if choice is None:
                break
            taken.append((choice.node, choice.devices))
            if final and replica == workload.target_replicas - 1:
                break  # a full gang: the arrays are not read again
            arrays.place(choice.node, shape, choice.devices)
            if journal is not None:
                journal.append((choice.node, shape, choice.devices))
            if excluded is not None:
                if workload.spread is Spread.ZONE and zones is not None:
                    excluded |= zones == zones[choice.node]
                else:
                    excluded[choice.node] = True
        if len(taken) < workload.gang_min:
            for node, devices in taken:  # all or nothing: give the partial gang back
                arrays.release(node, shape, devices)
            if journal is not None:
                del journal[len(journal) - len(taken):]
            return None
        return tuple(ReplicaAssignment(arrays.names[node], devices) for node, devices in taken)
