"""Sharding plans for elastic training: how N usable replicas split one global batch.

A training job fixes its tensor-parallel (``tp``) and pipeline-parallel (``pp``) degrees;
what changes when replicas come and go is the data-parallel degree (``dp``) and how the
global batch is cut into micro-batches.  The invariant this module keeps is

    sum over DP ranks of (micro_batch x micro-batches on that rank) == global_batch_size

exactly, so the optimiser sees the same effective batch (and the same learning-rate
schedule stays valid) whatever the replica count.  When that is impossible the answer is a
:class:`ShardingInfeasible` that says why in words and lists the nearest valid plans.

Vocabulary:

* A *replica* is one pod of the workload, holding ``devices_per_replica`` accelerators.
* A *DP rank* is one model copy, spanning ``tp x pp`` devices.  Either a replica holds a
  whole number of DP ranks (``devices_per_replica % (tp*pp) == 0``) or a DP rank spans a
  whole number of replicas (``(tp*pp) % devices_per_replica == 0``); anything else does
  not tile and is infeasible.
* With mixed accelerator types (heterogeneous replicas) every DP rank stays on one type
  (tensor/pipeline groups across types would run at the slowest type's pace), and the
  micro-batches of a step are split across DP ranks in proportion to per-type throughput.
  Ranks then process different numbers of samples, so the training script must average
  gradients by the *global* batch (sum-reduce of per-sample-summed losses / global batch),
  not by ``dp``; ``docs/elastic.md`` spells this out.

Pure and stdlib-only; no clock, no randomness.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ShardingPlan:
    """How the replicas a job keeps split the global batch.

    ``rank_micro_batches[r]`` is how many micro-batches of ``micro_batch`` samples DP rank
    ``r`` processes per optimiser step; the sum times ``micro_batch`` is the global batch.
    ``grad_accum_steps`` is the largest of them (equal to every entry for a balanced plan).
    ``replicas_used`` lists the workload's replica indices the plan runs on, in rank order;
    ``rank_replicas[r]`` the replica indices DP rank ``r`` spans.
    """

    dp: int
    tp: int
    pp: int
    micro_batch: int
    grad_accum_steps: int
    global_batch_size: int
    devices_per_replica: int
    replicas_used: tuple[int, ...]
    rank_micro_batches: tuple[int, ...]
    rank_replicas: tuple[tuple[int, ...], ...]
    rank_accelerator_types: tuple[str | None, ...] = ()
    generation: int = 0

    @property
    def balanced(self) -> bool:
        """Every DP rank does the same number of micro-batches."""
        return len(set(self.rank_micro_batches)) <= 1

    @property
    def world_size(self) -> int:
        """Processes in the job (one per device)."""
        return len(self.replicas_used) * self.devices_per_replica

    @property
    def samples_per_step(self) -> int:
        return self.micro_batch * sum(self.rank_micro_batches)

    def with_generation(self, generation: int) -> ShardingPlan:
        return _replace_generation(self, generation)

    def same_layout(self, other: ShardingPlan) -> bool:
        """Equal apart from the generation (used to avoid bumping it for no change)."""
        return _replace_generation(self, 0) == _replace_generation(other, 0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the TESSERA_PLAN payload, see ``docs/elastic.md``)."""
        return {
            "generation": self.generation,
            "dp": self.dp,
            "tp": self.tp,
            "pp": self.pp,
            "micro_batch": self.micro_batch,
            "grad_accum_steps": self.grad_accum_steps,
            "global_batch_size": self.global_batch_size,
            "devices_per_replica": self.devices_per_replica,
            "replicas": list(self.replicas_used),
            "rank_micro_batches": list(self.rank_micro_batches),
            "rank_replicas": [list(r) for r in self.rank_replicas],
            "rank_accelerator_types": list(self.rank_accelerator_types),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardingPlan:
        return cls(
            dp=int(data["dp"]),
            tp=int(data["tp"]),
            pp=int(data["pp"]),
            micro_batch=int(data["micro_batch"]),
            grad_accum_steps=int(data["grad_accum_steps"]),
            global_batch_size=int(data["global_batch_size"]),
            devices_per_replica=int(data["devices_per_replica"]),
            replicas_used=tuple(int(r) for r in data["replicas"]),
            rank_micro_batches=tuple(int(k) for k in data["rank_micro_batches"]),
            rank_replicas=tuple(tuple(int(r) for r in rr) for rr in data["rank_replicas"]),
            rank_accelerator_types=tuple(data.get("rank_accelerator_types", ())),
            generation=int(data.get("generation", 0)),
        )


def _replace_generation(plan: ShardingPlan, generation: int) -> ShardingPlan:
    return ShardingPlan(
        dp=plan.dp,
        tp=plan.tp,
        pp=plan.pp,
        micro_batch=plan.micro_batch,
        grad_accum_steps=plan.grad_accum_steps,
        global_batch_size=plan.global_batch_size,
        devices_per_replica=plan.devices_per_replica,
        replicas_used=plan.replicas_used,
        rank_micro_batches=plan.rank_micro_batches,
        rank_replicas=plan.rank_replicas,
        rank_accelerator_types=plan.rank_accelerator_types,
        generation=generation,
    )


@dataclass(frozen=True, slots=True)
class Alternative:
    """A valid plan near an infeasible request, and what it changes."""

    description: str
    plan: ShardingPlan


@dataclass(frozen=True, slots=True)
class ShardingInfeasible:
    """No plan satisfies the request; ``reason`` says why, ``alternatives`` what would work."""

    reason: str
    alternatives: tuple[Alternative, ...] = ()
    #: global batch sizes close to the requested one that this replica set could keep exactly
    nearest_global_batch_sizes: tuple[int, ...] = field(default=())

    def __str__(self) -> str:
        if not self.alternatives and not self.nearest_global_batch_sizes:
            return self.reason
        hints = [a.description for a in self.alternatives]
        if self.nearest_global_batch_sizes:
            hints.append(
                "global batch sizes this replica set keeps exactly: "
                + ", ".join(map(str, self.nearest_global_batch_sizes))
            )
        return f"{self.reason}; nearest valid: " + "; ".join(hints)


ShardingResult = ShardingPlan | ShardingInfeasible

#: an uneven or heterogeneous split may be this much slower (relative step time) than the
#: finest possible split in exchange for a larger micro-batch
BALANCE_TOLERANCE = 0.05
#: slowest rate relative to the fastest that a plan tells apart (slower ones count as this)
MIN_RELATIVE_RATE = 1e-12


def divisors(n: int) -> list[int]:
    """Positive divisors of ``n`` in increasing order."""
    small, large = [], []
    i = 1
    while i * i <= n:
        if n % i == 0:
            small.append(i)
            if i * i != n:
                large.append(n // i)
        i += 1
    return small + large[::-1]


def _rank_groups(
    replica_types: Sequence[tuple[int, str | None]], devices_per_replica: int, model_parallel: int
) -> list[tuple[tuple[int, ...], str | None]]:
    """DP ranks (replica indices, type) that the given replicas form, per type in input order.

    A rank spanning several replicas takes consecutive replicas of one type; leftovers that
    cannot complete a rank are not used.
    """
    ranks: list[tuple[tuple[int, ...], str | None]] = []
    if devices_per_replica % model_parallel == 0:
        per_replica = devices_per_replica // model_parallel
        for index, accelerator_type in replica_types:
            ranks.extend(((index,), accelerator_type) for _ in range(per_replica))
        return ranks
    span = model_parallel // devices_per_replica
    by_type: dict[str | None, list[int]] = {}
    for index, accelerator_type in replica_types:
        by_type.setdefault(accelerator_type, []).append(index)
    for accelerator_type, indices in by_type.items():
        for start in range(0, len(indices) - span + 1, span):
            ranks.append((tuple(indices[start : start + span]), accelerator_type))
    return ranks


def _split_proportional(total: int, weights: Sequence[float]) -> list[int] | None:
    """Split ``total`` units into positive integers proportional to ``weights``.

    Largest-remainder rounding after giving every rank one unit; ties go to the lower
    rank so the result is deterministic.  None when ``total < len(weights)``.
    """
    n = len(weights)
    if total < n:
        return None
    weight_sum = sum(weights)
    shares = [total * w / weight_sum for w in weights]
    counts = [max(1, int(s)) for s in shares]
    excess = sum(counts) - total
    # taking back: from the ranks most above their share
    while excess > 0:
        order = sorted(
            (i for i in range(n) if counts[i] > 1), key=lambda i: (shares[i] - counts[i], -i)
        )
        counts[order[0]] -= 1
        excess -= 1
    missing = total - sum(counts)
    order = sorted(range(n), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in range(missing):
        counts[order[i % n]] += 1
    return counts


def _step_time(counts: Sequence[int], micro_batch: int, throughputs: Sequence[float]) -> float:
    """Relative step time: the slowest rank's samples / throughput."""
    return max(k * micro_batch / t for k, t in zip(counts, throughputs, strict=True))


def _plan_for_ranks(
    ranks: Sequence[tuple[tuple[int, ...], str | None]],
    *,
    tp: int,
    pp: int,
    devices_per_replica: int,
    global_batch_size: int,
    max_micro_batch: int,
    throughput: Mapping[str, float],
    allow_uneven: bool,
    generation: int,
) -> ShardingPlan | str:
    """The best plan for exactly these DP ranks, or why there is none."""
    dp = len(ranks)
    rates = [throughput.get(t or "", 1.0) if t is not None else 1.0 for _, t in ranks]
    if any(r <= 0 for r in rates):
        return "throughput must be positive for every accelerator type in use"
    if any(math.isnan(r) or math.isinf(r) for r in rates):
        return "throughput must be a finite number for every accelerator type in use"
    # Scale by a power of two so the fastest rate lies in [0.5, 1): exact in floating point
    # (the same plan, bit for bit), and sums and products below stay finite for rates up to
    # the float maximum; rates more than MIN_RELATIVE_RATE below the fastest are raised to it.
    exponent = math.frexp(max(rates, default=1.0))[1]
    rates = [max(math.ldexp(r, -exponent), MIN_RELATIVE_RATE) for r in rates]
    heterogeneous = len(set(rates)) > 1
    candidates: list[tuple[float, ShardingPlan]] = []
    for micro_batch in reversed(divisors(global_batch_size)):
        if micro_batch > max_micro_batch:
            continue
        total_micro = global_batch_size // micro_batch
        if total_micro < dp:
            continue
        if heterogeneous:
            counts = _split_proportional(total_micro, rates)
        elif total_micro % dp == 0:
            counts = [total_micro // dp] * dp
        elif allow_uneven:
            counts = _split_proportional(total_micro, [1.0] * dp)
        else:
            counts = None
        if counts is None:
            continue
        plan = ShardingPlan(
            dp=dp,
            tp=tp,
            pp=pp,
            micro_batch=micro_batch,
            grad_accum_steps=max(counts),
            global_batch_size=global_batch_size,
            devices_per_replica=devices_per_replica,
            replicas_used=tuple(dict.fromkeys(i for replicas, _ in ranks for i in replicas)),
            rank_micro_batches=tuple(counts),
            rank_replicas=tuple(replicas for replicas, _ in ranks),
            rank_accelerator_types=tuple(t for _, t in ranks),
            generation=generation,
        )
        if not heterogeneous and plan.balanced:
            return plan  # the largest micro-batch that divides evenly: fewest accumulation steps
        candidates.append((_step_time(counts, micro_batch, rates), plan))
    if candidates:
        # Heterogeneous or uneven: smaller micro-batches split more finely but run less
        # efficiently and need more accumulation steps, so take the largest micro-batch whose
        # step time is within BALANCE_TOLERANCE of the finest split (candidates are largest first).
        best_time = min(t for t, _ in candidates)
        return next(p for t, p in candidates if t <= best_time * (1 + BALANCE_TOLERANCE) + 1e-12)
    if global_batch_size < dp:
        return f"global batch {global_batch_size} is smaller than dp={dp}: some rank would get no sample"
    fitting = [d for d in divisors(global_batch_size) if d <= max_micro_batch]
    return (
        f"global batch {global_batch_size} does not split evenly over dp={dp} with a micro-batch of at "
        f"most {max_micro_batch} (micro-batch sizes dividing {global_batch_size}: {fitting})"
    )


def plan_sharding(
    replica_types: Sequence[str | None] | int,
    *,
    global_batch_size: int,
    max_micro_batch: int,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    devices_per_replica: int = 1,
    throughput: Mapping[str, float] | None = None,
    replica_indices: Sequence[int] | None = None,
    allow_uneven: bool = False,
    min_replicas: int = 1,
    generation: int = 0,
) -> ShardingResult:
    """Plan the data-parallel layout for the usable replicas, keeping the global batch exact.

    ``replica_types`` is the accelerator type of each usable replica (or just a count when
    all are alike); ``replica_indices`` their indices in the workload (default 0..N-1).
    ``max_micro_batch`` is the largest micro-batch that fits in device memory.
    ``throughput`` maps accelerator type to per-replica samples/s (any unit, as in
    ``Workload.options``); types it omits count as 1.0.  ``allow_uneven`` lets identical ranks take micro-batch counts
    differing by one when ``dp`` does not divide the batch (exact global batch, slight
    imbalance).  All replicas must be used; when they cannot be, the answer is infeasible
    and its alternatives include plans on fewer replicas (see :func:`largest_feasible_plan`).
    """
    types: list[str | None] = [None] * replica_types if isinstance(replica_types, int) else list(replica_types)
    indices = list(range(len(types))) if replica_indices is None else list(replica_indices)
    if len(indices) != len(types):
        raise ValueError("replica_indices and replica_types differ in length")
    if len(set(indices)) != len(indices):
        raise ValueError("replica indices must be distinct")
    problem = _check_inputs(
        tensor_parallel, pipeline_parallel, devices_per_replica, global_batch_size, max_micro_batch
    )
    if problem:
        return ShardingInfeasible(problem)
    model_parallel = tensor_parallel * pipeline_parallel
    rates = dict(throughput or {})
    if not types:
        return ShardingInfeasible("no usable replicas")
    if len(types) < min_replicas:
        return ShardingInfeasible(f"{len(types)} usable replicas, fewer than the minimum {min_replicas}")
    ranks = _rank_groups(list(zip(indices, types, strict=True)), devices_per_replica, model_parallel)
    used_replicas = len({i for r, _ in ranks for i in r})
    reason = ""
    if used_replicas != len(types):
        span = model_parallel // devices_per_replica
        reason = (
            f"tp*pp={model_parallel} spans {span} replicas of {devices_per_replica} devices, so "
            f"{len(types)} replicas (grouped by accelerator type) leave {len(types) - used_replicas} unused"
        )
    elif not ranks:
        reason = "no complete data-parallel rank"
    if not reason:
        outcome = _plan_for_ranks(
            ranks,
            tp=tensor_parallel,
            pp=pipeline_parallel,
            devices_per_replica=devices_per_replica,
            global_batch_size=global_batch_size,
            max_micro_batch=max_micro_batch,
            throughput=rates,
            allow_uneven=allow_uneven,
            generation=generation,
        )
        if isinstance(outcome, ShardingPlan):
            return outcome
        reason = outcome
    return _infeasible(
        reason,
        types=types,
        indices=indices,
        ranks=ranks,
        tp=tensor_parallel,
        pp=pipeline_parallel,
        devices_per_replica=devices_per_replica,
        global_batch_size=global_batch_size,
        max_micro_batch=max_micro_batch,
        throughput=rates,
        allow_uneven=allow_uneven,
        min_replicas=min_replicas,
        generation=generation,
    )


def _check_inputs(tp: int, pp: int, devices_per_replica: int, global_batch_size: int, max_micro_batch: int) -> str:
    if tp < 1 or pp < 1:
        return f"parallel degrees must be >= 1 (tp={tp}, pp={pp})"
    if devices_per_replica < 1:
        return f"a replica must hold at least one device (got {devices_per_replica})"
    if global_batch_size < 1:
        return f"global batch size must be >= 1 (got {global_batch_size})"
    if max_micro_batch < 1:
        return f"micro-batch size must be >= 1 (got {max_micro_batch})"
    model_parallel = tp * pp
    if devices_per_replica % model_parallel and model_parallel % devices_per_replica:
        return (
            f"tp*pp={model_parallel} devices per model copy does not tile replicas of "
            f"{devices_per_replica} devices (one must divide the other)"
        )
    return ""


def _infeasible(
    reason: str,
    *,
    types: list[str | None],
    indices: list[int],
    ranks: Sequence[tuple[tuple[int, ...], str | None]],
    tp: int,
    pp: int,
    devices_per_replica: int,
    global_batch_size: int,
    max_micro_batch: int,
    throughput: Mapping[str, float],
    allow_uneven: bool,
    min_replicas: int,
    generation: int,
) -> ShardingInfeasible:
    alternatives: list[Alternative] = []
    kwargs: dict[str, Any] = {
        "tp": tp,
        "pp": pp,
        "devices_per_replica": devices_per_replica,
        "global_batch_size": global_batch_size,
        "max_micro_batch": max_micro_batch,
        "throughput": throughput,
        "generation": generation,
    }
    fewer = _largest_subset_plan(types, indices, allow_uneven=allow_uneven, min_replicas=min_replicas, **kwargs)
    if fewer is not None:
        alternatives.append(
            Alternative(
                f"run on {len(fewer.replicas_used)} of the {len(types)} replicas (dp={fewer.dp}, "
                f"micro-batch {fewer.micro_batch} x {fewer.grad_accum_steps} steps)",
                fewer,
            )
        )
    if ranks and not allow_uneven:
        uneven = _plan_for_ranks(ranks, allow_uneven=True, **kwargs)
        if isinstance(uneven, ShardingPlan) and {i for r, _ in ranks for i in r} == set(indices):
            alternatives.append(
                Alternative(
                    f"allow an uneven split on all {len(types)} replicas (micro-batch {uneven.micro_batch}, "
                    f"{min(uneven.rank_micro_batches)}-{max(uneven.rank_micro_batches)} micro-batches per rank)",
                    uneven,
                )
            )
    nearest: tuple[int, ...] = ()
    dp = len(ranks)
    if dp and {i for r, _ in ranks for i in r} == set(indices):
        lower = (global_batch_size // dp) * dp
        nearest = tuple(sorted({b for b in (lower, lower + dp) if b >= dp and b != global_batch_size}))
    return ShardingInfeasible(reason, tuple(alternatives), nearest)


def _largest_subset_plan(
    types: list[str | None],
    indices: list[int],
    *,
    allow_uneven: bool,
    min_replicas: int,
    tp: int,
    pp: int,
    devices_per_replica: int,
    global_batch_size: int,
    max_micro_batch: int,
    throughput: Mapping[str, float],
    generation: int,
) -> ShardingPlan | None:
    """The feasible plan on the most replicas (fewer than all), highest throughput on ties.

    Candidate subsets keep, per accelerator type, that type's first replicas in input
    order (so a caller lists the replicas it prefers to keep first).
    """
    by_type: dict[str | None, list[int]] = {}
    for position, accelerator_type in enumerate(types):
        by_type.setdefault(accelerator_type, []).append(position)
    type_order = list(by_type)
    limits = [len(by_type[t]) for t in type_order]
    # largest subsets first; stop at the first size that has any feasible plan
    for size in range(len(types) - 1, max(1, min_replicas) - 1, -1):
        best: tuple[float, ShardingPlan] | None = None
        for combo in _compositions(size, limits):
            chosen = sorted(p for t, k in zip(type_order, combo, strict=True) for p in by_type[t][:k])
            sub_types = [types[p] for p in chosen]
            sub_indices = [indices[p] for p in chosen]
            ranks = _rank_groups(list(zip(sub_indices, sub_types, strict=True)), devices_per_replica, tp * pp)
            if not ranks or len({i for r, _ in ranks for i in r}) != size:
                continue
            outcome = _plan_for_ranks(
                ranks,
                tp=tp,
                pp=pp,
                devices_per_replica=devices_per_replica,
                global_batch_size=global_batch_size,
                max_micro_batch=max_micro_batch,
                throughput=throughput,
                allow_uneven=allow_uneven,
                generation=generation,
            )
            if not isinstance(outcome, ShardingPlan):
                continue
            rate = plan_throughput(outcome, throughput)
            if best is None or rate > best[0] + 1e-9:
                best = (rate, outcome)
        if best is not None:
            return best[1]
    return None


def _compositions(total: int, limits: Sequence[int]) -> Iterator[list[int]]:
    """Every way to write ``total`` as a sum of per-type counts bounded by ``limits``."""
    if not limits:
        if total == 0:
            yield []
        return
    rest_capacity = sum(limits[1:])
    for first in range(min(total, limits[0]), max(0, total - rest_capacity) - 1, -1):
        for tail in _compositions(total - first, limits[1:]):
            yield [first, *tail]


def plan_throughput(plan: ShardingPlan, throughput: Mapping[str, float] | None = None) -> float:
    """Relative samples/s of a plan: global batch / the slowest rank's time for its share.

    ``throughput`` is per replica and type (1.0 when unknown); a rank's rate is that times
    the replicas it spans (a fraction when a replica holds several ranks).  Comparable
    across plans of one job: it is what the elastic policy maximises.
    """
    rates = dict(throughput or {})
    replicas_per_rank = plan.tp * plan.pp / plan.devices_per_replica
    times = [
        k * plan.micro_batch / (rates.get(t or "", 1.0) * replicas_per_rank)
        for k, t in zip(
            plan.rank_micro_batches,
            plan.rank_accelerator_types or (None,) * plan.dp,
            strict=True,
        )
    ]
    slowest = max(times) if times else 0.0
    return plan.global_batch_size / slowest if slowest > 0 else 0.0


def largest_feasible_plan(
    replica_types: Sequence[str | None] | int,
    **kwargs: Any,
) -> ShardingResult:
    """The plan on all replicas if feasible, else the feasible plan on the most replicas.

    Same arguments as :func:`plan_sharding`.  Returns :class:`ShardingInfeasible` only when
    no subset of at least ``min_replicas`` replicas works.
    """
    outcome = plan_sharding(replica_types, **kwargs)
    if isinstance(outcome, ShardingPlan):
        return outcome
    for alternative in outcome.alternatives:
        # the first alternative on fewer replicas is the subset plan, built with the same options
        if len(alternative.plan.replicas_used) < _count(replica_types):
            return alternative.plan
    return outcome


def _count(replica_types: Sequence[str | None] | int) -> int:
    return replica_types if isinstance(replica_types, int) else len(replica_types)
