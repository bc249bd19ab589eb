"""PNG charts of simulated runs (matplotlib, imported only when plots are asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tessera.sim.simulator import DONE, Simulator


def write_plots(sims: Sequence[Simulator], out_dir: Path) -> list[Path]:
    """JCT CDF per policy, utilization per accelerator type, and SLO attainment when there are services."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

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
    path = out_dir / "jct_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

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
        path = out_dir / "utilization.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    services = [(sim, j) for sim in sims for j in sim.jobs.values() if j.is_service and j.offered > 0]
    if services:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        labels = [f"{sim.policy.name}\n{j.key}" for sim, j in services]
        ax.bar(range(len(services)), [j.served / j.offered for _, j in services])
        ax.set_xticks(range(len(services)), labels, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("served / offered requests")
        ax.set_title("Inference SLO attainment")
        path = out_dir / "slo_attainment.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
