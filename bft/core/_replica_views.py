"""The view-change half of the replica: progress timer, VIEW-CHANGE, NEW-VIEW.

Liveness rules, all in ticks:
- A replica that is waiting for work it knows is orderable (a request with a
  quorum of votes, or a pre-prepared batch) and sees no execution progress
  for the current timeout starts a view change to view+1.
- At half the timeout it forwards the requests it holds to every replica, so
  a primary that withholds a request seen by only some replicas is still
  noticed by a quorum.
- Timeouts double while views keep failing and reset after progress.
- A replica joins a view change once f+1 others ask for a higher view (at
  least one of them is correct, so the view change is not frivolous).
- A replica that knows it is behind (``catching_up``) fetches instead of
  timing out: its lack of progress is its own, not the primary's.
- No lonely view changes: a replica waiting alone in a view it asked for, while
  f+1 peers are seen ordering in a lower view, *follows* that view again.  It
  keeps its promise (``vote_floor_view``: it signs no PRE-PREPARE, PREPARE or
  COMMIT below the highest view it asked for) and learns what commits there from
  commit certificates; its VIEW-CHANGE stays valid and counts when the others
  ask for the same view.  See ``specs/SPEC.md`` section 11a.
"""

from __future__ import annotations

from ._codec import record_digest, request_digest
from ._errors import RemoteProtocolError
from ._messages import Batch, Commit, NewView, PrePrepare, Prepare, ViewChange
from ._quorum import primary_of
from ._view_change import check_new_view, check_view_change, choose_reproposals, stable_proof_for


class ViewChangeMixin:
    # ------------------------------------------------------------- timer

    def _current_timeout(self) -> int:
        """The configured timeout, doubled per failed view, and never below twice what ordering has
        recently taken here: a cluster slowed by one slow replica (or slow links) is slow, not faulty,
        and must not be dragged into view change after view change (SPEC.md section 11)."""
        limits = self.limits
        backed_off = limits.view_change_timeout_ticks << min(self._view_change_attempts, 16)
        return min(max(backed_off, 2 * self._ordering_ticks_recent), limits.view_change_timeout_ticks_max)

    def _note_ordering_ticks(self, ticks: int) -> None:
        """One request took ``ticks`` from arriving here to executing; the estimate decays by 1/16 per
        execution, so a slow spell raises the timeout at once and a fast one lowers it gradually."""
        assert ticks >= 0
        decayed = self._ordering_ticks_recent - self._ordering_ticks_recent // 16
        self._ordering_ticks_recent = min(max(ticks, decayed), self.limits.view_change_timeout_ticks_max)

    def _has_outstanding_work(self) -> bool:
        if not self.view_active or self.pending.requests_with_quorum_count > 0:
            return True
        # Only slots above the last executed one can hold outstanding work; the slots are sorted by seq.
        if any(self.slots[seq].preprepare is not None for seq in self.slots.irange(minimum=self.last_executed + 1)):
            return True
        # Prepared before a restart of the whole cluster: a view change re-proposes it.
        return any(seq > self.last_executed for seq in self.prepared_proofs)

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

    def _note_progress(self) -> None:
        self.catch_up.note_progress()
        self._waiting_since = self.ticks
        self._view_change_attempts = 0

    def _check_progress_timer(self) -> None:
        if not self._has_outstanding_work():
            self._waiting_since = None
            return
        if self.view_active and self.catching_up() and self.ticks - self.catch_up.progress_tick < self._current_timeout():
            # Behind the cluster: fetch and replay, suspect no one, as long as fetching brings progress.  A
            # slot that committed nowhere (seq s+1 stuck while s+2 committed) needs a view change to fill it.
            self._waiting_since = self.ticks
            return
        if not self.view_active and self._view_change_support() < self.quorum:
            # PBFT's rule: a view change is timed only once a quorum asks for it.
            # Replicas that ran ahead wait here, so the laggards' timeouts bring
            # everyone to one view instead of both groups climbing forever.
            # Meanwhile the VIEW-CHANGE is re-sent, since the network may have lost it.
            self._waiting_since = self.ticks
            self._resend_own_view_change()
            return
        if self._waiting_since is None:
            self._waiting_since = self.ticks
            return
        waited = self.ticks - self._waiting_since
        if waited >= self._current_timeout() // 2:
            self._forward_unordered_requests()
        if waited >= self._current_timeout():
            self._start_view_change(self.view + 1)

    def _resend_own_view_change(self) -> None:
        own = self.view_change_by_replica.get(self.replica_id)
        if own is None or own.new_view != self.view:
            return
        if self.ticks - self._view_change_sent_tick < self.limits.view_change_timeout_ticks:
            return
        self._view_change_sent_tick = self.ticks
        self._send_to_others(own)

    def _view_change_support(self) -> int:
        """Replicas that gave up on views below ours: asking for a later view counts too."""
        return sum(1 for vc in self.view_change_by_replica.values() if vc.new_view >= self.view)

    def _forward_unordered_requests(self) -> None:
        for pending in self.pending:
            if pending.request is not None and not pending.forwarded:
                pending.forwarded = True
                self._send_to_others(pending.request)

    def _note_peer_view(self, replica_id: int, view: int) -> None:
        """``replica_id`` signed a PRE-PREPARE, PREPARE or COMMIT in ``view``: it was ordering there."""
        if replica_id != self.replica_id and view > self.active_view_by_replica.get(replica_id, -1):
            self.active_view_by_replica[replica_id] = view
        self._maybe_follow_lower_view()

    def _maybe_follow_lower_view(self) -> None:
        """Waiting alone in a view we asked for while f+1 peers order in a lower one: follow theirs again.

        Peers that asked for our view (or later) are not counted: they are with us.  Of the rest, at least
        one of any f+1 is correct, so the cluster really ordered in a view at least that high.
        """
        if self.view_active or self._view_change_support() - 1 > self.config.faulty_max:
            return
        if self.ticks - self._view_change_started_tick < self.limits.view_change_timeout_ticks // 2:
            return  # Others may be timing out too: give their VIEW-CHANGEs a round trip to arrive.
        with_us = {r for r, vc in self.view_change_by_replica.items() if vc.new_view >= self.view}
        lower = sorted((v for r, v in self.active_view_by_replica.items() if r not in with_us and v < self.view),
                       reverse=True)
        if len(lower) > self.config.faulty_max:
            self._follow_view(lower[self.config.faulty_max])

    def _follow_view(self, view: int) -> None:
        assert view < self.view <= self.vote_floor_view and not self.view_active
        self.catch_up.note_followed_lower_view()
        self.view = view
        self.view_active = True
        self._waiting_since = self.ticks
        if self.new_view_message is not None and self.new_view_message.view != view:
            self.new_view_message = None
        self.replay_early_preprepares()

    def _followed_lower_view(self, message: PrePrepare | Prepare | Commit) -> bool:
        """A lower view's message while we wait for our own: evidence, not misbehaviour (the peer has not
        moved, and we may be the one who left alone).  True if we now follow that view and should process it."""
        if message.view >= self.view or self.view_active:
            return True
        self._check_window(message.seq)
        self._note_peer_view(message.replica_id, message.view)
        return message.view == self.view

    def _later_slot_held(self, seq: int) -> bool:
        """A follower keeps what it holds of a later view at ``seq`` (the view it asked for may form after all)
        rather than replace it with the lower view's slot; it learns that seq by catching up if need be."""
        slot = self.slots.get(seq)
        return slot is not None and slot.view > self.view

    def _note_view_evidence(self, replica_id: int, view: int) -> None:
        """Rejoin: once f+1 others are seen working in higher views, ask for the view they run.

        At least one of any f+1 replicas is correct, so the cluster really is
        in a view at least that high; sending VIEW-CHANGE for it makes its
        primary re-send the NEW-VIEW (``_help_lagging_replica``).
        """
        if view <= self.view or replica_id == self.replica_id:
            return
        self.view_seen_by_replica[replica_id] = max(view, self.view_seen_by_replica.get(replica_id, 0))
        higher = sorted((v for v in self.view_seen_by_replica.values() if v > self.view), reverse=True)
        if len(higher) >= self.config.faulty_max + 1:
            self._start_view_change(higher[self.config.faulty_max])

    # ------------------------------------------------------------- sending VIEW-CHANGE

    def _start_view_change(self, new_view: int) -> None:
        # Never below a view we already asked for: our VIEW-CHANGE for it is out, and we keep its promise.
        new_view = max(new_view, self.vote_floor_view)
        assert new_view > self.view or (new_view == self.view and self.view_active is False)
        # Every view change, timed out or joined, doubles the timeout until something executes: a
        # replica that joined on f+1 VIEW-CHANGEs waits as long in the new view as those that timed out.
        self._view_change_attempts += 1
        self.view = new_view
        self.view_active = False
        self._waiting_since = self._view_change_started_tick = self.ticks
        own = self.view_change_by_replica.get(self.replica_id)
        if own is not None and own.new_view == new_view:
            # Asked for this view before and followed a lower one since: the same VIEW-CHANGE again (S7),
            # still true, since we signed nothing in a lower view after it.
            self._view_change_sent_tick = self.ticks
            self._send_to_others(own)
            self._maybe_send_new_view()
            return
        self.vote_floor_view = new_view
        proofs = tuple(self.prepared_proofs[seq] for seq in sorted(self.prepared_proofs) if seq > self.low_water)
        view_change = self._sign(ViewChange(new_view, self.low_water, self.stable_proof, proofs,
                                            self.replica_id, bytes(64)))
        self._broadcast(view_change)
        self._view_change_sent_tick = self.ticks
        self.view_change_by_replica[self.replica_id] = view_change
        self._maybe_send_new_view()

    # ------------------------------------------------------------- receiving VIEW-CHANGE

    def _on_view_change(self, view_change: ViewChange) -> None:
        if view_change.new_view < self.view or (view_change.new_view == self.view and self.view_active):
            self._help_lagging_replica(view_change)
            return
        existing = self.view_change_by_replica.get(view_change.replica_id)
        if existing is not None and existing.new_view >= view_change.new_view:
            if existing.new_view == view_change.new_view and existing != view_change:
                raise RemoteProtocolError("equivocation", f"two VIEW-CHANGEs for view {view_change.new_view}")
            return
        check_view_change(view_change, self.config, self._verifier)
        self.view_change_by_replica[view_change.replica_id] = view_change
        self._maybe_join_view_change()
        self._maybe_send_new_view()

    def _help_lagging_replica(self, view_change: ViewChange) -> None:
        """A replica asking for a view we already run missed its NEW-VIEW; the primary sends it again."""
        if self.view_active and self.is_primary and self.new_view_message is not None \
                and view_change.new_view == self.view and view_change.replica_id != self.replica_id:
            self._out.to_replicas.append((view_change.replica_id, self.new_view_message))

    def _maybe_join_view_change(self) -> None:
        higher = sorted(vc.new_view for replica_id, vc in self.view_change_by_replica.items()
                        if replica_id != self.replica_id and vc.new_view > self.view)
        if len(higher) >= self.config.faulty_max + 1:
            self._start_view_change(higher[0])

    def _maybe_send_new_view(self) -> None:
        if self.view_active or primary_of(self.view, self.config.replica_count) != self.replica_id:
            return
        candidates = sorted((vc for vc in self.view_change_by_replica.values() if vc.new_view == self.view),
                            key=lambda vc: vc.replica_id)
        if len(candidates) < self.quorum:
            return
        chosen = tuple(candidates[:self.quorum])
        stable_seq, batches = choose_reproposals(chosen)
        for offset, batch in enumerate(batches):
            if not self._may_sign("pre-prepare", stable_seq + offset + 1, record_digest(batch)):
                return  # A restart lost this NEW-VIEW half-built; the next view change will retry.
        preprepares = tuple(self._sign(PrePrepare(self.view, stable_seq + offset + 1, batch, self.replica_id, bytes(64)))
                            for offset, batch in enumerate(batches))
        new_view = self._sign(NewView(self.view, chosen, preprepares, self.replica_id, bytes(64)))
        # Also stored as slot messages: pruning the NEW-VIEWs of old views must not take our prepared
        # proofs' pre-prepares with them (a restart rebuilds the proofs from these).
        self._out.persist.extend(preprepares)
        self._broadcast(new_view)
        self._enter_view(new_view, stable_seq, batches)

    # ------------------------------------------------------------- NEW-VIEW

    def _on_new_view(self, new_view: NewView) -> None:
        if new_view.view < self.view or (new_view.view == self.view and self.view_active):
            return  # Already in that view (or later): a re-sent NEW-VIEW is harmless.
        stable_seq, batches = check_new_view(new_view, self.config, self._verifier)
        self._enter_view(new_view, stable_seq, batches)

    def _enter_view(self, new_view: NewView, stable_seq: int, batches: tuple[Batch, ...]) -> None:
        # The view stays inactive until its re-proposals are accepted and next_seq is
        # set: adopting the checkpoint below must not let this replica propose early.
        self.view = new_view.view
        self.new_view_message = new_view
        self.signed_digests = {key: d for key, d in self.signed_digests.items() if key[1] >= self.view}
        self.view_seen_by_replica = {r: v for r, v in self.view_seen_by_replica.items() if v > self.view}
        self._waiting_since = self.ticks
        self.view_change_by_replica = {r: vc for r, vc in self.view_change_by_replica.items() if vc.new_view > self.view}
        if stable_seq > self.low_water and self.last_executed >= stable_seq:
            self.checkpointing.adopt_stable_checkpoint(stable_seq, stable_proof_for(new_view.view_changes, stable_seq))
        self.checkpointing.note_lag(stable_seq)  # Not re-proposed, so state transfer is the only way to reach it.
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
        self.view_active = True
        self.replay_early_preprepares()
        self._resend_votes_to_primary()
        self._maybe_propose()
