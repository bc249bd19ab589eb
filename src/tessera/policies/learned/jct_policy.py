"""The ``learned-jct`` policy: a trained dispatcher for average job completion time.

Three linear scorers over :mod:`.jct_features` (the same functions training calls):

1. waiting jobs are taken in priority order, then by the queue scorer (lowest first);
2. for each, the accelerator types with room for its gang are scored; the lowest score wins,
   and the job *waits* (for a faster type to free up) when even the lowest score is above 0;
3. the gang is packed onto that type's nodes, fullest node first (best fit);
4. running jobs on a slower type move to a faster type with room when the move scorer's
   score is below 0 (one replica: a migration; a gang: stopped, and it restarts there next),
   as CP-SAT's moves do, at the job's restart cost.

No solver: a decision is a few dot products per waiting job, so
it runs in well under a millisecond where CP-SAT takes several.  The artifact
(``policies/learned/gavel-jct-v1``: weights + model card) is trained in the simulator on
Gavel's setting by ``make train-jct`` (:mod:`tessera.sim.train_jct`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import mul
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tessera.core import (
    MILLI_PER_DEVICE,
    Allocation,
    CapacityLedger,
    ClusterSnapshot,
    Migration,
    Placement,
    Plan,
    Preemption,
    ReplicaAssignment,
    Spread,
    Workload,
)
from tessera.policies.jct import fill_type
from tessera.policies.learned.jct_features import (
    JCT_FEATURE_VERSION,
    MOVE_FEATURES,
    QUEUE_FEATURES,
    TYPE_FEATURES,
    JobStatics,
    TypeState,
    job_statics,
    move_row,
    queue_pressure,
    queue_rows,
    type_row,
)
from tessera.policies.learned.model import (
    CARD_FILE,
    WEIGHTS_FILE,
    LinearScorer,
    read_artifact,
    resolve_artifact,
)
from tessera.policy import Decision, PolicyContext

JCT_FORMAT = "tessera-learned-jct/1"
DEFAULT_JCT_ARTIFACT = "gavel-jct-v1"


@dataclass(frozen=True, slots=True)
class JctModel:
    """The queue scorer and the type scorer, with the artifact's identity."""

    name: str
    version: str
    queue: LinearScorer
    types: LinearScorer
    moves: LinearScorer
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def artifact(self) -> str:
        """``name@version``, shown in cycle stats, status and metrics."""
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"format": JCT_FORMAT, "name": self.name, "version": self.version,
                "feature_version": JCT_FEATURE_VERSION, "queue": self.queue.to_json(),
                "types": self.types.to_json(), "moves": self.moves.to_json(), "metadata": dict(self.metadata)}

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / WEIGHTS_FILE
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")
        return path


def start_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queue, type and move weights of a hand-written rule: FIFO order, the fastest type with room,
    never wait, move a running job to a faster type with room when it is at least 20% faster.

    Training starts here (a heterogeneity-aware greedy baseline with CP-SAT-like upgrades) and
    keeps it unless the search finds better on the training seeds.
    """
    queue = np.zeros(len(QUEUE_FEATURES))
    queue[QUEUE_FEATURES.index("wait_hours")] = -1.0
    types = np.zeros(len(TYPE_FEATURES))
    types[TYPE_FEATURES.index("bias")] = -2.0
    types[TYPE_FEATURES.index("slowdown")] = 1.0
    moves = np.zeros(len(MOVE_FEATURES))
    moves[MOVE_FEATURES.index("bias")] = 0.2
    moves[MOVE_FEATURES.index("speed_gain")] = -1.0
    return queue, types, moves


def jct_model(queue_weights: Iterable[float], type_weights: Iterable[float], move_weights: Iterable[float], *, name: str = "gavel-jct",
              version: str = "0", metadata: Mapping[str, Any] | None = None) -> JctModel:
    """A model from raw-feature weights (no standardisation: every feature is O(1) by construction)."""
    return JctModel(name, version, LinearScorer.identity(QUEUE_FEATURES, [float(v) for v in queue_weights]),
                    LinearScorer.identity(TYPE_FEATURES, [float(v) for v in type_weights]),
                    LinearScorer.identity(MOVE_FEATURES, [float(v) for v in move_weights]), metadata or {})


def load_jct_model(location: str | Path | None = None) -> JctModel:
    """Load and check a JCT artifact; every failure is a :class:`ModelLoadError` naming the file and the fix."""
    path = resolve_artifact(location, DEFAULT_JCT_ARTIFACT)
    data = read_artifact(path, fmt=JCT_FORMAT, feature_version=JCT_FEATURE_VERSION,
                         keys=("name", "version", "queue", "types", "moves"), weights="learned JCT weights",
                         artifact="a learned JCT artifact", features="JCT feature version", train="make train-jct")
    return JctModel(str(data["name"]), str(data["version"]),
                    LinearScorer.from_json(data["queue"], QUEUE_FEATURES, f"{path} queue"),
                    LinearScorer.from_json(data["types"], TYPE_FEATURES, f"{path} types"),
                    LinearScorer.from_json(data["moves"], MOVE_FEATURES, f"{path} moves"),
                    data.get("metadata", {}))


def _fill_whole(
    ledger: CapacityLedger, workload: Workload, node_names: Sequence[str], replicas: int,
) -> tuple[ReplicaAssignment, ...] | None:
    """:func:`~tessera.policies.jct.fill_type` for a gang of whole-device replicas without a spread
    rule, giving the very same assignments: on each node in turn, as many replicas as its CPU,
    memory and whole free devices allow, each on the lowest-indexed free devices.

    fill_type asks the ledger ``fits`` and then ``take`` (which searches the devices again)
    per replica; here a node's free devices are listed once and each replica is taken on
    named devices (the ledger still checks them).  Filling is the largest part of a decision that
    moves jobs.
    """
    demand = workload.demand
    per_replica, cpu_milli, memory_mib = demand.accelerators, demand.cpu_milli, demand.memory_mib
    taken: list[ReplicaAssignment] = []
    for name in node_names:
        cpu, memory = ledger.cpu_free(name), ledger.memory_free(name)
        whole = [i for i, milli in enumerate(ledger.device_free(name)) if milli == MILLI_PER_DEVICE]
        while len(taken) < replicas and cpu >= cpu_milli and memory >= memory_mib and len(whole) >= per_replica:
            devices = tuple(whole[:per_replica])
            del whole[:per_replica]
            taken.append(ReplicaAssignment(name, ledger.take(name, demand, devices)))
            cpu -= cpu_milli
            memory -= memory_mib
        if len(taken) == replicas:
            return tuple(taken)
    for a in taken:
        ledger.give_back(a.node, demand, a.devices)
    return None


class LearnedJct:
    """Learned JCT dispatcher: trained queue order and accelerator-type choice (may wait for a faster type)."""

    name: ClassVar[str] = "learned-jct"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset(
        {Decision.PLACEMENT, Decision.ORDERING, Decision.REBALANCING, Decision.PREEMPTION})

    def __init__(self, weights: str | Path | None = None, *, model: JctModel | None = None) -> None:
        """``weights``: an artifact name under ``policies/learned/`` (default ``gavel-jct-v1``), its
        folder or its weights.json; ``model``: a ready model instead (training)."""
        self.model = model if model is not None else load_jct_model(weights)
        t = self.model.types
        # score = ((x - mean) / scale) @ w = x @ (w / scale) - (mean / scale) @ w: plain floats,
        # because a handful of products per (job, type) is faster in Python than a numpy call
        self._type_w = tuple(float(v) for v in t.weights / t.scale)
        self._type_offset = float(-(t.mean / t.scale) @ t.weights)
        m = self.model.moves
        self._move_w = tuple(float(v) for v in m.weights / m.scale)
        self._move_offset = float(-(m.mean / m.scale) @ m.weights)
        # weights that can never move (the bias alone, above 0): skip the scan of running work
        self._moves_possible = bool(np.any(m.weights[1:] != 0)) or self._move_offset < 0
        self._nodes: tuple[Mapping[str, object], dict[str, list[str]], dict[str, float]] | None = None
        self._cache: dict[str, tuple[Workload, tuple[str, ...], JobStatics]] = {}
        self._present_types: tuple[str, ...] = ()
        #: what the move scan needs of a running allocation that depends on it alone, by key:
        #: (the allocation, its statics, its type, the faster types it could move to, in present
        #: order); no faster type when it can never move (not preemptible, already on its
        #: fastest type, replicas on several types).  Allocations are frozen and the simulator
        #: and the operator's source keep the object while nothing about the job changes, so
        #: the next scan reuses this at the price of one lookup.  Valid for one set of present
        #: types (cleared with it).
        self._scan: dict[str, tuple[Allocation, JobStatics | None, str, tuple[str, ...]]] = {}
        #: gangs stopped to move to a faster type -> that type (their next start goes there)
        self._moving: dict[str, str] = {}

    @property
    def artifact(self) -> str:
        """The trained artifact in use, ``name@version``."""
        return self.model.artifact

    def _by_type(self, snapshot: ClusterSnapshot) -> tuple[dict[str, list[str]], dict[str, float]]:
        """Usable node names per type and accelerators per type, cached on the node map's identity."""
        nodes = snapshot.nodes
        if self._nodes is None or self._nodes[0] is not nodes:
            names: dict[str, list[str]] = {}
            total: dict[str, float] = {}
            for name in sorted(nodes):
                node = nodes[name]
                if node.usable and node.accelerator_type:
                    names.setdefault(node.accelerator_type, []).append(name)
                    total[node.accelerator_type] = total.get(node.accelerator_type, 0.0) + node.accelerator_count
            self._nodes = (nodes, names, total)
        return self._nodes[1], self._nodes[2]

    def _present(self, by_type: Mapping[str, list[str]]) -> tuple[str, ...]:
        """The types present, as one tuple object while the node map is unchanged (cheap cache checks)."""
        present = tuple(sorted(by_type))
        if present != self._present_types:
            self._present_types = present
            self._scan = {}
        return self._present_types

    def _statics(self, workload: Workload, present: Sequence[str]) -> JobStatics:
        """A job's unchanging features, cached on the workload object's identity."""
        hit = self._cache.get(workload.key)
        if hit is not None and hit[0] is workload and (hit[1] is present or hit[1] == present):
            return hit[2]
        statics = job_statics(workload, present)
        self._cache[workload.key] = (workload, tuple(present), statics)
        return statics

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        if not pending and not self._moves_possible:
            return Plan()
        by_type, total = self._by_type(snapshot)
        free_of = snapshot.free
        free: dict[str, float] = {}
        node_free: dict[str, int] = {}
        for accelerator_type, names in by_type.items():
            # comprehension + map: this runs over every node in every decision (its base cost)
            type_free = {name: sum(free_of(name).devices_milli) for name in names}
            node_free.update(type_free)
            free[accelerator_type] = sum(type_free.values()) / 1000.0
        present = self._present(by_type)
        if len(self._cache) > 2 * (len(pending) + len(snapshot.allocations)) + 64:
            live = {w.key for w in pending} | snapshot.allocations.keys()
            self._cache = {k: v for k, v in self._cache.items() if k in live}
            self._moving = {k: v for k, v in self._moving.items() if k in live}
            self._scan = {k: v for k, v in self._scan.items() if k in live}
        state = TypeState(free, total)
        now = ctx.now_seconds
        statics = [self._statics(w, present) for w in pending]
        pressure = queue_pressure(statics, state)
        order: list[int] = [0] if len(pending) == 1 else []
        if len(pending) > 1:
            # one waiting job (most decisions) has nothing to order: no feature rows, no numpy call
            scores = self.model.queue.score(queue_rows(statics, [w.submitted_at_seconds for w in pending], now, state))
            order = sorted(range(len(pending)), key=lambda i: (-pending[i].priority, float(scores[i]),
                                                              pending[i].submitted_at_seconds, pending[i].key))
        ledger: CapacityLedger | None = None
        placements: list[Placement] = []
        unplaced: dict[str, str] = {}
        w_type, offset = self._type_w, self._type_offset
        for i in order:
            workload, job = pending[i], statics[i]
            need = job.gang_gpus
            wait = now - workload.submitted_at_seconds
            scored = []
            for t in job.rates:
                if free[t] + 1e-9 < need:
                    continue
                x = type_row(job, t, wait, free[t], total[t], pressure[t])
                scored.append((sum(map(mul, x, w_type)) + offset, t))
            if not scored:
                unplaced[workload.key] = (f"queued: needs {need:g} accelerators of one type; free now: "
                                          + (", ".join(f"{t}={free[t]:g}" for t in job.rates) or "no allowed type present"))
                continue
            scored.sort()
            target = self._moving.pop(workload.key, None)
            if target is not None and any(t == target for _, t in scored):
                # a gang this policy stopped to move: it restarts on the type it was moved to (the
                # type scorer alone might pick the slower one again, and the two would loop)
                scored = [(min(scored)[0], target)]
            # can the job wait (see _can_wait): only asked once a score above 0 is reached, so computed then
            can_wait: bool | None = None
            placed = None
            for score, t in scored:
                if score > 0 and target is None:
                    if can_wait is None:
                        can_wait = self._can_wait(job, scored, total, need)
                    if can_wait:
                        break
                ledger = ledger or snapshot.ledger()
                placed = self._fill(ledger, workload, by_type[t], node_free)
                if placed is not None:
                    free[t] -= len(placed) * workload.demand.accelerator_milli / 1000.0
                    placements.append(Placement(workload.key, placed, reason=f"{self.name}: {t} (score {score:.3f})"))
                    break
            if placed is None:
                unplaced[workload.key] = (f"waiting for a faster type: best start now is {scored[0][1]} "
                                          f"(score {scored[0][0]:.3f} > 0)" if scored[0][0] > 0 and (
                                              can_wait if can_wait is not None else
                                              self._can_wait(job, scored, total, need)) else
                                          "queued: no node of a type with room takes the gang")
        migrations: list[Migration] = []
        preemptions: list[Preemption] = []
        if self._moves_possible and any(v >= 1.0 for v in free.values()):
            self._upgrade(snapshot, ledger, present, by_type, total, free, node_free, pressure, now,
                          migrations, preemptions)
        return Plan(placements=tuple(placements), preemptions=tuple(preemptions),
                    migrations=tuple(migrations), unplaced=unplaced)

    def _scan_entry(self, allocation: Allocation, present: Sequence[str]
                    ) -> tuple[Allocation, JobStatics | None, str, tuple[str, ...]]:
        """The move scan's view of one running allocation (see ``_scan``): the faster types it
        could move to, in present order, or none when it never can."""
        workload = allocation.workload
        if not allocation.replicas or not workload.preemptible:
            return allocation, None, "", ()
        source = allocation.replicas[0].accelerator_type
        job = self._statics(workload, present)
        if source is None or source == job.fastest or source not in job.rates:
            return allocation, job, "", ()  # already on its fastest type (or one it cannot move from)
        if not all(r.accelerator_type == source for r in allocation.replicas):
            return allocation, job, source, ()  # one type per gang: a mixed one is not moved
        slower_or_same = job.rates[source]
        return allocation, job, source, tuple(t for t in present if job.rates.get(t, 0.0) > slower_or_same)

    @staticmethod
    def _can_wait(job: JobStatics, scored: Sequence[tuple[float, str]], total: Mapping[str, float], need: float) -> bool:
        """Waiting is only an option while a faster allowed type could ever take the gang;
        otherwise the job would wait forever."""
        slowest_ok = min(job.rates[t] for _, t in scored)
        return any(total.get(t, 0.0) + 1e-9 >= need and r > slowest_ok for t, r in job.rates.items())

    @staticmethod
    def _fill(ledger: CapacityLedger, workload: Workload, names: Sequence[str],
              node_free: dict[str, int]) -> tuple[ReplicaAssignment, ...] | None:
        """The gang on these nodes, fullest node with room first (best fit: gangs consolidate), or nothing."""
        # ``names`` is in name order (see _by_type), so a stable sort on free room alone gives
        # the (room, name) order without building a key tuple per node
        ranked = sorted([n for n in names if node_free[n] > 0], key=node_free.__getitem__)
        # gangs of whole devices free to share nodes (every Gavel job) take the fast path
        fill = _fill_whole if workload.demand.accelerators and workload.spread is Spread.NONE else fill_type
        for count in range(workload.target_replicas, workload.gang_min - 1, -1):
            placed = fill(ledger, workload, ranked, count)
            if placed is not None:
                for a in placed:
                    node_free[a.node] -= workload.demand.accelerator_milli
                return placed
        return None

    def _upgrade(
        self, snapshot: ClusterSnapshot, ledger: CapacityLedger | None, present: Sequence[str],
        by_type: Mapping[str, list[str]], total: Mapping[str, float], free: dict[str, float],
        node_free: dict[str, int], pressure: Mapping[str, float], now: float,
        migrations: list[Migration], preemptions: list[Preemption],
    ) -> None:
        """Running jobs move to a faster type with room when the move scorer says so (score < 0).

        One replica: a migration (make-before-break).  A gang: stopped, so it restarts on the
        faster type in the next decision (one type per gang), as CP-SAT's moves do.
        """
        w_move, offset = self._move_w, self._move_offset
        candidates = []
        most_room = max((free[t] for t in present if free[t] >= 1.0), default=0.0)
        scan = self._scan
        # any iteration order: the candidates are sorted by (score, key) below
        for key, allocation in snapshot.allocations.items():
            entry = scan.get(key)
            if entry is None or entry[0] is not allocation:
                entry = scan[key] = self._scan_entry(allocation, present)
            _, job, source, faster = entry
            if not faster or job is None or job.gang_gpus > most_room:
                continue  # it can never move, or no type has room for the gang now
            for target in faster:
                if free[target] < 1.0 or free[target] + 1e-9 < job.gang_gpus:
                    continue  # no room there now
                x = move_row(job, source, target, now - allocation.started_at_seconds, total[target], pressure[target])
                score = sum(map(mul, x, w_move)) + offset
                if score < 0:
                    candidates.append((score, key, source, target))
        for score, key, source, target in sorted(candidates):
            allocation = snapshot.allocations[key]
            workload = allocation.workload
            need = len(allocation.replicas) * workload.demand.accelerator_milli / 1000.0
            if free[target] + 1e-9 < need or any(m.workload == key for m in migrations) or any(
                    p.workload == key for p in preemptions):
                continue
            ledger = ledger or snapshot.ledger()
            taken = self._fill(ledger, workload, by_type[target], node_free)
            if taken is None or len(taken) < len(allocation.replicas):
                if taken is not None:
                    for a in taken:
                        ledger.give_back(a.node, workload.demand, a.devices)
                        node_free[a.node] += workload.demand.accelerator_milli
                continue
            free[target] -= need
            reason = f"{self.name}: {source} -> faster {target} (score {score:.3f})"
            if len(allocation.replicas) == 1:
                migrations.append(Migration(key, allocation.replicas[0].replica, taken[0], reason=reason,
                                            estimated_cost_seconds=workload.restart_cost_seconds))
            else:
                # the room stays reserved in this plan's ledger, so nothing else takes it now;
                # the stopped gang restarts there in the follow-up decision
                preemptions.append(Preemption(key, reason=reason + ": restarts there next"))
                self._moving[key] = target


__all__ = ["CARD_FILE", "DEFAULT_JCT_ARTIFACT", "JctModel", "LearnedJct", "jct_model", "load_jct_model", "start_weights"]
