"""Deterministic, single-threaded drivers for the sans-IO core (no trio: its scheduler is not deterministic)."""

from ._sim import NetworkFaults, SimCluster, Interceptor

__all__ = ["Interceptor", "NetworkFaults", "SimCluster"]
from ._byzantine import (STRATEGIES, ApproveEverything, DenyEverything, compose, equivocating_primary,
                         forged_signatures, forging_collector, hiding_view_changes, honest, lying_checkpoints,
                         lying_replies, lying_state_transfer, lying_votes, mangled_messages, replaying, silent,
                         veto_dropping_primary)

__all__ += [
    "STRATEGIES", "ApproveEverything", "DenyEverything", "compose", "equivocating_primary", "forged_signatures",
    "forging_collector", "hiding_view_changes", "honest", "lying_checkpoints", "lying_replies", "lying_state_transfer",
    "lying_votes", "mangled_messages", "replaying", "silent", "veto_dropping_primary",
]

# Golden interaction scripts (tests/interactions/*.txt): replay one and get its text with today's output.
from ._interactions import ScriptError, replay as replay_interactions  # noqa: E402

__all__ += ["ScriptError", "replay_interactions"]
