"""Per-replica voting statistics over a sliding window of agreed vote sets: pure integer arithmetic.

Only what every correct replica agrees on goes in: the vote set ordered with
each verdict and the verdict itself.  So every correct replica computes the
same counts at the same log position.  Vote latency is deliberately absent: when
a vote arrived is a local observation that differs from replica to replica.

Besides how often a replica approves, the window counts how it votes when the
*other* voters of the same set mostly agree the other way.  Honest policies
differ, so every replica is outvoted now and then; a replica that approves
everything (or denies everything) is outvoted on almost every request its
peers decide the other way.  That one-sidedness, not a high approval rate on
its own, is what the suspicion rule looks for (``_accountability_state``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

from ._messages import Decision, Vote


def vote_masks(votes: tuple[Vote, ...]) -> tuple[int, int]:
    """(allow, deny) voter bit masks of an agreed vote set."""
    allow = deny = 0
    for vote in votes:
        if vote.decision is Decision.ALLOW:
            allow |= 1 << vote.replica_id
        else:
            deny |= 1 << vote.replica_id
    assert allow & deny == 0, "one replica cannot vote both ways in one agreed set"
    return allow, deny


def bits_of(mask: int) -> Iterator[int]:
    index = 0
    while mask:
        if mask & 1:
            yield index
        mask >>= 1
        index += 1


def lower_median(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


@dataclass(frozen=True, slots=True)
class VoteRates:
    """One replica's figures over the window; counts, and rates in per mille of ``cast``."""

    cast: int
    approval_permille: int
    disagreement_permille: int
    peers_denied: int  # verdicts where most other voters denied
    approved_what_peers_denied: int
    peers_approved: int  # verdicts where most other voters approved
    denied_what_peers_approved: int


class VoteStatistics:
    """The last ``window_entries`` verdicts' voter masks and, per replica, the counts behind ``VoteRates``."""

    def __init__(self, replica_count: int, window_entries: int, min_votes: int) -> None:
        assert replica_count >= 1 and 1 <= min_votes <= window_entries
        self._replica_count = replica_count
        self._window_entries = window_entries
        self._min_votes = min_votes
        self._window: deque[tuple[int, int, bool]] = deque()
        self.cast = [0] * replica_count
        self._allowed = [0] * replica_count
        self._disagreed = [0] * replica_count
        self._peers_denied = [0] * replica_count
        self._approved_against = [0] * replica_count
        self._peers_approved = [0] * replica_count
        self._denied_against = [0] * replica_count

    def __len__(self) -> int:
        return len(self._window)

    def push(self, allow_mask: int, deny_mask: int, allowed: bool) -> None:
        """Add one verdict (``allowed``) with its agreed voters, dropping the oldest beyond the window."""
        assert allow_mask < (1 << self._replica_count) and deny_mask < (1 << self._replica_count)
        if len(self._window) == self._window_entries:
            self._count(*self._window.popleft(), sign=-1)
        self._window.append((allow_mask, deny_mask, allowed))
        self._count(allow_mask, deny_mask, allowed, sign=1)
        assert len(self._window) <= self._window_entries

    def _count(self, allow_mask: int, deny_mask: int, allowed: bool, sign: int) -> None:
        allows, denies = allow_mask.bit_count(), deny_mask.bit_count()
        for replica_id in bits_of(allow_mask):
            self.cast[replica_id] += sign
            self._allowed[replica_id] += sign
            self._disagreed[replica_id] += sign * (not allowed)
            if denies > allows - 1:  # a strict majority of the other voters denied
                self._peers_denied[replica_id] += sign
                self._approved_against[replica_id] += sign
            elif allows - 1 > denies:
                self._peers_approved[replica_id] += sign
        for replica_id in bits_of(deny_mask):
            self.cast[replica_id] += sign
            self._disagreed[replica_id] += sign * allowed
            if allows > denies - 1:
                self._peers_approved[replica_id] += sign
                self._denied_against[replica_id] += sign
            elif denies - 1 > allows:
                self._peers_denied[replica_id] += sign

    def rates(self, replica_id: int) -> VoteRates | None:
        """The replica's figures, or None with fewer than ``min_votes`` votes in the window to judge by."""
        cast = self.cast[replica_id]
        if cast < self._min_votes:
            return None
        return VoteRates(cast, self._allowed[replica_id] * 1000 // cast, self._disagreed[replica_id] * 1000 // cast,
                         self._peers_denied[replica_id], self._approved_against[replica_id],
                         self._peers_approved[replica_id], self._denied_against[replica_id])

    def to_wire(self) -> list:
        width = (self._replica_count + 7) // 8
        return [[allow.to_bytes(width, "little"), deny.to_bytes(width, "little"), int(allowed)]
                for allow, deny, allowed in self._window]
