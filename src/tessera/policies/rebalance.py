"""Rebalancing policies: move running replicas to cut load imbalance and SLO risk.

``rebalance-cost-aware`` weighs each move's cost (:mod:`tessera.core.migration`) against
the imbalance it cures, with hysteresis (cooldown, net-gain threshold).
``rebalance-cost-blind`` is the baseline: whenever replica utilisations differ by more
than a threshold it moves whatever lowers imbalance, paying no attention to cost.

Both read the load from ``Allocation.observed_load_per_second`` (filled by a LoadSource)
and only propose :class:`~tessera.core.Migration` actions; the engine validates them
make-before-break like every other action.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, ClassVar

from tessera.core import (
    ClusterSnapshot,
    Migration,
    MigrationCostModel,
    Plan,
    ReplicaAssignment,
    Workload,
    WorkloadKind,
)
from tessera.policy import Decision, PolicyContext
from tessera.solver.rebalance import (
    RebalanceConfig,
    RebalanceModel,
    RebalanceResult,
    replica_utilisation,
)

_PARAM_PREFIX = "rebalance."


def config_from_params(base: RebalanceConfig, params: Mapping[str, Any], ctx: PolicyContext) -> RebalanceConfig:
    """``base`` overridden by ``rebalance.<field>`` entries of the policy parameters."""
    changes: dict[str, Any] = {}
    for f in fields(RebalanceConfig):
        key = _PARAM_PREFIX + f.name
        if key not in params or f.name == "movable_kinds":
            continue
        raw, current = params[key], getattr(base, f.name)
        if isinstance(current, bool):
            changes[f.name] = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        else:
            changes[f.name] = type(current)(raw)
    changes.setdefault("time_limit_seconds", min(base.time_limit_seconds, ctx.time_budget_seconds))
    changes["deterministic"] = ctx.deterministic or base.deterministic
    changes["seed"] = ctx.seed
    return replace(base, **changes)


def _configure(base: RebalanceConfig, settings: Mapping[str, Any]) -> RebalanceConfig:
    known = {f.name for f in fields(RebalanceConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown rebalance settings {unknown}; known: {sorted(known)}")
    return replace(base, **settings) if settings else base


def _migrations(result: RebalanceResult, why: str) -> tuple[Migration, ...]:
    return tuple(
        Migration(
            workload=m.workload,
            replica=m.replica,
            to=ReplicaAssignment(m.target),
            reason=f"{why}: {m.source} -> {m.target}, objective {result.baseline_seconds:.0f}s -> "
            f"{result.objective_seconds:.0f}s",
            estimated_cost_seconds=m.cost_seconds,
        )
        for m in result.moves
    )


class RebalanceCostAware:
    """Moves replicas only when the load relief over the horizon outweighs the migration cost."""

    name: ClassVar[str] = "rebalance-cost-aware"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.REBALANCING})

    def __init__(
        self, config: RebalanceConfig | None = None, cost_model: MigrationCostModel | None = None, **settings: Any
    ) -> None:
        """``settings`` are :class:`RebalanceConfig` fields (e.g. ``horizon_seconds=300``)."""
        self.config = _configure(config or RebalanceConfig(), settings)
        self.cost_model = cost_model or MigrationCostModel()
        #: the last solve, for reports and tests
        self.last_result: RebalanceResult | None = None

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        config = config_from_params(self.config, ctx.params, ctx)
        model = RebalanceModel(snapshot, config, now_seconds=ctx.now_seconds, cost_model=self.cost_model)
        self.last_result = model.solve()
        return Plan(migrations=_migrations(self.last_result, "cost-aware rebalance"))


#: the cost-blind baseline: a flat 1 s per move only breaks ties; no cooldown, no threshold
COST_BLIND = RebalanceConfig(
    cost_weight=0.0, flat_move_cost_seconds=1.0, cooldown_seconds=0.0, net_gain_threshold_seconds=0.0
)


def utilisation_spread(snapshot: ClusterSnapshot) -> float:
    """Highest minus lowest utilisation over loaded inference replicas (0 when none)."""
    utils = []
    for allocation in snapshot.allocations.values():
        if allocation.workload.kind is not WorkloadKind.INFERENCE or allocation.observed_load_per_second is None:
            continue
        share = allocation.observed_load_per_second / max(1, len(allocation.replicas))
        for rp in allocation.replicas:
            node = snapshot.nodes.get(rp.node)
            if node is not None:
                utils.append(replica_utilisation(allocation.workload, share, node))
    return max(utils) - min(utils) if utils else 0.0


class RebalanceCostBlind:
    """Baseline: whenever replica utilisations differ by more than ``imbalance_threshold``,
    make the moves that lower imbalance most, whatever they cost."""

    name: ClassVar[str] = "rebalance-cost-blind"
    version: ClassVar[str] = "1.0.0"
    decides: ClassVar[frozenset[Decision]] = frozenset({Decision.REBALANCING})

    def __init__(self, config: RebalanceConfig | None = None, imbalance_threshold: float = 0.2, **settings: Any) -> None:
        self.config = _configure(config or COST_BLIND, settings)
        self.imbalance_threshold = imbalance_threshold
        self.last_result: RebalanceResult | None = None

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        threshold = float(ctx.params.get(_PARAM_PREFIX + "imbalance_threshold", self.imbalance_threshold))
        self.last_result = None
        if utilisation_spread(snapshot) <= threshold:
            return Plan()
        config = config_from_params(self.config, ctx.params, ctx)
        # the baseline ignores cost whatever the parameters say
        config = replace(config, cost_weight=0.0, cooldown_seconds=0.0, net_gain_threshold_seconds=0.0)
        self.last_result = RebalanceModel(snapshot, config, now_seconds=ctx.now_seconds).solve()
        return Plan(migrations=_migrations(self.last_result, "cost-blind rebalance"))
