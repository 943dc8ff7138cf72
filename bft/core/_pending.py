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
                 "forwarded")

    def __init__(self, digest: bytes, created_tick: int) -> None:
        self.digest = digest
        self.request: Request | None = None
        self.votes: dict[int, Vote] = {}
        self.evaluation_requested = False
        self.quorum_tick: int | None = None
        self.proposed_seq: int | None = None
        self.created_tick = created_tick
        self.forwarded = False

    def vote_tuple(self) -> tuple[Vote, ...]:
        return tuple(self.votes[replica_id] for replica_id in sorted(self.votes))


class PendingPool:
    """Insertion-ordered, bounded map from request digest to ``PendingRequest``."""

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1
        self._capacity = capacity
        self._entries: OrderedDict[bytes, PendingRequest] = OrderedDict()

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

    def discard(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

    def remove_where(self, should_remove) -> int:
        doomed = [digest for digest, entry in self._entries.items() if should_remove(entry)]
        for digest in doomed:
            del self._entries[digest]
        return len(doomed)
