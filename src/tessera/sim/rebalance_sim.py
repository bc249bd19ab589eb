"""Inference serving under skewed load, with and without rebalancing (fluid, time-stepped).

Services of identical replicas (one model, one tensor-parallel degree) run on a mixed
cluster. Each step, a service's request rate (from :mod:`tessera.sim.inference_load`) is
split evenly over its serving replicas, as a Kubernetes Service does. A replica of type
``t`` has capacity ``mu_t`` (SplitwiseSim, at the largest batch whose latency stays within
``capacity_latency_seconds``); at utilisation ``rho`` a request takes

    unloaded + (batched - unloaded) x min(rho, 1)      # batches fill up as load rises
    + batched / 2 x min(rho, 1)                         # wait for the running batch to end
    + backlog / mu_t                                    # fluid backlog when rho > 1

and meets the SLO when that is at most ``slo_seconds``. Clients time out after
``request_timeout_seconds``, which bounds the backlog. Every ``period_seconds`` the
rebalancing policy (if any) sees a snapshot with each service's windowed mean load and
proposes migrations; the engine validates them. Moves then take real time
(:class:`~tessera.core.MigrationCostModel`): the target is reserved at once and warms up
(cold start) while the source serves; at cut-over the replica stops for the state
transfer; then the source is released. A move whose target has no room yet (a stage-2
move) waits for it. The executor refuses a move of a replica already moving and keeps at
most ``maxUnavailable`` replicas of a service moving, as the operator will.

Run: ``tessera sim run --scenario sim/scenarios/skewed-inference.yaml [--json out.json]``
(a scenario with a ``rebalance:`` section is run here).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.core import (
    AcceleratorOption,
    Allocation,
    CapacityLedger,
    ClusterSnapshot,
    Migration,
    MigrationCostModel,
    Node,
    ReplicaDemand,
    ReplicaPlacement,
    Workload,
    WorkloadKind,
)
from tessera.core.migration import ATTR_MAX_UNAVAILABLE, max_unavailable
from tessera.engine import Engine, with_load
from tessera.policy import load_policy
from tessera.sim.inference_load import Capacity, PerfModel, SeriesLoadSource, skewed_service_rates
from tessera.sim.loaders import azure_llm, splitwise
from tessera.sim.scenario import Scenario as SimScenario
from tessera.sim.scenario import ScenarioError


class RebalanceSection(BaseModel):
    """The ``rebalance:`` section of a scenario file (see ``sim/scenarios/skewed-inference.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_seconds: float = Field(default=5.0, gt=0)
    #: how often the rebalancing policy runs
    period_seconds: float = Field(default=60.0, gt=0)
    #: a request meets its SLO when it completes within this
    slo_seconds: float = Field(gt=0)
    #: clients give up after this long; their requests leave the queue as SLO misses
    request_timeout_seconds: float = Field(default=60.0, gt=0)
    #: decision time limit (deterministic time units in the simulator)
    time_limit_seconds: float = Field(default=2.0, gt=0)
    #: SplitwiseSim perf model: which model/TP the services run, and the latency bound
    #: under which a replica's capacity is taken (the largest batch within it)
    perf_path: str
    model: str
    tensor_parallel: int = Field(ge=1)
    capacity_latency_seconds: float = Field(gt=0)
    #: accelerator type -> SplitwiseSim hardware name
    hardware: dict[str, str]
    #: skew: total load, the hot service's share, how long each service stays hot
    total_requests_per_second: float = Field(gt=0)
    hot_share: float = Field(ge=0, le=1)
    phase_seconds: float = Field(gt=0)
    #: the load a policy sees is the mean over this window (as rate(...[1m]))
    window_seconds: float = Field(default=60.0, gt=0)
    max_unavailable: int = Field(default=1, ge=1)
    #: tessera.dev/* workload attributes of every service (migration cost parameters)
    attributes: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class ServiceSetup:
    name: str
    replicas: int
    accelerators: int
    #: the scenario's stated per-replica throughput (checked against the perf model)
    throughput: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Experiment:
    """A rebalancing experiment: the cluster and services of a scenario plus its ``rebalance`` section."""

    name: str
    nodes: tuple[Node, ...]
    services: tuple[ServiceSetup, ...]
    trace_path: Path
    perf_path: Path
    settings: RebalanceSection
    policies: tuple[str, ...]
    policy_params: Mapping[str, Mapping[str, Any]]
    seeds: tuple[int, ...]
    duration_seconds: float

    @property
    def modes(self) -> tuple[str, ...]:
        return ("off", *self.policies)

    @classmethod
    def from_scenario(cls, scenario: SimScenario) -> Experiment:
        spec = scenario.spec
        if spec.rebalance is None:
            raise ScenarioError(f"{spec.name}: no 'rebalance' section")
        try:
            settings = RebalanceSection.model_validate(spec.rebalance)
        except ValidationError as err:
            problems = "; ".join(f"rebalance.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise ScenarioError(f"{spec.name}: {problems}") from None
        if not spec.workload.inference:
            raise ScenarioError(f"{spec.name}: a rebalancing experiment needs workload.inference services")
        traces = {svc.load.path for svc in spec.workload.inference}
        if len(traces) != 1 or None in traces or any(svc.load.kind != "azure" for svc in spec.workload.inference):
            raise ScenarioError(f"{spec.name}: every service needs the same 'azure' load trace (skew is applied per service)")
        trace = next(iter(traces))
        assert trace is not None
        services = tuple(
            ServiceSetup(svc.name, svc.max_replicas, svc.accelerators, dict(svc.throughput)) for svc in spec.workload.inference
        )
        return cls(
            name=spec.name,
            nodes=tuple(scenario.nodes),
            services=services,
            trace_path=scenario.resolve(trace),
            perf_path=scenario.resolve(settings.perf_path),
            settings=settings,
            policies=tuple(spec.policies),
            policy_params={k: dict(v) for k, v in spec.policy_params.items()},
            seeds=tuple(spec.seeds or [spec.seed]),
            duration_seconds=(spec.sim.horizon_hours or 1.0) * 3600.0,
        )


@dataclass
class Replica:
    service: str
    index: int
    node: str
    devices: tuple[int, ...]
    since_seconds: float
    serving: bool = True
    backlog_requests: float = 0.0
    moving: bool = False


@dataclass
class MoveInFlight:
    replica: Replica
    target: str
    cold_start_seconds: float
    transfer_seconds: float
    target_devices: tuple[int, ...] = ()
    started_at: float | None = None
    queued_at: float = 0.0


@dataclass
class ModeResult:
    mode: str
    slo_attainment: float
    p99_latency_seconds: float
    mean_latency_seconds: float
    migrations: int
    refused_migrations: int
    requests: float
    decisions: int
    mean_decision_seconds: float
    per_service_slo: dict[str, float] = field(default_factory=dict)


class _SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class ServingSimulation:
    """One run of one mode of an experiment."""

    def __init__(
        self,
        experiment: Experiment,
        series: Mapping[str, Sequence[float]],
        capacities: Mapping[str, Capacity],
        mode: str,
        *,
        seed: int = 0,
        cost_model: MigrationCostModel | None = None,
    ) -> None:
        self.exp = experiment
        self.st = experiment.settings
        self.series = series
        self.capacities = capacities
        self.mode = mode
        self.cost_model = cost_model or MigrationCostModel()
        self.clock = _SimClock()
        self.load_source = SeriesLoadSource(series, self.st.step_seconds, self.clock.now, self.st.window_seconds)
        self.nodes = list(experiment.nodes)
        self.node_by_name = {n.name: n for n in self.nodes}
        self.workloads = self._workloads()
        self.ledger = CapacityLedger.empty(self.nodes)
        self.replicas: dict[tuple[str, int], Replica] = {}
        self._place_initial()
        self.engine: Engine | None = None
        if mode != "off":
            self.engine = Engine(
                load_policy(mode, **experiment.policy_params.get(mode, {})),
                self.clock,
                seed=seed,
                deterministic=True,
                time_budget_seconds=self.st.time_limit_seconds,
            )
        self.queue: list[MoveInFlight] = []
        self.migrations = 0
        self.refused = 0
        self.decisions = 0
        self.decision_seconds: list[float] = []
        # (latency seconds, requests) samples and per-service SLO counters
        self.samples: list[tuple[float, float]] = []
        self.met: dict[str, float] = dict.fromkeys(series, 0.0)
        self.offered: dict[str, float] = dict.fromkeys(series, 0.0)

    # ---- set-up -------------------------------------------------------------------------
    def _workloads(self) -> dict[str, Workload]:
        options = tuple(AcceleratorOption(t, self.capacities[t].requests_per_second) for t in sorted(self.capacities))
        attrs = {**self.st.attributes, ATTR_MAX_UNAVAILABLE: str(self.st.max_unavailable)}
        return {
            svc.name: Workload(
                key=svc.name,
                kind=WorkloadKind.INFERENCE,
                demand=ReplicaDemand(accelerators=svc.accelerators),
                min_replicas=svc.replicas,
                max_replicas=svc.replicas,
                options=options,
                allow_mixed_types=True,
                tensor_parallel=self.st.tensor_parallel,
                attributes=attrs,
            )
            for svc in self.exp.services
        }

    def _place_initial(self) -> None:
        """Services in scenario order, each replica on the fastest type with room, packed."""
        by_speed = sorted(self.nodes, key=lambda n: (-self.capacities[n.accelerator_type or ""].requests_per_second, n.name))
        for name, workload in self.workloads.items():
            for index in range(workload.max_replicas):
                for node in by_speed:
                    if self.ledger.fits(node.name, workload.demand):
                        devices = self.ledger.take(node.name, workload.demand)
                        self.replicas[name, index] = Replica(name, index, node.name, devices, 0.0)
                        break
                else:
                    raise ScenarioError(f"{self.exp.name}: no room for {name} replica {index}")

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> ModeResult:
        steps = min(len(v) for v in self.series.values())
        period_steps = max(1, round(self.st.period_seconds / self.st.step_seconds))
        for step in range(steps):
            self.clock.t = step * self.st.step_seconds
            self._advance_moves()
            if self.engine is not None and step > 0 and step % period_steps == 0:
                self._decide()
            self._serve(step)
        return self._result()

    def _snapshot(self) -> ClusterSnapshot:
        allocations = []
        for name, workload in self.workloads.items():
            placements = tuple(
                ReplicaPlacement(r.index, r.node, self.node_by_name[r.node].accelerator_type, r.devices, r.since_seconds)
                for (svc, _), r in sorted(self.replicas.items())
                if svc == name
            )
            allocations.append(Allocation(workload, placements))
        # targets reserved by moves in flight hold capacity the policy must not reuse
        for k, move in enumerate(self.queue):
            if move.started_at is not None:
                w = self.workloads[move.replica.service]
                holder = Workload(f"~reserved-{k}", WorkloadKind.POD, w.demand, preemptible=False)
                allocations.append(Allocation(holder, (ReplicaPlacement(0, move.target, None, move.target_devices),)))
        snapshot = ClusterSnapshot(self.nodes, allocations, now_seconds=self.clock.t)
        return with_load(snapshot, self.load_source.load())

    def _decide(self) -> None:
        assert self.engine is not None
        result = self.engine.decide(self._snapshot(), [])
        self.decisions += 1
        self.decision_seconds.append(result.decision_seconds)
        for migration in result.plan.migrations:
            self._enqueue(migration)
        self._advance_moves()

    def _enqueue(self, migration: Migration) -> None:
        replica = self.replicas[migration.workload, migration.replica]
        moving = sum(1 for m in self.queue if m.replica.service == replica.service)
        if replica.moving or moving >= max_unavailable(self.workloads[replica.service]):
            self.refused += 1
            return
        est = self.cost_model.estimate(
            self.workloads[replica.service],
            self.node_by_name[replica.node],
            self.node_by_name[migration.to.node],
            now_seconds=self.clock.t,
        )
        replica.moving = True
        replica.since_seconds = self.clock.t  # the cluster records the migration's start
        self.queue.append(
            MoveInFlight(replica, migration.to.node, est.cold_start_seconds, est.state_transfer_seconds, queued_at=self.clock.t)
        )

    def _advance_moves(self) -> None:
        now = self.clock.t
        done: list[MoveInFlight] = []
        for move in self.queue:
            workload = self.workloads[move.replica.service]
            if move.started_at is None:
                if self.ledger.fits(move.target, workload.demand):
                    move.target_devices = self.ledger.take(move.target, workload.demand)
                    move.started_at = now
                    self.migrations += 1
                elif now - move.queued_at > 4 * self.st.period_seconds:
                    move.replica.moving = False  # the room it waited for never came
                    self.refused += 1
                    done.append(move)
                continue
            ready = move.started_at + move.cold_start_seconds
            if now >= ready and move.replica.serving and now < ready + move.transfer_seconds:
                move.replica.serving = False  # cut-over: the KV cache is in transit
            if now >= ready + move.transfer_seconds:
                r = move.replica
                self.ledger.give_back(r.node, workload.demand, r.devices)
                r.node, r.devices = move.target, move.target_devices
                r.since_seconds, r.serving, r.moving = now, True, False
                done.append(move)
        for move in done:
            self.queue.remove(move)

    def _serve(self, step: int) -> None:
        dt = self.st.step_seconds
        for name in self.workloads:
            rate = self.series[name][step]
            serving = [r for (svc, _), r in self.replicas.items() if svc == name and r.serving]
            requests = rate * dt
            self.offered[name] += requests
            if not serving:
                self.samples.append((float("inf"), requests))
                continue
            per_replica = rate / len(serving)
            for r in serving:
                cap = self.capacities[self.node_by_name[r.node].accelerator_type or ""]
                mu = cap.requests_per_second
                busy = min(per_replica / mu, 1.0)
                latency = (
                    cap.unloaded_latency_seconds
                    + (cap.latency_seconds - cap.unloaded_latency_seconds) * busy
                    + 0.5 * cap.latency_seconds * busy
                    + r.backlog_requests / mu
                )
                n = per_replica * dt
                self.samples.append((latency, n))
                if latency <= self.st.slo_seconds:
                    self.met[name] += n
                backlog = max(0.0, r.backlog_requests + (per_replica - mu) * dt)
                # a queue longer than the timeout sheds its oldest requests (they count as misses)
                r.backlog_requests = min(backlog, mu * self.st.request_timeout_seconds)

    def _result(self) -> ModeResult:
        total = sum(n for _, n in self.samples)
        met = sum(self.met.values())
        finite = [(lat, n) for lat, n in self.samples if lat != float("inf")]
        mean = sum(lat * n for lat, n in finite) / max(1e-12, sum(n for _, n in finite))
        return ModeResult(
            mode=self.mode,
            slo_attainment=met / total if total else 1.0,
            p99_latency_seconds=weighted_percentile(self.samples, 0.99),
            mean_latency_seconds=mean,
            migrations=self.migrations,
            refused_migrations=self.refused,
            requests=total,
            decisions=self.decisions,
            mean_decision_seconds=statistics.mean(self.decision_seconds) if self.decision_seconds else 0.0,
            per_service_slo={k: self.met[k] / v if v else 1.0 for k, v in self.offered.items()},
        )


def weighted_percentile(samples: Sequence[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of values weighted by counts (inf when it falls on dropped requests)."""
    total = sum(n for _, n in samples)
    if total <= 0:
        return 0.0
    acc = 0.0
    ordered = sorted(samples)
    for value, n in ordered:
        acc += n
        if acc >= q * total:
            return value
    return ordered[-1][0]


def capacities_for(experiment: Experiment, prompt: int, tokens: int) -> dict[str, Capacity]:
    """Per-type replica capacity from the SplitwiseSim perf model; checks the scenario's stated figures."""
    st = experiment.settings
    perf = PerfModel(splitwise.load(experiment.perf_path))
    types = sorted({n.accelerator_type for n in experiment.nodes if n.accelerator_type})
    missing = [t for t in types if t not in st.hardware]
    if missing:
        raise ScenarioError(f"{experiment.name}: rebalance.hardware has no SplitwiseSim name for {', '.join(missing)}")
    out = {
        t: perf.capacity(
            st.model, st.hardware[t], st.tensor_parallel, prompt=prompt, tokens=tokens, max_latency_seconds=st.capacity_latency_seconds
        )
        for t in types
    }
    for svc in experiment.services:
        for t, stated in svc.throughput.items():
            derived = out[t].requests_per_second if t in out else None
            if derived is None or abs(stated - derived) > 0.01 * derived:
                raise ScenarioError(
                    f"{experiment.name}: {svc.name} states {stated} req/s on {t}, the SplitwiseSim model gives "
                    f"{derived if derived is None else round(derived, 3)} (update the scenario)"
                )
    return out


def build(experiment: Experiment, seed: int) -> tuple[dict[str, list[float]], dict[str, Capacity]]:
    """Per-service load series (skewed, seeded offsets) and per-type replica capacity."""
    st = experiment.settings
    trace = azure_llm.load(experiment.trace_path)
    if not trace:
        raise ScenarioError(f"{experiment.trace_path}: no requests")
    prompt = round(statistics.mean(r.context_tokens for r in trace))
    tokens = round(statistics.mean(r.generated_tokens for r in trace))
    series = skewed_service_rates(
        [r.arrival_seconds for r in trace],
        [svc.name for svc in experiment.services],
        bin_seconds=st.step_seconds,
        duration_seconds=experiment.duration_seconds,
        total_requests_per_second=st.total_requests_per_second,
        hot_share=st.hot_share,
        phase_seconds=st.phase_seconds,
        seed=seed,
    )
    return series, capacities_for(experiment, prompt, tokens)


def run_experiment(
    experiment: Experiment, modes: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> dict[str, Any]:
    """Run every mode over every seed; a JSON-ready report (means over seeds, and each seed)."""
    chosen = list(modes or experiment.modes)
    per_seed: dict[str, list[ModeResult]] = {m: [] for m in chosen}
    capacities: dict[str, Capacity] = {}
    for seed in seeds or experiment.seeds:
        series, capacities = build(experiment, seed)
        for mode in chosen:
            per_seed[mode].append(ServingSimulation(experiment, series, capacities, mode, seed=seed).run())
    report: dict[str, Any] = {
        "scenario": experiment.name,
        "seeds": list(seeds or experiment.seeds),
        "capacity_requests_per_second": {t: round(c.requests_per_second, 4) for t, c in capacities.items()},
        "modes": {},
    }
    for mode, results in per_seed.items():
        # report keys "off", "cost-blind", "cost-aware" for the built-in rebalancers
        report["modes"][mode.removeprefix("rebalance-")] = {
            "policy": None if mode == "off" else mode,
            "slo_attainment": statistics.mean(r.slo_attainment for r in results),
            "p99_latency_seconds": statistics.mean(r.p99_latency_seconds for r in results),
            "mean_latency_seconds": statistics.mean(r.mean_latency_seconds for r in results),
            "migrations": statistics.mean(r.migrations for r in results),
            "refused_migrations": statistics.mean(r.refused_migrations for r in results),
            "mean_decision_seconds": statistics.mean(r.mean_decision_seconds for r in results),
            "per_seed": [
                {
                    "slo_attainment": r.slo_attainment,
                    "p99_latency_seconds": r.p99_latency_seconds,
                    "migrations": r.migrations,
                    "refused_migrations": r.refused_migrations,
                    "per_service_slo": r.per_service_slo,
                }
                for r in results
            ],
        }
    return _finite(report)


def _finite(value: Any) -> Any:
    """JSON has no infinity: a latency of dropped requests is written as null."""
    if isinstance(value, float) and value == float("inf"):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run_cli(scenario: SimScenario, args: argparse.Namespace) -> int:
    """``tessera sim run --scenario X`` for a scenario with a ``rebalance`` section."""
    experiment = Experiment.from_scenario(scenario)
    modes = None
    if getattr(args, "policy", None):
        modes = ["off", *[p.strip() for p in args.policy.split(",") if p.strip() and p.strip() != "off"]]
    report = run_experiment(experiment, modes, getattr(args, "seed", None))
    rows = [
        f"{mode:<22} slo {r['slo_attainment']:.3f}  p99 {r['p99_latency_seconds'] or float('inf'):7.1f}s  "
        f"migrations {r['migrations']:6.1f}"
        for mode, r in report["modes"].items()
    ]
    print("\n".join(rows))
    if getattr(args, "json_path", None):
        Path(args.json_path).write_text(json.dumps(report, indent=1) + "\n")
    return 0
