"""Deterministic, single-threaded drivers for the sans-IO core (no trio: its scheduler is not deterministic)."""

from ._sim import NetworkFaults, SimCluster, Interceptor

__all__ = ["Interceptor", "NetworkFaults", "SimCluster"]
