"""CP-SAT models for load rebalancing with migration cost, and for defragmentation.

Load model (documented in docs/rebalancing.md). An inference service's observed load
(requests/s) is split evenly over its replicas, as a Kubernetes Service does; replica
``r`` of service ``s`` on accelerator type ``t`` then runs at utilisation
``load_r / throughput_s(t)``. Moving a replica to a faster type lowers its utilisation;
moving it to an emptier node lowers that node's load. Training and trace pods count as
fully busy (utilisation 1) and stay where they are unless ``movable_kinds`` says otherwise.

Objective, in replica-seconds over a ``horizon_seconds`` in which the move pays off:

* SLO risk: ``slo_weight x horizon x sum_r max(0, util_r - target_utilisation)``;
* peak node load: ``peak_weight x horizon x max_n load_n`` where ``load_n`` is the
  device-weighted mean utilisation of node ``n``;
* migration cost: ``cost_weight x sum of MigrationEstimate.cost_seconds`` of the moves
  (or ``flat_move_cost_seconds`` per move for a cost-blind rebalancer).

Constraints, one ``_add_*`` method each: one node per replica (allowed types, spread),
capacity free on the target before the source is released (stage-1 moves use capacity
free now; stage-2 moves may also use what stage-1 moves release), a budget of moves per round,
at most ``maxUnavailable`` replicas of a service moving at once, a cooldown on recently
moved replicas, and a net-gain threshold (nothing moves unless the objective improves by
``net_gain_threshold_seconds``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from tessera.core import (
    MILLI_PER_DEVICE,
    Allocation,
    ClusterSnapshot,
    MigrationCostModel,
    Node,
    Spread,
    Workload,
    WorkloadKind,
)
from tessera.core.migration import max_unavailable

#: objective coefficients are replica-seconds x SCALE, rounded (CP-SAT is integer)
SCALE = 1000
#: above this many move variables the rebalancer skips CP-SAT presolve (see solve())
PRESOLVE_MAX_MOVES = 8000


@dataclass(frozen=True, slots=True)
class RebalanceConfig:
    """Knobs of one rebalancing round (policies read them from ``PolicyContext.params``)."""

    #: seconds over which a move's benefit is counted (roughly the load's persistence)
    horizon_seconds: float = 300.0
    #: utilisation above which a replica is at risk of missing its latency SLO
    target_utilisation: float = 0.8
    slo_weight: float = 1.0
    peak_weight: float = 0.1
    cost_weight: float = 1.0
    #: used instead of the cost model when ``cost_weight`` is 0 (a tie-breaker, so a
    #: cost-blind rebalancer does not shuffle replicas for nothing)
    flat_move_cost_seconds: float = 0.0
    #: most moves in one round
    budget_moves: int = 4
    #: a replica that landed less than this long ago is not moved
    cooldown_seconds: float = 600.0
    #: no move unless the objective improves by at least this many replica-seconds
    net_gain_threshold_seconds: float = 30.0
    movable_kinds: frozenset[WorkloadKind] = frozenset({WorkloadKind.INFERENCE})
    #: 1: every move's target has room now; 2: also moves into room freed by stage-1 moves
    stages: int = 2
    #: target nodes considered per accelerator type and replica (most room, least load); 0 = all
    candidates_per_type: int = 4
    time_limit_seconds: float = 1.0
    #: deterministic runs (simulator): one worker and a fixed seed
    deterministic: bool = False
    seed: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaItem:
    """One running replica as the model sees it."""

    workload: Workload
    replica: int
    node: str
    #: requests/s reaching this replica (0 when not measured)
    load_per_second: float
    movable: bool
    #: why it may not move (cooldown, kind), for explanations
    fixed_reason: str = ""


@dataclass(frozen=True, slots=True)
class Move:
    workload: str
    replica: int
    source: str
    target: str
    cost_seconds: float
    #: 1: the target has room now; 2: it has room once stage-1 moves release their sources
    stage: int = 1


@dataclass(frozen=True, slots=True)
class RebalanceResult:
    moves: tuple[Move, ...]
    #: objective with nothing moved / with the chosen moves, in replica-seconds
    baseline_seconds: float
    objective_seconds: float
    status: str
    stats: Mapping[str, float] = field(default_factory=dict)

    @property
    def gain_seconds(self) -> float:
        return self.baseline_seconds - self.objective_seconds


#: utilisation is capped here: a replica loaded a thousand times past its capacity is as
#: overloaded as the model needs to know, and the cap keeps the integer coefficients far
#: from overflow whatever capacityPerReplica (down to 5e-324) or load it is given
MAX_UTILISATION = 1_000.0


def replica_utilisation(workload: Workload, load_per_second: float, node: Node) -> float:
    """Utilisation of one replica of ``workload`` carrying ``load_per_second`` on ``node``
    (in [0, :data:`MAX_UTILISATION`]; NaN counts as 0)."""
    if workload.kind is not WorkloadKind.INFERENCE:
        return 1.0
    capacity = workload.throughput_on(node.accelerator_type)
    util = load_per_second / capacity if capacity > 0 else 0.0
    return min(MAX_UTILISATION, util) if util > 0 else 0.0


def replica_items(
    snapshot: ClusterSnapshot, config: RebalanceConfig, now_seconds: float
) -> list[ReplicaItem]:
    """Every running replica on a known node, with its load share and whether it may move."""
    items: list[ReplicaItem] = []
    for key in sorted(snapshot.allocations):
        allocation = snapshot.allocations[key]
        share = _load_share(allocation)
        for rp in sorted(allocation.replicas, key=lambda r: r.replica):
            if rp.node not in snapshot.nodes:
                continue
            reason = ""
            since = rp.since_seconds if rp.since_seconds is not None else allocation.started_at_seconds
            if allocation.workload.kind not in config.movable_kinds:
                reason = f"{allocation.workload.kind} workloads are not rebalanced"
            elif now_seconds - since < config.cooldown_seconds:
                reason = f"moved or started {now_seconds - since:.0f}s ago (cooldown {config.cooldown_seconds:.0f}s)"
            items.append(ReplicaItem(allocation.workload, rp.replica, rp.node, share, not reason, reason))
    return items


def _load_share(allocation: Allocation) -> float:
    if allocation.observed_load_per_second is None or not allocation.replicas:
        return 0.0
    return allocation.observed_load_per_second / len(allocation.replicas)


class RebalanceModel:
    """Chooses replica moves (see the module docstring for the model).

    Moves come in ``config.stages`` stages. A stage-1 move needs room on its target now;
    a stage-2 move may also use room that stage-1 moves free when they release their
    sources (after their own targets are serving). That is make-before-break for every
    move, and it lets one round swap a cold replica off a fast node for a hot one. Plans
    list stage-1 moves first; executors start a later move only once its target has room.
    """

    def __init__(
        self,
        snapshot: ClusterSnapshot,
        config: RebalanceConfig,
        *,
        now_seconds: float,
        cost_model: MigrationCostModel | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.config = config
        self.now_seconds = now_seconds
        self.cost_model = cost_model or MigrationCostModel()
        self.items = replica_items(snapshot, config, now_seconds)
        self.nodes = [snapshot.nodes[name] for name in sorted(snapshot.nodes)]
        self.stages = tuple(range(1, max(1, config.stages) + 1))
        self._current_load: dict[str, float] = defaultdict(float)
        for item in self.items:
            node = snapshot.nodes[item.node]
            share = item.workload.demand.accelerator_milli / (MILLI_PER_DEVICE * max(1, node.accelerator_count))
            self._current_load[item.node] += replica_utilisation(item.workload, item.load_per_second, node) * share
        self._ranked: dict[str | None, list[Node]] | None = None
        # indexes over self.move, filled by _add_assignment
        self._moves_of: dict[int, list[tuple[str, int, cp_model.IntVar]]] = defaultdict(list)
        self._moves_into: dict[str, list[tuple[int, int, cp_model.IntVar]]] = defaultdict(list)
        self._moves_out_of: dict[str, list[tuple[int, int, cp_model.IntVar]]] = defaultdict(list)
        self.model = cp_model.CpModel()
        # variable containers
        self.stay: dict[int, cp_model.IntVar] = {}  # item -> stays on its node
        self.move: dict[tuple[int, str, int], cp_model.IntVar] = {}  # (item, target, stage) -> moves
        self.moved: dict[int, cp_model.IntVar] = {}  # item -> leaves its node
        self.node_load: dict[str, cp_model.IntVar] = {}  # node -> load x SCALE
        self.peak_load: cp_model.IntVar | None = None
        self.any_move: cp_model.IntVar | None = None
        # integer coefficients (replica-seconds x SCALE), per (item, node)
        self._slo_coef: dict[tuple[int, str], int] = {}
        self._load_coef: dict[tuple[int, str], int] = {}  # node-load contribution x SCALE
        self._move_coef: dict[tuple[int, str], int] = {}
        self._move_cost_seconds: dict[tuple[int, str], float] = {}
        self._objective: cp_model.LinearExprT = 0
        self._build()

    # ---- construction -------------------------------------------------------------
    def _build(self) -> None:
        self._add_assignment()
        self._add_spread()
        self._add_capacity_before_release()
        self._add_budget()
        self._add_max_unavailable()
        self._add_cooldown()
        self._add_peak_load()
        self._objective = self._objective_expr()
        self._add_net_gain_threshold()
        self.model.minimize(self._objective)

    def _candidates(self, item: ReplicaItem) -> list[Node]:
        """Nodes a replica may move to (not its own): per accelerator type, the
        ``candidates_per_type`` nodes with the most room now, then the least load.

        Nodes of one type differ only in room, load and link, so a few per type keep the
        best answers while the model stays small on large clusters.
        """
        if not item.movable:
            return []
        current = self.snapshot.nodes[item.node]
        limit = self.config.candidates_per_type
        out: list[Node] = []
        for accelerator_type, ranked in self._ranked_by_type().items():
            if not item.workload.allows(accelerator_type):
                continue
            if not item.workload.allow_mixed_types and accelerator_type != current.accelerator_type:
                continue
            chosen = [n for n in (ranked[: limit + 1] if limit > 0 else ranked) if n.name != item.node]
            out.extend(chosen[:limit] if limit > 0 else chosen)
        return out

    def _ranked_by_type(self) -> dict[str | None, list[Node]]:
        """Usable nodes per accelerator type, best target first (computed once)."""
        if self._ranked is None:
            ranked: dict[str | None, list[Node]] = defaultdict(list)
            for node in self.nodes:
                if node.usable:
                    ranked[node.accelerator_type].append(node)
            self._ranked = {t: sorted(nodes, key=self._room_rank) for t, nodes in ranked.items()}
        return self._ranked

    def _room_rank(self, node: Node) -> tuple[float, float, str]:
        free = self.snapshot.free(node.name)
        return (-free.accelerator_milli, self._current_load.get(node.name, 0.0), node.name)

    def _coefficients(self, i: int, item: ReplicaItem, node: Node) -> None:
        cfg = self.config
        util = replica_utilisation(item.workload, item.load_per_second, node)
        self._slo_coef[i, node.name] = round(
            SCALE * cfg.slo_weight * cfg.horizon_seconds * max(0.0, util - cfg.target_utilisation)
        )
        share = item.workload.demand.accelerator_milli / (MILLI_PER_DEVICE * max(1, node.accelerator_count))
        self._load_coef[i, node.name] = round(SCALE * util * share)

    def _add_assignment(self) -> None:
        for i, item in enumerate(self.items):
            label = f"{item.workload.key}#{item.replica}"
            stay = self.model.new_bool_var(f"stay[{label}]")
            self.stay[i] = stay
            self._coefficients(i, item, self.snapshot.nodes[item.node])
            choices = [stay]
            for node in self._candidates(item):
                self._coefficients(i, item, node)
                cost = self._move_cost(item, node)
                self._move_cost_seconds[i, node.name] = cost
                self._move_coef[i, node.name] = round(SCALE * cost)
                for stage in self.stages:
                    var = self.model.new_bool_var(f"move[{label}->{node.name}@{stage}]")
                    self.move[i, node.name, stage] = var
                    self._moves_of[i].append((node.name, stage, var))
                    self._moves_into[node.name].append((i, stage, var))
                    self._moves_out_of[item.node].append((i, stage, var))
                    choices.append(var)
            self.model.add_exactly_one(choices)
            moved = self.model.new_bool_var(f"moved[{label}]")
            self.model.add(moved == 1 - stay)
            self.moved[i] = moved

    def _move_cost(self, item: ReplicaItem, target: Node) -> float:
        cfg = self.config
        if cfg.cost_weight == 0:
            return cfg.flat_move_cost_seconds
        allocation = self.snapshot.allocations[item.workload.key]
        est = self.cost_model.estimate(
            item.workload,
            self.snapshot.nodes[item.node],
            target,
            now_seconds=self.now_seconds,
            gang_replicas=len(allocation.replicas),
        )
        return cfg.cost_weight * est.cost_seconds

    def _on_node(self, i: int) -> list[tuple[str, cp_model.IntVar]]:
        """(node, var) pairs: where item ``i`` ends up, one var per option."""
        out = [(self.items[i].node, self.stay[i])]
        out += [(name, var) for name, _, var in self._moves_of[i]]
        return out

    def _add_spread(self) -> None:
        by_workload: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(self.items):
            by_workload[item.workload.key].append(i)
        for indices in by_workload.values():
            workload = self.items[indices[0]].workload
            if workload.spread is Spread.NONE:
                continue
            groups: dict[str, list[cp_model.IntVar]] = defaultdict(list)
            for i in indices:
                for name, var in self._on_node(i):
                    node = self.snapshot.nodes[name]
                    groups[name if workload.spread is Spread.NODE else node.topology.zone].append(var)
            for vars_ in groups.values():
                if len(vars_) > 1:
                    self.model.add(sum(vars_) <= 1)

    def _add_capacity_before_release(self) -> None:
        """Every move's target has room before its source is released.

        Stage-1 arrivals fit in what is free now; arrivals up to stage ``k`` fit in what is
        free now plus what moves of earlier stages release on that node.
        """
        for node in self.nodes:
            free = self.snapshot.free(node.name)
            limits = (
                (lambda d: d.accelerators, free.whole_devices),
                (lambda d: d.accelerator_milli, max(0, free.accelerator_milli)),
                (lambda d: d.cpu_milli, max(0, free.cpu_milli)),
                (lambda d: d.memory_mib, max(0, free.memory_mib)),
            )
            for stage in self.stages:
                arriving = [
                    (self.items[i].workload.demand, var) for i, st, var in self._moves_into[node.name] if st <= stage
                ]
                if not arriving:
                    continue
                leaving = [
                    (self.items[i].workload.demand, var) for i, st, var in self._moves_out_of[node.name] if st < stage
                ]
                for amount, cap in limits:
                    if not any(amount(d) for d, _ in arriving):
                        continue
                    self.model.add(
                        sum(amount(d) * v for d, v in arriving) <= cap + sum(amount(d) * v for d, v in leaving)
                    )

    def _add_budget(self) -> None:
        if self.moved:
            self.model.add(sum(self.moved.values()) <= max(0, self.config.budget_moves))

    def _add_max_unavailable(self) -> None:
        by_workload: dict[str, list[cp_model.IntVar]] = defaultdict(list)
        for i, var in self.moved.items():
            by_workload[self.items[i].workload.key].append(var)
        for key, vars_ in by_workload.items():
            limit = max_unavailable(self.snapshot.allocations[key].workload)
            if limit < len(vars_):
                self.model.add(sum(vars_) <= limit)

    def _add_cooldown(self) -> None:
        # replicas in cooldown (or of a kind not rebalanced) get no move variables; pin
        # them explicitly too, so the rule is visible in the model
        for i, item in enumerate(self.items):
            if not item.movable:
                self.model.add(self.stay[i] == 1)

    def _add_peak_load(self) -> None:
        per_node: dict[str, list[tuple[int, cp_model.IntVar]]] = defaultdict(list)
        for i in range(len(self.items)):
            for name, var in self._on_node(i):
                per_node[name].append((self._load_coef[i, name], var))
        cap = max((sum(c for c, _ in terms) for terms in per_node.values()), default=0)
        self.peak_load = self.model.new_int_var(0, cap, "peak_load")
        for name, terms in per_node.items():
            load = self.model.new_int_var(0, cap, f"load[{name}]")
            self.model.add(load == sum(c * v for c, v in terms))
            self.node_load[name] = load
            self.model.add(self.peak_load >= load)

    def _peak_coef(self) -> int:
        return round(self.config.peak_weight * self.config.horizon_seconds)

    def _objective_expr(self) -> cp_model.LinearExprT:
        assert self.peak_load is not None
        terms = []
        for i, item in enumerate(self.items):
            if self._slo_coef[i, item.node]:
                terms.append(self._slo_coef[i, item.node] * self.stay[i])
        for (i, name, _), var in self.move.items():
            coef = self._slo_coef[i, name] + self._move_coef[i, name]
            if coef:
                terms.append(coef * var)
        return sum(terms) + self._peak_coef() * self.peak_load

    def baseline_scaled(self) -> int:
        """Objective (x SCALE) when nothing moves, computed directly."""
        slo = sum(self._slo_coef[i, item.node] for i, item in enumerate(self.items))
        loads: dict[str, int] = defaultdict(int)
        for i, item in enumerate(self.items):
            loads[item.node] += self._load_coef[i, item.node]
        return slo + self._peak_coef() * max(loads.values(), default=0)

    def _add_net_gain_threshold(self) -> None:
        """Either nothing moves, or the objective beats staying put by the threshold."""
        self.any_move = self.model.new_bool_var("any_move")
        for var in self.moved.values():
            self.model.add_implication(var, self.any_move)
        self.model.add(sum(self.moved.values()) >= 1).only_enforce_if(self.any_move)
        threshold = round(SCALE * self.config.net_gain_threshold_seconds)
        self.model.add(self._objective <= self.baseline_scaled() - threshold).only_enforce_if(self.any_move)

    # ---- solving --------------------------------------------------------------------
    def solve(self) -> RebalanceResult:
        cfg = self.config
        solver = cp_model.CpSolver()
        _limit(solver, cfg.time_limit_seconds, cfg.deterministic, cfg.seed)
        if len(self.move) > PRESOLVE_MAX_MOVES:
            # measured: on 400 nodes / 1,280 replicas presolve alone used a 5 s budget and
            # the answer was UNKNOWN; without it the search starts from the hinted
            # stay-put solution and improves it
            solver.parameters.cp_model_presolve = False
        # staying put is always feasible: hint it completely, so even a search cut short
        # by the time limit returns a valid (empty) answer instead of UNKNOWN
        for var in self.stay.values():
            self.model.add_hint(var, 1)
        for var in [*self.move.values(), *self.moved.values()]:
            self.model.add_hint(var, 0)
        if self.any_move is not None:
            self.model.add_hint(self.any_move, 0)
        loads: dict[str, int] = defaultdict(int)
        for i, item in enumerate(self.items):
            loads[item.node] += self._load_coef[i, item.node]
        for name, var in self.node_load.items():
            self.model.add_hint(var, loads[name])
        if self.peak_load is not None:
            self.model.add_hint(self.peak_load, max(loads.values(), default=0))
        status = solver.solve(self.model)
        baseline = self.baseline_scaled() / SCALE
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return RebalanceResult((), baseline, baseline, solver.status_name(status))
        moves = []
        for (i, name, stage), var in self.move.items():
            item = self.items[i]
            if solver.value(var):
                moves.append(
                    Move(item.workload.key, item.replica, item.node, name, self._move_cost_seconds[i, name], stage)
                )
        moves.sort(key=lambda m: (m.stage, m.workload, m.replica))
        return RebalanceResult(
            tuple(moves),
            baseline,
            solver.objective_value / SCALE,
            solver.status_name(status),
            {"wall_seconds": solver.wall_time, "variables": float(len(self.move) + len(self.stay))},
        )


def _limit(solver: cp_model.CpSolver, seconds: float, deterministic: bool, seed: int) -> None:
    """Wall-clock limit in the operator; in the simulator a deterministic-time limit and one
    worker, so a run replays exactly whatever the machine's load."""
    if deterministic:
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = seed
        solver.parameters.max_deterministic_time = seconds
    else:
        solver.parameters.num_workers = 2
        solver.parameters.max_time_in_seconds = seconds


# ---- defragmentation ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefragResult:
    """Moves that make room for a pending gang, and where its replicas then go."""

    moves: tuple[Move, ...]
    #: node -> replicas of the gang placed there
    gang_nodes: Mapping[str, int]
    cost_seconds: float
    status: str


class DefragModel:
    """Fewest-cost moves of running replicas after which a pending gang fits.

    Moves follow the rebalancer's make-before-break rule (each target has the room now);
    the gang may then use what the moves freed. ``movable`` limits which workloads may be
    moved (e.g. small, preemptible work); the gang keeps one accelerator type unless it
    allows mixing, and node/zone spread is respected.
    """

    def __init__(
        self,
        snapshot: ClusterSnapshot,
        gang: Workload,
        *,
        now_seconds: float,
        movable: Collection[str] | None = None,
        cost_model: MigrationCostModel | None = None,
        budget_moves: int = 16,
        time_limit_seconds: float = 1.0,
        deterministic: bool = False,
    ) -> None:
        self.snapshot = snapshot
        self.gang = gang
        self.now_seconds = now_seconds
        self.cost_model = cost_model or MigrationCostModel()
        self.budget_moves = budget_moves
        self.time_limit_seconds = time_limit_seconds
        self.deterministic = deterministic
        self.nodes = [snapshot.nodes[n] for n in sorted(snapshot.nodes)]
        self.items: list[tuple[Allocation, int, str]] = []
        for key in sorted(snapshot.allocations):
            allocation = snapshot.allocations[key]
            if movable is not None and key not in movable:
                continue
            for rp in allocation.replicas:
                if rp.node in snapshot.nodes:
                    self.items.append((allocation, rp.replica, rp.node))
        self.gang_types = sorted(
            {n.accelerator_type for n in self.nodes if n.usable and gang.allows(n.accelerator_type)}, key=str
        )
        self.model = cp_model.CpModel()
        # variable containers
        self.move_to: dict[tuple[int, str], cp_model.IntVar] = {}  # (item, target) -> moves there
        self.gang_on: dict[str, cp_model.IntVar] = {}  # node -> gang replicas there
        self.type_used: dict[str | None, cp_model.IntVar] = {}
        self._cost: dict[tuple[int, str], int] = {}
        self._cost_seconds: dict[tuple[int, str], float] = {}
        self._build()

    def _build(self) -> None:
        self._add_moves()
        self._add_gang_size()
        self._add_gang_types()
        self._add_target_capacity_before_release()
        self._add_node_capacity_after_moves()
        self._add_budget()
        self.model.minimize(sum(c * self.move_to[k] for k, c in self._cost.items()))

    def _add_moves(self) -> None:
        for i, (allocation, replica, source) in enumerate(self.items):
            workload = allocation.workload
            src = self.snapshot.nodes[source]
            options = []
            for node in self.nodes:
                if node.name == source or not node.usable or not workload.allows(node.accelerator_type):
                    continue
                if not workload.allow_mixed_types and node.accelerator_type != src.accelerator_type:
                    continue
                var = self.model.new_bool_var(f"move[{workload.key}#{replica}->{node.name}]")
                self.move_to[i, node.name] = var
                est = self.cost_model.estimate(
                    workload, src, node, now_seconds=self.now_seconds, gang_replicas=len(allocation.replicas)
                )
                self._cost_seconds[i, node.name] = est.cost_seconds
                # +1 per move: among equal-cost plans prefer fewer moves
                self._cost[i, node.name] = round(SCALE * est.cost_seconds) + 1
                options.append(var)
            if options:
                self.model.add_at_most_one(options)
            if workload.spread is Spread.NODE:
                # the moved replica may not land beside a sibling
                siblings = {rp.node for rp in allocation.replicas if rp.replica != replica}
                for name in siblings:
                    if (i, name) in self.move_to:
                        self.model.add(self.move_to[i, name] == 0)

    def _add_gang_size(self) -> None:
        gang = self.gang
        per_node = gang.demand.accelerators or 1
        for node in self.nodes:
            if not node.usable or node.accelerator_type not in self.gang_types:
                continue
            most = node.accelerator_count // per_node if gang.demand.accelerators else gang.max_replicas
            if gang.spread is not Spread.NONE:
                most = min(most, 1)
            self.gang_on[node.name] = self.model.new_int_var(0, min(most, gang.max_replicas), f"gang@{node.name}")
        self.model.add(sum(self.gang_on.values()) == gang.gang_min)
        if gang.spread is Spread.ZONE:
            zones: dict[str, list[cp_model.IntVar]] = defaultdict(list)
            for name, var in self.gang_on.items():
                zones[self.snapshot.nodes[name].topology.zone].append(var)
            for vars_ in zones.values():
                self.model.add(sum(vars_) <= 1)

    def _add_gang_types(self) -> None:
        if self.gang.allow_mixed_types:
            return
        for accelerator_type in self.gang_types:
            self.type_used[accelerator_type] = self.model.new_bool_var(f"type[{accelerator_type}]")
        self.model.add_exactly_one(self.type_used.values())
        for name, var in self.gang_on.items():
            used = self.type_used[self.snapshot.nodes[name].accelerator_type]
            self.model.add(var == 0).only_enforce_if(~used)

    def _add_target_capacity_before_release(self) -> None:
        incoming: dict[str, list[tuple[int, cp_model.IntVar]]] = defaultdict(list)
        for (i, name), var in self.move_to.items():
            incoming[name].append((i, var))
        for name, entries in incoming.items():
            free = self.snapshot.free(name)
            demand = [self.items[i][0].workload.demand for i, _ in entries]
            self.model.add(sum(d.accelerators * v for d, (_, v) in zip(demand, entries, strict=True)) <= free.whole_devices)
            self.model.add(
                sum(d.accelerator_milli * v for d, (_, v) in zip(demand, entries, strict=True))
                <= max(0, free.accelerator_milli)
            )

    def _add_node_capacity_after_moves(self) -> None:
        """After moves in and out, the gang's replicas fit in whole free devices."""
        per_replica = self.gang.demand.accelerators
        for name, gang_var in self.gang_on.items():
            free = self.snapshot.free(name)
            # devices freed: each moved-away replica frees its whole devices; a shared
            # replica frees its device only if every sharer leaves, which this model
            # counts conservatively as nothing unless the device is used by that replica alone
            freed: list[cp_model.LinearExprT] = []
            for i, (allocation, replica, source) in enumerate(self.items):
                if source != name:
                    continue
                leave = [v for (j, _), v in self.move_to.items() if j == i]
                if not leave:
                    continue
                devices = self._whole_devices_freed(allocation, replica)
                if devices:
                    freed.extend(devices * v for v in leave)
            arriving = [
                self.items[i][0].workload.demand.accelerators * v
                for (i, target), v in self.move_to.items()
                if target == name
            ]
            self.model.add(
                per_replica * gang_var + sum(arriving) <= free.whole_devices + sum(freed)
            )

    def _whole_devices_freed(self, allocation: Allocation, replica: int) -> int:
        demand = allocation.workload.demand
        if demand.accelerators:
            return demand.accelerators
        rp = next(r for r in allocation.replicas if r.replica == replica)
        # a shared device frees only if nobody else uses it
        ledger = self.snapshot.free(rp.node)
        return 1 if rp.devices and ledger.devices_milli[rp.devices[0]] + demand.shared_milli == MILLI_PER_DEVICE else 0

    def _add_budget(self) -> None:
        if self.move_to:
            self.model.add(sum(self.move_to.values()) <= self.budget_moves)

    def solve(self, hint: Sequence[Move] = ()) -> DefragResult | None:
        """The cheapest moves admitting the gang, or None when no such moves exist.

        ``hint`` (e.g. a greedy plan) warm-starts the search, so the answer is never
        worse than the hint when the time limit cuts the search short.
        """
        hinted = {(m.workload, m.replica, m.target) for m in hint}
        if hinted:
            for (i, name), var in self.move_to.items():
                allocation, replica, _ = self.items[i]
                self.model.add_hint(var, 1 if (allocation.key, replica, name) in hinted else 0)
        solver = cp_model.CpSolver()
        _limit(solver, self.time_limit_seconds, self.deterministic, 0)
        status = solver.solve(self.model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        moves = []
        total = 0.0
        for (i, name), var in self.move_to.items():
            if solver.value(var):
                allocation, replica, source = self.items[i]
                cost = self._cost_seconds[i, name]
                total += cost
                moves.append(Move(allocation.key, replica, source, name, cost))
        gang_nodes = {name: int(solver.value(v)) for name, v in self.gang_on.items() if solver.value(v)}
        moves.sort(key=lambda m: (m.workload, m.replica))
        return DefragResult(tuple(moves), gang_nodes, total, solver.status_name(status))
