"""Helpers for testing policies: builders, generated scenarios, and the conformance suite plugin authors run."""

from tessera.testing.builders import gang, node, nodes, snapshot
from tessera.testing.conformance import (
    ConformanceError,
    ConformanceReport,
    Finding,
    PolicyConformance,
    check_plan,
    check_policy,
)
from tessera.testing.generate import Scenario, random_scenario, roomy_scenario

__all__ = [
    "ConformanceError",
    "ConformanceReport",
    "Finding",
    "PolicyConformance",
    "Scenario",
    "check_plan",
    "check_policy",
    "gang",
    "node",
    "nodes",
    "random_scenario",
    "roomy_scenario",
    "snapshot",
]
