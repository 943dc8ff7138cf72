"""The replica's view-change component: the current view, the progress timer, VIEW-CHANGE and NEW-VIEW.

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

from ._codec import record_digest
from ._errors import RemoteProtocolError
from ._messages import Batch, Commit, Message, NewView, PrePrepare, Prepare, ViewChange
from ._quorum import primary_of
from ._recovery import view_of
from ._view_change import check_new_view, check_view_change, choose_reproposals, stable_proof_for


class ViewChanges:
    """Owns the view this replica is in (or asks for), the VIEW-CHANGEs it holds, the NEW-VIEW of its view and
    the progress timer.  Installing a view's re-proposals is the normal case's job (``NormalCase.install_view``)."""

    def __init__(self, replica) -> None:
        self.replica = replica
        self.view = 0
        self.view_active = True
        # PBFT's promise behind a VIEW-CHANGE: no PRE-PREPARE, PREPARE or COMMIT below the highest view we asked
        # for.  A replica may still *follow* a lower view (see the module's docstring), learning from others' proofs.
        self.vote_floor_view = 0
        self.active_view_by_replica: dict[int, int] = {}  # Peer -> the highest view it was seen ordering in.
        self.view_change_by_replica: dict[int, ViewChange] = {}
        self.new_view_message: NewView | None = None
        self.view_seen_by_replica: dict[int, int] = {}
        self._waiting_since: int | None = None
        self._view_change_attempts = 0
        self._ordering_ticks_recent = 0  # A decaying maximum of how long requests took to execute here.
        self._view_change_sent_tick = 0
        self._view_change_started_tick = 0

    def restore(self, own: list[Message]) -> None:
        """After a restart: the highest view we took part in, active if we already worked in it."""
        views = [view for view in map(view_of, own) if view is not None]
        if not views:
            return
        self.view = max(views)
        current = [m for m in own if view_of(m) == self.view]
        self.view_active = any(isinstance(m, (PrePrepare, Prepare, Commit, NewView)) for m in current)
        self.vote_floor_view = max((m.new_view for m in own if isinstance(m, ViewChange)), default=0)
        view_changes = [m for m in current if isinstance(m, ViewChange)]
        if not self.view_active and view_changes:
            self.view_change_by_replica[self.replica.replica_id] = view_changes[-1]
        new_views = [m for m in current if isinstance(m, NewView)]
        if new_views:
            self.new_view_message = new_views[-1]

    def check_bounds(self) -> None:
        replica = self.replica
        replica_count = replica.config.replica_count
        assert len(self.view_seen_by_replica) <= replica_count
        assert len(self.view_change_by_replica) <= replica_count
        assert len(self.active_view_by_replica) <= replica_count
        assert self.view_active or self.view >= self.vote_floor_view, "waiting only in a view we asked for"
        assert self.view_active or not replica.is_primary or self.new_view_message is None \
            or self.new_view_message.view < self.view

    # ------------------------------------------------------------- timer

    def _current_timeout(self) -> int:
        """The configured timeout, doubled per failed view, and never below twice what ordering has
        recently taken here: a cluster slowed by one slow replica (or slow links) is slow, not faulty,
        and must not be dragged into view change after view change (SPEC.md section 11)."""
        limits = self.replica.limits
        backed_off = limits.view_change_timeout_ticks << min(self._view_change_attempts, 16)
        return min(max(backed_off, 2 * self._ordering_ticks_recent), limits.view_change_timeout_ticks_max)

    def note_ordering_ticks(self, ticks: int) -> None:
        """One request took ``ticks`` from arriving here to executing; the estimate decays by 1/16 per
        execution, so a slow spell raises the timeout at once and a fast one lowers it gradually."""
        assert ticks >= 0
        decayed = self._ordering_ticks_recent - self._ordering_ticks_recent // 16
        self._ordering_ticks_recent = min(max(ticks, decayed), self.replica.limits.view_change_timeout_ticks_max)

    def has_outstanding_work(self) -> bool:
        replica = self.replica
        if not self.view_active or replica.pending.requests_with_quorum_count > 0:
            return True
        # Only slots above the last executed one can hold outstanding work; the slots are sorted by seq.
        slots = replica.slots
        if any(slots[seq].preprepare is not None for seq in slots.irange(minimum=replica.last_executed + 1)):
            return True
        # Prepared before a restart of the whole cluster: a view change re-proposes it.
        return any(seq > replica.last_executed for seq in replica.prepared_proofs)

    def note_progress(self) -> None:
        replica = self.replica
        replica.catch_up.note_progress()
        self._waiting_since = replica.ticks
        self._view_change_attempts = 0

    def tick(self) -> None:
        replica = self.replica
        if not self.has_outstanding_work():
            self._waiting_since = None
            return
        fetching = replica.ticks - replica.catch_up.progress_tick < self._current_timeout()
        if self.view_active and replica.catching_up() and fetching:
            # Behind the cluster: fetch and replay, suspect no one, as long as fetching brings progress.  A
            # slot that committed nowhere (seq s+1 stuck while s+2 committed) needs a view change to fill it.
            self._waiting_since = replica.ticks
            return
        if not self.view_active and self._view_change_support() < replica.quorum:
            # PBFT's rule: a view change is timed only once a quorum asks for it.
            # Replicas that ran ahead wait here, so the laggards' timeouts bring
            # everyone to one view instead of both groups climbing forever.
            # Meanwhile the VIEW-CHANGE is re-sent, since the network may have lost it.
            self._waiting_since = replica.ticks
            self._resend_own_view_change()
            return
        if self._waiting_since is None:
            self._waiting_since = replica.ticks
            return
        waited = replica.ticks - self._waiting_since
        if waited >= self._current_timeout() // 2:
            replica.requests.forward_unordered_requests()
            # A primary's bundle may have been lost on the way to us alone: a peer's commit certificate fills
            # the slot without a view change (SPEC.md section 5, step 7).
            replica.catch_up.probe_soon()
        if waited >= self._current_timeout():
            self.start_view_change(self.view + 1)

    def _resend_own_view_change(self) -> None:
        replica = self.replica
        own = self.view_change_by_replica.get(replica.replica_id)
        if own is None or own.new_view != self.view:
            return
        if replica.ticks - self._view_change_sent_tick < replica.limits.view_change_timeout_ticks:
            return
        self._view_change_sent_tick = replica.ticks
        replica._send_to_others(own)

    def _view_change_support(self) -> int:
        """Replicas that gave up on views below ours: asking for a later view counts too."""
        return sum(1 for vc in self.view_change_by_replica.values() if vc.new_view >= self.view)

    def note_peer_view(self, replica_id: int, view: int) -> None:
        """``replica_id`` signed a PRE-PREPARE, PREPARE or COMMIT in ``view``: it was ordering there."""
        # An id past n: a message verified just before this same input switched to a smaller epoch.
        is_peer = replica_id != self.replica.replica_id and replica_id < self.replica.config.replica_count
        if is_peer and view > self.active_view_by_replica.get(replica_id, -1):
            self.active_view_by_replica[replica_id] = view
        self._maybe_follow_lower_view()

    def _maybe_follow_lower_view(self) -> None:
        """Waiting alone in a view we asked for while f+1 peers order in a lower one: follow theirs again.

        Peers that asked for our view (or later) are not counted: they are with us.  Of the rest, at least
        one of any f+1 is correct, so the cluster really ordered in a view at least that high.
        """
        replica = self.replica
        if self.view_active or self._view_change_support() - 1 > replica.config.faulty_max:
            return
        if replica.ticks - self._view_change_started_tick < replica.limits.view_change_timeout_ticks // 2:
            return  # Others may be timing out too: give their VIEW-CHANGEs a round trip to arrive.
        with_us = {r for r, vc in self.view_change_by_replica.items() if vc.new_view >= self.view}
        lower = sorted((v for r, v in self.active_view_by_replica.items() if r not in with_us and v < self.view),
                       reverse=True)
        if len(lower) > replica.config.faulty_max:
            self._follow_view(lower[replica.config.faulty_max])

    def _follow_view(self, view: int) -> None:
        replica = self.replica
        assert view < self.view <= self.vote_floor_view and not self.view_active
        replica.catch_up.note_followed_lower_view()
        self.view = view
        self.view_active = True
        self._waiting_since = replica.ticks
        if self.new_view_message is not None and self.new_view_message.view != view:
            self.new_view_message = None
        replica.normal.replay_early_preprepares()

    def followed_lower_view(self, message: PrePrepare | Prepare | Commit) -> bool:
        """A lower view's message while we wait for our own: evidence, not misbehaviour (the peer has not
        moved, and we may be the one who left alone).  True if we now follow that view and should process it."""
        if message.view >= self.view or self.view_active:
            return True
        self.replica.normal.check_window(message.seq)
        self.note_peer_view(message.replica_id, message.view)
        return message.view == self.view

    def later_slot_held(self, seq: int) -> bool:
        """A follower keeps what it holds of a later view at ``seq`` (the view it asked for may form after all)
        rather than replace it with the lower view's slot; it learns that seq by catching up if need be."""
        slot = self.replica.slots.get(seq)
        return slot is not None and slot.view > self.view

    def note_view_evidence(self, replica_id: int, view: int) -> None:
        """Rejoin: once f+1 others are seen working in higher views, ask for the view they run.

        At least one of any f+1 replicas is correct, so the cluster really is
        in a view at least that high; sending VIEW-CHANGE for it makes its
        primary re-send the NEW-VIEW (``resend_new_view``).
        """
        replica = self.replica
        if view <= self.view or replica_id == replica.replica_id or replica_id >= replica.config.replica_count:
            return  # (An id past n: a message verified just before this same input switched to a smaller epoch.)
        self.view_seen_by_replica[replica_id] = max(view, self.view_seen_by_replica.get(replica_id, 0))
        higher = sorted((v for v in self.view_seen_by_replica.values() if v > self.view), reverse=True)
        if len(higher) >= replica.config.faulty_max + 1:
            self.start_view_change(higher[replica.config.faulty_max])

    # ------------------------------------------------------------- sending VIEW-CHANGE

    def start_view_change(self, new_view: int) -> None:
        replica = self.replica
        # Never below a view we already asked for: our VIEW-CHANGE for it is out, and we keep its promise.
        new_view = max(new_view, self.vote_floor_view)
        assert new_view > self.view or (new_view == self.view and self.view_active is False)
        # Every view change, timed out or joined, doubles the timeout until something executes: a
        # replica that joined on f+1 VIEW-CHANGEs waits as long in the new view as those that timed out.
        self._view_change_attempts += 1
        self.view = new_view
        self.view_active = False
        self._waiting_since = self._view_change_started_tick = replica.ticks
        own = self.view_change_by_replica.get(replica.replica_id)
        if own is not None and own.new_view == new_view:
            # Asked for this view before and followed a lower one since: the same VIEW-CHANGE again (S7),
            # still true, since we signed nothing in a lower view after it.
            self._view_change_sent_tick = replica.ticks
            replica._send_to_others(own)
            self._maybe_send_new_view()
            return
        self.vote_floor_view = new_view
        proofs = tuple(replica.prepared_proofs[seq] for seq in sorted(replica.prepared_proofs)
                       if seq > replica.low_water)
        view_change = replica._sign(ViewChange(new_view, replica.low_water, replica.stable_proof, proofs,
                                            replica.replica_id, bytes(64)))
        replica._broadcast(view_change)
        self._view_change_sent_tick = replica.ticks
        self.view_change_by_replica[replica.replica_id] = view_change
        self._maybe_send_new_view()

    # ------------------------------------------------------------- receiving VIEW-CHANGE

    def on_view_change(self, view_change: ViewChange) -> None:
        replica = self.replica
        if view_change.new_view < self.view or (view_change.new_view == self.view and self.view_active):
            replica.role_steps.answer_lagging_view_change(replica, view_change)
            return
        existing = self.view_change_by_replica.get(view_change.replica_id)
        if existing is not None and existing.new_view >= view_change.new_view:
            if existing.new_view == view_change.new_view and existing != view_change:
                raise RemoteProtocolError("equivocation", f"two VIEW-CHANGEs for view {view_change.new_view}")
            return
        replica.epochs.check_view_change(view_change)
        check_view_change(view_change, replica.config, replica._verifier, replica.epochs.keys_for_seq)
        self.view_change_by_replica[view_change.replica_id] = view_change
        self._maybe_join_view_change()
        self._maybe_send_new_view()

    def resend_new_view(self, view_change: ViewChange) -> None:
        """The primary's step (``ROLE_STEPS``): a replica asking for a view we already run missed its NEW-VIEW."""
        replica = self.replica
        if self.view_active and self.new_view_message is not None \
                and view_change.new_view == self.view and view_change.replica_id != replica.replica_id:
            replica._out.to_replicas.append((view_change.replica_id, self.new_view_message))

    def _maybe_join_view_change(self) -> None:
        replica = self.replica
        higher = sorted(vc.new_view for replica_id, vc in self.view_change_by_replica.items()
                        if replica_id != replica.replica_id and vc.new_view > self.view)
        if len(higher) >= replica.config.faulty_max + 1:
            self.start_view_change(higher[0])

    def _maybe_send_new_view(self) -> None:
        replica = self.replica
        if self.view_active or primary_of(self.view, replica.config.replica_count) != replica.replica_id:
            return
        candidates = sorted((vc for vc in self.view_change_by_replica.values() if vc.new_view == self.view),
                            key=lambda vc: vc.replica_id)
        if len(candidates) < replica.quorum:
            return
        chosen = tuple(candidates[:replica.quorum])
        stable_seq, batches = choose_reproposals(chosen)
        for offset, batch in enumerate(batches):
            if not replica.normal.may_sign("pre-prepare", stable_seq + offset + 1, record_digest(batch)):
                return  # A restart lost this NEW-VIEW half-built; the next view change will retry.
        preprepares = tuple(replica._sign(PrePrepare(self.view, stable_seq + offset + 1, batch, replica.replica_id,
                                                     bytes(64)))
                            for offset, batch in enumerate(batches))
        new_view = replica._sign(NewView(self.view, chosen, preprepares, replica.replica_id, bytes(64)))
        # Also stored as slot messages: pruning the NEW-VIEWs of old views must not take our prepared
        # proofs' pre-prepares with them (a restart rebuilds the proofs from these).
        replica._out.persist.extend(preprepares)
        replica._broadcast(new_view)
        self._enter_view(new_view, stable_seq, batches)

    # ------------------------------------------------------------- NEW-VIEW

    def on_new_view(self, new_view: NewView) -> None:
        replica = self.replica
        if new_view.view < self.view or (new_view.view == self.view and self.view_active):
            return  # Already in that view (or later): a re-sent NEW-VIEW is harmless.
        for view_change in new_view.view_changes:
            replica.epochs.check_view_change(view_change)
        stable_seq, batches = check_new_view(new_view, replica.config, replica._verifier, replica.epochs.keys_for_seq)
        self._enter_view(new_view, stable_seq, batches)

    def enter_epoch(self, staying: frozenset[int]) -> None:
        """A new epoch starts in the next view, without a NEW-VIEW: nothing above the activation seq was
        prepared in the old epoch, so there is nothing to re-propose (specs/RECONFIGURATION.md section 3).
        A replica waiting for a view it asked for starts the epoch in that view instead; the view-change
        messages of the old epoch are dropped, and what peers that left it said is forgotten."""
        replica = self.replica
        self.view = max(self.view + self.view_active, self.vote_floor_view)
        self.view_active, self.vote_floor_view, self.new_view_message = True, self.view, None
        self.view_change_by_replica = {}
        self.view_seen_by_replica = {r: v for r, v in self.view_seen_by_replica.items() if r in staying and v > self.view}
        self.active_view_by_replica = {r: v for r, v in self.active_view_by_replica.items() if r in staying}
        self._waiting_since, self._view_change_attempts = replica.ticks, 0
        replica.normal.forget_views_below(self.view)
        replica.requests.unmark_proposed_except(set())

    def _enter_view(self, new_view: NewView, stable_seq: int, batches: tuple[Batch, ...]) -> None:
        # The view stays inactive until its re-proposals are accepted and next_seq is
        # set: adopting the checkpoint below must not let this replica propose early.
        replica = self.replica
        self.view = new_view.view
        self.new_view_message = new_view
        replica.normal.forget_views_below(self.view)
        self.view_seen_by_replica = {r: v for r, v in self.view_seen_by_replica.items() if v > self.view}
        self._waiting_since = replica.ticks
        self.view_change_by_replica = {r: vc for r, vc in self.view_change_by_replica.items()
                                       if vc.new_view > self.view}
        if stable_seq > replica.low_water and replica.last_executed >= stable_seq:
            proof = stable_proof_for(new_view.view_changes, stable_seq)
            replica.checkpointing.adopt_stable_checkpoint(stable_seq, proof)
        replica.checkpointing.note_lag(stable_seq)  # Not re-proposed, so state transfer is the only way to reach it.
        replica.normal.install_view(new_view, stable_seq, batches)
        self.view_active = True
        replica.normal.view_installed()
