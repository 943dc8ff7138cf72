"""The replica's checkpoint component: checkpoints, the stable checkpoint and low water mark, state transfer.

It owns everything about checkpoints: the CHECKPOINTs collected in the window,
our exported state at our own checkpoints, the stable checkpoint (the low water
mark, its proof and the state we serve), and the state-transfer session that
fetches a certified checkpoint we are behind (the protocol is described in
``_state_transfer``, which holds its pure parts).  When the low water mark moves
it tells the replica, which forgets the slots below it.
"""

from __future__ import annotations

from collections import Counter, deque

from ._codec import digest
from ._errors import RemoteProtocolError
from ._execution import LogEntry, read_state_header
from ._messages import Checkpoint, Message, StateReply, StateRequest
from ._ready import LogRead
from ._recovery import latest_stable_proof
from ._state_transfer import (STATE_ADOPTIONS_KEPT, STATE_REPLIES_PER_TICK_MAX, StateAdoption, TransferSession, _bad,
                              pack_log_chunk, parse_log_chunk)
from ._view_change import check_stable_proof


def state_matches_proof(state: bytes, proof: tuple[Checkpoint, ...]) -> bool:
    """The exported ``state`` is the one a (validated, non-empty) stable proof certifies."""
    return digest(state) == proof[0].state_digest


def within_window(seqs, low_water: int, high_water: int) -> bool:
    """Every seq in ``seqs`` lies in the window (low_water, high_water]."""
    return not seqs or (low_water < min(seqs) and max(seqs) <= high_water)


class Checkpoints:
    def __init__(self, replica) -> None:
        self.replica = replica
        self.low_water = 0
        self.stable_proof: tuple[Checkpoint, ...] = ()
        self.checkpoints: dict[int, dict[int, Checkpoint]] = {}
        self.lag_target_seq = 0  # The highest seq the cluster is known to have checkpointed past us.
        self._lag_noted_tick = 0
        self.transfer: TransferSession | None = None
        self.checkpoints_ahead: dict[int, int] = {}  # Replica -> highest checkpoint seq it sent above our window.
        self.checkpoint_states: dict[int, bytes] = {}  # Our exported state at our checkpoints in the window.
        self.stable_state: bytes | None = None  # The exported state at ``low_water`` (what we serve).
        self.state_adoptions: deque[StateAdoption] = deque(maxlen=STATE_ADOPTIONS_KEPT)
        self.transfer_counts: Counter[str] = Counter()
        self._replies_this_tick: Counter[int] = Counter()

    def restore(self, signed: list[Message], own: list[Message]) -> None:
        """After a restart: the latest stable checkpoint we persisted a proof of, and our own checkpoints above it."""
        replica = self.replica
        proof = latest_stable_proof(signed, lambda seq: replica.epochs.keys_for_seq(seq)[0].quorum,
                                    replica.last_executed)
        if proof:
            self.low_water, self.stable_proof = proof[0].seq, proof
        for checkpoint in own:
            if isinstance(checkpoint, Checkpoint) and self.low_water < checkpoint.seq <= replica.high_water:
                self.checkpoints.setdefault(checkpoint.seq, {})[replica.replica_id] = checkpoint
        # The state at an earlier checkpoint is gone; only one that is also the current state can be served.
        state = replica.execution.export_state()
        if proof and replica.last_executed == self.low_water:
            assert digest(state) == proof[0].state_digest, f"replica {replica.replica_id} restored a diverged state"
            self.stable_state = state
        elif replica.last_executed in self.checkpoints:
            own_digest = self.checkpoints[replica.last_executed][replica.replica_id].state_digest
            assert digest(state) == own_digest, f"replica {replica.replica_id} restored a diverged state"
            self.checkpoint_states[replica.last_executed] = state

    def check_bounds(self) -> None:
        replica = self.replica
        low, high, limits = self.low_water, replica.high_water, replica.limits
        assert low <= replica.last_executed <= high
        assert within_window(self.checkpoints, low, high)
        assert within_window(self.checkpoint_states, low, high)
        assert len(self.checkpoints_ahead) <= replica.config.replica_count
        assert self.transfer is None or self.transfer.buffered <= limits.state_transfer_entries_max
        assert self.stable_state is None or low > 0

    # ------------------------------------------------------------- checkpoints and the low water mark

    def take_checkpoint(self, seq: int) -> None:
        """We executed up to a checkpoint boundary: sign our state there and send it."""
        replica = self.replica
        state = self.checkpoint_states[seq] = replica.execution.export_state()
        checkpoint = replica._sign(Checkpoint(seq, digest(state), replica.replica_id, bytes(64)))
        replica._broadcast(checkpoint)
        self.checkpoints.setdefault(seq, {})[replica.replica_id] = checkpoint
        self._check_stable(seq)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        replica = self.replica
        if checkpoint.seq % replica.limits.checkpoint_interval != 0:
            raise RemoteProtocolError("bad-checkpoint", f"seq {checkpoint.seq} is not a checkpoint boundary")
        if checkpoint.seq <= self.low_water:
            return  # Already stable here; late checkpoints are expected and harmless.
        if checkpoint.seq > replica.high_water:
            self._note_checkpoint_ahead(checkpoint)  # Evidence that we are behind (state transfer below).
            return
        existing = self.checkpoints.get(checkpoint.seq, {}).get(checkpoint.replica_id)
        if existing is not None:
            if existing != checkpoint:
                raise RemoteProtocolError("equivocation", f"two checkpoints for seq {checkpoint.seq}")
            return
        self.checkpoints.setdefault(checkpoint.seq, {})[checkpoint.replica_id] = checkpoint
        self._check_stable(checkpoint.seq)

    def _check_stable(self, seq: int) -> None:
        replica = self.replica
        by_digest: dict[bytes, list[Checkpoint]] = {}
        for checkpoint in self.checkpoints.get(seq, {}).values():
            by_digest.setdefault(checkpoint.state_digest, []).append(checkpoint)
        proof = next((group for group in by_digest.values() if len(group) >= replica.quorum), None)
        if proof is None:
            return
        if replica.last_executed < seq:
            self.note_lag(seq)  # Certified, and we are behind it: execute there or fetch it.
            return
        own = self.checkpoints[seq].get(replica.replica_id)
        assert own is not None and own.state_digest == proof[0].state_digest, \
            f"replica {replica.replica_id} diverged from a quorum at checkpoint {seq}"
        self.advance_low_water(seq, tuple(sorted(proof, key=lambda c: c.replica_id)[:replica.quorum]))

    def adopt_stable_checkpoint(self, seq: int, proof: tuple[Checkpoint, ...]) -> None:
        """A quorum certified the state at ``seq`` (in a NEW-VIEW); we executed past it, so ours must match."""
        replica = self.replica
        own = self.checkpoints.get(seq, {}).get(replica.replica_id)
        assert own is None or own.state_digest == proof[0].state_digest, \
            f"replica {replica.replica_id} diverged from a certified checkpoint at {seq}"
        if own is not None:
            self.advance_low_water(seq, proof)

    def advance_low_water(self, seq: int, proof: tuple[Checkpoint, ...]) -> None:
        replica = self.replica
        assert seq > self.low_water and len(proof) >= replica.epochs.keys_for_seq(seq)[0].quorum
        # Durable with the water mark, so that a restart resumes from this stable checkpoint.
        replica._out.persist.extend(checkpoint for checkpoint in proof if checkpoint.replica_id != replica.replica_id)
        self.low_water = seq
        self.stable_proof = proof
        self.stable_state = self.checkpoint_states.get(seq)
        for old_seq in [s for s in self.checkpoint_states if s <= seq]:
            del self.checkpoint_states[old_seq]
        for old_seq in [s for s in self.checkpoints if s <= seq]:
            del self.checkpoints[old_seq]
        replica.epochs.enter_if_due()  # Before anything is proposed above ``seq``: it may be a new epoch's.
        replica.normal.forget_up_to(seq)

    # ------------------------------------------------------------- noticing that we are behind

    def note_lag(self, seq: int) -> None:
        """The cluster has a stable checkpoint at ``seq`` or later (certified, or claimed by f+1)."""
        replica = self.replica
        if seq <= replica.last_executed or seq <= self.lag_target_seq:
            return
        if self.lag_target_seq <= replica.last_executed:
            self._lag_noted_tick = replica.ticks  # A new episode of lag: the wait starts now.
        self.lag_target_seq = seq

    def _note_checkpoint_ahead(self, checkpoint: Checkpoint) -> None:
        """A checkpoint above our window: once f+1 replicas are past it, at least one correct one is."""
        replica = self.replica
        previous = self.checkpoints_ahead.get(checkpoint.replica_id, 0)
        self.checkpoints_ahead[checkpoint.replica_id] = max(previous, checkpoint.seq)
        claims = sorted(self.checkpoints_ahead.values(), reverse=True)
        if len(claims) > replica.config.faulty_max:
            self.note_lag(claims[replica.config.faulty_max])

    def tick(self) -> None:
        replica = self.replica
        self._replies_this_tick.clear()
        if self.lag_target_seq <= replica.last_executed:
            self.lag_target_seq = 0
            self.checkpoints_ahead = {r: s for r, s in self.checkpoints_ahead.items() if s > replica.high_water}
        session = self.transfer
        if session is not None and session.seq() <= replica.last_executed:
            self.transfer = None  # Ordinary execution caught up with what we were fetching.
        if self.transfer is None:
            if self.lag_target_seq and replica.ticks - self._lag_noted_tick >= replica.limits.state_transfer_wait_ticks:
                self.transfer = TransferSession(self.lag_target_seq)
                self.transfer_counts["started"] += 1
                self._ask_next_peer(self.transfer)
        elif replica.ticks - self.transfer.sent_tick >= replica.limits.state_transfer_retry_ticks:
            self.transfer_counts["retried"] += 1
            self._ask_next_peer(self.transfer)

    # ------------------------------------------------------------- asking

    def _ask_next_peer(self, session: TransferSession) -> None:
        replica = self.replica
        peers = [r for r in range(replica.config.replica_count)
                 if r != replica.replica_id and r not in session.excluded]
        if not peers:
            session.excluded.clear()  # Everyone failed us once; give them all another chance.
            peers = [r for r in range(replica.config.replica_count) if r != replica.replica_id]
        session.peer = peers[(replica.replica_id + session.attempts) % len(peers)]
        session.attempts += 1
        if session.state is None:
            first, last = 0, 0
        else:
            last, _ = session.link()
            first = max(replica.execution.log_length + 1, last - replica.limits.state_transfer_chunk_entries + 1)
        request = replica._sign(StateRequest(session.target_seq, first, last, replica.view,
                                                  replica.replica_id, bytes(64)))
        session.outstanding = request
        session.sent_tick = replica.ticks
        replica._out.to_replicas.append((session.peer, request))

    # ------------------------------------------------------------- answering

    def on_state_request(self, request: StateRequest) -> None:
        replica = self.replica
        if request.replica_id == replica.replica_id:
            raise RemoteProtocolError("bad-state-request", "a replica does not ask itself for state")
        if self._replies_this_tick[request.replica_id] >= STATE_REPLIES_PER_TICK_MAX:
            raise RemoteProtocolError("rate-limited",
                                      f"more than {STATE_REPLIES_PER_TICK_MAX} state requests this tick")
        self._replies_this_tick[request.replica_id] += 1
        if request.first_position == 0 and request.last_position > 0:
            replica.catch_up.answer_slots(request)  # A catch-up request: committed slots, not a snapshot.
            return
        if request.first_position == 0:
            self._answer_snapshot(request)
            return
        count = request.last_position - request.first_position + 1
        if not 1 <= count <= replica.limits.state_transfer_chunk_entries:
            raise RemoteProtocolError("bad-state-request", f"asks for {count} log entries, "
                                      f"a chunk is 1 to {replica.limits.state_transfer_chunk_entries}")
        if request.first_position <= replica.execution.log_length:
            replica._out.log_reads.append(LogRead(request.replica_id, request.first_position,
                                               min(request.last_position, replica.execution.log_length)))

    def _answer_snapshot(self, request: StateRequest) -> None:
        replica = self.replica
        if request.last_position != 0:
            raise RemoteProtocolError("bad-state-request", "a snapshot request names no log positions")
        if self.stable_state is None or self.low_water < max(request.checkpoint_seq, 1):
            return  # Nothing stable that far yet: the requester will ask another peer.
        reply = StateReply(self.low_water, self.stable_proof, self.stable_state, 0, b"", replica.replica_id, bytes(64))
        replica._out.to_replicas.append((request.replica_id, replica._sign(reply)))

    def answer_log_read(self, read: LogRead, entries: tuple[LogEntry, ...]) -> None:
        replica = self.replica
        assert 0 < len(entries) <= read.last_position - read.first_position + 1, (read, len(entries))
        assert all(entry.position == read.first_position + index for index, entry in enumerate(entries))
        reply = StateReply(0, (), b"", read.first_position, pack_log_chunk(entries), replica.replica_id, bytes(64))
        replica._out.to_replicas.append((read.replica_id, replica._sign(reply)))

    # ------------------------------------------------------------- receiving

    def on_state_reply(self, reply: StateReply) -> None:
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
        replica = self.replica
        if reply.entries:
            raise _bad("bad-state", "asked for a snapshot, got log entries")
        if reply.checkpoint_seq < session.target_seq:
            raise _bad("bad-state", f"a snapshot at {reply.checkpoint_seq}, asked for {session.target_seq} or later")
        try:
            config, verifier = replica.epochs.keys_for_seq(reply.checkpoint_seq)  # The epoch that certified it.
            check_stable_proof(reply.checkpoint_seq, reply.stable_proof, config, verifier)
        except RemoteProtocolError as error:
            raise _bad("bad-state-proof", error.detail) from None
        if reply.checkpoint_seq == 0 or not state_matches_proof(reply.state, reply.stable_proof):
            raise _bad("bad-state", "the state does not hash to the digest its proof certifies")
        header = read_state_header(reply.state)
        if header.last_executed_seq != reply.checkpoint_seq:
            raise _bad("bad-state", "the certified state names another seq")  # Only a hash collision gets here.
        if reply.checkpoint_seq <= replica.last_executed:
            self.transfer = None  # We caught up meanwhile; a valid but stale answer.
            return
        assert header.log_length >= replica.execution.log_length, \
            f"replica {replica.replica_id}'s log is longer than a certified state's log at a later seq: diverged"
        gap = header.log_length - replica.execution.log_length
        if gap > replica.limits.state_transfer_entries_max:
            self.transfer_counts["gap-too-large"] += 1
            self.transfer = None
            self.lag_target_seq, self._lag_noted_tick = 0, replica.ticks
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
        assert session.buffered <= self.replica.limits.state_transfer_entries_max
        self._continue(session)

    def _continue(self, session: TransferSession) -> None:
        replica = self.replica
        if session.seq() <= replica.last_executed:
            # Execution (ordinary, or from commit certificates while catching up) passed what we were
            # fetching while the chunks arrived: nothing left to adopt, and our log may now reach past
            # the certified range, so the prefix check below would compare the wrong positions.
            self.transfer = None
            self.transfer_counts["overtaken"] += 1
            return
        link_position, _ = session.link()
        if link_position > replica.execution.log_length:
            self._ask_next_peer(session)
        else:
            self._adopt(session)

    def _missing_entries(self, session: TransferSession) -> tuple[LogEntry, ...]:
        """The certified entries above our head.  Our own log may have grown into the fetched range
        meanwhile; either way the certified chain must pass through our head (else we diverged)."""
        replica = self.replica
        length, head = replica.execution.log_length, replica.execution.head_hash
        fetched = [entry for chunk in session.chunks for entry in chunk]
        link_position, link_hash = session.link()
        at_head = link_hash if link_position == length else next(
            (entry.entry_hash for entry in fetched if entry.position == length), None)
        assert at_head == head, f"replica {replica.replica_id}'s log is not a prefix of the certified log: diverged"
        return tuple(entry for entry in fetched if entry.position > length)

    # ------------------------------------------------------------- adopting

    def _adopt(self, session: TransferSession) -> None:
        replica = self.replica
        entries = self._missing_entries(session)
        seq = session.header.last_executed_seq
        assert seq > replica.last_executed and seq > self.low_water
        own = self.checkpoints.get(seq, {}).get(replica.replica_id)
        assert own is None, f"replica {replica.replica_id} checkpointed seq {seq} without executing it"
        replica._out.persist.extend(entries)
        replica._out.finalized.extend(entries)
        replica.execution.adopt_transferred(session.state, entries)
        replica.requests.forget_transferred(entries)
        state_digest = digest(session.state)
        if seq > replica.epochs.starts_after:  # A joining replica signs nothing for its predecessors' epoch.
            replica._broadcast(replica._sign(Checkpoint(seq, state_digest, replica.replica_id, bytes(64))))
        self.checkpoint_states[seq] = session.state
        self.state_adoptions.append(StateAdoption(seq, state_digest, session.proof,
                                                  session.header.log_length, session.header.head_hash, len(entries)))
        self.transfer = None
        self.transfer_counts["adopted"] += 1
        self.advance_low_water(seq, session.proof)
        replica.catch_up.probe_soon()  # Slots may have committed above the checkpoint: fetch them too.
        replica.views.note_progress()
        replica.executor.execute_committed()
