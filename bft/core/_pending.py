"""Requests waiting to be ordered, with the signed votes collected for each.

Votes are broadcast to every replica, so whichever replica becomes primary
already holds them, and a backup can tell when a request has become
proposable (a quorum of votes), which is when it starts to expect progress.
The pool is bounded: when full, new requests are refused, never buffered.

The replica asks three questions of the pool after almost every input: which
requests could go into a batch, whether any request awaits ordering, and which
entries expired.  Scanning the whole pool for each (up to
``max_pending_requests`` entries) made the primary's cost per input grow with
its backlog, so the pool keeps the answers up to date as entries change: a
proposal-candidate index in arrival order, a count, a deadline index and the
entries still waiting for their request, which expire in arrival order.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from sortedcontainers import SortedDict

from ._messages import Request, Vote

# Below this many entries ``check_invariants`` re-derives every index from scratch (tests and
# simulations run small pools); above it, it checks only the constant-time bounds, so that test
# drivers can afford it after every input even with a large backlog.
FULL_CHECK_ENTRIES_MAX = 16


class PendingRequest:
    """One request digest's state.  The fields the pool indexes are read-only here: the pool's
    ``attach_request``, ``note_quorum`` and ``set_proposed`` change them and keep its indexes current."""

    __slots__ = ("digest", "_request", "votes", "evaluation_requested", "_quorum_tick", "_proposed_seq",
                 "created_tick", "forwarded", "orphan_of", "serial", "awaits_order", "is_candidate", "own_vote",
                 "awaits_proposal_here", "vote_shared")

    def __init__(self, digest: bytes, created_tick: int, serial: int) -> None:
        self.digest = digest
        self._request: Request | None = None
        self.votes: dict[int, Vote] = {}
        self.evaluation_requested = False
        self._quorum_tick: int | None = None
        self._proposed_seq: int | None = None
        self.created_tick = created_tick
        self.forwarded = False
        self.orphan_of: int | None = None  # The replica whose vote created this entry before its request came.
        self.serial = serial  # Arrival order in the pool: every index iterates in this order.
        self.awaits_order = False  # Counted in ``requests_with_quorum_count``.
        self.is_candidate = False  # Held in the proposal-candidate index.
        self.own_vote = False  # This replica voted on the request (set by the pool's ``note_own_vote``).
        self.vote_shared = False  # Its vote went to every replica (``take_overdue_votes``).
        self.awaits_proposal_here = False  # Held in the voted-unproposed index.

    @property
    def request(self) -> Request | None:
        return self._request

    @property
    def quorum_tick(self) -> int | None:
        """The tick at which this entry first held a quorum of votes."""
        return self._quorum_tick

    @property
    def proposed_seq(self) -> int | None:
        """The seq of the accepted pre-prepare (current view) that carries this request."""
        return self._proposed_seq

    def vote_tuple(self) -> tuple[Vote, ...]:
        return tuple(self.votes[replica_id] for replica_id in sorted(self.votes))


class PendingPool:
    """Insertion-ordered, bounded map from request digest to ``PendingRequest``, with incremental indexes.

    - ``proposal_candidates()``: entries with their request and a quorum of votes that no accepted
      pre-prepare carries, in arrival order (what the primary's batch builder examines).
    - ``requests_with_quorum_count``: entries with their request and a quorum of votes, proposed
      or not (work the progress timer waits for).
    - ``voted_unproposed()`` / ``take_overdue_votes``: entries this replica voted on that no
      accepted pre-prepare carries and whose vote it has not shared with everyone, in arrival order
      (a backup shares such a vote once it is overdue: SPEC.md section 11b).
    - ``expire``: entries whose request's deadline passed, or that never got their request.
    """

    def __init__(self, capacity: int, orphans_per_replica_max: int) -> None:
        assert capacity >= 1 and orphans_per_replica_max >= 1
        self._capacity = capacity
        self._orphans_per_replica_max = orphans_per_replica_max
        self._entries: OrderedDict[bytes, PendingRequest] = OrderedDict()
        self._orphans_by_replica: dict[int, int] = {}
        self._serial_next = 0
        self._last_created_tick = 0
        self._candidates: SortedDict[int, PendingRequest] = SortedDict()
        self.requests_with_quorum_count = 0
        self._voted_unproposed: SortedDict[int, PendingRequest] = SortedDict()
        # Every entry with its request, by (deadline_ms, serial): expiry takes them from the front.
        self._deadlines: SortedDict[tuple[int, int], PendingRequest] = SortedDict()
        # Entries still without their request.  Their created ticks never decrease along this order.
        self._unrequested: OrderedDict[bytes, PendingRequest] = OrderedDict()

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
            assert tick >= self._last_created_tick, "orphan expiry relies on entries arriving in tick order"
            self._last_created_tick = tick
            entry = self._entries[digest] = self._unrequested[digest] = PendingRequest(digest, tick, self._serial_next)
            self._serial_next += 1
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

    def attach_request(self, entry: PendingRequest, request: Request) -> None:
        """The request of ``entry`` arrived; if a vote created the entry, it no longer counts against its voter's share."""
        assert self._entries.get(entry.digest) is entry and entry.request is None, "a request is attached once"
        entry._request = request
        if entry.orphan_of is not None:
            self._release_orphan(entry)
        del self._unrequested[entry.digest]
        self._deadlines[(request.deadline_ms, entry.serial)] = entry
        self._reindex(entry)

    def note_quorum(self, entry: PendingRequest, tick: int) -> None:
        """``entry`` holds a quorum of votes for the first time, at ``tick``."""
        assert self._entries.get(entry.digest) is entry and entry.quorum_tick is None
        entry._quorum_tick = tick
        self._reindex(entry)

    def note_own_vote(self, entry: PendingRequest) -> None:
        """This replica voted on ``entry``'s request (it evaluated it, so it holds the request)."""
        assert self._entries.get(entry.digest) is entry and entry.request is not None and not entry.own_vote
        entry.own_vote = True
        self._reindex(entry)

    def voted_unproposed(self) -> list[PendingRequest]:
        """Entries this replica voted on that no accepted pre-prepare carries, in arrival order."""
        return list(self._voted_unproposed.values())

    def take_overdue_votes(self, arrived_by_tick: int) -> list[PendingRequest]:
        """Remove from ``voted_unproposed()`` and return the entries that arrived by ``arrived_by_tick``:
        their vote is about to go to everyone, so no new primary needs it again.  Entries arrive in
        tick order, so the scan stops at the first younger one."""
        taken = []
        while self._voted_unproposed:
            serial, entry = self._voted_unproposed.peekitem(0)
            if entry.created_tick > arrived_by_tick:
                break
            del self._voted_unproposed[serial]
            entry.vote_shared = True
            entry.awaits_proposal_here = False
            taken.append(entry)
        return taken

    def set_proposed(self, entry: PendingRequest, seq: int | None) -> None:
        """An accepted pre-prepare at ``seq`` carries ``entry``; None: no pre-prepare of this view does."""
        assert self._entries.get(entry.digest) is entry
        entry._proposed_seq = seq
        self._reindex(entry)

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
        if entry is None:
            return
        if entry.orphan_of is not None:
            self._release_orphan(entry)
        if entry.request is None:
            del self._unrequested[digest]
        else:
            del self._deadlines[(entry.request.deadline_ms, entry.serial)]
        self._candidates.pop(entry.serial, None)
        self.requests_with_quorum_count -= entry.awaits_order
        self._voted_unproposed.pop(entry.serial, None)
        entry.awaits_order = entry.is_candidate = entry.awaits_proposal_here = False

    def retain_votes(self, keep, has_quorum, request_valid, tick: int) -> None:
        """A new epoch: drop the votes of replicas ``keep`` rejects and judge each entry's quorum afresh
        (``has_quorum``), since the quorum size may have changed; vote-created entries left without votes,
        and requests the new epoch does not accept (``request_valid``: a client removed or re-keyed), go."""
        for entry in list(self._entries.values()):
            entry.votes = {replica_id: vote for replica_id, vote in entry.votes.items() if keep(replica_id)}
            if (entry.request is None and not entry.votes) or (entry.request is not None
                                                               and not request_valid(entry.request)):
                self.discard(entry.digest)
                continue
            entry._quorum_tick = (tick if entry.quorum_tick is None else entry.quorum_tick) \
                if has_quorum(entry) else None
            self._reindex(entry)

    def remove_where(self, should_remove) -> list[PendingRequest]:
        """Remove and return every entry ``should_remove`` accepts."""
        doomed = [entry for entry in self._entries.values() if should_remove(entry)]
        for entry in doomed:
            self.discard(entry.digest)
        return doomed

    # ------------------------------------------------------------- indexes

    @property
    def candidate_count(self) -> int:
        """How many entries ``proposal_candidates`` holds (O(1))."""
        return len(self._candidates)

    def proposal_candidates(self) -> Iterable[PendingRequest]:
        """Entries with their request and a quorum of votes, not in an accepted pre-prepare, in arrival order."""
        return self._candidates.values()

    def expire(self, now_ms: int, skew_ms: int, tick: int, orphan_ticks: int) -> list[PendingRequest]:
        """Remove and return, in arrival order, the entries whose request's deadline is more than
        ``skew_ms`` before ``now_ms``, and those that have waited more than ``orphan_ticks`` for
        their request."""
        expired = []
        for (deadline_ms, _), entry in self._deadlines.items():
            if now_ms <= deadline_ms + skew_ms:
                break  # Every later entry has a deadline no earlier.
            expired.append(entry)
        for entry in self._unrequested.values():
            if tick - entry.created_tick <= orphan_ticks:
                break  # Every later entry arrived no earlier, so it has not waited longer.
            expired.append(entry)
        expired.sort(key=lambda entry: entry.serial)
        for entry in expired:
            self.discard(entry.digest)
        return expired

    def _reindex(self, entry: PendingRequest) -> None:
        awaits_order = entry.request is not None and entry.quorum_tick is not None
        self.requests_with_quorum_count += awaits_order - entry.awaits_order
        entry.awaits_order = awaits_order
        is_candidate = awaits_order and entry.proposed_seq is None
        if is_candidate and not entry.is_candidate:
            self._candidates[entry.serial] = entry
        elif entry.is_candidate and not is_candidate:
            del self._candidates[entry.serial]
        entry.is_candidate = is_candidate
        awaits_proposal_here = entry.own_vote and entry.proposed_seq is None and not entry.vote_shared
        if awaits_proposal_here and not entry.awaits_proposal_here:
            self._voted_unproposed[entry.serial] = entry
        elif entry.awaits_proposal_here and not awaits_proposal_here:
            del self._voted_unproposed[entry.serial]
        entry.awaits_proposal_here = awaits_proposal_here

    def check_bounds(self) -> None:
        """The indexes' sizes agree with the entries: constant time, so a replica checks it after every input."""
        assert 0 <= len(self._candidates) <= self.requests_with_quorum_count <= len(self._entries) <= self._capacity
        assert len(self._voted_unproposed) <= len(self._entries)
        assert len(self._unrequested) + len(self._deadlines) == len(self._entries)

    def check_invariants(self) -> None:
        """The indexes agree with the entries: in full for a small pool, by their bounds always."""
        self.check_bounds()
        if len(self._entries) > FULL_CHECK_ENTRIES_MAX:
            return
        awaiting = [e for e in self._entries.values() if e.request is not None and e.quorum_tick is not None]
        assert self.requests_with_quorum_count == len(awaiting)
        assert list(self._candidates.values()) == [e for e in awaiting if e.proposed_seq is None]
        assert list(self._voted_unproposed.values()) == [e for e in self._entries.values()
                                                         if e.own_vote and e.proposed_seq is None
                                                         and not e.vote_shared]
        assert list(self._unrequested.values()) == [e for e in self._entries.values() if e.request is None]
        assert sorted(self._deadlines.values(), key=lambda e: e.serial) == \
            [e for e in self._entries.values() if e.request is not None]
        assert all(key == (e.request.deadline_ms, e.serial) for key, e in self._deadlines.items())
