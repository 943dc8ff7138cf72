"""Requests waiting to be ordered, with the signed votes collected for each.

Votes are broadcast to every replica, so whichever replica becomes primary
already holds them, and a backup can tell when a request has become
proposable (a quorum of votes), which is when it starts to expect progress.
The pool is bounded: when full, new requests are refused, never buffered.
"""

from __future__ import annotations

from collections import OrderedDict

from ._messages import Request, Vote


class PendingRequest:
    __slots__ = ("digest", "request", "votes", "evaluation_requested", "quorum_tick", "proposed_seq", "created_tick",
                 "forwarded", "orphan_of")

    def __init__(self, digest: bytes, created_tick: int) -> None:
        self.digest = digest
        self.request: Request | None = None
        self.votes: dict[int, Vote] = {}
        self.evaluation_requested = False
        self.quorum_tick: int | None = None
        self.proposed_seq: int | None = None
        self.created_tick = created_tick
        self.forwarded = False
        self.orphan_of: int | None = None  # The replica whose vote created this entry before its request came.

    def vote_tuple(self) -> tuple[Vote, ...]:
        return tuple(self.votes[replica_id] for replica_id in sorted(self.votes))


class PendingPool:
    """Insertion-ordered, bounded map from request digest to ``PendingRequest``."""

    def __init__(self, capacity: int, orphans_per_replica_max: int) -> None:
        assert capacity >= 1 and orphans_per_replica_max >= 1
        self._capacity = capacity
        self._orphans_per_replica_max = orphans_per_replica_max
        self._entries: OrderedDict[bytes, PendingRequest] = OrderedDict()
        self._orphans_by_replica: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries.values())

    def get(self, digest: bytes) -> PendingRequest | None:
        return self._entries.get(digest)

    def get_or_create(self, digest: bytes, tick: int) -> PendingRequest | None:
        """The entry for ``digest``, created if there is room; None when the pool is full."""
        entry = self._entries.get(digest)
        if entry is None and len(self._entries) < self._capacity:
            entry = self._entries[digest] = PendingRequest(digest, tick)
        assert len(self._entries) <= self._capacity
        return entry

    def get_or_create_orphan(self, digest: bytes, tick: int, voter: int) -> PendingRequest | None:
        """Like ``get_or_create`` for a vote that arrived before its request.

        Each replica may hold only a bounded share of the pool with such
        entries, so one Byzantine replica voting on requests that do not exist
        cannot fill the pool and lock clients out.
        """
        entry = self._entries.get(digest)
        if entry is not None:
            return entry
        if self._orphans_by_replica.get(voter, 0) >= self._orphans_per_replica_max:
            return None
        entry = self.get_or_create(digest, tick)
        if entry is not None:
            entry.orphan_of = voter
            self._orphans_by_replica[voter] = self._orphans_by_replica.get(voter, 0) + 1
        return entry

    def adopt(self, entry: PendingRequest) -> None:
        """The request of an orphan entry arrived: it no longer counts against its creator's share."""
        if entry.orphan_of is not None:
            self._release_orphan(entry)

    def _release_orphan(self, entry: PendingRequest) -> None:
        remaining = self._orphans_by_replica[entry.orphan_of] - 1
        assert remaining >= 0
        if remaining:
            self._orphans_by_replica[entry.orphan_of] = remaining
        else:
            del self._orphans_by_replica[entry.orphan_of]
        entry.orphan_of = None

    def discard(self, digest: bytes) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None and entry.orphan_of is not None:
            self._release_orphan(entry)

    def remove_where(self, should_remove) -> list[PendingRequest]:
        """Remove and return every entry ``should_remove`` accepts."""
        doomed = [entry for entry in self._entries.values() if should_remove(entry)]
        for entry in doomed:
            self.discard(entry.digest)
        return doomed
