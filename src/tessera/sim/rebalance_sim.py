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

Run: ``python -m tessera.sim.rebalance_sim sim/scenarios/skewed-inference.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    Topology,
    Workload,
    WorkloadKind,
)
from tessera.core.migration import ATTR_MAX_UNAVAILABLE, max_unavailable
from tessera.engine import Engine, with_load
from tessera.policy import load_policy
from tessera.sim.inference_load import (
    Capacity,
    PerfModel,
    SeriesLoadSource,
    read_azure_trace,
    read_perf_model,
    skewed_service_rates,
)


@dataclass(frozen=True, slots=True)
class NodeGroup:
    accelerator_type: str
    hardware: str
    nodes: int
    gpus: int
    zone: str = "z1"
    domain: str = ""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    duration_seconds: float
    step_seconds: float
    period_seconds: float
    slo_seconds: float
    capacity_latency_seconds: float
    cluster: tuple[NodeGroup, ...]
    services: int
    replicas: int
    model: str
    tensor_parallel: int
    max_unavailable: int
    attributes: Mapping[str, str]
    trace: Path
    perf: Path
    total_requests_per_second: float
    hot_share: float
    phase_seconds: float
    window_seconds: float
    modes: Mapping[str, Mapping[str, Any]]
    seed: int = 0
    time_limit_seconds: float = 2.0
    #: clients give up after this long; their requests leave the queue as SLO misses
    request_timeout_seconds: float = 60.0

    @classmethod
    def from_yaml(cls, path: str | Path, data_dir: str | Path | None = None) -> Scenario:
        """Read a scenario; trace paths are relative to ``data_dir`` ($TESSERA_DATA)."""
        raw = yaml.safe_load(Path(path).read_text())
        if raw.get("kind") != "rebalance-inference":
            raise ValueError(f"{path}: kind must be 'rebalance-inference' (got {raw.get('kind')!r})")
        data = Path(data_dir or os.environ.get("TESSERA_DATA", "../shared/data"))
        svc, load = raw["services"], raw["load"]
        return cls(
            name=raw["name"],
            duration_seconds=float(raw["duration_seconds"]),
            step_seconds=float(raw["step_seconds"]),
            period_seconds=float(raw["period_seconds"]),
            slo_seconds=float(raw["slo_seconds"]),
            capacity_latency_seconds=float(raw["capacity_latency_seconds"]),
            cluster=tuple(
                NodeGroup(g["type"], g["hardware"], int(g["nodes"]), int(g["gpus"]), g.get("zone", "z1"), g.get("domain", ""))
                for g in raw["cluster"]
            ),
            services=int(svc["count"]),
            replicas=int(svc["replicas"]),
            model=svc["model"],
            tensor_parallel=int(svc["tensor_parallel"]),
            max_unavailable=int(svc.get("max_unavailable", 1)),
            attributes={str(k): str(v) for k, v in (svc.get("attributes") or {}).items()},
            trace=data / load["trace"],
            perf=data / load["perf"],
            total_requests_per_second=float(load["total_requests_per_second"]),
            hot_share=float(load["hot_share"]),
            phase_seconds=float(load["phase_seconds"]),
            window_seconds=float(load.get("window_seconds", 60)),
            modes={name: dict(spec or {}) for name, spec in raw["modes"].items()},
            seed=int(raw.get("seed", 0)),
            time_limit_seconds=float(raw.get("time_limit_seconds", 2.0)),
            request_timeout_seconds=float(raw.get("request_timeout_seconds", 60.0)),
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
    """One run of one mode over a scenario."""

    def __init__(
        self,
        scenario: Scenario,
        series: Mapping[str, Sequence[float]],
        capacities: Mapping[str, Capacity],
        mode: str,
        cost_model: MigrationCostModel | None = None,
    ) -> None:
        self.sc = scenario
        self.series = series
        self.capacities = capacities
        self.mode = mode
        self.cost_model = cost_model or MigrationCostModel()
        self.clock = _SimClock()
        self.load_source = SeriesLoadSource(series, scenario.step_seconds, self.clock.now, scenario.window_seconds)
        self.nodes = self._nodes()
        self.node_by_name = {n.name: n for n in self.nodes}
        self.workloads = self._workloads()
        self.ledger = CapacityLedger.empty(self.nodes)
        self.replicas: dict[tuple[str, int], Replica] = {}
        self._place_initial()
        spec = scenario.modes[mode]
        self.engine: Engine | None = None
        if spec.get("policy"):
            self.engine = Engine(
                load_policy(spec["policy"]),
                self.clock,
                seed=scenario.seed,
                deterministic=True,
                time_budget_seconds=scenario.time_limit_seconds,
                params=dict(spec.get("params") or {}),
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
    def _nodes(self) -> list[Node]:
        out = []
        for g in self.sc.cluster:
            for i in range(g.nodes):
                out.append(
                    Node(
                        f"{g.accelerator_type.lower()}-{i:02d}",
                        g.accelerator_type,
                        g.gpus,
                        topology=Topology(zone=g.zone, domain=g.domain),
                    )
                )
        return out

    def _workloads(self) -> dict[str, Workload]:
        options = tuple(
            AcceleratorOption(t, self.capacities[t].requests_per_second) for t in sorted(self.capacities)
        )
        attrs = {**self.sc.attributes, ATTR_MAX_UNAVAILABLE: str(self.sc.max_unavailable)}
        return {
            name: Workload(
                key=name,
                kind=WorkloadKind.INFERENCE,
                demand=ReplicaDemand(accelerators=self.sc.tensor_parallel),
                min_replicas=self.sc.replicas,
                max_replicas=self.sc.replicas,
                options=options,
                allow_mixed_types=True,
                tensor_parallel=self.sc.tensor_parallel,
                attributes=attrs,
            )
            for name in self.series
        }

    def _place_initial(self) -> None:
        """Services in name order, each replica on the fastest type with room, packed."""
        by_speed = sorted(self.nodes, key=lambda n: (-self.capacities[n.accelerator_type or ""].requests_per_second, n.name))
        for name, workload in self.workloads.items():
            for index in range(workload.max_replicas):
                for node in by_speed:
                    if self.ledger.fits(node.name, workload.demand):
                        devices = self.ledger.take(node.name, workload.demand)
                        self.replicas[name, index] = Replica(name, index, node.name, devices, 0.0)
                        break
                else:
                    raise ValueError(f"scenario {self.sc.name}: no room for {name} replica {index}")

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> ModeResult:
        steps = int(self.sc.duration_seconds // self.sc.step_seconds)
        period_steps = max(1, round(self.sc.period_seconds / self.sc.step_seconds))
        for step in range(steps):
            self.clock.t = step * self.sc.step_seconds
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
                allocations.append(
                    Allocation(holder, (ReplicaPlacement(0, move.target, None, move.target_devices),))
                )
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
                elif now - move.queued_at > 4 * self.sc.period_seconds:
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
        dt = self.sc.step_seconds
        for name in self.workloads:
            rate = self.series[name][step] if step < len(self.series[name]) else 0.0
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
                rho = per_replica / mu
                busy = min(rho, 1.0)
                latency = (
                    cap.unloaded_latency_seconds
                    + (cap.latency_seconds - cap.unloaded_latency_seconds) * busy
                    + 0.5 * cap.latency_seconds * busy
                    + r.backlog_requests / mu
                )
                n = per_replica * dt
                self.samples.append((latency, n))
                if latency <= self.sc.slo_seconds:
                    self.met[name] += n
                backlog = max(0.0, r.backlog_requests + (per_replica - mu) * dt)
                # a queue longer than the timeout sheds its oldest requests (they count as misses)
                r.backlog_requests = min(backlog, mu * self.sc.request_timeout_seconds)

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
    for value, n in sorted(samples):
        acc += n
        if acc >= q * total:
            return value
    return sorted(samples)[-1][0]


def build(scenario: Scenario) -> tuple[dict[str, list[float]], dict[str, Capacity]]:
    """Per-service load series and per-type replica capacity for ``scenario``."""
    trace = read_azure_trace(scenario.trace)
    perf = PerfModel(read_perf_model(scenario.perf))
    prompt = round(statistics.mean(r.context_tokens for r in trace))
    tokens = round(statistics.mean(r.generated_tokens for r in trace))
    capacities = {
        g.accelerator_type: perf.capacity(
            scenario.model,
            g.hardware,
            scenario.tensor_parallel,
            prompt=prompt,
            tokens=tokens,
            max_latency_seconds=scenario.capacity_latency_seconds,
        )
        for g in scenario.cluster
    }
    names = [f"svc-{i}" for i in range(scenario.services)]
    series = skewed_service_rates(
        [r.arrival_seconds for r in trace],
        names,
        bin_seconds=scenario.step_seconds,
        duration_seconds=scenario.duration_seconds,
        total_requests_per_second=scenario.total_requests_per_second,
        hot_share=scenario.hot_share,
        phase_seconds=scenario.phase_seconds,
        seed=scenario.seed,
    )
    return series, capacities


def run_scenario(scenario: Scenario, modes: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every mode (or ``modes``) of ``scenario``; a JSON-ready report."""
    series, capacities = build(scenario)
    results = {}
    for mode in modes or list(scenario.modes):
        results[mode] = ServingSimulation(scenario, series, capacities, mode).run()
    return {
        "scenario": scenario.name,
        "capacity_requests_per_second": {t: round(c.requests_per_second, 4) for t, c in capacities.items()},
        "modes": {
            name: {
                "slo_attainment": r.slo_attainment,
                "p99_latency_seconds": r.p99_latency_seconds,
                "mean_latency_seconds": r.mean_latency_seconds,
                "migrations": r.migrations,
                "refused_migrations": r.refused_migrations,
                "decisions": r.decisions,
                "mean_decision_seconds": r.mean_decision_seconds,
                "per_service_slo": r.per_service_slo,
            }
            for name, r in results.items()
        },
    }


def _finite(value: Any) -> Any:
    """JSON has no infinity: a latency of dropped requests is written as null."""
    if isinstance(value, float) and value == float("inf"):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.sim.rebalance_sim", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--modes", nargs="*", help="modes to run (default: all in the scenario)")
    parser.add_argument("--data", type=Path, default=None, help="public traces folder (default $TESSERA_DATA)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here (default stdout)")
    args = parser.parse_args(argv)
    report = run_scenario(Scenario.from_yaml(args.scenario, args.data), args.modes)
    text = json.dumps(_finite(report), indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
