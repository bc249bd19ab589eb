"""Helpers for testing policies: builders, and the conformance suite plugin authors run."""

from tessera.testing.builders import gang, node, nodes, snapshot

__all__ = ["gang", "node", "nodes", "snapshot"]
