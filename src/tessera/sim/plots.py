"""PNG charts of simulated runs (matplotlib, imported only when plots are asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera.sim.report import Timeline
from tessera.sim.simulator import DONE, Simulator


def write_plots(sims: Sequence[Simulator], out_dir: Path) -> list[Path]:
    """JCT CDF, utilization per type, allocation vs demand over time, and inference load vs capacity / SLO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sim in sims:
        jct = sorted((j.finish - j.arrival) / 3600.0 for j in sim.jobs.values() if j.state == DONE and j.finish is not None)
        if jct:
            ax.step(jct, [(i + 1) / len(jct) for i in range(len(jct))], where="post", label=f"{sim.policy.name} (seed {sim.config.seed})")
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (hours, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("JCT CDF")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save(fig, "jct_cdf.png")

    types = sorted({t for sim in sims for t in sim.capacity_milli_seconds})
    if types and sims:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        width = 0.8 / len(sims)
        for i, sim in enumerate(sims):
            values = [
                sim.busy_milli_seconds[t] / sim.capacity_milli_seconds[t] if sim.capacity_milli_seconds.get(t) else 0.0
                for t in types
            ]
            ax.bar([x + i * width for x in range(len(types))], values, width, label=f"{sim.policy.name} (seed {sim.config.seed})")
        ax.set_xticks([x + width * (len(sims) - 1) / 2 for x in range(len(types))], types)
        ax.set_ylabel("utilization (busy / available accelerator time)")
        ax.set_ylim(0, 1)
        ax.set_title("Utilization per accelerator type")
        ax.legend()
        save(fig, "utilization.png")

    timelines = [(sim, obs) for sim in sims for obs in sim.observers if isinstance(obs, Timeline) and obs.times]
    if timelines:
        fig, axes = plt.subplots(len(timelines), 1, figsize=(8, 3.2 * len(timelines)), squeeze=False, sharex=True)
        for ax, (sim, tl) in zip(axes[:, 0], timelines, strict=True):
            hours = [t / 3600.0 for t in tl.times]
            types = sorted(tl.allocated)
            ax.stackplot(hours, *[tl.allocated[t] for t in types], labels=[f"allocated {t}" for t in types], alpha=0.7)
            ax.plot(hours, tl.demand, color="black", linewidth=1.0, label="demand (running + pending)")
            capacity = sum(n.accelerator_count for n in sim._nodes.values())
            ax.axhline(capacity, color="grey", linestyle="--", linewidth=0.8, label="capacity")
            ax.set_ylabel("accelerators")
            ax.set_title(f"{sim.policy.name} (seed {sim.config.seed}): allocation vs demand")
            ax.legend(fontsize=7, loc="upper right")
        axes[-1, 0].set_xlabel("simulated hours")
        save(fig, "allocation_vs_demand.png")
        with_services = [(sim, tl) for sim, tl in timelines if tl.services]
        if with_services:
            fig, axes = plt.subplots(len(with_services), 1, figsize=(8, 3.2 * len(with_services)), squeeze=False, sharex=True)
            for ax, (sim, tl) in zip(axes[:, 0], with_services, strict=True):
                hours = [t / 3600.0 for t in tl.times]
                for key, series in sorted(tl.services.items()):
                    n = len(series)
                    line = ax.plot(hours[-n:], [load for load, _ in series], label=f"{key} load")[0]
                    ax.plot(hours[-n:], [cap for _, cap in series], linestyle="--", color=line.get_color(), label=f"{key} capacity")
                ax.set_ylabel("requests/s")
                ax.set_title(f"{sim.policy.name} (seed {sim.config.seed}): inference load vs capacity")
                ax.legend(fontsize=7, loc="upper right")
            axes[-1, 0].set_xlabel("simulated hours")
            save(fig, "inference_load_vs_capacity.png")

    services = [(sim, j) for sim in sims for j in sim.jobs.values() if j.is_service and j.offered > 0]
    if services:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        labels = [f"{sim.policy.name}\n{j.key}" for sim, j in services]
        ax.bar(range(len(services)), [j.served / j.offered for _, j in services])
        ax.set_xticks(range(len(services)), labels, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("served / offered requests")
        ax.set_title("Inference SLO attainment")
        save(fig, "slo_attainment.png")
    return written
