"""Catching up from proofs: a replica that is behind fetches the committed slots it missed, whatever the view or
the clock, before it suspects anyone.

What counts as proof that a seq committed (``specs/SPEC.md`` section 10b):

- a quorum of matching COMMITs of one view for one (seq, digest) plus the primary's pre-prepare with that
  digest (a *commit certificate*): at least f+1 correct replicas prepared it, so every later view re-proposes
  it and no other batch can commit at that seq.  A replica executes a certificate even if the batch's
  timestamp is too far from its clock (it just does not vote for such a batch);
- a stable checkpoint proof (a quorum of matching CHECKPOINTs), fetched by state transfer.

When a replica learns it is behind (a commit quorum above a gap in its log, a certified checkpoint it has not
executed), or may be (it restarted, its clock jumped as after a pause, or it heard from no peer for a view-change
timeout), it asks one peer at a time for its committed slots above its last executed seq:
``StateRequest(last_executed, 0, top)`` with ``top`` above ``last_executed``.  The peer answers with what it holds,
each message signed by its author: for each committed slot of its current view in the range, the pre-prepare and
a quorum of matching commits; if the requester is below the peer's stable checkpoint, that checkpoint's proof,
which starts a state transfer; and if the requester is in an earlier view, the NEW-VIEW of the peer's view (an idle
cluster may have changed view while it was away, with nothing committed since).  The requester checks every message as if it came from its author.  While
it is behind it does not start a view change (``_replica_views``): its lack of progress is its own.

Bounds: one catch-up request per ``state_transfer_retry_ticks`` while behind and one probe per view-change timeout
otherwise; an answer covers at most ``SLOTS_PER_ANSWER_MAX`` slots and shares the per-peer reply budget of state
transfer.
"""

from __future__ import annotations

from collections import Counter

from ._errors import RemoteProtocolError
from ._messages import Batch, Bundle, Commit, StateRequest

SLOTS_PER_ANSWER_MAX = 32
# A correct replica asks at most every ``state_transfer_retry_ticks``; answering the same peer more often than
# half that would only let a Byzantine one amplify its requests into our traffic.
ANSWER_SPACING_DIVISOR = 2
CATCH_UP_STATES = ("ok", "catching-up", "view-change")


class CatchUp:
    """The replica's catch-up component: it owns what the replica knows committed elsewhere, when it last
    heard from the cluster, and its probes and answers."""

    def __init__(self, replica) -> None:
        self.replica = replica
        self.committed_seq_known = 0  # The highest seq a commit quorum of our view showed committed.
        self.catch_up_counts: Counter[str] = Counter()
        self._heard_tick = 0  # The last tick any peer's message arrived, and the clock then.
        self._heard_ms = 0
        self._probe_due = False
        self._catch_up_sent_tick: int | None = None
        self._catch_up_sent_ms = 0
        self._behind_since_tick: int | None = None
        self._catch_up_progress_tick = 0  # When we last executed, or found ourselves behind.
        self._catch_up_attempts = 0
        self._answered_tick: dict[int, int] = {}  # Peer -> the tick we last answered its catch-up request.

    def check_bounds(self) -> None:
        assert len(self._answered_tick) <= self.replica.config.replica_count

    def forget_peers_outside(self, members: frozenset[int]) -> None:
        """A new epoch: peers that left it are no longer answered or remembered."""
        self._answered_tick = {r: tick for r, tick in self._answered_tick.items() if r in members}

    @property
    def probe_due(self) -> bool:
        return self._probe_due

    @property
    def progress_tick(self) -> int:
        """When we last executed, or found ourselves behind."""
        return self._catch_up_progress_tick

    def note_progress(self) -> None:
        self._catch_up_progress_tick = self.replica.ticks

    def note_followed_lower_view(self) -> None:
        self.catch_up_counts["followed-lower-view"] += 1
        self._probe_due = True  # Learn what committed in that view while we waited.

    # ------------------------------------------------------------- read-only summary

    @property
    def highest_seq_known(self) -> int:
        """The highest seq this replica knows the cluster committed (from proofs, never from one peer's say)."""
        replica = self.replica
        return max(self.committed_seq_known, replica.lag_target_seq, replica.last_executed)

    def catching_up(self) -> bool:
        """Known to be behind: a proof shows the cluster committed past what this replica executed."""
        replica = self.replica
        return self.highest_seq_known > replica.last_executed or replica.transfer is not None

    # ------------------------------------------------------------- learning without voting

    def may_prepare(self, batch: Batch) -> bool:
        """Whether this replica vouches for a valid batch with its PREPARE.

        A batch whose time is too far from our clock (ours jumped after a pause, or the primary's is off), or an
        empty one (only a NEW-VIEW re-proposes those), is not prepared here.  It is still kept in its slot: a
        quorum of commits for it is proof that it committed, and we execute it then (``_check_committed``).
        While a configuration change is pending, empty batches are prepared: they carry the log to the
        activation seq when no request does (specs/RECONFIGURATION.md section 7), and the window's ceiling
        bounds how many a primary can propose.
        """
        replica = self.replica
        if not batch.entries and replica.epochs.ceiling() is None:
            self.catch_up_counts["empty-batch-kept"] += 1
            return False
        if abs(batch.timestamp_ms - replica.now_ms) > replica.limits.max_clock_skew_ms:
            replica._count_rejected("bad-timestamp")  # Not voted for; kept only to learn its outcome.
            return False
        return True

    # ------------------------------------------------------------- noticing

    def probe_soon(self) -> None:
        self._probe_due = True

    def note_heard(self) -> None:
        replica = self.replica
        self._heard_tick, self._heard_ms = replica.ticks, replica.now_ms

    def note_clock(self, now_ms: int) -> None:
        """A clock that jumped further than the allowed skew between two ticks: we were paused; look around."""
        replica = self.replica
        if not replica.now_ms:  # The first tick: the clock starts, and nothing has been quiet for any time yet.
            self._heard_ms = self._catch_up_sent_ms = now_ms
        elif now_ms - replica.now_ms > replica.limits.max_clock_skew_ms:
            self.catch_up_counts["clock-jumps"] += 1
            self._probe_due = True

    def note_commit_quorum(self, commit: Commit, commits: dict) -> None:
        """A quorum of matching commits for ``commit``'s (view, seq, digest): the cluster committed that seq."""
        if commit.seq <= self.committed_seq_known:
            return
        if sum(1 for other in commits.values() if other.batch_digest == commit.batch_digest) >= self.replica.quorum:
            self.committed_seq_known = commit.seq

    # ------------------------------------------------------------- asking

    def tick(self) -> None:
        replica = self.replica
        if replica.config.replica_count == 1:
            return  # A replica alone has nobody to catch up from, and nothing to miss.
        behind = self.highest_seq_known > replica.last_executed and replica.transfer is None \
            and replica.lag_target_seq <= replica.last_executed  # Below a stable checkpoint, state transfer runs.
        if not behind:
            self._behind_since_tick = None
        elif self._behind_since_tick is None:
            self._behind_since_tick = self._catch_up_progress_tick = replica.ticks
        since_sent = None if self._catch_up_sent_tick is None else replica.ticks - self._catch_up_sent_tick
        if behind:
            waited = replica.ticks - self._behind_since_tick >= replica.limits.state_transfer_wait_ticks
            if waited and (since_sent is None or since_sent >= replica.limits.state_transfer_retry_ticks):
                self._ask_for_slots("behind")
            return
        # Counted in ticks while ticking busily, in time while quiescent (ticked rarely): whichever is due first.
        quiet_ms = replica.limits.quiet_probe_ms
        quiet = replica.ticks - self._heard_tick >= replica.limits.view_change_timeout_ticks \
            or replica.now_ms - self._heard_ms >= quiet_ms
        probe_period_over = since_sent is None or since_sent >= replica.limits.view_change_timeout_ticks \
            or replica.now_ms - self._catch_up_sent_ms >= quiet_ms
        if (self._probe_due or quiet) and probe_period_over:
            self._probe_due = False
            self._ask_for_slots("probe")

    def _ask_for_slots(self, why: str) -> None:
        replica = self.replica
        peers = [r for r in range(replica.config.replica_count) if r != replica.replica_id]
        peer = peers[(replica.replica_id + self._catch_up_attempts) % len(peers)]
        self._catch_up_attempts += 1
        self._catch_up_sent_tick, self._catch_up_sent_ms = replica.ticks, replica.now_ms
        self.catch_up_counts[f"asked-{why}"] += 1
        top = min(replica.high_water, replica.last_executed + SLOTS_PER_ANSWER_MAX)
        request = replica._sign(StateRequest(replica.last_executed, 0, top, replica.view, replica.replica_id,
                                             bytes(64)))
        replica._out.to_replicas.append((peer, request))

    # ------------------------------------------------------------- answering

    def answer_slots(self, request: StateRequest) -> None:
        """Re-send, signed by their authors, the proofs of what committed above the requester's last seq."""
        replica = self.replica
        above = request.checkpoint_seq
        if not above < request.last_position <= above + SLOTS_PER_ANSWER_MAX:
            raise RemoteProtocolError("bad-state-request", f"asks for slots ({above}, {request.last_position}], "
                                      f"at most {SLOTS_PER_ANSWER_MAX} above its seq")
        spacing = replica.limits.state_transfer_retry_ticks // ANSWER_SPACING_DIVISOR
        last = self._answered_tick.get(request.replica_id)
        if last is not None and replica.ticks - last < spacing:
            raise RemoteProtocolError("rate-limited", f"a catch-up request within {spacing} ticks of the last")
        self._answered_tick[request.replica_id] = replica.ticks
        if above > replica.last_executed:
            self._probe_due = True  # A peer claims to be ahead of us: look for ourselves (bounded by the period).
        sent = []
        if above < replica.low_water and replica.stable_proof:
            sent += replica.stable_proof  # It is below our stable checkpoint: this starts its state transfer.
        for seq in replica.slots.irange(above + 1, request.last_position):
            slot = replica.slots[seq]
            if slot.committed and slot.preprepare is not None:
                sent += [slot.preprepare, Bundle((), slot.matching_commits()[:replica.quorum], replica.replica_id)]
        if request.view < replica.view and replica.view_active and replica.new_view_message is not None \
                and replica.new_view_message.view == replica.view:
            sent.append(replica.new_view_message)  # It missed our view change; nothing else would tell it.
        self.catch_up_counts["answered"] += 1
        replica._out.to_replicas.extend((request.replica_id, message) for message in sent)
