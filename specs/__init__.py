"""The protocol specification (SPEC.md) and its invariants as executable predicates (the invariants package)."""

from bft.core import votes_digest

from .invariants import (Evidence, SimMonitor, Violation, check_agreement, check_all, check_checkpoints, check_deadline,
                         check_exactly_once, check_integrity, check_no_equivocation, check_sim, check_stability,
                         check_validity)

__all__ = [
    "Evidence", "SimMonitor", "Violation", "check_agreement", "check_all", "check_checkpoints", "check_deadline",
    "check_exactly_once", "check_integrity", "check_no_equivocation", "check_sim", "check_stability",
    "check_validity", "votes_digest",
]
