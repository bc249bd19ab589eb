"""The ``learned`` policy: trained linear scorers for queue order and node choice.

Serving uses exactly the features training used (:mod:`.features`). Per replica: the feasible
nodes' features are scored by the placement model and the lowest score wins; gangs are placed
all or nothing on one accelerator type (unless mixing is allowed), fastest allowed type first,
like the built-in heuristics. Queue order: priority first, then the ordering model's score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tessera.core import (
    CapacityLedger,
    ClusterSnapshot,
    Placement,
    Plan,
    ReplicaAssignment,
    Spread,
    Workload,
    describe_unfit,
)
from tessera.policies.fitting import fitting_by_type, lookup
from tessera.policies.gang import candidate_types
from tessera.policies.learned.features import (
    Demand,
    NodeArrays,
    TargetWorkload,
    add_demands,
    commit_placement,
    demand_of,
    feasible_nodes,
    ordering_features,
    placement_features,
    target_from_groups,
    target_workload,
)
from tessera.policies.learned.incremental import SnapshotConversion
from tessera.policies.learned.model import LearnedModel, load_model
from tessera.policy import Decision, PolicyContext


class LearnedPolicy:
    """Learned dispatcher: trained scoring of (replica, node) pairs and of queue order (numpy, microseconds)."""

    name: ClassVar[str] = "learned"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.PLACEMENT, Decision.ORDERING})

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        model: LearnedModel | None = None,
        target: Iterable[Workload | Demand] | None = None,
    ) -> None:
        """``weights``: an artifact name under ``policies/learned/``, its folder or its weights.json.

        ``target``: the workload mix the cluster expects (FGD's target workload); by default it
        is estimated each cycle from what runs and waits.
        """
        self.model = model if model is not None else load_model(weights)
        self._target_demands = None if target is None else [_as_demand(t) for t in target]
        self._target_cache: tuple[tuple[str, ...], TargetWorkload] | None = None
        #: the last snapshot decided on, converted; followed along its lineage (see .incremental)
        self._conversion = SnapshotConversion()

    @property
    def artifact(self) -> str:
        """The trained artifact in use, ``name@version`` (reported in cycle stats, status and metrics)."""
        return self.model.artifact

    # -- ordering ---------------------------------------------------------------------------

    def order(self, pending: Sequence[Workload], now_seconds: float,
              work_seconds: dict[str, float] | None = None) -> list[Workload]:
        """Pending workloads in dispatch order: priority, then the ordering model's score."""
        if len(pending) < 2:
            return list(pending)  # nothing to order: skip the features
        scores = self.model.ordering.score(ordering_features(pending, now_seconds, work_seconds))
        keyed = sorted(range(len(pending)), key=lambda i: (-pending[i].priority, float(scores[i]),
                                                          pending[i].submitted_at_seconds, pending[i].key))
        return [pending[i] for i in keyed]

    # -- placement --------------------------------------------------------------------------

    def target_for(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], type_names: Sequence[str]) -> TargetWorkload:
        if self._target_demands is not None:
            key = tuple(type_names)
            if self._target_cache is None or self._target_cache[0] != key:
                self._target_cache = (key, target_workload(self._target_demands, type_names))
            return self._target_cache[1]
        self._conversion.sync(snapshot)  # the running replicas' demands, counted along the lineage
        groups = self._conversion.groups
        waiting = [demand_of(w) for w in pending for _ in range(w.gang_min)]
        add_demands(groups, waiting, 1)  # counted in for this target only (the order of groups does not matter)
        try:
            return target_from_groups(groups, type_names)
        finally:
            add_demands(groups, waiting, -1)

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        conversion = self._conversion
        arrays = conversion.sync(snapshot).copy()
        target = self.target_for(snapshot, pending, arrays.type_names)
        # each node's expected fragmentation, computed when a workload first considers the node
        frag = np.zeros(arrays.n_nodes)
        known = np.zeros(arrays.n_nodes, dtype=bool)

        def need(rows: np.ndarray[Any, Any]) -> None:
            # rows this decision changed are known already (their values are the decision's own)
            missing = rows[~known[rows]]
            if len(missing):
                frag[missing] = conversion.fragmentation(target, missing)
                known[missing] = True

        ledger = snapshot.ledger()
        zones = conversion.zones
        work = ctx.params.get("work_seconds") if isinstance(ctx.params.get("work_seconds"), dict) else None
        placements: list[Placement] = []
        unplaced: dict[str, str] = {}
        for workload in self.order(pending, ctx.now_seconds, work):
            chosen = None
            #: per type group tried: the states its trial left on each row, in order (committing
            #: the chosen group replays them instead of scoring again: the same steps, exactly)
            trials: dict[tuple[str | None, ...], list[_Step]] = {}
            for groups in type_buckets(ledger, workload, conversion.types):
                best: tuple[tuple[int, float], tuple[str | None, ...], list[int]] | None = None
                for group in groups:
                    trial: list[_Step] = []
                    trials[group] = trial
                    rows, score = self._fill(arrays, workload, group, target, frag, zones, commit=False, record=trial,
                                             need=need)
                    if len(rows) >= workload.gang_min:
                        value = (-len(rows), score)  # most replicas, then the lowest total score
                        if best is None or value < best[0]:
                            best = (value, group, rows)
                if best is not None:
                    chosen = best
                    break
            if chosen is None:
                counts = fitting_by_type(arrays.usable, arrays.type_index, arrays.type_names, arrays.gpu_free,
                                         arrays.cpu_free, arrays.mem_free, workload)
                unplaced[workload.key] = describe_unfit(workload, conversion.types, lookup(counts))
                continue
            rows, _ = self._fill(arrays, workload, chosen[1], target, frag, zones, commit=True, limit=len(chosen[2]),
                                 replay=trials.get(chosen[1]), need=need)
            replicas = tuple(ReplicaAssignment(arrays.names[r], ledger.take(arrays.names[r], workload.demand))
                             for r in rows)
            placements.append(Placement(workload.key, replicas, reason=f"learned {self.artifact}"))
        return Plan(placements=tuple(placements), unplaced=unplaced)

    def _fill(
        self,
        arrays: NodeArrays,
        workload: Workload,
        group: Sequence[str | None],
        target: TargetWorkload,
        frag: np.ndarray[Any, Any],
        zones: dict[str, str],
        *,
        commit: bool,
        limit: int | None = None,
        record: list[_Step] | None = None,
        replay: list[_Step] | None = None,
        need: Callable[[np.ndarray[Any, Any]], None] | None = None,
    ) -> tuple[list[int], float]:
        """Place replicas one at a time by score within the accelerator types of ``group``.

        Keeps them (``commit``) or undoes them afterwards; returns the rows and the total score.
        ``record`` collects each step's row and state after it; ``replay`` applies such a
        record (its first ``limit`` steps) instead of scoring: a trial on the same state
        takes the same steps, so the result is the same.  ``need(rows)`` is called before
        ``frag`` is read for ``rows`` (a caller computing it lazily fills them in).
        """
        if replay is not None and commit and limit is not None and len(replay) >= limit:
            for row, gpu, cpu, mem, f in replay[:limit]:
                arrays.gpu_free[row], arrays.cpu_free[row], arrays.mem_free[row], frag[row] = gpu, cpu, mem, f
            return [step[0] for step in replay[:limit]], 0.0
        base = demand_of(workload)
        types = tuple(sorted(t for t in group if t)) if base.num_gpu else ()
        demand = Demand(base.cpu_milli, base.memory_mib, base.num_gpu, base.gpu_milli, types)
        total_score = 0.0
        want = workload.target_replicas if limit is None else limit
        saved: list[tuple[int, np.ndarray[Any, Any], int, int, float]] = []
        used_rows: list[int] = []
        used_zones: set[str] = set()
        while len(used_rows) < want:
            rows = feasible_nodes(arrays, demand)
            if workload.spread is Spread.NODE and used_rows:
                rows = rows[~np.isin(rows, used_rows)]
            elif workload.spread is Spread.ZONE and used_zones:
                rows = rows[np.array([zones[arrays.names[r]] not in used_zones for r in rows], dtype=bool)]
            if not len(rows):
                break
            if need is not None:
                need(rows)
            candidates = placement_features(arrays, demand, target, frag, rows)
            scores = self.model.placement.score(candidates.features)
            choice = int(np.argmin(scores))
            total_score += float(scores[choice])
            row = int(candidates.rows[choice])
            saved.append((row, arrays.gpu_free[row].copy(), int(arrays.cpu_free[row]), int(arrays.mem_free[row]),
                          float(frag[row])))
            commit_placement(arrays, candidates, choice, demand, frag)
            if record is not None:
                record.append((row, arrays.gpu_free[row].copy(), int(arrays.cpu_free[row]), int(arrays.mem_free[row]),
                               float(frag[row])))
            used_rows.append(row)
            used_zones.add(zones[arrays.names[row]])
        if not commit or len(used_rows) < workload.gang_min:
            for row, gpu, cpu, mem, f in reversed(saved):
                arrays.gpu_free[row], arrays.cpu_free[row], arrays.mem_free[row], frag[row] = gpu, cpu, mem, f
        return used_rows, total_score


#: one step of a trial: the row and its (GPU free, CPU free, memory free, fragmentation) after it
_Step = tuple[int, "np.ndarray[Any, Any]", int, int, float]


def type_buckets(ledger: CapacityLedger, workload: Workload,
                 present: Iterable[str | None] | None = None) -> list[list[tuple[str | None, ...]]]:
    """Candidate type groups, bucketed by per-replica throughput (fastest bucket first).

    Within a bucket the model chooses: a single replica (or a gang that may mix types) sees all
    the bucket's types at once; a gang that may not mix tries each type as its own group.
    CPU-only workloads see every node.
    """
    groups = candidate_types(ledger, workload, present)
    if not workload.demand.needs_accelerator or not groups:
        return [groups]
    allowed = sorted({t for g in groups for t in g}, key=lambda t: (-workload.throughput_on(t), str(t)))
    buckets: dict[float, list[str | None]] = {}
    for t in allowed:
        buckets.setdefault(workload.throughput_on(t), []).append(t)
    together = workload.allow_mixed_types or workload.target_replicas == 1
    return [[tuple(ts)] if together else [(t,) for t in ts] for _, ts in sorted(buckets.items(), key=lambda kv: -kv[0])]


def _as_demand(item: Workload | Demand) -> Demand:
    return item if isinstance(item, Demand) else demand_of(item)
