"""From a snapshot to a solver instance: node pools, gang units and candidate pools.

The placement model does not see nodes one by one.  Usable nodes with the same
accelerator type, zone, network domain, NIC class and *free shape* (free milli per
device, free CPU and memory) are interchangeable for every pending gang, so they are
aggregated into a :class:`Pool`; the model decides how many replica units of each gang
go into each pool, and :mod:`tessera.solver.packing` then puts them on nodes.  With
``monolithic=True`` every node is its own pool, which is the exact node-level model the
decomposition is measured against.

A gang's *unit* is the set of replicas that must share one node: ``ceil(tensor_parallel
/ accelerators per replica)`` replicas, so a tensor-parallel group never crosses a node.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tessera.core import (
    CapacityLedger,
    NodeFree,
    ReplicaDemand,
    Spread,
    Workload,
    WorkloadKind,
)

_Key = TypeVar("_Key")

#: free capacity of one node with device order forgotten (devices sorted, fullest last):
#: identical shapes pool together
NodeShape = NodeFree


def node_fullness(device_count: int, free_accelerator_milli: int, cpu_capacity_milli: int, free_cpu_milli: int) -> float:
    """Mean share of accelerators and CPU in use on a node (dimensions it has), 0..1."""
    shares = []
    if device_count:
        shares.append(1.0 - free_accelerator_milli / (device_count * 1000))
    if cpu_capacity_milli:
        shares.append(1.0 - free_cpu_milli / cpu_capacity_milli)
    return sum(shares) / len(shares) if shares else 0.0


def replicas_fitting(shape: NodeShape, demand: ReplicaDemand) -> int:
    """How many replicas of ``demand`` fit on one node of ``shape`` (exact per dimension)."""
    count = shape.replicas_fitting(demand)
    # a demand of nothing fits without bound; cap it so the model stays finite
    return 1_000 if count is None else count


@dataclass(slots=True)
class Pool:
    """Interchangeable nodes: same type, zone, domain, NIC and free shape."""

    index: int
    accelerator_type: str | None
    zone: str
    domain: str
    nic: str
    shape: NodeShape
    #: device count of each node (total, not free)
    device_count: int
    nodes: list[str] = field(default_factory=list)
    #: CPU of each node (total, not free), for fullness
    cpu_capacity_milli: int = 0

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def fullness(self) -> float:
        """How used the pool's nodes are, 0..1: the mean of the accelerator and the CPU share
        in use (a node out of CPU strands its free accelerators, as FGD's traces show)."""
        return node_fullness(self.device_count, self.shape.accelerator_milli, self.cpu_capacity_milli,
                             self.shape.cpu_milli)

    @property
    def fresh(self) -> bool:
        """Every node is untouched: starting work here opens a new node."""
        return self.device_count > 0 and self.shape.whole_devices == self.device_count


@dataclass(slots=True)
class GangSpec:
    """One pending gang as the model sees it (counts in units, see the module doc)."""

    index: int
    workload: Workload
    unit_replicas: int
    min_units: int
    max_units: int
    #: priority x waiting-time weight (integer, >= 1)
    weight: int
    #: model value of one unit on each accelerator type (integer, before ``weight``)
    unit_value: dict[str | None, int]
    #: pool index -> most units the pool can hold for this gang alone
    capacity: dict[int, int] = field(default_factory=dict)
    #: why the gang cannot be placed at all (set before solving), or ""
    excluded: str = ""
    #: small tie-break towards queue order (pending count - queue position)
    order_bonus: int = 0

    @property
    def key(self) -> str:
        return self.workload.key

    @property
    def unit_demand_milli(self) -> int:
        return self.workload.demand.accelerator_milli * self.unit_replicas

    @property
    def prefers_one_domain(self) -> bool:
        """Pipeline / data-parallel replicas talk to each other: keep them in one network domain."""
        w = self.workload
        return self.max_units > 1 and w.kind is not WorkloadKind.INFERENCE and w.spread is Spread.NONE


@dataclass(frozen=True, slots=True)
class ObjectiveWeights:
    """Integer weights of the objective terms (see docs/cpsat.md)."""

    #: value of starting a gang at all (per unit of priority weight)
    start: int = 1_000
    #: value of a whole gang at its target size on its fastest type (normalised throughput)
    throughput: int = 10_000
    #: charge per node opened in a pool of untouched nodes (fragmentation of fresh nodes)
    open_node: int = 150
    #: value per unit x how full its pool's nodes already are (0..1): best fit, so that
    #: equal plans prefer fuller nodes and leave whole nodes free
    best_fit: int = 100
    #: charge per extra network domain a gang spans
    extra_domain: int = 400
    #: charge per extra NIC class a gang spans (heterogeneous NICs slow all-reduce)
    extra_nic: int = 600
    #: with queues: value per thousandth of the worst-off queue's normalised share (the
    #: fair-share term, tessera.solver.quota); 0 turns it off
    fair_share: int = 100
    #: weight ratio between consecutive priority levels
    priority_base: int = 8
    #: at most this many priority levels are told apart (higher ones share the top weight)
    priority_levels: int = 4
    #: waiting time doubling a gang's weight, and the cap on that bonus (x weight)
    age_doubling_seconds: float = 3_600.0
    age_cap: float = 2.0


@dataclass(slots=True)
class PlacementInstance:
    pools: list[Pool]
    gangs: list[GangSpec]
    weights: ObjectiveWeights
    #: True when pools split by network domain (False: domains coarsened away)
    pools_by_domain: bool
    monolithic: bool

    def pools_of_type(self, accelerator_type: str | None) -> list[Pool]:
        return [p for p in self.pools if p.accelerator_type == accelerator_type]


def unit_replicas(workload: Workload) -> int:
    """Replicas that must share a node so that a tensor-parallel group stays inside it."""
    per_replica = workload.demand.accelerators
    if workload.tensor_parallel <= 1 or per_replica <= 0 or per_replica >= workload.tensor_parallel:
        return 1
    return math.ceil(workload.tensor_parallel / per_replica)


def shape_of(ledger: CapacityLedger, node: str) -> NodeShape:
    free = ledger.free(node)
    return NodeShape(tuple(sorted(free.devices_milli, reverse=True)), free.cpu_milli, free.memory_mib)


def build_pools(
    ledger: CapacityLedger,
    *,
    by_domain: bool = True,
    monolithic: bool = False,
    nodes: Iterable[str] | None = None,
) -> list[Pool]:
    """Group usable nodes into pools (one pool per node when ``monolithic``)."""
    groups: dict[tuple[object, ...], Pool] = {}
    names = sorted(ledger.nodes) if nodes is None else sorted(nodes)
    for name in names:
        node = ledger.nodes[name]
        if not node.usable:
            continue
        shape = shape_of(ledger, name)
        topo = node.topology
        domain = topo.domain if by_domain else ""
        key: tuple[object, ...] = (node.accelerator_type or "", topo.zone, domain, topo.nic, node.accelerator_count,
                                   node.cpu_milli, shape)
        if monolithic:
            key = (name,)
        pool = groups.get(key)
        if pool is None:
            pool = Pool(len(groups), node.accelerator_type, topo.zone, topo.domain if (by_domain or monolithic) else "",
                        topo.nic, shape, node.accelerator_count, cpu_capacity_milli=node.cpu_milli)
            groups[key] = pool
        pool.nodes.append(name)
    return list(groups.values())


def priority_weights(pending: Sequence[Workload], weights: ObjectiveWeights) -> dict[int, int]:
    """Priority value -> integer weight: ``priority_base ** rank`` over the levels present."""
    levels = sorted({w.priority for w in pending})
    out = {}
    for rank, level in enumerate(levels):
        top_rank = rank - max(0, len(levels) - weights.priority_levels)
        out[level] = weights.priority_base ** max(0, top_rank)
    return out


def gang_weight(workload: Workload, prio_weight: int, now_seconds: float, weights: ObjectiveWeights) -> int:
    """Priority weight x (1 + waiting bonus): long-waiting gangs gain value so they do not starve."""
    waited = max(0.0, now_seconds - workload.submitted_at_seconds)
    bonus = min(weights.age_cap, waited / weights.age_doubling_seconds) if weights.age_doubling_seconds > 0 else 0.0
    return max(1, round(prio_weight * 100 * (1.0 + bonus)))


def normalised_throughputs(throughputs: Mapping[_Key, float]) -> dict[_Key, float]:
    """Each throughput divided by the largest, so every value is finite and in [0, 1].

    Dividing first (never ``scale * throughput / best``) keeps any finite input finite:
    ``10000 * 1e308`` is infinity, and ``round(inf)`` raised ``OverflowError`` for every
    decision of the cycle.  NaN and values <= 0 count as 0; infinite values count as the
    best (1.0) and every finite one as 0 next to them.  The API bounds these numbers, but
    a policy or a simulator trace may hand the solver anything.
    """
    clean = {t: (v if v > 0 else 0.0) if not math.isnan(v) else 0.0 for t, v in throughputs.items()}
    if any(math.isinf(v) for v in clean.values()):
        return {t: 1.0 if math.isinf(v) else 0.0 for t, v in clean.items()}
    best = max(clean.values(), default=0.0)
    if best <= 0.0:
        return dict.fromkeys(clean, 0.0)
    return {t: v / best for t, v in clean.items()}


def build_instance(
    ledger: CapacityLedger,
    pending: Sequence[Workload],
    *,
    now_seconds: float = 0.0,
    weights: ObjectiveWeights | None = None,
    monolithic: bool = False,
    max_pools: int = 400,
) -> PlacementInstance:
    """Pools plus one :class:`GangSpec` per pending gang (``pending`` in queue order:
    earlier gangs win ties), with every pool it fits in.

    Domains are kept in the pool key unless that makes more than ``max_pools`` pools
    (then domain affinity is left to packing).  ``GangSpec.capacity`` holds every pool
    of an allowed type where at least one unit fits, best-fit order first (fuller, used
    nodes first); :func:`restrict_candidates` trims it before the model is built.
    """
    weights = weights or ObjectiveWeights()
    # domains alone already exceeding the pool budget: skip the by-domain attempt
    domains = {(n.accelerator_type, n.topology.zone, n.topology.domain) for n in ledger.nodes.values()}
    by_domain = monolithic or len(domains) <= max_pools
    pools = build_pools(ledger, by_domain=by_domain, monolithic=monolithic)
    if not monolithic and by_domain and len(pools) > max_pools:
        pools = build_pools(ledger, by_domain=False)
        by_domain = False
    prio = priority_weights(pending, weights)
    present = sorted({p.accelerator_type or "" for p in pools})
    # best fit: fuller nodes first, nodes already in use before untouched ones
    ranked = sorted(pools, key=lambda p: (p.fresh, p.shape.accelerator_milli, -p.size, p.index))
    fit_cache: dict[tuple[object, ...], list[tuple[str | None, int, int]]] = {}
    capacity_cache: dict[tuple[object, ...], dict[int, int]] = {}
    gangs: list[GangSpec] = []
    for index, workload in enumerate(pending):
        u = unit_replicas(workload)
        min_units = math.ceil(workload.gang_min / u)
        max_units = workload.target_replicas // u
        allowed = {t or None for t in present if workload.allows(t or None)}
        relative = normalised_throughputs({t: workload.throughput_on(t) for t in allowed})
        unit_value = {
            t: max(1, round(weights.throughput * relative[t] * u / max(1, workload.target_replicas)))
            for t in allowed
        }
        spec = GangSpec(index, workload, u, min_units, max_units,
                        gang_weight(workload, prio[workload.priority], now_seconds, weights), unit_value)
        spec.excluded = _structural_problem(workload, u, min_units, max_units)
        spec.order_bonus = len(pending) - index
        if not spec.excluded:
            # gangs with the same demand, types and spread see the same pools: compute once
            signature = (workload.demand, frozenset(allowed), workload.spread, u, max_units)
            capacity = capacity_cache.get(signature)
            if capacity is None:
                capacity = capacity_cache[signature] = _fitting_pools(ranked, workload, allowed, u, max_units, fit_cache)
            spec.capacity = dict(capacity)
        gangs.append(spec)
    return PlacementInstance(pools, gangs, weights, by_domain, monolithic)


def _fitting_pools(
    ranked: Sequence[Pool], workload: Workload, allowed: set[str | None], u: int, max_units: int,
    fit_cache: dict[tuple[object, ...], list[tuple[str | None, int, int]]],
) -> dict[int, int]:
    """Pool -> unit capacity over the pools of allowed types where one unit fits."""
    spread = workload.spread
    key = (workload.demand, spread, u, max_units)
    fitting = fit_cache.get(key)
    if fitting is None:  # every pool, any type: computed once per demand shape
        fitting = []
        for pool in ranked:
            k = replicas_fitting(pool.shape, workload.demand) // u
            if k <= 0:
                continue
            if spread is Spread.NODE:
                k = 1
            cap = 1 if spread is Spread.ZONE else k * pool.size
            fitting.append((pool.accelerator_type, pool.index, min(cap, max_units)))
        fit_cache[key] = fitting
    return {index: cap for accelerator_type, index, cap in fitting if accelerator_type in allowed}


def restrict_candidates(
    instance: PlacementInstance, hint: Mapping[int, Mapping[int, int]], pools_per_group: int
) -> None:
    """Trim each gang's candidate pools before the model is built.

    Per gang and accelerator type (and zone, for zone-spread gangs) keep the pools the
    hint uses, the ``pools_per_group`` best-fit pools, and the ``pools_per_group`` pools
    with most room left after the hint (where an improvement can go).  A gang the hint
    already puts on its fastest type keeps only that type when the type is *uncontested*
    (no gang that would gain from the type is short of room there): CP-SAT could not
    improve its type, only its pools.  ``pools_per_group=0`` keeps everything.
    """
    if pools_per_group <= 0:
        return
    pools = {p.index: p for p in instance.pools}
    used: dict[int, int] = defaultdict(int)
    for g, counts in hint.items():
        for p, units in counts.items():
            used[p] += units * instance.gangs[g].unit_demand_milli
    left = {p.index: p.size * p.shape.accelerator_milli - used[p.index] for p in instance.pools}
    left_by_type: dict[str | None, int] = defaultdict(int)
    for pool in instance.pools:
        left_by_type[pool.accelerator_type] += max(0, left[pool.index])
    hinted_type = {g: pools[next(iter(c))].accelerator_type for g, c in hint.items() if c}
    contested: set[str | None] = set()
    for gang in instance.gangs:
        if not gang.capacity:
            continue
        current = gang.unit_value.get(hinted_type[gang.index], 0) if gang.index in hinted_type else 0
        need = gang.min_units * gang.unit_demand_milli
        for t, value in gang.unit_value.items():
            if value > current and need > left_by_type[t]:
                contested.add(t)
    shortlist: dict[tuple[object, ...], list[tuple[str | None, set[int]]]] = {}
    for gang in instance.gangs:
        if not gang.capacity:
            continue
        w = gang.workload
        # gangs with equal demand, types and spread have equal candidate lists: shortlist once
        signature = (w.demand, w.allowed_types, w.spread, gang.unit_replicas, gang.max_units)
        short = shortlist.get(signature)
        if short is None:
            groups: dict[tuple[str, str], list[int]] = defaultdict(list)
            for p in gang.capacity:  # already in best-fit order
                pool = pools[p]
                groups[(pool.accelerator_type or "", pool.zone if w.spread is Spread.ZONE else "")].append(p)
            short = []
            for members in groups.values():
                chosen = set(members[:pools_per_group])
                chosen.update(sorted(members, key=lambda q: (-left[q], q))[:pools_per_group])
                short.append((pools[members[0]].accelerator_type, chosen))
            shortlist[signature] = short
        hinted = hinted_type.get(gang.index, "-")
        only: str | bool | None = False
        if (gang.index in hinted_type and not w.allow_mixed_types and hinted not in contested
                and gang.unit_value.get(hinted, 0) >= max(gang.unit_value.values())):
            only = hinted
        keep = set(hint.get(gang.index, {}))
        for accelerator_type, chosen in short:
            if only is False or accelerator_type == only:
                keep.update(chosen)
        gang.capacity = {p: c for p, c in gang.capacity.items() if p in keep}


def _structural_problem(workload: Workload, u: int, min_units: int, max_units: int) -> str:
    if u > 1 and workload.spread is Spread.NODE:
        return (f"tensor-parallel groups of {workload.tensor_parallel} need {u} replicas on one node, "
                "but the workload must spread its replicas across nodes")
    if max_units < min_units or max_units == 0:
        return (f"tensor-parallel groups of {workload.tensor_parallel} accelerators need replicas in "
                f"multiples of {u}; [{workload.gang_min}, {workload.target_replicas}] holds none")
    return ""
