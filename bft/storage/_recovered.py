"""What a restarting replica reads back, and the write rules every store enforces alike.

Both stores (memory and SQLite) share these rules so that the simulator's
``MemoryStore`` fails on exactly the inputs the production ``SqliteStore``
fails on: a log entry that does not extend the hash chain, a request key that
was already finalized, or an item type the store does not know.  Each of those
is a bug in the caller (the core produced it), so it is an assertion, and the
whole ``persist`` call is abandoned.  Damage found on *reading* (a corrupt or
tampered file) is different: it is an operating error, raised as
``StorageError``, and the replica must refuse to start on it (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from ..core import GENESIS_HASH, LogEntry, Message

# Metadata is a small key/value table (the current view, say); it is not a second log.
MetadataValue = int | str | bytes
METADATA_KEYS_MAX = 64
METADATA_KEY_BYTES_MAX = 64
METADATA_VALUE_BYTES_MAX = 64 * 1024
SQLITE_INTEGER_MAX = 2**63 - 1


class StorageError(Exception):
    """The store cannot be opened, or what it holds is damaged; the message says where."""


@dataclass(frozen=True, slots=True)
class LogHead:
    """The end of the verdict log: how many entries it has and the hash of the last one."""

    length: int = 0
    head_hash: bytes = GENESIS_HASH

    def after(self, entry: LogEntry) -> "LogHead":
        """The head once ``entry`` is appended.  An entry that does not extend the chain is a bug."""
        assert entry.position == self.length + 1, \
            f"log entry at position {entry.position} does not follow position {self.length}"
        assert entry.previous_hash == self.head_hash, \
            f"log entry at position {entry.position} does not link to the entry_hash of position {self.length}"
        assert entry.entry_hash == entry.computed_hash(), \
            f"log entry at position {entry.position} carries an entry_hash that does not match its fields"
        return LogHead(entry.position, entry.entry_hash)


@dataclass(frozen=True, slots=True)
class RecoveredState:
    """Everything durable about one replica, as ``Store.load`` returns it.

    ``signed`` holds every signed message this replica persisted (and did not
    prune), in persist order: a restarted replica replays it so it never signs
    two different things for one slot.  ``log`` is the verdict log in position
    order, hash-chained from ``GENESIS_HASH``.  ``metadata`` is the small
    key/value table the driver chose to keep (for example the current view).
    """

    signed: tuple[Message, ...]
    log: tuple[LogEntry, ...]
    metadata: Mapping[str, MetadataValue]

    def __post_init__(self) -> None:
        assert all(isinstance(message, Message) for message in self.signed)
        assert all(entry.position == index + 1 for index, entry in enumerate(self.log)), \
            "recovered log positions must run 1, 2, 3, ..."
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def head(self) -> LogHead:
        if not self.log:
            return LogHead()
        return LogHead(self.log[-1].position, self.log[-1].entry_hash)


def signed_columns(message: Message) -> tuple[str, int | None, int | None, bytes | None]:
    """The indexable facts of a signed message: (kind, view, seq, request_digest).

    ``view`` is the view a message belongs to (``new_view`` for a view change),
    ``seq`` the slot it speaks about (``None`` for votes and view changes, which
    are about no single slot), ``request_digest`` the request a vote is about.
    """
    assert isinstance(message, Message), \
        f"a store persists signed messages and log entries, not {type(message).__name__}"
    view = getattr(message, "view", getattr(message, "new_view", None))
    seq = getattr(message, "seq", None)
    request_digest = getattr(message, "request_digest", None)
    assert view is None or 0 <= view <= SQLITE_INTEGER_MAX, view
    assert seq is None or 0 <= seq <= SQLITE_INTEGER_MAX, seq
    return type(message).__name__, view, seq, request_digest


def is_prunable(message: Message, seq_floor: int, executed_seq_of: Callable[[bytes], int | None]) -> bool:
    """May ``message`` be forgotten once a checkpoint at ``seq_floor`` is stable?

    Slot messages (pre-prepare, prepare, commit, checkpoint) below the stable
    checkpoint can never be needed again.  A vote can go once its request
    executed below the floor (``executed_seq_of`` looks the request up in the
    log, so the cost follows the stored votes, not the length of the log):
    exactly-once execution means it is never voted on again.  View-change
    messages are kept (see ``prune_views_below``).
    """
    kind, _, seq, request_digest = signed_columns(message)
    if kind == "Vote":
        executed_seq = executed_seq_of(request_digest)
        return executed_seq is not None and executed_seq < seq_floor
    return seq is not None and seq < seq_floor


def is_dead_vote(message: Message, dead_request_digests: set[bytes]) -> bool:
    """A vote on a request the replica declared dead (``Ready.dead_votes``: it expired unordered)."""
    kind, _, _, request_digest = signed_columns(message)
    return kind == "Vote" and request_digest in dead_request_digests


def is_prunable_view_message(message: Message, view_floor: int) -> bool:
    """View-change and new-view messages of views below the replica's current view."""
    kind, view, _, _ = signed_columns(message)
    return kind in ("ViewChange", "NewView") and view < view_floor


def check_metadata(metadata: Mapping[str, MetadataValue]) -> None:
    """Metadata written by the driver must be small and plainly typed; anything else is a bug."""
    for key, value in metadata.items():
        assert type(key) is str and 0 < len(key.encode()) <= METADATA_KEY_BYTES_MAX, f"bad metadata key {key!r}"
        assert type(value) in (int, str, bytes), f"metadata {key!r} must be int, str or bytes"
        if type(value) is int:
            assert -SQLITE_INTEGER_MAX - 1 <= value <= SQLITE_INTEGER_MAX, f"metadata {key!r} overflows 64 bits"
        else:
            size = len(value.encode() if type(value) is str else value)
            assert size <= METADATA_VALUE_BYTES_MAX, f"metadata {key!r} is {size} bytes"


def check_metadata_count(keys: Iterable[str]) -> None:
    count = len(set(keys))
    assert count <= METADATA_KEYS_MAX, f"{count} metadata keys exceed the limit of {METADATA_KEYS_MAX}"
