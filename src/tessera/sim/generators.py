"""Workload generators: seeded, so a scenario file fully determines its workload.

* :func:`gavel_jobs` - Gavel's continuous-trace generator re-implemented from the
  paper's description: Poisson arrivals, job type uniform over the measured types,
  duration on the reference type (V100) drawn as 10^U(1.5, 3) minutes with probability
  0.8 and 10^U(3, 4) minutes otherwise, GPU count 1/2/4/8 with probabilities
  0.7/0.1/0.15/0.05 (the Philly mix); work = duration x throughput on V100.
* :func:`philly_jobs` - Philly-style jobs (log-normal durations with Philly's median
  ~20 minutes and mean ~3.6 hours, the same GPU mix) for scale tests.
* :func:`synthetic_training` - training jobs over named models with per-type speeds.
* :func:`inference_service` - an inference service with a diurnal or stepped load.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from tessera.core import AcceleratorOption, ReplicaDemand, Spread, Workload, WorkloadKind
from tessera.sim.loaders import philly as philly_loader
from tessera.sim.loaders.gavel import GavelThroughputs, job_workload
from tessera.sim.models import LoadSeries, ScalingModel, SimWorkload, ThroughputModel

#: Philly's GPU-count mix as used by Gavel's generator
PHILLY_GPU_MIX: tuple[tuple[int, float], ...] = ((1, 0.70), (2, 0.10), (4, 0.15), (8, 0.05))


def _gpus(rng: random.Random, mix: Sequence[tuple[int, float]]) -> int:
    r = rng.random() * sum(p for _, p in mix)
    for gpus, p in mix:
        r -= p
        if r < 0:
            return gpus
    return mix[-1][0]


def poisson_arrivals(rng: random.Random, jobs_per_hour: float, count: int, start_seconds: float = 0.0) -> list[float]:
    if jobs_per_hour <= 0:
        return [start_seconds] * count
    t = start_seconds
    out = []
    for _ in range(count):
        t += rng.expovariate(jobs_per_hour / 3600.0)
        out.append(t)
    return out


def gavel_duration_seconds(rng: random.Random) -> float:
    """Gavel's duration distribution on the reference type."""
    if rng.random() >= 0.8:
        return 60.0 * 10 ** rng.uniform(3, 4)
    return 60.0 * 10 ** rng.uniform(1.5, 3)


def gavel_jobs(
    throughputs: GavelThroughputs,
    *,
    jobs: int,
    jobs_per_hour: float,
    seed: int,
    multi_gpu: bool = True,
    reference_type: str = "V100",
    restart_cost_seconds: float = 30.0,
) -> list[SimWorkload]:
    """Gavel-style continuous trace (see module docstring)."""
    rng = random.Random(seed)
    arrivals = poisson_arrivals(random.Random(seed + 1_000_003), jobs_per_hour, jobs)
    job_types = throughputs.job_types
    out = []
    for i, arrival in enumerate(arrivals):
        gpus = _gpus(rng, PHILLY_GPU_MIX) if multi_gpu else 1
        duration = gavel_duration_seconds(rng)
        while True:  # a type measured at this scale factor (some models only run on one GPU)
            job_type = rng.choice(job_types)
            rate = throughputs.throughput(reference_type, job_type, gpus)
            if rate:
                break
        out.append(
            job_workload(
                f"job-{i:06d}", job_type, gpus, duration * rate, arrival, throughputs,
                restart_cost_seconds=restart_cost_seconds, reference_type=reference_type,
            )
        )
    return out


def philly_jobs(
    *,
    jobs: int,
    jobs_per_hour: float,
    seed: int,
    median_duration_seconds: float = 1200.0,
    sigma: float = 2.2,
    max_duration_seconds: float = 14 * 86400.0,
    gpu_mix: Sequence[tuple[int, float]] = PHILLY_GPU_MIX,
    accelerator_types: Sequence[str] = (),
    restart_cost_seconds: float = 60.0,
) -> list[SimWorkload]:
    """Philly-style jobs: Poisson arrivals, log-normal durations, Philly's GPU mix."""
    rng = random.Random(seed)
    arrivals = poisson_arrivals(random.Random(seed + 1_000_003), jobs_per_hour, jobs)
    mu = math.log(median_duration_seconds)
    out = []
    for i, arrival in enumerate(arrivals):
        gpus = _gpus(rng, gpu_mix)
        duration = min(max_duration_seconds, max(1.0, rng.lognormvariate(mu, sigma)))
        out.append(
            philly_loader.job_workload(
                f"philly-{i:06d}", arrival, duration, gpus,
                accelerator_types=accelerator_types, restart_cost_seconds=restart_cost_seconds,
            )
        )
    return out


def synthetic_training(
    *,
    jobs: int,
    jobs_per_hour: float,
    seed: int,
    models: Mapping[str, Mapping[str, float]],
    median_duration_seconds: float = 3600.0,
    sigma: float = 1.0,
    gpu_mix: Sequence[tuple[int, float]] = PHILLY_GPU_MIX,
    serial_fraction: float = 0.05,
    restart_cost_seconds: float = 60.0,
    elastic: bool = False,
    key_prefix: str = "train",
) -> list[SimWorkload]:
    """Training jobs of the given models; ``models[name][type]`` = per-replica throughput.

    The duration is drawn for the job's fastest type at its requested size; work =
    duration x that rate.  ``elastic`` jobs accept 1..requested replicas.
    """
    rng = random.Random(seed)
    arrivals = poisson_arrivals(random.Random(seed + 1_000_003), jobs_per_hour, jobs)
    names = sorted(models)
    scaling = ScalingModel(serial_fraction)
    built: dict[str, ThroughputModel] = {}
    out = []
    for i, arrival in enumerate(arrivals):
        name = rng.choice(names)
        gpus = _gpus(rng, gpu_mix)
        duration = max(60.0, rng.lognormvariate(math.log(median_duration_seconds), sigma))
        per_replica = models[name]
        model = built.get(name)
        if model is None:
            model = built[name] = ThroughputModel(dict(per_replica), scaling)
        best = max(model.rate(t, gpus) for t in per_replica)
        workload = Workload(
            key=f"{key_prefix}-{i:05d}",
            kind=WorkloadKind.TRAINING,
            demand=ReplicaDemand(accelerators=1),
            min_replicas=1 if elastic else gpus,
            max_replicas=gpus,
            options=tuple(AcceleratorOption(t, v) for t, v in sorted(per_replica.items())),
            submitted_at_seconds=arrival,
            restart_cost_seconds=restart_cost_seconds,
            attributes=MappingProxyType({"model": name}),
        )
        out.append(SimWorkload(workload, model, work=duration * best, reference_duration_seconds=duration))
    return out


def diurnal_load(
    *, base_per_second: float, peak_per_second: float, period_seconds: float, horizon_seconds: float, step_seconds: float = 600.0, phase_seconds: float = 0.0
) -> LoadSeries:
    """A sinusoidal day: ``base`` at the trough, ``peak`` at the crest, sampled every ``step_seconds``."""
    times = []
    rates = []
    t = 0.0
    while t <= horizon_seconds:
        x = 0.5 - 0.5 * math.cos(2 * math.pi * (t + phase_seconds) / period_seconds)
        times.append(t)
        rates.append(base_per_second + (peak_per_second - base_per_second) * x)
        t += step_seconds
    return LoadSeries(tuple(times), tuple(rates))


def inference_service(
    key: str,
    *,
    throughput: Mapping[str, float],
    load: LoadSeries,
    min_replicas: int = 1,
    max_replicas: int = 4,
    desired_replicas: int | None = None,
    accelerators: int = 1,
    arrival_seconds: float = 0.0,
    priority: int = 10,
    spread: Spread = Spread.NODE,
    cold_start_seconds: float = 120.0,
) -> SimWorkload:
    """An inference service; ``throughput[type]`` = requests/s one replica sustains."""
    workload = Workload(
        key=key,
        kind=WorkloadKind.INFERENCE,
        demand=ReplicaDemand(accelerators=accelerators),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        desired_replicas=desired_replicas,
        options=tuple(AcceleratorOption(t, v) for t, v in sorted(throughput.items())),
        priority=priority,
        submitted_at_seconds=arrival_seconds,
        spread=spread,
        preemptible=False,
        restart_cost_seconds=cold_start_seconds,
        attributes=MappingProxyType({"request_rate": f"{load.at(arrival_seconds):g}"}),
    )
    return SimWorkload(workload, ThroughputModel(dict(throughput)), work=None, load=load)
