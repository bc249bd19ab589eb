"""Tessera: a scheduler for ML workloads on Kubernetes clusters with mixed accelerators."""

__version__ = "0.1.0"
