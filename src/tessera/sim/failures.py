"""Node failure processes for the simulator: seeded MTBF/MTTR and availability series.

Everything here is pure and deterministic for a given seed: a failure process is turned
into a sorted list of :class:`NodeTransition` (a node goes down or comes back at a time)
before the run starts, so the same scenario gives the same failures under every mode
(``elastic``, ``restart``, ``none``) and the comparison between modes is paired.

Two sources:

* :func:`mtbf_mttr_transitions`: per node, alternating exponential up-times (mean MTBF) and
  down-times (mean MTTR); node classes may have their own MTBF/MTTR
  (:class:`FailureClass`, matched by name prefix).  Each node draws from its own
  generator seeded by ``(seed, node name)``, so adding a node does not reshuffle the
  failures of the others.
* :func:`availability_transitions`: a series of *how many* nodes are available over time
  (for instance derived from the Philly node sequence in the Helios artifact, see
  :mod:`tessera.sim.loaders.helios`) mapped onto concrete nodes: when the count drops,
  seeded-random up nodes go down; when it rises, the nodes down longest come back first.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class NodeTransition:
    """Node ``node`` goes down (``up=False``) or comes back (``up=True``) at ``time_seconds``.

    Same fields as the simulator's scripted ``NodeEvent``, so converting is one call per event.
    """

    time_seconds: float
    node: str
    up: bool


@dataclass(frozen=True, slots=True)
class FailureClass:
    """MTBF/MTTR of the nodes whose name starts with ``node_prefix`` ("" = every node)."""

    mtbf_seconds: float
    mttr_seconds: float
    node_prefix: str = ""

    def __post_init__(self) -> None:
        if self.mtbf_seconds <= 0 or self.mttr_seconds <= 0:
            raise ValueError("MTBF and MTTR must be positive")


def _class_for(node: str, classes: Sequence[FailureClass]) -> FailureClass | None:
    """The most specific (longest prefix) class matching ``node``."""
    matching = [c for c in classes if node.startswith(c.node_prefix)]
    return max(matching, key=lambda c: len(c.node_prefix)) if matching else None


def mtbf_mttr_transitions(
    nodes: Iterable[str],
    classes: Sequence[FailureClass],
    horizon_seconds: float,
    seed: int,
    start_seconds: float = 0.0,
) -> list[NodeTransition]:
    """Independent exponential failure/repair cycles per node up to ``horizon_seconds``.

    Nodes matching no class never fail.  A repair that would end after the horizon is
    still emitted (the node comes back after the run), so every failure has its recovery.
    """
    out: list[NodeTransition] = []
    for node in sorted(set(nodes)):
        failure_class = _class_for(node, classes)
        if failure_class is None:
            continue
        rng = random.Random(f"tessera-failures:{seed}:{node}")
        t = start_seconds
        while True:
            t += rng.expovariate(1.0 / failure_class.mtbf_seconds)
            if t >= horizon_seconds:
                break
            out.append(NodeTransition(t, node, False))
            t += rng.expovariate(1.0 / failure_class.mttr_seconds)
            out.append(NodeTransition(t, node, True))
    out.sort()
    return out


def availability_transitions(
    series: Sequence[tuple[float, int]],
    nodes: Sequence[str],
    seed: int,
) -> list[NodeTransition]:
    """Map an available-node-count series onto ``nodes``.

    ``series`` is ``(time_seconds, available)`` in time order; ``available`` is clipped to
    ``[0, len(nodes)]``.  All nodes start up; the first point may already take some down.
    Which node fails is a seeded draw among the up nodes; recoveries are first-down,
    first-up, so a short dip brings back the very nodes that left.
    """
    rng = random.Random(f"tessera-availability:{seed}")
    up = list(nodes)
    down: list[str] = []  # in the order they went down
    out: list[NodeTransition] = []
    last_time = float("-inf")
    for time_seconds, available in series:
        if time_seconds < last_time:
            raise ValueError("availability series must be in time order")
        last_time = time_seconds
        target = max(0, min(len(nodes), int(available)))
        while len(up) > target:
            node = up.pop(rng.randrange(len(up)))
            down.append(node)
            out.append(NodeTransition(time_seconds, node, False))
        while len(up) < target:
            node = down.pop(0)
            up.append(node)
            out.append(NodeTransition(time_seconds, node, True))
    return out


def downtime_fraction(transitions: Sequence[NodeTransition], nodes: Sequence[str], horizon_seconds: float) -> float:
    """Share of node-seconds in ``[0, horizon)`` that nodes were down (a scenario summary)."""
    if not nodes or horizon_seconds <= 0:
        return 0.0
    down_since: dict[str, float] = {}
    total = 0.0
    for tr in sorted(transitions):
        t = min(tr.time_seconds, horizon_seconds)
        if not tr.up and tr.node not in down_since:
            down_since[tr.node] = t
        elif tr.up and tr.node in down_since:
            total += t - down_since.pop(tr.node)
    total += sum(horizon_seconds - t for t in down_since.values())
    return total / (len(nodes) * horizon_seconds)
