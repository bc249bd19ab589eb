"""Scenario files: a cluster, a workload, optional failures and load, and the policies to compare.

The YAML schema is validated with pydantic, so a typo names the field.  Paths may use
``$TESSERA_DATA`` (the public traces folder) and are otherwise relative to the scenario
file.  See ``sim/README.md`` for the format with examples.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera.core import Node, Spread, Topology
from tessera.core.elastic import DP_STATE_ATTRIBUTE
from tessera.core.quota import QuotaTree
from tessera.policies.elastic import ElasticSettings
from tessera.sim import generators
from tessera.sim.loaders import azure_llm, gavel, philly, sia, splitwise
from tessera.sim.models import LoadSeries, NodeEvent, SimWorkload
from tessera.sim.simulator import FailureProcess, SimConfig
from tessera.sim.tenancy import QueueSpec, TenantsSpec, assign, quota_tree


class ScenarioError(ValueError):
    """A scenario file is invalid or names data that is not there."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeGroup(_Strict):
    """``count`` identical nodes named ``<prefix>-<i>``."""

    type: str | None = Field(description="accelerator type, e.g. H100 or Ascend910B; null for CPU-only")
    count: int = Field(ge=1)
    accelerators: int = Field(default=8, ge=0, description="accelerators per node")
    prefix: str | None = None
    zone: str = ""
    domain: str = ""
    cpu_milli: int = Field(default=96_000, ge=0)
    memory_mib: int = Field(default=1_024_000, ge=0)


class ClusterSpec(_Strict):
    nodes: list[NodeGroup] | None = None
    #: CSV with columns name, accelerator_type, accelerator_count[, zone, domain]
    node_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ClusterSpec:
        if (self.nodes is None) == (self.node_file is None):
            raise ValueError("give exactly one of 'nodes' (inline groups) or 'node_file'")
        return self


class GavelGenerator(_Strict):
    generator: Literal["gavel"]
    throughputs: str = "$TESSERA_DATA/gavel/simulation_throughputs.json"
    jobs: int = Field(ge=1)
    jobs_per_hour: float = Field(gt=0)
    multi_gpu: bool = True
    restart_cost_seconds: float = Field(default=30.0, ge=0)
    #: only jobs with index in [start, end) count in JCT figures (Gavel measures a steady-state window)
    measure_window: tuple[int, int] | None = None


class PhillyGenerator(_Strict):
    generator: Literal["philly"]
    jobs: int = Field(ge=1)
    jobs_per_hour: float = Field(gt=0)
    median_duration_seconds: float = Field(default=1200.0, gt=0)
    sigma: float = Field(default=2.2, ge=0)
    restart_cost_seconds: float = Field(default=60.0, ge=0)
    measure_window: tuple[int, int] | None = None


class SyntheticGenerator(_Strict):
    generator: Literal["synthetic"]
    jobs: int = Field(ge=1)
    jobs_per_hour: float = Field(gt=0)
    #: model name -> accelerator type -> per-replica throughput
    models: dict[str, dict[str, float]]
    median_duration_seconds: float = Field(default=3600.0, gt=0)
    sigma: float = Field(default=1.0, ge=0)
    serial_fraction: float = Field(default=0.05, ge=0, le=1)
    restart_cost_seconds: float = Field(default=60.0, ge=0)
    elastic: bool = False
    measure_window: tuple[int, int] | None = None
    #: [[replicas, weight], ...] (default: Philly's GPU-count mix with one accelerator per replica)
    replica_mix: list[tuple[int, float]] | None = None
    accelerators_per_replica: int = Field(default=1, ge=1)
    #: elastic jobs accept ceil(fraction x replicas)..replicas (0: down to one replica)
    min_replica_fraction: float = Field(default=0.0, ge=0, le=1)
    #: sharding facts the elastic policy keeps exact (None: any replica count works)
    global_batch_size: int | None = Field(default=None, ge=1)
    micro_batch_size: int | None = Field(default=None, ge=1)
    tensor_parallel: int = Field(default=1, ge=1)
    #: ``replicated``: every data-parallel replica holds the whole model + optimizer state (a
    #: failure-driven reshard may keep it in memory); ``sharded``: ZeRO/FSDP/distributed optimizer
    #: across DP, so a lost replica takes state only the checkpoint has (always reloads)
    dp_state: Literal["replicated", "sharded"] = "replicated"


class TraceWorkload(_Strict):
    """A trace file in a supported format."""

    trace: Literal["gavel", "philly", "sia"]
    path: str
    #: gavel: the throughput JSON; philly: with it, every job gets a Gavel job type drawn
    #: per seed and runs at that type's measured speed on each accelerator type (the trace's
    #: duration is its time on V100), instead of equally fast everywhere
    throughputs: str | None = None
    #: sia: the folder of per-application profiles
    profiles: str | None = None
    #: philly: accelerator types jobs may use (empty: any)
    accelerator_types: list[str] = []
    #: keep only the first N jobs (0 = all)
    limit: int = Field(default=0, ge=0)
    restart_cost_seconds: float = Field(default=60.0, ge=0)
    measure_window: tuple[int, int] | None = None
    #: sia: jobs adaptive in replica count (1 to adaptive_max_factor x the trace's
    #: num_replicas, as Sia schedules them) instead of rigid at num_replicas (as
    #: non-adaptive schedulers run them)
    adaptive: bool = False
    adaptive_max_factor: float = Field(default=2.0, ge=1)
    #: philly: which queue each job goes to, by its ``cluster`` (virtual cluster) column
    tenants: TenantsSpec | None = None


TrainingSpec = Annotated[
    GavelGenerator | PhillyGenerator | SyntheticGenerator | TraceWorkload, Field(union_mode="left_to_right")
]


class LoadSpec(_Strict):
    kind: Literal["constant", "diurnal", "steps", "azure"]
    rate: float | None = Field(default=None, ge=0, description="constant: requests/s")
    base: float | None = Field(default=None, ge=0, description="diurnal: trough requests/s")
    peak: float | None = Field(default=None, ge=0, description="diurnal: crest requests/s")
    period_hours: float = Field(default=24.0, gt=0)
    step_minutes: float = Field(default=10.0, gt=0)
    phase_hours: float = 0.0
    #: steps: [[time_seconds, requests/s], ...]
    points: list[tuple[float, float]] | None = None
    #: azure: the Azure LLM inference CSV, binned, scaled and repeated to the horizon
    path: str | None = None
    bin_seconds: float = Field(default=60.0, gt=0)
    scale: float = Field(default=1.0, gt=0)


class SplitwiseSpec(_Strict):
    """Per-replica requests/s from SplitwiseSim's measured perf model, per hardware type."""

    path: str = "$TESSERA_DATA/llm-inference/splitwise/data/perf_model.csv"
    model: str = "llama2-70b"
    prompt_size: int = Field(default=1024, ge=1)
    token_size: int = Field(default=128, ge=1)
    tensor_parallel: int | None = None
    #: SplitwiseSim hardware names to use (default: every one measured for the model)
    hardware: list[str] = []


class ServiceSpec(_Strict):
    name: str
    #: accelerator type -> requests/s one replica sustains (or give ``splitwise``)
    throughput: dict[str, float] = {}
    splitwise: SplitwiseSpec | None = None
    load: LoadSpec

    @model_validator(mode="after")
    def _one_capacity_source(self) -> ServiceSpec:
        if bool(self.throughput) == (self.splitwise is not None):
            raise ValueError("give exactly one of 'throughput' (per type) or 'splitwise' (measured perf model)")
        return self

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    desired_replicas: int | None = None
    accelerators: int = Field(default=1, ge=1)
    arrival_seconds: float = Field(default=0.0, ge=0)
    priority: int = 10
    spread: Literal["none", "node", "zone"] = "node"
    cold_start_seconds: float = Field(default=120.0, ge=0)


class WorkloadSpec(_Strict):
    training: TrainingSpec | None = None
    inference: list[ServiceSpec] = []


class FailureEventSpec(_Strict):
    time_seconds: float = Field(ge=0)
    node: str
    up: bool = False


class FailureClassSpec(_Strict):
    """Seeded per-node failures: nodes named ``<node_prefix>...`` fail with this MTBF/MTTR."""

    mtbf_hours: float = Field(gt=0)
    mttr_hours: float = Field(gt=0)
    node_prefix: str = ""


class AvailabilitySpec(_Strict):
    """Node availability from the Helios artifact's Philly node sequence (see tessera.sim.loaders.helios)."""

    source: Literal["helios-philly"] = "helios-philly"
    path: str = "$TESSERA_DATA/helios-artifact/framework/CES Service/data/philly_node_sequence.csv"
    signal: Literal["idle", "total"] = "idle"
    resample_minutes: float = Field(default=30.0, gt=0)
    start_hours: float = Field(default=0.0, ge=0)
    #: default: the simulation horizon
    duration_hours: float | None = Field(default=None, gt=0)
    scale_to_peak: bool = True
    #: only these nodes follow the series (empty = all)
    node_prefixes: list[str] = []


class ElasticSettingsSpec(_Strict):
    """The elastic wrapper's tunables (defaults: those of ``ElasticSettings``)."""

    hysteresis_seconds: float = Field(default=300.0, ge=0)
    min_gain_seconds: float = Field(default=0.0, ge=0)
    assumed_remaining_seconds: float = Field(default=3600.0, ge=0)
    grow_before_placement: bool = False
    #: how a reshard recovers the job's state (the simulator's cost model, not a policy setting):
    #: ``checkpoint``: roll back to the last checkpoint and pay the restart cost (safe for any
    #: job); ``in_memory``: survivors keep their state (every data-parallel replica holds the
    #: whole model + optimizer, i.e. no ZeRO/FSDP across DP; jobs declaring
    #: ``dp_state: sharded`` fall back to checkpoint) and a reshard pauses the job for
    #: ``reshard_pause_seconds``; new replicas receive the state from a survivor
    rollback: Literal["checkpoint", "in_memory"] = "checkpoint"
    reshard_pause_seconds: float = Field(default=60.0, ge=0)


#: ``failures.elastic`` keys that configure the simulator's reshard cost, not the policy wrapper
_RESHARD_MODEL_KEYS = {"rollback", "reshard_pause_seconds"}


class FailureSpec(_Strict):
    mtbf_hours: float | None = Field(default=None, gt=0)
    mttr_hours: float | None = Field(default=None, gt=0)
    node_prefixes: list[str] = []
    events: list[FailureEventSpec] = []
    #: how workloads react to losing replicas ("restart" is built in; extensions add more)
    mode: str = "restart"
    #: compare several modes in one run (one record per mode and policy); overrides ``mode``
    modes: list[str] | None = None
    #: restart/none run training jobs at fixed size (min = max), as jobs without elastic support
    rigid_baselines: bool = False
    #: per-node MTBF/MTTR failures drawn before the run from the run's seed (same for every mode)
    classes: list[FailureClassSpec] = []
    availability: AvailabilitySpec | None = None
    #: settings of the elastic mode's policy wrapper (``tessera.policies.elastic.ElasticSettings``)
    elastic: ElasticSettingsSpec = ElasticSettingsSpec()

    @model_validator(mode="after")
    def _both_or_neither(self) -> FailureSpec:
        if (self.mtbf_hours is None) != (self.mttr_hours is None):
            raise ValueError("give both mtbf_hours and mttr_hours for a failure process")
        return self


class SimSpec(_Strict):
    horizon_hours: float | None = Field(default=None, gt=0)
    round_seconds: float | None = Field(default=None, ge=0)
    schedule_interval_seconds: float = Field(default=0.0, ge=0)
    max_pending: int = Field(default=1000, ge=1)
    checkpoint_interval_seconds: float = Field(default=1800.0, ge=0)
    cycle_when_idle: bool = False
    #: tell policies each running job's time left (attribute tessera.dev/remaining-seconds)
    expose_remaining_seconds: bool = False


class ScenarioSpec(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    seeds: list[int] | None = None
    policies: list[str] = ["fifo", "gavel", "best-fit"]
    #: constructor parameters per policy name
    policy_params: dict[str, dict[str, Any]] = {}
    cluster: ClusterSpec
    workload: WorkloadSpec
    #: tenants' queues, with the operator's quota rules (tessera.sim.tenancy, docs/queues.md)
    queues: list[QueueSpec] = []
    failures: FailureSpec | None = None
    sim: SimSpec = SimSpec()
    #: a rebalancing experiment (skewed inference load, migrations in simulated time): run
    #: by tessera.sim.rebalance_sim, which validates this section itself
    rebalance: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _needs_an_end(self) -> ScenarioSpec:
        if self.workload.training is None and not self.workload.inference:
            raise ValueError("workload: give 'training', 'inference' or both")
        if self.workload.training is None and self.sim.horizon_hours is None:
            raise ValueError("sim.horizon_hours is required when there are only inference services")
        return self


@dataclass
class Scenario:
    """A loaded scenario: everything a run needs."""

    spec: ScenarioSpec
    path: Path | None
    nodes: list[Node]
    node_events: list[NodeEvent] = field(default_factory=list)
    failure_process: FailureProcess | None = None
    #: what loading the workload had to count, derive or leave out (printed by ``tessera sim run``)
    notes: list[str] = field(default_factory=list)

    def node_events_for(self, seed: int) -> list[NodeEvent]:
        """Scripted events plus the seeded failure classes and the availability series."""
        from tessera.sim import failures
        from tessera.sim.loaders import helios

        spec = self.spec.failures
        if spec is None:
            return list(self.node_events)
        names = [n.name for n in self.nodes]
        transitions: list[failures.NodeTransition] = []
        horizon = (self.spec.sim.horizon_hours or 0.0) * 3600.0
        if spec.classes:
            if not horizon:
                raise ScenarioError("failures.classes needs sim.horizon_hours (failures are drawn up to it)")
            classes = [failures.FailureClass(c.mtbf_hours * 3600.0, c.mttr_hours * 3600.0, c.node_prefix) for c in spec.classes]
            transitions += failures.mtbf_mttr_transitions(names, classes, horizon, seed)
        if spec.availability is not None:
            a = spec.availability
            chosen = [n for n in names if not a.node_prefixes or n.startswith(tuple(a.node_prefixes))]
            duration = a.duration_hours * 3600.0 if a.duration_hours else (horizon or None)
            try:
                points = helios.load_philly_node_sequence(self.resolve(a.path))
                series = helios.availability_series(
                    points, len(chosen), signal=a.signal, resample_seconds=a.resample_minutes * 60.0,
                    start_seconds=a.start_hours * 3600.0, duration_seconds=duration, scale_to_peak=a.scale_to_peak,
                )
            except ValueError as err:
                raise ScenarioError(f"failures.availability: {err}") from err
            transitions += failures.availability_transitions(series, chosen, seed)
        events = list(self.node_events) + [NodeEvent(t.time_seconds, t.node, t.up) for t in transitions]
        return sorted(events, key=lambda e: (e.time_seconds, e.node, e.up))

    @property
    def failure_modes(self) -> list[str]:
        spec = self.spec.failures
        if spec is None:
            return ["restart"]
        return list(spec.modes) if spec.modes else [spec.mode]

    @property
    def elastic_settings(self) -> ElasticSettings:
        """The elastic mode's wrapper settings (``failures.elastic``; defaults without it)."""
        spec = self.spec.failures.elastic if self.spec.failures is not None else ElasticSettingsSpec()
        return ElasticSettings(**spec.model_dump(exclude=_RESHARD_MODEL_KEYS))

    @property
    def elastic_rollback(self) -> str:
        """``checkpoint`` or ``in_memory``: how the elastic mode's reshards recover state."""
        return self.spec.failures.elastic.rollback if self.spec.failures is not None else "checkpoint"

    @property
    def reshard_pause_seconds(self) -> float | None:
        """The in-memory reshard pause, or None when elastic jobs reshard through their checkpoint."""
        if self.spec.failures is None or self.spec.failures.elastic.rollback != "in_memory":
            return None
        return self.spec.failures.elastic.reshard_pause_seconds

    def config(self, seed: int) -> SimConfig:
        s = self.spec.sim
        return SimConfig(
            seed=seed,
            horizon_seconds=s.horizon_hours * 3600.0 if s.horizon_hours else None,
            round_seconds=s.round_seconds,
            schedule_interval_seconds=s.schedule_interval_seconds,
            max_pending=s.max_pending,
            checkpoint_interval_seconds=s.checkpoint_interval_seconds,
            cycle_when_idle=s.cycle_when_idle,
            expose_remaining_seconds=s.expose_remaining_seconds,
            quotas=self.quotas,
        )

    @property
    def quotas(self) -> QuotaTree | None:
        """The scenario's queues as the operator's quota tree (None without queues)."""
        try:
            return quota_tree(self.spec.queues)
        except ValueError as err:
            raise ScenarioError(str(err)) from err

    def workloads(self, seed: int) -> tuple[list[SimWorkload], frozenset[str] | None]:
        """The workload for ``seed`` and the keys inside the measurement window (None: all)."""
        return _workloads(self, seed)

    def resolve(self, raw: str) -> Path:
        return resolve_path(raw, self.path.parent if self.path else Path.cwd())


def data_dir() -> Path:
    return Path(os.environ.get("TESSERA_DATA", Path(__file__).resolve().parents[3].parent / "shared" / "data"))


def resolve_path(raw: str, base: Path) -> Path:
    """Expand ``$TESSERA_DATA`` (default ../shared/data beside the project) and relative paths."""
    expanded = raw.replace("${TESSERA_DATA}", "$TESSERA_DATA").replace("$TESSERA_DATA", str(data_dir()))
    path = Path(os.path.expandvars(os.path.expanduser(expanded)))
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        hint = " (set TESSERA_DATA to the folder of the public traces)" if "TESSERA_DATA" in raw else ""
        raise ScenarioError(f"{raw}: {path} does not exist{hint}")
    return path


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raises :class:`ScenarioError` naming the bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ScenarioError(f"cannot read scenario {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ScenarioError(f"{path}: not valid YAML: {err}") from err
    return scenario_from_dict(raw, path)


def scenario_from_dict(raw: Any, path: Path | None = None) -> Scenario:
    where = str(path) if path else "scenario"
    try:
        spec = ScenarioSpec.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()
        )
        raise ScenarioError(f"{where}: {problems}") from None
    scenario = Scenario(spec, path, [])
    scenario.nodes = _nodes(scenario)
    names = {n.name for n in scenario.nodes}
    if spec.failures is not None:
        for event in spec.failures.events:
            if event.node not in names:
                raise ScenarioError(f"{where}: failures.events: node {event.node!r} is not in the cluster")
        scenario.node_events = [NodeEvent(e.time_seconds, e.node, e.up) for e in spec.failures.events]
        if spec.failures.mtbf_hours is not None and spec.failures.mttr_hours is not None:
            scenario.failure_process = FailureProcess(
                spec.failures.mtbf_hours * 3600.0, spec.failures.mttr_hours * 3600.0, tuple(spec.failures.node_prefixes)
            )
    return scenario


def _nodes(scenario: Scenario) -> list[Node]:
    spec = scenario.spec.cluster
    out: list[Node] = []
    if spec.nodes is not None:
        for group in spec.nodes:
            prefix = group.prefix or (group.type or "cpu").lower()
            for i in range(group.count):
                out.append(
                    Node(
                        name=f"{prefix}-{i}",
                        accelerator_type=group.type if group.accelerators else None,
                        accelerator_count=group.accelerators if group.type else 0,
                        cpu_milli=group.cpu_milli,
                        memory_mib=group.memory_mib,
                        topology=Topology(zone=group.zone, domain=group.domain),
                    )
                )
    else:
        assert spec.node_file is not None
        path = scenario.resolve(spec.node_file)
        from tessera.sim.loaders import _csv

        for line, row in _csv.rows(path, ("name", "accelerator_type", "accelerator_count")):
            count = _csv.integer(path, line, row, "accelerator_count")
            out.append(
                Node(
                    name=row["name"],
                    accelerator_type=row["accelerator_type"] or None if count else None,
                    accelerator_count=count,
                    topology=Topology(zone=row.get("zone", ""), domain=row.get("domain", "")),
                )
            )
    names = [n.name for n in out]
    if len(set(names)) != len(names):
        raise ScenarioError("cluster: node names repeat (give each group its own prefix)")
    return out


def _window(workloads: Sequence[SimWorkload], window: tuple[int, int] | None) -> frozenset[str] | None:
    if window is None:
        return None
    start, end = window
    return frozenset(w.key for w in workloads[start:end])


def _load_series(scenario: Scenario, spec: LoadSpec, horizon_seconds: float) -> LoadSeries:
    if spec.kind == "constant":
        if spec.rate is None:
            raise ScenarioError("load: kind 'constant' needs 'rate'")
        return LoadSeries.constant(spec.rate)
    if spec.kind == "diurnal":
        if spec.base is None or spec.peak is None:
            raise ScenarioError("load: kind 'diurnal' needs 'base' and 'peak'")
        return generators.diurnal_load(
            base_per_second=spec.base,
            peak_per_second=spec.peak,
            period_seconds=spec.period_hours * 3600.0,
            horizon_seconds=horizon_seconds,
            step_seconds=spec.step_minutes * 60.0,
            phase_seconds=spec.phase_hours * 3600.0,
        )
    if spec.kind == "steps":
        if not spec.points:
            raise ScenarioError("load: kind 'steps' needs 'points' ([[time_seconds, rate], ...])")
        return LoadSeries(tuple(p[0] for p in spec.points), tuple(p[1] for p in spec.points))
    if spec.path is None:
        raise ScenarioError("load: kind 'azure' needs 'path'")
    one = azure_llm.request_rate(azure_llm.load(scenario.resolve(spec.path)), spec.bin_seconds, scale=spec.scale)
    # repeat the trace's shape until the horizon (the public trace spans about an hour)
    span = one.times_seconds[-1]
    times: list[float] = []
    rates: list[float] = []
    offset = 0.0
    while offset <= horizon_seconds and span > 0:
        times += [offset + t for t in one.times_seconds[:-1]]
        rates += list(one.rates_per_second[:-1])
        offset += span
    return LoadSeries(tuple(times) or (0.0,), tuple(rates) or (0.0,))


def _workloads(scenario: Scenario, seed: int) -> tuple[list[SimWorkload], frozenset[str] | None]:
    spec = scenario.spec.workload
    out: list[SimWorkload] = []
    window: frozenset[str] | None = None
    training = spec.training
    if isinstance(training, GavelGenerator):
        table = gavel.load_throughputs(scenario.resolve(training.throughputs))
        out = generators.gavel_jobs(
            table, jobs=training.jobs, jobs_per_hour=training.jobs_per_hour, seed=seed,
            multi_gpu=training.multi_gpu, restart_cost_seconds=training.restart_cost_seconds,
        )
        window = _window(out, training.measure_window)
    elif isinstance(training, PhillyGenerator):
        out = generators.philly_jobs(
            jobs=training.jobs, jobs_per_hour=training.jobs_per_hour, seed=seed,
            median_duration_seconds=training.median_duration_seconds, sigma=training.sigma,
            restart_cost_seconds=training.restart_cost_seconds,
        )
        window = _window(out, training.measure_window)
    elif isinstance(training, SyntheticGenerator):
        out = generators.synthetic_training(
            jobs=training.jobs, jobs_per_hour=training.jobs_per_hour, seed=seed, models=training.models,
            median_duration_seconds=training.median_duration_seconds, sigma=training.sigma,
            serial_fraction=training.serial_fraction, restart_cost_seconds=training.restart_cost_seconds,
            elastic=training.elastic,
            gpu_mix=tuple(training.replica_mix) if training.replica_mix else generators.PHILLY_GPU_MIX,
            accelerators_per_replica=training.accelerators_per_replica,
            min_replica_fraction=training.min_replica_fraction,
            global_batch_size=training.global_batch_size,
            micro_batch_size=training.micro_batch_size,
            tensor_parallel=training.tensor_parallel,
        )
        if training.dp_state == "sharded":
            out = [
                dataclasses.replace(w, workload=dataclasses.replace(
                    w.workload, attributes=MappingProxyType({**w.workload.attributes, DP_STATE_ATTRIBUTE: "sharded"})))
                for w in out
            ]
        window = _window(out, training.measure_window)
    elif isinstance(training, TraceWorkload):
        path = scenario.resolve(training.path)
        if training.trace == "gavel":
            if training.throughputs is None:
                raise ScenarioError("workload.training: a gavel trace needs 'throughputs' (the throughput JSON)")
            jobs = gavel.load_trace(path)
            out, derived = gavel.trace_workloads(
                jobs[: training.limit] if training.limit else jobs,
                gavel.load_throughputs(scenario.resolve(training.throughputs)),
                restart_cost_seconds=training.restart_cost_seconds,
            )
            if derived:
                scenario.notes.append(
                    f"{sum(derived.values())} Gavel trace jobs have no measured throughput at their GPU count; "
                    f"used 1-GPU throughput x GPUs: " + ", ".join(f"{k}: {v}" for k, v in sorted(derived.items()))
                )
        elif training.trace == "philly":
            trace = philly.load(path)
            if trace.skipped:
                scenario.notes.append(
                    "Philly rows skipped: " + ", ".join(f"{k}: {v}" for k, v in sorted(trace.skipped.items()))
                )
            if training.limit:
                trace = philly.PhillyTrace(trace.jobs[: training.limit], trace.skipped)
            if training.throughputs is not None:
                if training.accelerator_types:
                    raise ScenarioError("workload.training: a philly trace with 'throughputs' runs on the types "
                                        "measured there; drop 'accelerator_types'")
                out, derived = gavel.typed_jobs(
                    [(j.submit_seconds, j.duration_seconds, j.gpus) for j in trace.jobs],
                    gavel.load_throughputs(scenario.resolve(training.throughputs)), seed=seed,
                    restart_cost_seconds=training.restart_cost_seconds,
                )
                if derived:
                    scenario.notes.append(
                        "Philly jobs at GPU counts Gavel never measured, 1-GPU throughput x GPUs: "
                        + ", ".join(f"{k}: {v}" for k, v in sorted(derived.items())))
            else:
                out = philly.trace_workloads(
                    trace, accelerator_types=tuple(training.accelerator_types),
                    restart_cost_seconds=training.restart_cost_seconds,
                )
            if training.tenants is not None:
                out = assign(out, [j.cluster for j in trace.jobs], training.tenants)
        else:
            if training.profiles is None:
                raise ScenarioError("workload.training: a sia workload needs 'profiles' (the traces/ folder)")
            out = sia.workloads(path, scenario.resolve(training.profiles), adaptive=training.adaptive,
                                max_factor=training.adaptive_max_factor)
        if training.limit:
            out = out[: training.limit]
        window = _window(out, training.measure_window)
    horizon = (scenario.spec.sim.horizon_hours or 0.0) * 3600.0
    if not horizon:
        horizon = max((w.arrival_seconds for w in out), default=0.0) + 30 * 86400.0
    for service in spec.inference:
        out.append(
            generators.inference_service(
                service.name,
                throughput=service.throughput or _splitwise_throughput(scenario, service),
                load=_load_series(scenario, service.load, horizon),
                min_replicas=service.min_replicas,
                max_replicas=service.max_replicas,
                desired_replicas=service.desired_replicas,
                accelerators=service.accelerators,
                arrival_seconds=service.arrival_seconds,
                priority=service.priority,
                spread=Spread(service.spread),
                cold_start_seconds=service.cold_start_seconds,
            )
        )
    return out, window


def _splitwise_throughput(scenario: Scenario, service: ServiceSpec) -> dict[str, float]:
    sw = service.splitwise
    assert sw is not None
    rows = splitwise.load(scenario.resolve(sw.path))
    hardware = sw.hardware or sorted({r.hardware for r in rows if r.model == sw.model})
    if not hardware:
        raise ScenarioError(f"inference.{service.name}.splitwise: no measurements for model {sw.model!r}")
    try:
        return {
            splitwise.HARDWARE_TYPES.get(h, h): splitwise.replica_capacity(
                rows, sw.model, h, prompt_size=sw.prompt_size, token_size=sw.token_size, tensor_parallel=sw.tensor_parallel
            )
            for h in hardware
        }
    except ValueError as err:
        raise ScenarioError(f"inference.{service.name}.splitwise: {err}") from err


def write_node_file(nodes: Sequence[Node], path: Path) -> None:
    """Write a node list in the ``node_file`` format (for users who start from inline groups)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "accelerator_type", "accelerator_count", "zone", "domain"])
        for n in nodes:
            writer.writerow([n.name, n.accelerator_type or "", n.accelerator_count, n.topology.zone, n.topology.domain])
