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

import dataclasses
from collections import Counter, deque
from dataclasses import dataclass

from ._codec import digest, pack, unpack_plain
from ._errors import RemoteProtocolError
from ._execution import LogEntry, StateHeader, read_state_header
from ._messages import Checkpoint, StateReply, StateRequest
from ._ready import LogRead
from ._schema import record_from_wire, record_to_wire
from ._view_change import check_stable_proof

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


class StateTransferMixin:
    """The state-transfer half of ``Replica`` (which provides the attributes used here)."""

    def _init_state_transfer(self) -> None:
        self.lag_target_seq = 0  # The highest seq the cluster is known to have checkpointed past us.
        self._lag_noted_tick = 0
        self.transfer: TransferSession | None = None
        self.checkpoints_ahead: dict[int, int] = {}  # Replica -> highest checkpoint seq it sent above our window.
        self.checkpoint_states: dict[int, bytes] = {}  # Our exported state at our checkpoints in the window.
        self.stable_state: bytes | None = None  # The exported state at ``low_water`` (what we serve).
        self.state_adoptions: deque[StateAdoption] = deque(maxlen=STATE_ADOPTIONS_KEPT)
        self.transfer_counts: Counter[str] = Counter()
        self._replies_this_tick: Counter[int] = Counter()

    # ------------------------------------------------------------- noticing that we are behind

    def _note_lag(self, seq: int) -> None:
        """The cluster has a stable checkpoint at ``seq`` or later (certified, or claimed by f+1)."""
        if seq <= self.last_executed or seq <= self.lag_target_seq:
            return
        if self.lag_target_seq <= self.last_executed:
            self._lag_noted_tick = self.ticks  # A new episode of lag: the wait starts now.
        self.lag_target_seq = seq

    def _note_checkpoint_ahead(self, checkpoint: Checkpoint) -> None:
        """A checkpoint above our window: once f+1 replicas are past it, at least one correct one is."""
        previous = self.checkpoints_ahead.get(checkpoint.replica_id, 0)
        self.checkpoints_ahead[checkpoint.replica_id] = max(previous, checkpoint.seq)
        claims = sorted(self.checkpoints_ahead.values(), reverse=True)
        if len(claims) > self.config.faulty_max:
            self._note_lag(claims[self.config.faulty_max])

    def _tick_state_transfer(self) -> None:
        self._replies_this_tick.clear()
        if self.lag_target_seq <= self.last_executed:
            self.lag_target_seq = 0
            self.checkpoints_ahead = {r: s for r, s in self.checkpoints_ahead.items() if s > self.high_water}
        session = self.transfer
        if session is not None and session.seq() <= self.last_executed:
            self.transfer = None  # Ordinary execution caught up with what we were fetching.
        if self.transfer is None:
            if self.lag_target_seq and self.ticks - self._lag_noted_tick >= self.limits.state_transfer_wait_ticks:
                self.transfer = TransferSession(self.lag_target_seq)
                self.transfer_counts["started"] += 1
                self._ask_next_peer(self.transfer)
        elif self.ticks - self.transfer.sent_tick >= self.limits.state_transfer_retry_ticks:
            self.transfer_counts["retried"] += 1
            self._ask_next_peer(self.transfer)

    # ------------------------------------------------------------- asking

    def _ask_next_peer(self, session: TransferSession) -> None:
        peers = [r for r in range(self.config.replica_count) if r != self.replica_id and r not in session.excluded]
        if not peers:
            session.excluded.clear()  # Everyone failed us once; give them all another chance.
            peers = [r for r in range(self.config.replica_count) if r != self.replica_id]
        session.peer = peers[(self.replica_id + session.attempts) % len(peers)]
        session.attempts += 1
        if session.state is None:
            first, last = 0, 0
        else:
            last, _ = session.link()
            first = max(self.execution.log_length + 1, last - self.limits.state_transfer_chunk_entries + 1)
        request = self._sign(StateRequest(session.target_seq, first, last, self.view, self.replica_id, bytes(64)))
        session.outstanding = request
        session.sent_tick = self.ticks
        self._out.to_replicas.append((session.peer, request))

    # ------------------------------------------------------------- answering

    def _on_state_request(self, request: StateRequest) -> None:
        if request.replica_id == self.replica_id:
            raise RemoteProtocolError("bad-state-request", "a replica does not ask itself for state")
        if self._replies_this_tick[request.replica_id] >= STATE_REPLIES_PER_TICK_MAX:
            raise RemoteProtocolError("rate-limited", f"more than {STATE_REPLIES_PER_TICK_MAX} state requests this tick")
        self._replies_this_tick[request.replica_id] += 1
        if request.first_position == 0 and request.last_position > 0:
            self._answer_slots(request)  # A catch-up request (``_catch_up``): committed slots, not a snapshot.
            return
        if request.first_position == 0:
            self._answer_snapshot(request)
            return
        count = request.last_position - request.first_position + 1
        if not 1 <= count <= self.limits.state_transfer_chunk_entries:
            raise RemoteProtocolError("bad-state-request", f"asks for {count} log entries, "
                                      f"a chunk is 1 to {self.limits.state_transfer_chunk_entries}")
        if request.first_position <= self.execution.log_length:
            self._out.log_reads.append(LogRead(request.replica_id, request.first_position,
                                               min(request.last_position, self.execution.log_length)))

    def _answer_snapshot(self, request: StateRequest) -> None:
        if request.last_position != 0:
            raise RemoteProtocolError("bad-state-request", "a snapshot request names no log positions")
        if self.stable_state is None or self.low_water < max(request.checkpoint_seq, 1):
            return  # Nothing stable that far yet: the requester will ask another peer.
        reply = StateReply(self.low_water, self.stable_proof, self.stable_state, 0, b"", self.replica_id, bytes(64))
        self._out.to_replicas.append((request.replica_id, self._sign(reply)))

    def answer_log_read(self, read: LogRead, entries: tuple[LogEntry, ...]):
        """The driver read ``entries`` (positions ``read.first_position`` onwards) from its store."""
        return self._run(self._answer_log_read, read, tuple(entries))

    def _answer_log_read(self, read: LogRead, entries: tuple[LogEntry, ...]) -> None:
        assert 0 < len(entries) <= read.last_position - read.first_position + 1, (read, len(entries))
        assert all(entry.position == read.first_position + index for index, entry in enumerate(entries))
        reply = StateReply(0, (), b"", read.first_position, pack_log_chunk(entries), self.replica_id, bytes(64))
        self._out.to_replicas.append((read.replica_id, self._sign(reply)))

    # ------------------------------------------------------------- receiving

    def _on_state_reply(self, reply: StateReply) -> None:
        session = self.transfer
        if session is None or session.outstanding is None or reply.replica_id != session.peer \
                or reply.first_position != session.outstanding.first_position:
            return  # Late, duplicated or unsolicited: nothing asked this peer for it now.
        try:
            if session.state is None:
                self._accept_snapshot(session, reply)
            else:
                self._accept_chunk(session, reply)
        except RemoteProtocolError:
            session.excluded.add(reply.replica_id)
            self.transfer_counts["rejected"] += 1
            self._ask_next_peer(session)
            raise

    def _accept_snapshot(self, session: TransferSession, reply: StateReply) -> None:
        if reply.entries:
            raise _bad("bad-state", "asked for a snapshot, got log entries")
        if reply.checkpoint_seq < session.target_seq:
            raise _bad("bad-state", f"a snapshot at {reply.checkpoint_seq}, asked for {session.target_seq} or later")
        try:
            check_stable_proof(reply.checkpoint_seq, reply.stable_proof, self.config, self._verifier)
        except RemoteProtocolError as error:
            raise _bad("bad-state-proof", error.detail) from None
        if reply.checkpoint_seq == 0 or digest(reply.state) != reply.stable_proof[0].state_digest:
            raise _bad("bad-state", "the state does not hash to the digest its proof certifies")
        header = read_state_header(reply.state)
        if header.last_executed_seq != reply.checkpoint_seq:
            raise _bad("bad-state", "the certified state names another seq")  # Only a hash collision gets here.
        if reply.checkpoint_seq <= self.last_executed:
            self.transfer = None  # We caught up meanwhile; a valid but stale answer.
            return
        assert header.log_length >= self.execution.log_length, \
            f"replica {self.replica_id}'s log is longer than a certified state's log at a later seq: diverged"
        gap = header.log_length - self.execution.log_length
        if gap > self.limits.state_transfer_entries_max:
            self.transfer_counts["gap-too-large"] += 1
            self.transfer = None
            self.lag_target_seq, self._lag_noted_tick = 0, self.ticks
            return
        session.state, session.header, session.proof = reply.state, header, reply.stable_proof
        self._continue(session)

    def _accept_chunk(self, session: TransferSession, reply: StateReply) -> None:
        asked = session.outstanding
        if reply.state or reply.stable_proof:
            raise _bad("bad-log-chunk", "asked for log entries, got a snapshot")
        chunk_max = asked.last_position - asked.first_position + 1
        entries = parse_log_chunk(reply.entries, asked.first_position, chunk_max)
        if entries[-1].position != asked.last_position:
            self._ask_next_peer(session)  # The peer's log ends lower: it lags too.  Not a lie.
            return
        link_position, link_hash = session.link()
        assert entries[-1].position == link_position
        if entries[-1].entry_hash != link_hash:
            raise _bad("bad-log-chunk", f"position {link_position} is not the certified entry")
        session.chunks.appendleft(entries)
        session.buffered += len(entries)
        assert session.buffered <= self.limits.state_transfer_entries_max
        self._continue(session)

    def _continue(self, session: TransferSession) -> None:
        if session.seq() <= self.last_executed:
            # Execution (ordinary, or from commit certificates while catching up) passed what we were
            # fetching while the chunks arrived: nothing left to adopt, and our log may now reach past
            # the certified range, so the prefix check below would compare the wrong positions.
            self.transfer = None
            self.transfer_counts["overtaken"] += 1
            return
        link_position, _ = session.link()
        if link_position > self.execution.log_length:
            self._ask_next_peer(session)
        else:
            self._adopt(session)

    def _missing_entries(self, session: TransferSession) -> tuple[LogEntry, ...]:
        """The certified entries above our head.  Our own log may have grown into the fetched range
        meanwhile; either way the certified chain must pass through our head (else we diverged)."""
        length, head = self.execution.log_length, self.execution.head_hash
        fetched = [entry for chunk in session.chunks for entry in chunk]
        link_position, link_hash = session.link()
        at_head = link_hash if link_position == length else next(
            (entry.entry_hash for entry in fetched if entry.position == length), None)
        assert at_head == head, f"replica {self.replica_id}'s log is not a prefix of the certified log: diverged"
        return tuple(entry for entry in fetched if entry.position > length)

    # ------------------------------------------------------------- adopting

    def _adopt(self, session: TransferSession) -> None:
        entries = self._missing_entries(session)
        seq = session.header.last_executed_seq
        assert seq > self.last_executed and seq > self.low_water
        own = self.checkpoints.get(seq, {}).get(self.replica_id)
        assert own is None, f"replica {self.replica_id} checkpointed seq {seq} without executing it"
        self._out.persist.extend(entries)
        self._out.finalized.extend(entries)
        self.execution.adopt_transferred(session.state, entries)
        self.pending.remove_where(lambda p: p.request is not None and (
            self.execution.cached_reply(*p.request.key) is not None or self.execution.is_stale(*p.request.key)))
        for entry in entries:
            self.recovered_votes.pop(entry.request_digest, None)
        checkpoint = self._sign(Checkpoint(seq, digest(session.state), self.replica_id, bytes(64)))
        self._broadcast(checkpoint)
        self.checkpoint_states[seq] = session.state
        self.state_adoptions.append(StateAdoption(seq, checkpoint.state_digest, session.proof,
                                                  session.header.log_length, session.header.head_hash, len(entries)))
        self.transfer = None
        self.transfer_counts["adopted"] += 1
        self._advance_low_water(seq, session.proof)
        self._probe_due = True  # Slots may have committed above the checkpoint: fetch them too.
        self._note_progress()
        self._execute_committed()
