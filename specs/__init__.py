"""The protocol specification (SPEC.md) and its invariants as executable predicates (invariants.py)."""

from .invariants import (Evidence, Violation, check_agreement, check_all, check_checkpoints, check_deadline,
                         check_exactly_once, check_integrity, check_no_equivocation, check_sim, check_stability,
                         check_validity, SimMonitor, votes_digest)

__all__ = [
    "Evidence", "SimMonitor", "Violation", "check_agreement", "check_all", "check_checkpoints", "check_deadline",
    "check_exactly_once", "check_integrity", "check_no_equivocation", "check_sim", "check_stability",
    "check_validity", "votes_digest",
]
