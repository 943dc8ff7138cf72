"""The replica's normal-case component: the slots between the water marks and the three phases.

It owns the slots (per seq: the accepted PRE-PREPARE, the PREPAREs and COMMITs
received, whether it prepared and committed), the next seq the primary
proposes at, the PRE-PREPAREs of a view not yet installed, the prepared proofs
a VIEW-CHANGE reports, and the digests this replica signed per (phase, view,
seq), so that it never signs two different ones (S7), even across a restart.

A slot that commits is executed by the execution component, in seq order.
The view-change component decides which view is current; entering a view
installs its re-proposals here (``install_view``); the checkpoint component
moves the low water mark and this one forgets the slots below it
(``forget_up_to``).
"""

from __future__ import annotations

from typing import Callable

from sortedcontainers import SortedDict

from ._accountability import EquivocationProof
from ._codec import record_digest, request_digest
from ._errors import RemoteProtocolError
from ._messages import (Batch, BatchEntry, Bundle, Commit, Message, NewView, PrePrepare, Prepare, PreparedProof,
                        Request, Vote)
from ._pending import PendingRequest
from ._quorum import primary_of
from ._recovery import latest_prepared_proofs, stored_preprepares, view_of
from ._slots import Slot


def sender_of(message: Message, forwarder: int | None = None) -> str:
    if isinstance(message, Request):
        return f"client {message.client_id}"
    if forwarder is not None and forwarder != message.replica_id:
        return f"replica {message.replica_id} (forwarded by replica {forwarder})"
    return f"replica {message.replica_id}"


class NormalCase:
    def __init__(self, replica) -> None:
        self.replica = replica
        self.next_seq = 1
        self.slots: SortedDict[int, Slot] = SortedDict()
        self.prepared_proofs: dict[int, PreparedProof] = {}
        self.early_preprepares: dict[int, PrePrepare] = {}
        self.signed_digests: dict[tuple[str, int, int], bytes] = {}

    def restore(self, signed: list[Message], own: list[Message]) -> None:
        """After a restart (the checkpoint and view components restored first): where to propose next, what we
        signed, and the prepared proofs we persisted before sending the COMMITs that relied on them."""
        replica = self.replica
        self.next_seq = replica.low_water + 1
        if any(view_of(message) is not None for message in own):
            self._restore_next_seq(own)
        for message in own:
            self.remember_signed(message)
        self.prepared_proofs = latest_prepared_proofs(signed, replica.config.replica_count, replica.quorum,
                                                      replica.low_water, replica.high_water)

    def check_bounds(self) -> None:
        replica = self.replica
        low, high, limits = replica.low_water, replica.high_water, replica.limits
        assert len(self.slots) <= limits.log_window, len(self.slots)
        # The slots are sorted by seq, so checking the lowest and the highest covers them all.
        assert not self.slots or low < self.slots.peekitem(0)[0] <= self.slots.peekitem(-1)[0] <= high
        assert len(self.prepared_proofs) <= limits.log_window
        assert not self.early_preprepares or (low < min(self.early_preprepares) and max(self.early_preprepares) <= high)
        assert len(self.signed_digests) <= 4 * limits.log_window

    def remember_signed(self, message: Message) -> None:
        replica = self.replica
        if isinstance(message, NewView):
            for preprepare in message.preprepares:  # Re-proposals we signed inside our own NEW-VIEW.
                self.remember_signed(preprepare)
            return
        phase = {PrePrepare: "pre-prepare", Prepare: "prepare", Commit: "commit"}.get(type(message))
        if phase is None or message.seq <= replica.low_water or message.view < replica.view:
            return
        digest_signed = record_digest(message.batch) if isinstance(message, PrePrepare) else message.batch_digest
        self.signed_digests[(phase, message.view, message.seq)] = digest_signed

    def _restore_next_seq(self, own: list[Message]) -> None:
        replica = self.replica
        view = replica.view
        current = [m for m in own if view_of(m) == view]
        proposed = [pp.seq for pp in stored_preprepares(current, replica.config.replica_count) if pp.view == view]
        self.next_seq = max([replica.low_water, *proposed]) + 1

    def adds_nothing(self, message: Message) -> bool:
        """A PREPARE for a slot of this view that is already prepared, or a COMMIT for one already
        committed, from a replica not heard in that phase yet: a quorum decided without it, so it is
        not verified, only held (``_hold_late``) in case the same sender contradicts it (SPEC.md
        section 5, step 7).  At n=7 that is two of the six PREPAREs and two of the six COMMITs a
        replica gets.  An exact repeat of a kept message adds nothing either; a message that differs
        from the one kept is checked, as it may prove equivocation."""
        replica = self.replica
        message_type = type(message)
        if message_type is not Prepare and message_type is not Commit:
            return False
        slot = self.current_slot(message.seq) if message.view == replica.view else None
        if slot is None:
            return False
        existing = (slot.commits if message_type is Commit else slot.prepares).get(message.replica_id)
        if existing is not None:
            return existing == message  # A conflicting one is checked: it may be proof of equivocation.
        decided = slot.committed if message_type is Commit else slot.prepared
        if not decided or not 0 <= message.replica_id < replica.config.replica_count:
            return False
        return self._hold_late(slot, message)

    def _hold_late(self, slot: Slot, message: Prepare | Commit) -> bool:
        """Hold the first late message of each sender unverified.  Only a second, different one from
        the same sender is worth signature checks: if both verify, together they prove equivocation
        (rejected with the evidence, nothing changed); a held forgery is replaced by the valid one."""
        replica = self.replica
        key = (type(message).__name__, message.replica_id)
        held = slot.late.get(key)
        if held is None or held == message:
            slot.late[key] = message
            return True
        replica._verifier.verify(message)  # A bad one is rejected here and changes nothing.
        try:
            replica._verifier.verify(held)
        except RemoteProtocolError:
            slot.late[key] = message
            return True
        raise RemoteProtocolError("equivocation", f"two {type(message).__name__}s for seq {message.seq}",
                                  evidence=EquivocationProof.of(held, message))

    def may_sign(self, phase: str, seq: int, digest: bytes) -> bool:
        """S7: never sign two different digests for one (phase, view, seq), even across restarts.

        ``signed_digests`` is rebuilt from durable storage on restart, so a
        replica that forgot a slot still refuses to contradict what it sent.
        """
        replica = self.replica
        if replica.view < replica.vote_floor_view:
            return False  # Following a view we asked to leave: learn from it, never vote in it.
        key = (phase, replica.view, seq)
        previous = self.signed_digests.setdefault(key, digest)
        return previous == digest

    def maybe_propose(self) -> None:
        """The primary's step (``ROLE_STEPS``): fill the in-flight window with batches of ready requests."""
        replica = self.replica
        if not replica.view_active or replica.view < replica.vote_floor_view:
            return  # A follower of a view it asked to leave proposes nothing there (section 11a).
        in_flight_max = replica.limits.max_in_flight_batches
        while (in_flight := self.next_seq - 1 - replica.last_executed) < in_flight_max \
                and self.next_seq <= replica.high_water:
            fill_target = self._batch_fill_target(in_flight)
            # With a change pending, batches (empty ones too) carry the log to its activation seq at once.
            filling = replica.epochs.ceiling() is not None
            if replica.pending.candidate_count < fill_target and not filling:
                return  # Not enough candidates to fill the batch: no need to look at each of them.
            entries = replica.requests.proposable()
            if len(entries) < fill_target and not filling:
                return
            self._propose(entries)

    def _batch_fill_target(self, in_flight: int) -> int:
        """How many ready requests a new batch needs while ``in_flight`` batches are unexecuted.

        With none in flight, one: a lone request is proposed at once.  Each batch in flight raises the
        bar by an equal share of ``max_batch_requests``, so under load requests gather into fewer,
        fuller batches instead of one batch each, and every batch's fixed cost (PRE-PREPARE, two
        phases, their fsyncs) is shared.  Nothing waits forever: a batch in flight executes (or its
        view changes), which lowers the bar, and execution proposes again (SPEC.md section 5, step 4).
        """
        limits = self.replica.limits
        share = -(-limits.max_batch_requests // limits.max_in_flight_batches)  # Rounded up.
        return max(1, min(limits.max_batch_requests, in_flight * share))

    def _propose(self, entries: list[PendingRequest]) -> None:
        replica = self.replica
        batch = Batch(replica.now_ms, tuple(BatchEntry(p.request, p.vote_tuple()) for p in entries))
        if not self.may_sign("pre-prepare", self.next_seq, record_digest(batch)):
            self.next_seq += 1  # We proposed this seq before a restart; skip it rather than contradict it.
            return
        preprepare = replica._sign(PrePrepare(replica.view, self.next_seq, batch, replica.replica_id, bytes(64)))
        self.next_seq += 1
        replica._broadcast(preprepare)
        self._accept_preprepare(preprepare, tuple(p.digest for p in entries))

    def _check_current_view(self, view: int, require_active: bool = True) -> None:
        replica = self.replica
        if view != replica.view or (require_active and not replica.view_active):
            raise RemoteProtocolError("wrong-view", f"message for view {view}, replica is in view {replica.view}"
                                      + ("" if replica.view_active else " (changing)"))

    def check_window(self, seq: int) -> None:
        replica = self.replica
        ceiling = replica.epochs.ceiling()
        if ceiling is not None and seq > ceiling:
            raise RemoteProtocolError("wrong-epoch", f"seq {seq} is ordered by the next epoch, after seq "
                                                     f"{ceiling} (specs/RECONFIGURATION.md section 3)")
        if not replica.low_water < seq <= replica.high_water:
            raise RemoteProtocolError("outside-window",
                                      f"seq {seq} outside ({replica.low_water}, {replica.high_water}]")

    def _slot(self, seq: int) -> Slot:
        replica = self.replica
        slot = self.slots.get(seq)
        if slot is None or slot.view != replica.view:
            slot = self.slots[seq] = Slot(seq, replica.view)
        return slot

    def current_slot(self, seq: int) -> Slot | None:
        slot = self.slots.get(seq)
        return slot if slot is not None and slot.view == self.replica.view else None

    def on_preprepare(self, preprepare: PrePrepare) -> None:
        replica = self.replica
        if preprepare.replica_id != primary_of(preprepare.view, replica.config.replica_count):
            raise RemoteProtocolError("not-primary",
                                      f"replica {preprepare.replica_id} is not the primary of view {preprepare.view}")
        if preprepare.view > replica.view or (preprepare.view == replica.view and not replica.view_active):
            self._hold_early_preprepare(preprepare)
            replica.views.note_view_evidence(preprepare.replica_id, preprepare.view)
            replica.views.note_peer_view(preprepare.replica_id, preprepare.view)
            return
        if not replica.views.followed_lower_view(preprepare):
            return
        self._check_current_view(preprepare.view)
        self.check_window(preprepare.seq)
        if replica.views.later_slot_held(preprepare.seq):
            return
        slot = self.current_slot(preprepare.seq)
        if slot is not None and slot.preprepare is not None:
            if slot.preprepare != preprepare:
                raise RemoteProtocolError("equivocation",
                                          f"two pre-prepares for view {replica.view} seq {preprepare.seq}",
                                          evidence=EquivocationProof.of(slot.preprepare, preprepare))
            return
        digests = self._validate_batch(preprepare.batch)
        self._accept_preprepare(preprepare, digests, vote=replica.catch_up.may_prepare(preprepare.batch))
        replica.views.note_peer_view(preprepare.replica_id, preprepare.view)

    def _hold_early_preprepare(self, preprepare: PrePrepare) -> None:
        """A new primary's first proposals can overtake its NEW-VIEW; keep them (bounded) until it lands."""
        self.check_window(preprepare.seq)
        held = self.early_preprepares.get(preprepare.seq)
        if held is None or held.view < preprepare.view:
            self.early_preprepares[preprepare.seq] = preprepare

    def replay_early_preprepares(self) -> None:
        replica = self.replica
        early, self.early_preprepares = self.early_preprepares, {}
        for seq in sorted(early):
            if early[seq].view == replica.view:
                try:
                    self.on_preprepare(early[seq])
                except RemoteProtocolError as error:
                    replica._reject(error.from_sender(sender_of(early[seq])))
            elif early[seq].view > replica.view:
                self.early_preprepares[seq] = early[seq]

    def _validate_batch(self, batch: Batch) -> tuple[bytes, ...]:
        """Check everything a correct primary guarantees about a batch but its time; return its request digests."""
        replica = self.replica
        if len(batch.entries) > replica.limits.max_batch_requests:
            raise RemoteProtocolError("bad-batch",
                                      f"{len(batch.entries)} requests, limit {replica.limits.max_batch_requests}")
        if len({entry.request.key for entry in batch.entries}) != len(batch.entries):
            raise RemoteProtocolError("bad-batch", "a request appears twice in one batch")
        digests = []
        for entry in batch.entries:
            replica._verifier.verify(entry.request)
            digest = request_digest(replica.config.cluster_id, entry.request)
            self._validate_votes(entry.votes, digest)
            digests.append(digest)
        return tuple(digests)

    def _validate_votes(self, votes: tuple[Vote, ...], digest: bytes) -> None:
        replica = self.replica
        replica_ids = [vote.replica_id for vote in votes]
        if replica_ids != sorted(set(replica_ids)):
            raise RemoteProtocolError("bad-votes", "votes must come from distinct replicas in ascending order")
        if len(votes) < replica.quorum:
            raise RemoteProtocolError("bad-votes", f"{len(votes)} votes, a quorum is {replica.quorum}")
        for vote in votes:
            if vote.request_digest != digest:
                raise RemoteProtocolError("bad-votes", f"replica {vote.replica_id}'s vote is for another request")
            replica._verifier.verify(vote)

    def _accept_preprepare(self, preprepare: PrePrepare, digests: tuple[bytes, ...], vote: bool = True) -> None:
        replica = self.replica
        slot = self._slot(preprepare.seq)
        assert slot.preprepare is None
        slot.preprepare = preprepare
        slot.batch_digest = record_digest(preprepare.batch)
        slot.request_digests = digests
        replica.requests.mark_proposed(digests, preprepare.seq)
        if vote and self.may_sign("prepare", preprepare.seq, slot.batch_digest):
            prepare = replica._sign(Prepare(replica.view, preprepare.seq, slot.batch_digest, replica.replica_id,
                                            bytes(64)))
            replica._send_to_primary(prepare)
            slot.prepares[replica.replica_id] = prepare
        self._check_prepared(slot)
        self._check_committed(slot)  # Commits may have overtaken the pre-prepare.

    def on_prepare(self, prepare: Prepare) -> None:
        self._record_phase_vote(prepare, lambda slot: slot.prepares)
        slot = self.current_slot(prepare.seq)
        if slot is not None:
            self._check_prepared(slot)

    def on_commit(self, commit: Commit) -> None:
        self._record_phase_vote(commit, lambda slot: slot.commits)
        slot = self.current_slot(commit.seq)
        if slot is not None:
            self.replica.catch_up.note_commit_quorum(commit, slot.commits)
            self._check_committed(slot)

    def _record_phase_vote(self, message: Prepare | Commit, table_of: Callable[[Slot], dict]) -> None:
        replica = self.replica
        # Prepares and commits for the view being installed are kept: they may
        # overtake the NEW-VIEW that lets this replica accept the batch.
        self.check_window(message.seq)
        if message.view > replica.view:
            # Not misbehaviour: a correct peer already runs a later view.  It is
            # evidence for rejoining, not a message to act on here.
            replica.views.note_view_evidence(message.replica_id, message.view)
            replica.views.note_peer_view(message.replica_id, message.view)
            return
        if not replica.views.followed_lower_view(message):
            return
        self._check_current_view(message.view, require_active=False)
        if replica.views.later_slot_held(message.seq):
            return
        slot = self.current_slot(message.seq)
        existing = table_of(slot).get(message.replica_id) if slot else None
        if existing is not None:
            if existing != message:
                raise RemoteProtocolError("equivocation", f"two {type(message).__name__}s for seq {message.seq}",
                                          evidence=EquivocationProof.of(existing, message))
            return
        table_of(self._slot(message.seq))[message.replica_id] = message
        replica.views.note_peer_view(message.replica_id, message.view)

    def _check_prepared(self, slot: Slot) -> None:
        replica = self.replica
        if slot.prepared or slot.preprepare is None or slot.matching_prepare_count() < replica.quorum:
            return
        slot.prepared = True
        proof = self.prepared_proofs[slot.seq] = slot.prepared_proof(replica.quorum)
        # Durable before our COMMIT leaves, so that after a restart our VIEW-CHANGE still reports it.
        replica._out.persist.extend(message for message in (proof.preprepare, *proof.prepares)
                                    if message.replica_id != replica.replica_id)
        self._forward_quorum(prepares=proof.prepares)
        if not self.may_sign("commit", slot.seq, slot.batch_digest):
            return
        commit = replica._sign(Commit(replica.view, slot.seq, slot.batch_digest, replica.replica_id, bytes(64)))
        replica._send_to_primary(commit)
        slot.commits[replica.replica_id] = commit
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        """A quorum of commits matching the slot's pre-prepare is a commit certificate: f+1 correct replicas
        prepared that batch, so it is what every correct replica executes at this seq, whether or not we
        prepared it ourselves (we may have refused its timestamp, or arrived late)."""
        replica = self.replica
        if slot.committed or slot.preprepare is None or slot.matching_commit_count() < replica.quorum:
            return
        slot.committed = True
        self._forward_quorum(commits=slot.matching_commits()[:replica.quorum])
        replica.executor.execute_committed()

    def _forward_quorum(self, prepares: tuple[Prepare, ...] = (), commits: tuple[Commit, ...] = ()) -> None:
        """The primary's part in steps 6-7: PREPAREs and COMMITs come to it alone, and it forwards the
        quorum it collected, once, as one bundle to every backup.  A backup forwards nothing."""
        replica = self.replica
        if replica.is_primary:
            replica._forward_to_others(Bundle(prepares, commits, replica.replica_id))

    def check_bundle(self, bundle: Bundle) -> None:
        """A bundle holds at most one phase message per replica of the configuration (the schema's
        bound is the protocol maximum); its parts are checked one by one, as if sent by their authors."""
        replica_count = self.replica.config.replica_count
        if len(bundle.prepares) > replica_count or len(bundle.commits) > replica_count:
            raise RemoteProtocolError("bad-bundle", f"{len(bundle.prepares)} prepares and {len(bundle.commits)}"
                                      f" commits, at most {replica_count} of each")

    def forget_views_below(self, view: int) -> None:
        """A new view is installed: what we signed in earlier views can no longer conflict with anything."""
        self.signed_digests = {key: d for key, d in self.signed_digests.items() if key[1] >= view}

    def install_view(self, new_view: NewView, stable_seq: int, batches: tuple[Batch, ...]) -> None:
        """The normal case's part of entering a view: its re-proposals replace the slots of earlier views."""
        replica = self.replica
        for seq in [seq for seq, slot in self.slots.items() if slot.view < replica.view]:
            del self.slots[seq]
        reproposed: set[bytes] = set()
        for preprepare in new_view.preprepares:
            if replica.low_water < preprepare.seq <= replica.high_water:
                digests = tuple(request_digest(replica.config.cluster_id, e.request) for e in preprepare.batch.entries)
                reproposed.update(digests)
                self._accept_preprepare(preprepare, digests)
        replica.requests.unmark_proposed_except(reproposed)
        self.next_seq = max(replica.low_water, stable_seq + len(batches)) + 1

    def view_installed(self) -> None:
        """The view is active: take in what overtook its NEW-VIEW, give its primary our votes, propose."""
        self.replay_early_preprepares()
        self.replica.requests.resend_votes_to_primary()
        self.replica.role_steps.propose(self.replica)

    def forget_up_to(self, seq: int) -> None:
        """The low water mark moved up to ``seq``: the slots and what we signed up to it are history."""
        for old_seq in list(self.slots.irange(maximum=seq)):
            del self.slots[old_seq]
        for old_seq in [s for s in self.prepared_proofs if s <= seq]:
            del self.prepared_proofs[old_seq]
        for old_seq in [s for s in self.early_preprepares if s <= seq]:
            del self.early_preprepares[old_seq]
        self.signed_digests = {key: d for key, d in self.signed_digests.items() if key[2] > seq}
        self.next_seq = max(self.next_seq, seq + 1)
        self.replica.role_steps.propose(self.replica)
