"""The plugin runs Tessera's conformance suite against itself: that is all a plugin author needs."""

from tessera_example_policy import SpreadFirst

from tessera.testing import PolicyConformance


class TestSpreadFirst(PolicyConformance):
    policy_factory = SpreadFirst
