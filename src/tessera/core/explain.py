"""Why a workload cannot start now, in words a user can act on.  Pure: stdlib only."""

from __future__ import annotations

from collections.abc import Callable, Collection

from tessera.core.model import ReplicaDemand, Spread, Workload
from tessera.core.snapshot import CapacityLedger


def explain_unfit(ledger: CapacityLedger, workload: Workload) -> str:
    """Why ``workload`` cannot start now, in words a user can act on.

    Counts how many replicas would fit on each allowed accelerator type, e.g.
    ``"needs 4 x H100 replicas (8 accelerators each), 2 fit"``.
    """
    demand = workload.demand
    one_per_node = workload.spread is Spread.NODE

    def fitting(accelerator_type: str) -> int:
        fit = 0
        for name, node in ledger.nodes.items():
            if not node.usable:
                continue
            if accelerator_type != "(cpu)" and node.accelerator_type != accelerator_type:
                continue
            fit += _replicas_fitting(ledger, name, demand, one_per_node)
        return fit

    return describe_unfit(workload, {n.accelerator_type for n in ledger.nodes.values()}, fitting)


def describe_unfit(workload: Workload, present: Collection[str | None], fitting: Callable[[str], int]) -> str:
    """:func:`explain_unfit`'s words from the accelerator types ``present`` and ``fitting``: how many
    replicas fit on the usable nodes of a type ("(cpu)": every usable node), so a policy that
    counts faster (vectorised) words it the same."""
    demand = workload.demand
    allowed = list(workload.allowed_types) or sorted(t for t in present if t)
    if not demand.needs_accelerator:
        allowed = ["(cpu)"]
    missing = [t for t in allowed if t not in present and t != "(cpu)"]
    if demand.needs_accelerator and len(missing) == len(allowed):
        return (
            f"no node has an allowed accelerator type ({', '.join(allowed) or 'any'}); "
            f"cluster has: {', '.join(sorted(t for t in present if t)) or 'no accelerators'}"
        )
    parts = []
    for accelerator_type in allowed:
        if accelerator_type in missing:
            continue
        parts.append(f"{fitting(accelerator_type)} fit on {accelerator_type}")
    per = f" ({demand.accelerators} accelerators each)" if demand.accelerators > 1 else ""
    mixed = " of one type" if len(allowed) > 1 and not workload.allow_mixed_types else ""
    return f"needs {workload.gang_min} replicas{mixed}{per}; " + ", ".join(parts)


def _replicas_fitting(ledger: CapacityLedger, node: str, demand: ReplicaDemand, one_per_node: bool) -> int:
    n = ledger.free(node).replicas_fitting(demand)
    n = 1_000_000 if n is None else n
    return min(n, 1) if one_per_node else n
