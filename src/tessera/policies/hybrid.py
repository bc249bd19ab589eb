"""The ``hybrid`` policy: the learned dispatcher's plan seeds CP-SAT.

One decision:

1. the learned policy (:class:`tessera.policies.learned.policy.LearnedPolicy`, milliseconds)
   places what it can;
2. its placements, mapped onto the placement model's pools, are CP-SAT's solution hint in
   place of the greedy pool-level plan, so the solver starts from a good complete solution;
3. CP-SAT solves with what is left of the budget; the better of its packed plan and the
   learned plan (same objective, :func:`tessera.policies.cpsat.score_placements`) is kept,
   and the learned plan is used as it is whenever the solver has nothing feasible in time;
4. preemption, moves to faster types and waiting reasons are CP-SAT's (:class:`CpSat`).

``last_stats["chosen"]`` says which plan was kept: ``"cpsat"`` or ``"learned"``;
``last_stats["learned_seconds"]`` is the time the learned policy took.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from tessera.core import ClusterSnapshot, Plan, Workload
from tessera.policies.cpsat import CpSat
from tessera.policies.learned.policy import LearnedPolicy
from tessera.policy import Policy, PolicyContext, load_policy


class Hybrid(CpSat):
    """CP-SAT hinted by the learned dispatcher, falling back to the learned plan when the budget runs out."""

    name: ClassVar[str] = "hybrid"
    version: ClassVar[str] = "1.0.0"

    def __init__(self, weights: str | Path | None = None, *, learned: Policy | None = None,
                 seed_policy: str | None = None, **cpsat_options: Any) -> None:
        """``weights``: the learned artifact (see :class:`LearnedPolicy`); ``learned``: a
        ready learned policy instead; ``seed_policy``: another installed policy by name
        whose plan seeds the solver (e.g. ``learned-jct``; ``weights`` then goes to it).
        Other keyword arguments go to :class:`CpSat`."""
        super().__init__(**cpsat_options)
        if learned is not None:
            self.learned: Policy = learned
        elif seed_policy is not None:
            self.learned = load_policy(seed_policy, **({"weights": weights} if weights is not None else {}))
        else:
            self.learned = LearnedPolicy(weights)

    @property
    def artifact(self) -> str:
        """The seeding policy's trained artifact (``name@version``): the engine reports it as
        ``policy_artifact`` in cycle stats, status and metrics, since its plan is the fallback."""
        return str(getattr(self.learned, "artifact", "") or self.learned.name)

    def decide(self, snapshot: ClusterSnapshot, pending: Sequence[Workload], ctx: PolicyContext) -> Plan:
        # the learned policy's time counts against the budget (wall-clock mode); with
        # deterministic limits the solver's budget is work units and the learned step,
        # itself deterministic, is not charged
        started = self._timer()
        seed = self.learned.decide(snapshot, pending, ctx)
        learned_seconds = self._timer() - started
        plan = self.decide_seeded(snapshot, pending, ctx, seed, seed_label="learned", started=started)
        self.last_stats.update(learned_seconds=learned_seconds, learned_artifact=self.artifact,
                               learned_placed=len(seed.placements))
        return plan


__all__ = ["Hybrid"]
