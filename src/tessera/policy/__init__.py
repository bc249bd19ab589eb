"""The policy plugin SDK: what every scheduling policy implements.

Plugin authors import from here (and from :mod:`tessera.testing`) only::

    from tessera.policy import Policy, PolicyContext, Decision
    from tessera.core import ClusterSnapshot, Workload, Plan

A policy sees a :class:`~tessera.core.ClusterSnapshot` and the pending workloads and
returns a :class:`~tessera.core.Plan`; it never talks to the API server. Register it
under the ``tessera.policies`` entry-point group.
"""

from tessera.policy.base import Decision, Policy, PolicyContext, PolicyInfo
from tessera.policy.capabilities import (
    BackedByArtifact,
    DecidesInRounds,
    ReportsDecisionStats,
    ReshardsOnFailure,
    ResumesRounds,
    capabilities_of,
)
from tessera.policy.registry import (
    Discovery,
    PolicyLoadError,
    RegisteredPolicy,
    available_policies,
    discover,
    load_policy,
    registered_policy,
    with_failure_handling,
)

__all__ = [
    "BackedByArtifact",
    "DecidesInRounds",
    "Decision",
    "Discovery",
    "Policy",
    "PolicyContext",
    "PolicyInfo",
    "PolicyLoadError",
    "RegisteredPolicy",
    "ReportsDecisionStats",
    "ReshardsOnFailure",
    "ResumesRounds",
    "available_policies",
    "capabilities_of",
    "discover",
    "load_policy",
    "registered_policy",
    "with_failure_handling",
]
