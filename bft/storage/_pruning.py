"""Keeping a replica's store as bounded as its core: what a driver prunes, and when.

The core decides what became obsolete; the driver deletes it once the output
that made it obsolete is durable:

- below a stable checkpoint (``replica.low_water``): slot messages and votes
  on requests that executed there (``Store.prune_signed_below``);
- view-change and new-view messages of views before an installed view
  (``Store.prune_views_below``);
- votes on requests that expired unordered (``Ready.dead_votes``), in
  batches (``Store.prune_votes``).

Everything else a replica stores is bounded by the window (slot messages and
proofs for at most ``log_window`` seqs), the pending pool (live votes) and the
number of replicas (view changes); the verdict log is the one record that
grows, on purpose: it is the audit trail.
"""

from __future__ import annotations

from typing import Protocol

from ..core import Ready

DEAD_VOTES_BATCH = 64


class _ReplicaWaterMarks(Protocol):
    low_water: int
    view: int
    view_active: bool


class StorePruner:
    """Call ``after_ready`` after each ``Ready`` of one replica has been applied (persisted, then sent)."""

    def __init__(self) -> None:
        self._dead_votes: set[bytes] = set()
        self._pruned_below_seq = 0
        self._pruned_below_view = 0
        self.pruned = 0

    def after_ready(self, store, replica: _ReplicaWaterMarks, ready: Ready) -> int:
        """Prune what ``ready`` (now durable) and the replica's water marks made obsolete; return how many."""
        removed = 0
        self._dead_votes.update(ready.dead_votes)
        if len(self._dead_votes) >= DEAD_VOTES_BATCH:
            removed += store.prune_votes(self._dead_votes)
            self._dead_votes.clear()
        if replica.low_water > self._pruned_below_seq:
            removed += store.prune_signed_below(replica.low_water)
            self._pruned_below_seq = replica.low_water
        if replica.view_active and replica.view > self._pruned_below_view:
            removed += store.prune_views_below(replica.view)
            self._pruned_below_view = replica.view
        assert len(self._dead_votes) < DEAD_VOTES_BATCH
        self.pruned += removed
        return removed
