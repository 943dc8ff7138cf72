"""The sans-IO PBFT replica: inputs in, ``Ready`` out; no I/O, no clock, no randomness.

Inputs:
- ``submit(request)``: a client's request arrived.
- ``step(message)``: a message from another replica arrived.
- ``record_decision(digest, decision, reason)``: this replica's policy answered
  a request listed earlier in ``Ready.evaluate`` (the driver runs the policy, so
  it can enforce the policy deadline and map errors to DENY).
- ``tick(now_ms)``: one tick of the driver's clock passed; ``now_ms`` is its reading.

Each input returns a ``Ready``.  The driver must persist ``Ready.persist``
before sending anything (see ``apply_ready``).  A message that fails any check
is rejected with a reason and leaves the replica's state exactly as it was:
handlers validate first and mutate after.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable

from sortedcontainers import SortedDict

from ._codec import digest as sha256, record_digest, request_digest
from ._config import ClusterConfig
from ._crypto import KeyPair, Signer, Verifier
from ._errors import LocalProtocolError, RemoteProtocolError
from ._execution import ExecutionState, LogEntry, votes_digest
from ._messages import (MAX_REASON_BYTES, Batch, BatchEntry, Checkpoint, Commit, Decision, Message,
                        NewView, PrePrepare, Prepare, PreparedProof, Reply, Request, StateReply, StateRequest,
                        ViewChange, Vote)
from ._pending import PendingRequest, PendingPool
from ._quorum import primary_of
from ._ready import LogRead, ReadyBuilder, Ready, Rejection
from ._recovery import latest_prepared_proofs, stored_preprepares, view_of
from ._replica_accountability import Accountability
from ._replica_views import ViewChanges
from ._slots import Slot
from ._checkpoints import Checkpoints, within_window
from ._accountability import EquivocationProof
from ._accountability_state import AccountabilityState
from ._catch_up import CATCH_UP_STATES, CatchUp


def sender_of(message: Message) -> str:
    if isinstance(message, Request):
        return f"client {message.client_id}"
    return f"replica {message.replica_id}"


def truncate_reason(reason: str) -> str:
    """Fit a policy's reason into a vote: valid UTF-8 (lone surrogates replaced), at most the byte limit."""
    if not isinstance(reason, str):
        raise LocalProtocolError(f"a decision reason must be text, got {type(reason).__name__}")
    return reason.encode("utf-8", errors="replace")[:MAX_REASON_BYTES].decode("utf-8", errors="ignore")


class Replica:
    def __init__(self, config: ClusterConfig, replica_id: int, seed: bytes) -> None:
        if not 0 <= replica_id < config.replica_count:
            raise LocalProtocolError(f"replica id {replica_id} is not in a cluster of {config.replica_count}")
        if KeyPair.from_seed(seed).public_key != config.replica_keys[replica_id]:
            raise LocalProtocolError(f"the private key does not match replica {replica_id}'s configured public key")
        self.config = config
        self.replica_id = replica_id
        self.limits = config.limits
        self._quorum = config.quorum  # Asked on most inputs; the configuration is frozen.
        self._signer = Signer(config.cluster_id, seed)
        self._verifier = Verifier(config.cluster_id, config.replica_keys, dict(config.client_keys))
        self.now_ms = 0
        self.ticks = 0
        self.next_seq = 1
        self.execution = ExecutionState(config.rules, config.limits.client_window, config)
        self.slots: SortedDict[int, Slot] = SortedDict()
        self.pending = PendingPool(config.limits.max_pending_requests,
                                   max(1, config.limits.max_pending_requests // (2 * config.replica_count)))
        self.rejected_counts: Counter[str] = Counter()
        self.prepared_proofs: dict[int, PreparedProof] = {}
        self.early_preprepares: dict[int, PrePrepare] = {}
        self.signed_digests: dict[tuple[str, int, int], bytes] = {}
        self.recovered_votes: dict[bytes, Vote] = {}
        self._dead_votes_backlog: list[bytes] = []
        self._out: ReadyBuilder | None = None
        self.checkpointing = Checkpoints(self)
        self.views = ViewChanges(self)
        self.catch_up = CatchUp(self)
        self._handlers: dict[type, Callable] = {
            Request: self._on_forwarded_request, Vote: self._on_vote, PrePrepare: self._on_preprepare,
            Prepare: self._on_prepare, Commit: self._on_commit, Checkpoint: self.checkpointing.on_checkpoint,
            ViewChange: self.views.on_view_change, NewView: self.views.on_new_view,
            StateRequest: self.checkpointing.on_state_request, StateReply: self.checkpointing.on_state_reply,
        }
        self.accuser = Accountability(self)

    @classmethod
    def recover(cls, config: ClusterConfig, replica_id: int, seed: bytes,
                signed: tuple[Message, ...], log: tuple) -> "Replica":
        """A replica restarted from durable storage: the signed messages it persisted and its verdict log.

        It remembers every digest it signed (S7 holds across the restart), and
        it gets back its stable checkpoint and its prepared proofs, which it
        persisted before sending anything that relied on them (see
        ``_recovery``), so its VIEW-CHANGE is as good as a replica's that never
        stopped.  It resumes in the highest view it took part in: active if it
        had already worked in that view, otherwise waiting for the view's
        NEW-VIEW with its own VIEW-CHANGE ready to send again.  Replies to the
        requests it executed above its stable checkpoint are signed again from
        the stored batches, so a client retrying after a restart of the whole
        cluster still gets f+1 replies.
        """
        replica = cls(config, replica_id, seed)
        signed = list(signed)
        own = [m for m in signed if getattr(m, "replica_id", None) == replica_id]
        replica.execution.restore(tuple(log), max((m.seq for m in own if isinstance(m, Checkpoint)), default=0))
        replica.checkpointing.restore(signed, own)
        replica.next_seq = replica.low_water + 1
        replica.views.restore(own)
        if any(view_of(m) is not None for m in own):
            replica._restore_next_seq(own)
        for message in own:
            replica._remember_signed(message)
        replica.prepared_proofs = latest_prepared_proofs(signed, config.replica_count, replica.quorum,
                                                         replica.low_water, replica.high_water)
        replica._restore_replies(signed)
        # Votes persisted before the crash are re-sent as they were, never re-decided: a
        # policy that answers differently now must not make this replica sign a second vote.
        votes = [m for m in own if isinstance(m, Vote)]
        kept = votes[-config.limits.max_pending_requests:]
        replica.recovered_votes = {vote.request_digest: vote for vote in kept}
        # Older votes are beyond what the pending pool could still hold: their requests are long gone.
        replica._dead_votes_backlog = [vote.request_digest for vote in votes[:len(votes) - len(kept)]]
        replica.catch_up.probe_soon()  # It was away for an unknown time: ask a peer what committed meanwhile.
        replica.check_invariants()
        return replica

    def _restore_next_seq(self, own: list[Message]) -> None:
        view = self.view
        current = [m for m in own if view_of(m) == view]
        proposed = [pp.seq for pp in stored_preprepares(current, self.config.replica_count) if pp.view == view]
        self.next_seq = max([self.low_water, *proposed]) + 1

    def _restore_replies(self, signed: list[Message]) -> None:
        votes_at: dict[tuple[int, bytes], list[tuple[Vote, ...]]] = {}
        for preprepare in stored_preprepares(signed, self.config.replica_count):
            for entry in preprepare.batch.entries:
                key = (preprepare.seq, request_digest(self.config.cluster_id, entry.request))
                votes_at.setdefault(key, []).append(tuple(sorted(entry.votes, key=lambda vote: vote.replica_id)))
        restored = [outcome for record in self.execution.clients.values() for outcome in record.replies.values()
                    if not isinstance(outcome, Reply) and (outcome.seq, outcome.request_digest) in votes_at]
        for entry in restored:
            votes = next((v for v in votes_at[(entry.seq, entry.request_digest)]
                          if votes_digest(v) == entry.votes_digest), None)
            if votes is not None:
                reply = Reply(entry.client_id, entry.request_number, entry.request_digest, entry.seq,
                              entry.timestamp_ms, entry.decision, entry.reason, votes, self.replica_id, bytes(64))
                assert self.execution.replace_outcome(self._sign(reply))

    def _remember_signed(self, message: Message) -> None:
        if isinstance(message, NewView):
            for preprepare in message.preprepares:  # Re-proposals we signed inside our own NEW-VIEW.
                self._remember_signed(preprepare)
            return
        phase = {PrePrepare: "pre-prepare", Prepare: "prepare", Commit: "commit"}.get(type(message))
        if phase is None or message.seq <= self.low_water or message.view < self.view:
            return
        digest_signed = record_digest(message.batch) if isinstance(message, PrePrepare) else message.batch_digest
        self.signed_digests[(phase, message.view, message.seq)] = digest_signed

    # ----------------------------------------------------------------- inputs

    def submit(self, request: Request) -> Ready:
        """A request from its client (a retransmission of a finalized one is answered from the cache)."""
        if not isinstance(request, Request):
            raise LocalProtocolError(f"submit takes a client's Request, not {type(request).__name__}")
        return self._run(self._receive, request, self._on_request)

    def step(self, message: Message) -> Ready:
        """A message from a peer replica; a ``Request`` among them is one the peer forwarded."""
        return self._run(self._receive, message)

    def record_decision(self, digest: bytes, decision: Decision, reason: str) -> Ready:
        return self._run(self._record_decision, digest, decision, reason)

    def report_equivocation(self, proof: EquivocationProof) -> Ready:
        """Submit ``proof`` (from ``Rejection.evidence``) as an evidence command, once per proof."""
        return self._run(self.accuser.report_equivocation, proof)

    def endorse_blocklist_pattern(self, pattern: str, ttl_ms: int) -> Ready:
        """Propose a shared-blocklist pattern as this replica; it takes effect once f+1 replicas endorse it.

        Raises ``LocalProtocolError`` if the endorsement is malformed (an
        over-broad pattern, a bad ttl), before anything is signed.
        """
        return self._run(self.accuser.endorse_blocklist_pattern, pattern, ttl_ms)

    def tick(self, now_ms: int) -> Ready:
        if now_ms < self.now_ms:
            raise LocalProtocolError(f"the clock went backwards: {now_ms} < {self.now_ms}")
        return self._run(self._tick, now_ms)

    # ----------------------------------------------------------------- views of state

    @property
    def quorum(self) -> int:
        return self._quorum

    @property
    def primary_id(self) -> int:
        return primary_of(self.view, self.config.replica_count)

    @property
    def is_primary(self) -> bool:
        return self.primary_id == self.replica_id

    @property
    def accountability(self) -> AccountabilityState:
        """The replicated accountability state (read it, e.g. ``.status()``; never change it)."""
        state = self.execution.accountability
        assert state is not None, "a replica always keeps the accountability state"
        return state

    # The view-change component's state, read-only.
    view = property(lambda self: self.views.view)
    view_active = property(lambda self: self.views.view_active)
    vote_floor_view = property(lambda self: self.views.vote_floor_view)
    view_change_by_replica = property(lambda self: self.views.view_change_by_replica)
    new_view_message = property(lambda self: self.views.new_view_message)

    # The checkpoint component's state, read-only (the runtime's metrics, the simulator, the tests read it).
    low_water = property(lambda self: self.checkpointing.low_water)
    stable_proof = property(lambda self: self.checkpointing.stable_proof)
    checkpoints = property(lambda self: self.checkpointing.checkpoints)
    checkpoint_states = property(lambda self: self.checkpointing.checkpoint_states)
    stable_state = property(lambda self: self.checkpointing.stable_state)
    lag_target_seq = property(lambda self: self.checkpointing.lag_target_seq)
    transfer = property(lambda self: self.checkpointing.transfer)
    transfer_counts = property(lambda self: self.checkpointing.transfer_counts)
    state_adoptions = property(lambda self: self.checkpointing.state_adoptions)

    @property
    def highest_seq_known(self) -> int:
        """The highest seq this replica knows the cluster committed (from proofs, never from one peer's say)."""
        return self.catch_up.highest_seq_known

    def catching_up(self) -> bool:
        """Known to be behind: a proof shows the cluster committed past what this replica executed."""
        return self.catch_up.catching_up()

    catch_up_counts = property(lambda self: self.catch_up.catch_up_counts)
    committed_seq_known = property(lambda self: self.catch_up.committed_seq_known)

    def progress_summary(self) -> dict:
        """What an operator needs to tell a healthy replica from a stranded one (no I/O, O(1)).

        A follower (active in a view below the one it asked for, ``_replica_views``) executes with the cluster
        but does not vote: the cluster has one voter fewer until its next view change, so it is reported as
        ``view-change``, not ``ok``.
        """
        changing = not self.view_active or self.view < self.vote_floor_view
        state = "view-change" if changing else "catching-up" if self.catching_up() else "ok"
        assert state in CATCH_UP_STATES
        return {"view": self.view, "view_active": self.view_active, "asked_view": self.vote_floor_view,
                "last_executed": self.last_executed, "highest_seq_known": self.highest_seq_known,
                "lag": self.highest_seq_known - self.last_executed, "state": state}

    @property
    def high_water(self) -> int:
        return self.low_water + self.limits.log_window

    @property
    def last_executed(self) -> int:
        return self.execution.last_executed_seq

    @property
    def is_quiescent(self) -> bool:
        """True when no timer of the core needs fine ticks: no request or vote waits, no slot waits for
        execution, no view change, state transfer or catch-up is under way.

        A driver may then tick rarely (the runtime's ``idle_tick_ms``), as long as it ticks (to bring
        ``now_ms`` up to date) before feeding its next input.  Ticks of a quiescent replica change
        nothing but its clock and the catch-up probe: a replica that heard nothing for
        ``view_change_timeout_ticks`` ticks asks one peer whether it missed anything (section 10b), so a
        rarely ticking idle replica also probes rarely; a pause, a restart or any input still makes it
        look at once.
        """
        # catching_up() covers a state transfer under way; a lag target already reached is cleared by a tick.
        return (self.view_active and not self.pending and not self.lag_target_seq and not self._dead_votes_backlog
                and not self.catch_up.probe_due and not self.catching_up() and not self.views.has_outstanding_work())

    # ----------------------------------------------------------------- plumbing

    def _run(self, handler: Callable, *arguments) -> Ready:
        if self._out is not None:
            raise LocalProtocolError("core inputs must not be re-entered")
        self._out = ReadyBuilder()
        self._out.dead_votes.extend(self._dead_votes_backlog)
        self._dead_votes_backlog = []
        try:
            handler(*arguments)
            return self._out.build()
        finally:
            self._out = None
            self._check_bounds()

    def _receive(self, message: Message, handler: Callable | None = None) -> None:
        try:
            handler = handler or self._handlers.get(type(message))
            if handler is None:
                raise RemoteProtocolError("unexpected-type", f"replicas do not accept {type(message).__name__}")
            if self._adds_nothing(message):
                return  # Dropped unverified: a signature check that could change nothing is not worth its cost.
            self._verifier.verify(message)
            handler(message)
            if isinstance(message, (PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView)):
                self.catch_up.note_heard()  # The cluster's own traffic, accepted (a rejected message changes nothing).
        except RemoteProtocolError as error:
            self._reject(error.from_sender(sender_of(message)))

    def _adds_nothing(self, message: Message) -> bool:
        """A PREPARE for a slot of this view that is already prepared, or a COMMIT for one already
        committed, from a replica not heard in that phase yet: a quorum decided without it, so it is
        not verified, only held (``_hold_late``) in case the same sender contradicts it (SPEC.md
        section 5, step 7).  At n=7 that is two of the six PREPAREs and two of the six COMMITs a
        replica gets.  An exact repeat of a kept message adds nothing either; a message that differs
        from the one kept is checked, as it may prove equivocation."""
        message_type = type(message)
        if message_type is not Prepare and message_type is not Commit:
            return False
        slot = self._current_slot(message.seq) if message.view == self.view else None
        if slot is None:
            return False
        existing = (slot.commits if message_type is Commit else slot.prepares).get(message.replica_id)
        if existing is not None:
            return existing == message  # A conflicting one is checked: it may be proof of equivocation.
        decided = slot.committed if message_type is Commit else slot.prepared
        if not decided or not 0 <= message.replica_id < self.config.replica_count:
            return False
        return self._hold_late(slot, message)

    def _hold_late(self, slot: Slot, message: Prepare | Commit) -> bool:
        """Hold the first late message of each sender unverified.  Only a second, different one from
        the same sender is worth signature checks: if both verify, together they prove equivocation
        (rejected with the evidence, nothing changed); a held forgery is replaced by the valid one."""
        key = (type(message).__name__, message.replica_id)
        held = slot.late.get(key)
        if held is None or held == message:
            slot.late[key] = message
            return True
        self._verifier.verify(message)  # A bad one is rejected here and changes nothing.
        try:
            self._verifier.verify(held)
        except RemoteProtocolError:
            slot.late[key] = message
            return True
        raise RemoteProtocolError("equivocation", f"two {type(message).__name__}s for seq {message.seq}",
                                  evidence=EquivocationProof.of(held, message))

    def _count_rejected(self, reason: str) -> None:
        """A remote input refused without a Rejection (kept for what it proves, not acted on)."""
        self.rejected_counts[reason] += 1

    def _reject(self, error: RemoteProtocolError) -> None:
        self.rejected_counts[error.reason] += 1
        self._out.rejected.append(Rejection(error.sender, error.reason, error.detail, error.evidence))

    def _sign(self, unsigned: Message) -> Message:
        return self._signer.sign(unsigned)

    def _may_sign(self, phase: str, seq: int, digest: bytes) -> bool:
        """S7: never sign two different digests for one (phase, view, seq), even across restarts.

        ``signed_digests`` is rebuilt from durable storage on restart, so a
        replica that forgot a slot still refuses to contradict what it sent.
        """
        if self.view < self.vote_floor_view:
            return False  # Following a view we asked to leave: learn from it, never vote in it.
        key = (phase, self.view, seq)
        previous = self.signed_digests.setdefault(key, digest)
        return previous == digest

    def _broadcast(self, message: Message) -> None:
        """Persist our own signed message, then queue it for every other replica."""
        self._out.persist.append(message)
        self._send_to_others(message)

    def _send_to_others(self, message: Message) -> None:
        """Queue ``message`` for every other replica, without persisting it (it is already durable or not ours)."""
        self._out.to_replicas.extend((replica_id, message) for replica_id in range(self.config.replica_count)
                                     if replica_id != self.replica_id)

    def check_invariants(self) -> None:
        """Every structural invariant; a failure is a bug in the core.

        The bounds (``_check_bounds``) hold after every input and are checked
        then.  This also re-derives the pending pool's indexes, a Python loop
        per input that a production replica does not pay for: the test drivers
        (the simulator, the unit tests' network, the model checker) call it
        after every input instead.
        """
        self._check_bounds()
        self.pending.check_invariants()

    def _check_bounds(self) -> None:
        """Structural bounds that must hold after every input; a failure is a bug in this file.

        It runs after every input, so each check costs O(1) or a C-level pass over a
        window-bounded table, never a Python loop over the pending pool or the log.
        """
        low, high, limits = self.low_water, self.high_water, self.limits
        assert len(self.slots) <= limits.log_window, len(self.slots)
        assert len(self.pending) <= limits.max_pending_requests
        self.pending.check_bounds()
        # The slots are sorted by seq, so checking the lowest and the highest covers them all.
        assert not self.slots or low < self.slots.peekitem(0)[0] <= self.slots.peekitem(-1)[0] <= high
        self.checkpointing.check_bounds()
        assert len(self.prepared_proofs) <= limits.log_window
        assert within_window(self.early_preprepares, low, high)
        assert len(self.signed_digests) <= 4 * limits.log_window
        assert len(self.recovered_votes) <= limits.max_pending_requests
        self.catch_up.check_bounds()
        self.accuser.check_bounds()
        self.views.check_bounds()

    # ----------------------------------------------------------------- requests and votes

    def _on_forwarded_request(self, request: Request) -> None:
        """A peer forwards the requests it has not seen ordered.  One that already finalized here is not
        answered: its client had the verdict or retransmits for it, and a lagging replica (or a Byzantine
        one) forwarding every request it missed must not make this replica re-send every verdict."""
        self._on_request(request, answer_from_cache=False)

    def _on_request(self, request: Request, answer_from_cache: bool = True) -> None:
        digest = request_digest(self.config.cluster_id, request)
        cached = self.execution.cached_reply(*request.key)
        if cached is not None:
            if cached.request_digest != digest:
                raise RemoteProtocolError("conflicting-request", "this request number already finalized another action")
            if answer_from_cache and isinstance(cached, Reply):
                self._out.to_clients.append((request.client_id, cached))
            return
        if self.execution.is_stale(*request.key):
            raise RemoteProtocolError("stale-request", f"request number {request.request_number} is below the client window")
        if request.deadline_ms < self.now_ms:
            raise RemoteProtocolError("expired", f"deadline {request.deadline_ms} ms already passed")
        pending = self.pending.get_or_create(digest, self.ticks)
        if pending is None:
            raise RemoteProtocolError("overloaded", "the pending-request pool is full")
        if pending.request is None:
            self.pending.attach_request(pending, request)
        if not pending.evaluation_requested:
            pending.evaluation_requested = True
            self._out.evaluate.append(request)
        self._maybe_propose()

    def _record_decision(self, digest: bytes, decision: Decision, reason: str) -> None:
        pending = self.pending.get(digest)
        if pending is None or not pending.evaluation_requested or self.replica_id in pending.votes:
            return  # The request finalized or expired while the policy ran; nothing to vote on.
        vote = self.recovered_votes.pop(digest, None)
        if vote is None:
            vote = self._sign(Vote(digest, decision, truncate_reason(reason), self.replica_id, bytes(64)))
            self._out.persist.append(vote)
        self._send_vote_to_primary(vote)
        self.pending.note_own_vote(pending)
        self._add_vote(pending, vote)

    def _send_vote_to_primary(self, vote: Vote) -> None:
        """Votes go to the primary alone: only its batch needs them, and it carries them to everyone.

        A vote still unproposed after a view-change timeout goes to everyone (``_share_overdue_votes``),
        so backups still time a withholding primary on a quorum of votes, and votes not yet proposed go
        again to each new primary (``_resend_votes_to_primary``); SPEC.md sections 5 (step 3) and 11b.
        """
        if not self.is_primary:
            self._out.to_replicas.append((self.primary_id, vote))

    def _share_overdue_votes(self) -> None:
        """Votes go to the primary alone, so a backup sees no quorum of votes to time the primary on.  A
        vote on a request that no pre-prepare carried for a whole view-change timeout goes to every
        replica, with its request: if a quorum of replicas is in the same position, each of them now
        sees a quorum of votes, and the ordinary timer (a request with a quorum of votes, no progress)
        replaces a primary that withholds it.  A backup cut off from the others shares into the void
        and never sees a quorum, so it never changes view alone (SPEC.md section 11b)."""
        if self.is_primary:
            return
        arrived_by_tick = self.ticks - self.limits.view_change_timeout_ticks
        for pending in self.pending.take_overdue_votes(arrived_by_tick):
            self._send_to_others(pending.votes[self.replica_id])
            if not pending.forwarded:
                pending.forwarded = True
                self._send_to_others(pending.request)

    def _forward_unordered_requests(self) -> None:
        for pending in self.pending:
            if pending.request is not None and not pending.forwarded:
                pending.forwarded = True
                self._send_to_others(pending.request)

    def _resend_votes_to_primary(self) -> None:
        """A new view's primary may never have received our votes: send those it has not proposed."""
        for pending in self.pending.voted_unproposed():
            self._send_vote_to_primary(pending.votes[self.replica_id])

    def _on_vote(self, vote: Vote) -> None:
        pending = self.pending.get(vote.request_digest)
        existing = pending.votes.get(vote.replica_id) if pending else None
        if existing is not None:
            if existing != vote:
                raise RemoteProtocolError("equivocation", "two different votes on one request")
            return
        pending = pending or self.pending.get_or_create_orphan(vote.request_digest, self.ticks, vote.replica_id)
        if pending is None:
            raise RemoteProtocolError("overloaded", f"no room for more votes on unknown requests from replica {vote.replica_id}")
        self._add_vote(pending, vote)

    def _add_vote(self, pending: PendingRequest, vote: Vote) -> None:
        assert vote.replica_id not in pending.votes
        pending.votes[vote.replica_id] = vote
        # A quarantined replica's vote does not count, so it must not start the wait for stragglers either:
        # the wait starts once a quorum of counted votes is in.
        if pending.quorum_tick is None and self._counted_vote_count(pending) >= self.quorum:
            self.pending.note_quorum(pending, self.ticks)
        self._maybe_propose()

    def _counted_vote_count(self, pending: PendingRequest) -> int:
        accountability = self.execution.accountability
        uncounted = accountability.uncounted if accountability is not None else frozenset()
        return len(pending.votes.keys() - uncounted)

    # ----------------------------------------------------------------- proposing (primary)

    def _maybe_propose(self) -> None:
        if not (self.is_primary and self.view_active) or self.view < self.vote_floor_view:
            return  # A follower of a view it asked to leave proposes nothing there (section 11a).
        in_flight_max = self.limits.max_in_flight_batches
        while self.next_seq - 1 - self.last_executed < in_flight_max and self.next_seq <= self.high_water:
            entries = self._proposable()
            if not entries:
                return
            self._propose(entries)

    def _proposable(self) -> list[PendingRequest]:
        chosen, keys = [], set()
        for pending in self.pending.proposal_candidates():
            if len(chosen) == self.limits.max_batch_requests:
                break
            if self._ready_to_propose(pending) and pending.request.key not in keys:
                chosen.append(pending)
                keys.add(pending.request.key)
        return chosen

    def _ready_to_propose(self, pending: PendingRequest) -> bool:
        """A request goes into a batch once it has a quorum of votes and more votes could not change
        its verdict, or it has waited ``vote_wait_ticks`` for the stragglers."""
        assert pending.request is not None and pending.proposed_seq is None and pending.quorum_tick is not None, \
            "the pool's proposal candidates are requests with a quorum of votes that are not yet proposed"
        if self.execution.cached_reply(*pending.request.key) or self.execution.is_stale(*pending.request.key):
            return False
        waited = self.ticks - pending.quorum_tick >= self.limits.vote_wait_ticks
        votes = pending.vote_tuple()
        return waited or self.execution.is_settled(pending.request.risk, votes, self.config.replica_count)

    def _propose(self, entries: list[PendingRequest]) -> None:
        batch = Batch(self.now_ms, tuple(BatchEntry(p.request, p.vote_tuple()) for p in entries))
        if not self._may_sign("pre-prepare", self.next_seq, record_digest(batch)):
            self.next_seq += 1  # We proposed this seq before a restart; skip it rather than contradict it.
            return
        preprepare = self._sign(PrePrepare(self.view, self.next_seq, batch, self.replica_id, bytes(64)))
        self.next_seq += 1
        self._broadcast(preprepare)
        self._accept_preprepare(preprepare, tuple(p.digest for p in entries))

    # ----------------------------------------------------------------- three phases

    def _check_current_view(self, view: int, require_active: bool = True) -> None:
        if view != self.view or (require_active and not self.view_active):
            raise RemoteProtocolError("wrong-view", f"message for view {view}, replica is in view {self.view}"
                                      + ("" if self.view_active else " (changing)"))

    def _check_window(self, seq: int) -> None:
        if not self.low_water < seq <= self.high_water:
            raise RemoteProtocolError("outside-window", f"seq {seq} outside ({self.low_water}, {self.high_water}]")

    def _slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None or slot.view != self.view:
            slot = self.slots[seq] = Slot(seq, self.view)
        return slot

    def _current_slot(self, seq: int) -> Slot | None:
        slot = self.slots.get(seq)
        return slot if slot is not None and slot.view == self.view else None

    def _on_preprepare(self, preprepare: PrePrepare) -> None:
        if preprepare.replica_id != primary_of(preprepare.view, self.config.replica_count):
            raise RemoteProtocolError("not-primary", f"replica {preprepare.replica_id} is not the primary of view {preprepare.view}")
        if preprepare.view > self.view or (preprepare.view == self.view and not self.view_active):
            self._hold_early_preprepare(preprepare)
            self.views.note_view_evidence(preprepare.replica_id, preprepare.view)
            self.views.note_peer_view(preprepare.replica_id, preprepare.view)
            return
        if not self.views.followed_lower_view(preprepare):
            return
        self._check_current_view(preprepare.view)
        self._check_window(preprepare.seq)
        if self.views.later_slot_held(preprepare.seq):
            return
        slot = self._current_slot(preprepare.seq)
        if slot is not None and slot.preprepare is not None:
            if slot.preprepare != preprepare:
                raise RemoteProtocolError("equivocation", f"two pre-prepares for view {self.view} seq {preprepare.seq}",
                                          evidence=EquivocationProof.of(slot.preprepare, preprepare))
            return
        digests = self._validate_batch(preprepare.batch)
        self._accept_preprepare(preprepare, digests, vote=self.catch_up.may_prepare(preprepare.batch))
        self.views.note_peer_view(preprepare.replica_id, preprepare.view)

    def _hold_early_preprepare(self, preprepare: PrePrepare) -> None:
        """A new primary's first proposals can overtake its NEW-VIEW; keep them (bounded) until it lands."""
        self._check_window(preprepare.seq)
        held = self.early_preprepares.get(preprepare.seq)
        if held is None or held.view < preprepare.view:
            self.early_preprepares[preprepare.seq] = preprepare

    def replay_early_preprepares(self) -> None:
        early, self.early_preprepares = self.early_preprepares, {}
        for seq in sorted(early):
            if early[seq].view == self.view:
                try:
                    self._on_preprepare(early[seq])
                except RemoteProtocolError as error:
                    self._reject(error.from_sender(sender_of(early[seq])))
            elif early[seq].view > self.view:
                self.early_preprepares[seq] = early[seq]

    def _validate_batch(self, batch: Batch) -> tuple[bytes, ...]:
        """Check everything a correct primary guarantees about a batch but its time; return its request digests."""
        if len(batch.entries) > self.limits.max_batch_requests:
            raise RemoteProtocolError("bad-batch", f"{len(batch.entries)} requests, limit {self.limits.max_batch_requests}")
        if len({entry.request.key for entry in batch.entries}) != len(batch.entries):
            raise RemoteProtocolError("bad-batch", "a request appears twice in one batch")
        digests = []
        for entry in batch.entries:
            self._verifier.verify(entry.request)
            digest = request_digest(self.config.cluster_id, entry.request)
            self._validate_votes(entry.votes, digest)
            digests.append(digest)
        return tuple(digests)

    def _validate_votes(self, votes: tuple[Vote, ...], digest: bytes) -> None:
        replica_ids = [vote.replica_id for vote in votes]
        if replica_ids != sorted(set(replica_ids)):
            raise RemoteProtocolError("bad-votes", "votes must come from distinct replicas in ascending order")
        if len(votes) < self.quorum:
            raise RemoteProtocolError("bad-votes", f"{len(votes)} votes, a quorum is {self.quorum}")
        for vote in votes:
            if vote.request_digest != digest:
                raise RemoteProtocolError("bad-votes", f"replica {vote.replica_id}'s vote is for another request")
            self._verifier.verify(vote)

    def _accept_preprepare(self, preprepare: PrePrepare, digests: tuple[bytes, ...], vote: bool = True) -> None:
        slot = self._slot(preprepare.seq)
        assert slot.preprepare is None
        slot.preprepare = preprepare
        slot.batch_digest = record_digest(preprepare.batch)
        slot.request_digests = digests
        for digest in digests:
            pending = self.pending.get(digest)
            if pending is not None:
                self.pending.set_proposed(pending, preprepare.seq)
        if vote and self._may_sign("prepare", preprepare.seq, slot.batch_digest):
            prepare = self._sign(Prepare(self.view, preprepare.seq, slot.batch_digest, self.replica_id, bytes(64)))
            self._broadcast(prepare)
            slot.prepares[self.replica_id] = prepare
        self._check_prepared(slot)
        self._check_committed(slot)  # Commits may have overtaken the pre-prepare.

    def _on_prepare(self, prepare: Prepare) -> None:
        self._record_phase_vote(prepare, lambda slot: slot.prepares)
        slot = self._current_slot(prepare.seq)
        if slot is not None:
            self._check_prepared(slot)

    def _on_commit(self, commit: Commit) -> None:
        self._record_phase_vote(commit, lambda slot: slot.commits)
        slot = self._current_slot(commit.seq)
        if slot is not None:
            self.catch_up.note_commit_quorum(commit, slot.commits)
            self._check_committed(slot)

    def _record_phase_vote(self, message: Prepare | Commit, table_of: Callable[[Slot], dict]) -> None:
        # Prepares and commits for the view being installed are kept: they may
        # overtake the NEW-VIEW that lets this replica accept the batch.
        self._check_window(message.seq)
        if message.view > self.view:
            # Not misbehaviour: a correct peer already runs a later view.  It is
            # evidence for rejoining, not a message to act on here.
            self.views.note_view_evidence(message.replica_id, message.view)
            self.views.note_peer_view(message.replica_id, message.view)
            return
        if not self.views.followed_lower_view(message):
            return
        self._check_current_view(message.view, require_active=False)
        if self.views.later_slot_held(message.seq):
            return
        slot = self._current_slot(message.seq)
        existing = table_of(slot).get(message.replica_id) if slot else None
        if existing is not None:
            if existing != message:
                raise RemoteProtocolError("equivocation", f"two {type(message).__name__}s for seq {message.seq}",
                                          evidence=EquivocationProof.of(existing, message))
            return
        table_of(self._slot(message.seq))[message.replica_id] = message
        self.views.note_peer_view(message.replica_id, message.view)

    def _check_prepared(self, slot: Slot) -> None:
        if slot.prepared or slot.preprepare is None or slot.matching_prepare_count() < self.quorum:
            return
        slot.prepared = True
        proof = self.prepared_proofs[slot.seq] = slot.prepared_proof(self.quorum)
        # Durable before our COMMIT leaves, so that after a restart our VIEW-CHANGE still reports it.
        self._out.persist.extend(m for m in (proof.preprepare, *proof.prepares) if m.replica_id != self.replica_id)
        if not self._may_sign("commit", slot.seq, slot.batch_digest):
            return
        commit = self._sign(Commit(self.view, slot.seq, slot.batch_digest, self.replica_id, bytes(64)))
        self._broadcast(commit)
        slot.commits[self.replica_id] = commit
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        """A quorum of commits matching the slot's pre-prepare is a commit certificate: f+1 correct replicas
        prepared that batch, so it is what every correct replica executes at this seq, whether or not we
        prepared it ourselves (we may have refused its timestamp, or arrived late)."""
        if slot.committed or slot.preprepare is None or slot.matching_commit_count() < self.quorum:
            return
        slot.committed = True
        self._execute_committed()

    # ----------------------------------------------------------------- execution and checkpoints

    def _execute_committed(self) -> None:
        while True:
            slot = self.slots.get(self.last_executed + 1)
            if slot is None or not slot.committed:
                return
            self._execute(slot)

    def _execute(self, slot: Slot) -> None:
        results = self.execution.execute(slot.seq, slot.preprepare.batch, slot.request_digests, self._sign_reply)
        for log_entry, reply in results:
            self._out.persist.append(log_entry)
            self._out.finalized.append(log_entry)
            self._out.to_clients.append((reply.client_id, reply))
        for digest in slot.request_digests:
            pending = self.pending.get(digest)
            if pending is not None:
                self.views.note_ordering_ticks(self.ticks - pending.created_tick)
            self.pending.discard(digest)
            self.recovered_votes.pop(digest, None)  # Executed: never voted on again.
        self.views.note_progress()
        if slot.seq % self.limits.checkpoint_interval == 0:
            self.checkpointing.take_checkpoint(slot.seq)
        self._maybe_propose()

    def peer_reconnected(self) -> Ready:
        """The driver's link to a peer came back (a healed partition, a restarted peer): look around at
        the next tick, as after a pause, instead of waiting for the quiet-period probe, which a rarely
        ticking idle replica (``is_quiescent``) sends only every few seconds.  Returns the (empty) Ready."""
        return self._run(self.catch_up.probe_soon)

    def answer_log_read(self, read: LogRead, entries: tuple[LogEntry, ...]) -> Ready:
        """The driver read ``entries`` (positions ``read.first_position`` onwards) from its store."""
        return self._run(self.checkpointing.answer_log_read, read, tuple(entries))

    def _sign_reply(self, reply: Reply) -> Reply:
        return self._sign(dataclasses.replace(reply, replica_id=self.replica_id))

    def _forget_views_below(self, view: int) -> None:
        """A new view is installed: what we signed in earlier views can no longer conflict with anything."""
        self.signed_digests = {key: d for key, d in self.signed_digests.items() if key[1] >= view}

    def _install_view(self, new_view: NewView, stable_seq: int, batches: tuple[Batch, ...]) -> None:
        """The normal case's part of entering a view: its re-proposals replace the slots of earlier views."""
        for seq in [seq for seq, slot in self.slots.items() if slot.view < self.view]:
            del self.slots[seq]
        reproposed: set[bytes] = set()
        for preprepare in new_view.preprepares:
            if self.low_water < preprepare.seq <= self.high_water:
                digests = tuple(request_digest(self.config.cluster_id, e.request) for e in preprepare.batch.entries)
                reproposed.update(digests)
                self._accept_preprepare(preprepare, digests)
        for pending in self.pending:
            if pending.digest not in reproposed:
                self.pending.set_proposed(pending, None)
        self.next_seq = max(self.low_water, stable_seq + len(batches)) + 1

    def _view_installed(self) -> None:
        """The view is active: take in what overtook its NEW-VIEW, give its primary our votes, propose."""
        self.replay_early_preprepares()
        self._resend_votes_to_primary()
        self._maybe_propose()

    def _forget_up_to(self, seq: int) -> None:
        """The low water mark moved up to ``seq``: the slots and what we signed up to it are history."""
        for old_seq in list(self.slots.irange(maximum=seq)):
            del self.slots[old_seq]
        for old_seq in [s for s in self.prepared_proofs if s <= seq]:
            del self.prepared_proofs[old_seq]
        for old_seq in [s for s in self.early_preprepares if s <= seq]:
            del self.early_preprepares[old_seq]
        self.signed_digests = {key: d for key, d in self.signed_digests.items() if key[2] > seq}
        self.next_seq = max(self.next_seq, seq + 1)
        self._maybe_propose()

    def _forget_transferred(self, entries) -> None:
        """A state transfer finalized ``entries``: their requests are no longer pending, nor voted on again."""
        self.pending.remove_where(lambda p: p.request is not None and (
            self.execution.cached_reply(*p.request.key) is not None or self.execution.is_stale(*p.request.key)))
        for entry in entries:
            self.recovered_votes.pop(entry.request_digest, None)

    # ----------------------------------------------------------------- time

    def _tick(self, now_ms: int) -> None:
        self.catch_up.note_clock(now_ms)
        self.now_ms = now_ms
        self.ticks += 1
        expired = self.pending.expire(now_ms, self.limits.max_clock_skew_ms, self.ticks, self.limits.orphan_vote_ticks)
        self._out.dead_votes.extend(p.digest for p in expired if self.replica_id in p.votes)
        self._share_overdue_votes()
        self.views.tick()
        self.checkpointing.tick()
        self.catch_up.tick()
        self._maybe_propose()
