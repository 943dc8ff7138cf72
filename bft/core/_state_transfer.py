"""State transfer: a replica behind a stable checkpoint fetches it from peers and checks it before adopting.

A replica learns it is behind when a quorum of matching CHECKPOINTs names a
seq it has not executed, when f+1 replicas checkpoint above its window, or
when a NEW-VIEW starts above its last executed seq.  It first waits
``state_transfer_wait_ticks`` (the missing commits may still arrive), then:

1. **Snapshot.**  It asks one peer for its latest stable checkpoint at or
   above the target seq.  The answer must carry a stable proof (a quorum of
   distinct, validly signed, matching CHECKPOINTs) and the exported state,
   which must hash to the digest the proof certifies.  So the state is what
   at least f+1 correct replicas computed.  It names the log length and the
   head hash at that checkpoint.
2. **Log entries, top-down.**  It asks for the missing verdict-log entries in
   chunks of ``state_transfer_chunk_entries``, the highest chunk first.  The
   highest chunk must end in the certified head hash, and each lower chunk
   must end in the entry that the chunk above links to.  Every chunk is thus
   checked the moment it arrives, a peer that lies is named at once, and the
   next request goes to another peer.
3. **Adoption.**  The lowest chunk must link to this replica's own head: a
   correct replica's log is a prefix of the certified log (anything else is a
   broken invariant and crashes loudly).  The entries are persisted (the
   audit chain stays complete), the execution state becomes the snapshot, and
   the replica signs its own checkpoint there and moves its low water mark
   up, persisting the proof, so a restart resumes from the adopted state.

Bounds: one request outstanding at a time, asked again of the next peer every
``state_transfer_retry_ticks``; at most ``state_transfer_entries_max`` entries
buffered (a larger gap is counted and not fetched: the operator must copy a
peer's store); each peer is answered at most ``STATE_REPLIES_PER_TICK_MAX``
times per tick.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._codec import pack, unpack_plain
from ._errors import RemoteProtocolError
from ._execution import LogEntry, StateHeader
from ._messages import Checkpoint, StateRequest
from ._schema import record_from_wire, record_to_wire

STATE_REPLIES_PER_TICK_MAX = 4
STATE_ADOPTIONS_KEPT = 16


@dataclass(frozen=True, slots=True)
class StateAdoption:
    """A record of one adopted transfer, kept (bounded) for the invariant monitor."""

    seq: int
    state_digest: bytes
    proof: tuple[Checkpoint, ...]
    log_length: int
    head_hash: bytes
    entries_fetched: int


class TransferSession:
    """One fetch in progress: the verified snapshot, the verified chunks below its head, the open request."""

    __slots__ = ("target_seq", "state", "header", "proof", "chunks", "buffered", "outstanding", "peer",
                 "sent_tick", "attempts", "excluded")

    def __init__(self, target_seq: int) -> None:
        self.target_seq = target_seq
        self.state: bytes | None = None
        self.header: StateHeader | None = None
        self.proof: tuple[Checkpoint, ...] = ()
        self.chunks: deque[tuple[LogEntry, ...]] = deque()  # Lowest first, each checked against the one above.
        self.buffered = 0
        self.outstanding: StateRequest | None = None
        self.peer: int | None = None
        self.sent_tick = 0
        self.attempts = 0
        self.excluded: set[int] = set()

    def seq(self) -> int:
        """The checkpoint this session will adopt: the snapshot's once it came, else the target."""
        return self.header.last_executed_seq if self.header is not None else self.target_seq

    def link(self) -> tuple[int, bytes]:
        """(position, entry hash) of the highest log entry still missing, as certified from above."""
        assert self.header is not None
        if self.chunks:
            lowest = self.chunks[0][0]
            return lowest.position - 1, lowest.previous_hash
        return self.header.log_length, self.header.head_hash


def _bad(reason: str, detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, detail)


def parse_log_chunk(data: bytes, first_position: int, chunk_max: int) -> tuple[LogEntry, ...]:
    """Log entries from a peer: canonical, consecutive from ``first_position``, each hash recomputing."""
    plain = unpack_plain(data)
    if type(plain) is not list or not 1 <= len(plain) <= chunk_max:
        raise _bad("bad-log-chunk", f"a chunk holds 1 to {chunk_max} log entries")
    entries = tuple(record_from_wire(LogEntry, item, f"entries[{index}]") for index, item in enumerate(plain))
    if pack([record_to_wire(entry) for entry in entries]) != data:
        raise _bad("non-canonical", "the log chunk is not canonically encoded")
    for index, entry in enumerate(entries):
        if entry.position != first_position + index or entry.entry_hash != entry.computed_hash():
            raise _bad("bad-log-chunk", f"entry {index} is not position {first_position + index} or its hash is wrong")
        if index and entry.previous_hash != entries[index - 1].entry_hash:
            raise _bad("bad-log-chunk", f"position {entry.position} does not link to the entry before it")
    return entries


def pack_log_chunk(entries: tuple[LogEntry, ...]) -> bytes:
    return pack([record_to_wire(entry) for entry in entries])
