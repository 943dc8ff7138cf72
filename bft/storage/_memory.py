"""In-memory store for the deterministic simulator, with the same rules as the SQLite store.

``snapshot`` is how the simulator models a crash: the copy holds exactly what
was durable at that moment, and nothing done to the original afterwards (or to
the copy) leaks into the other.  Stored items are frozen dataclasses, so a copy
of the containers is a full copy.
"""

from __future__ import annotations

from typing import Collection, Mapping

from ..core import LogEntry, Message
from ._recovered import (LogHead, MetadataValue, RecoveredState, check_metadata, check_metadata_count,
                         is_dead_vote, is_prunable, is_prunable_view_message, signed_columns)


class MemoryStore:
    """Not thread-safe: the simulator drives it from one thread, and so does the runtime."""

    waits_for_disk = False

    def __init__(self) -> None:
        self._signed: list[Message] = []
        self._log: list[LogEntry] = []
        self._positions_by_key: dict[tuple[str, int], int] = {}
        self._seq_by_request_digest: dict[bytes, int] = {}  # The verdict_log_by_request index of the SQLite store.
        self._metadata: dict[str, MetadataValue] = {}
        self._head = LogHead()

    # ------------------------------------------------------------ the Store interface

    def persist(self, items: tuple[Message | LogEntry, ...], *,
                metadata: Mapping[str, MetadataValue] | None = None) -> int:
        """Store all of ``items`` (and ``metadata``) or, if any breaks a rule, none of them."""
        head, new_keys = self._head, {}
        for item in items:
            if isinstance(item, LogEntry):
                head = head.after(item)
                assert item.key not in self._positions_by_key and item.key not in new_keys, \
                    f"request {item.key} was already finalized (exactly-once)"
                new_keys[item.key] = item.position
            else:
                signed_columns(item)
        check_metadata(metadata or {})
        check_metadata_count([*self._metadata, *(metadata or {})])
        # Every check passed: apply the whole call, so it is all-or-nothing like a transaction.
        for item in items:
            (self._log if isinstance(item, LogEntry) else self._signed).append(item)
        self._positions_by_key.update(new_keys)
        self._seq_by_request_digest.update((entry.request_digest, entry.seq) for entry in items
                                           if isinstance(entry, LogEntry))
        self._metadata.update(metadata or {})
        self._head = head
        assert len(self._log) == self._head.length
        return len(items)

    def load(self) -> RecoveredState:
        return RecoveredState(tuple(self._signed), tuple(self._log), dict(self._metadata))

    def prune_signed_below(self, seq: int) -> int:
        """Forget signed messages made obsolete by a stable checkpoint at ``seq``; return how many."""
        assert seq >= 0, seq
        return self._remove_signed(lambda message: is_prunable(message, seq, self._seq_by_request_digest.get))

    def prune_views_below(self, view: int) -> int:
        """Forget view-change and new-view messages of views below ``view``; return how many."""
        assert view >= 0, view
        return self._remove_signed(lambda message: is_prunable_view_message(message, view))

    def prune_votes(self, request_digests: Collection[bytes]) -> int:
        """Forget votes on these requests (they expired unordered); return how many."""
        dead = set(request_digests)
        return self._remove_signed(lambda message: is_dead_vote(message, dead))

    def read_log(self, first_position: int, last_position: int) -> tuple[LogEntry, ...]:
        """The entries at positions ``first_position..last_position`` that exist, in order."""
        assert 1 <= first_position <= last_position, (first_position, last_position)
        return tuple(self._log[first_position - 1:last_position])

    def close(self) -> None:
        """Nothing to release; present so drivers treat both stores alike."""

    # ------------------------------------------------------------ simulator helpers

    def snapshot(self) -> "MemoryStore":
        """An independent store holding the same durable contents (a crash-and-restart copy)."""
        copy = MemoryStore()
        copy._signed = list(self._signed)
        copy._log = list(self._log)
        copy._positions_by_key = dict(self._positions_by_key)
        copy._seq_by_request_digest = dict(self._seq_by_request_digest)
        copy._metadata = dict(self._metadata)
        copy._head = self._head
        return copy

    @property
    def signed(self) -> tuple[Message, ...]:
        return tuple(self._signed)

    @property
    def log(self) -> tuple[LogEntry, ...]:
        return tuple(self._log)

    @property
    def log_head(self) -> LogHead:
        return self._head

    def _remove_signed(self, should_remove) -> int:
        kept = [message for message in self._signed if not should_remove(message)]
        removed = len(self._signed) - len(kept)
        self._signed = kept
        assert removed >= 0
        return removed
