"""Durable storage behind one small interface, ``Store``, shared by every driver.

``MemoryStore`` serves the deterministic simulator (``snapshot`` models a crash
and restart); ``SqliteStore`` serves real replicas.  Both enforce the same
write rules (see ``_recovered``), so a bug the simulator finds is the bug
production would have hit.
"""

from __future__ import annotations

from typing import Collection, Mapping, Protocol, runtime_checkable

from ..core import LogEntry, Message
from ._memory import MemoryStore
from ._pruning import StorePruner
from ._recovered import LogHead, MetadataValue, RecoveredState, StorageError
from ._sqlite import SqliteStore


@runtime_checkable
class Store(Protocol):
    """What a replica's driver needs from storage.

    ``persist`` is the only write on the hot path and is all-or-nothing: when it
    returns, every item is durable, and only then may the driver send (see
    ``bft.core.apply_ready``).  ``load`` is called once, at start-up.
    """

    # True when a write waits for a disk: the runtime then writes from a worker thread, so the wait
    # never stalls its event loop; a store in memory is written in line, with no thread hand-off.
    waits_for_disk: bool

    def persist(self, items: tuple[Message | LogEntry, ...], *,
                metadata: Mapping[str, MetadataValue] | None = None) -> int:
        """Make ``items`` (and the ``metadata`` keys given) durable together; return ``len(items)``."""

    def load(self) -> RecoveredState:
        """Everything durable, checked; raises ``StorageError`` if it is damaged."""

    def prune_signed_below(self, seq: int) -> int:
        """Forget signed messages made obsolete by a stable checkpoint at ``seq``; return how many."""

    def prune_views_below(self, view: int) -> int:
        """Forget view-change and new-view messages of views below ``view``; return how many."""

    def prune_votes(self, request_digests: Collection[bytes]) -> int:
        """Forget this replica's votes on these requests (``Ready.dead_votes``); return how many."""

    def read_log(self, first_position: int, last_position: int) -> tuple[LogEntry, ...]:
        """The verdict-log entries at positions ``first_position..last_position`` that exist, in order."""

    def close(self) -> None:
        """Release the store; it is not used afterwards."""


__all__ = ["LogHead", "MemoryStore", "MetadataValue", "RecoveredState", "SqliteStore", "StorageError", "Store",
           "StorePruner"]
