"""The replica's request component: client requests waiting to be ordered, and the votes on them.

It owns the pending pool (requests with their votes, until they execute or
expire), the votes this replica persisted before a restart (re-sent as they
were, never re-decided) and the votes it declared dead.  Votes go to the
primary alone; a backup shares a vote the primary left unproposed for a
view-change timeout with everyone (SPEC.md sections 5 and 11b).  The primary's
proposer asks it which requests are ready to go into a batch.
"""

from __future__ import annotations

from ._codec import request_digest
from ._config import ClusterConfig
from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages import MAX_REASON_BYTES, Decision, Reply, Request, Vote
from ._pending import PendingPool, PendingRequest


def truncate_reason(reason: str) -> str:
    """Fit a policy's reason into a vote: valid UTF-8 (lone surrogates replaced), at most the byte limit."""
    if not isinstance(reason, str):
        raise LocalProtocolError(f"a decision reason must be text, got {type(reason).__name__}")
    return reason.encode("utf-8", errors="replace")[:MAX_REASON_BYTES].decode("utf-8", errors="ignore")


class Requests:
    def __init__(self, replica) -> None:
        self.replica = replica
        config: ClusterConfig = replica.config
        self.pending = PendingPool(config.limits.max_pending_requests,
                                   max(1, config.limits.max_pending_requests // (2 * config.replica_count)))
        self.recovered_votes: dict[bytes, Vote] = {}
        self._dead_votes_backlog: list[bytes] = []

    def restore_votes(self, own: list) -> None:
        """After a restart: votes persisted before the crash are re-sent as they were, never re-decided, so a
        policy that answers differently now cannot make this replica sign a second vote."""
        votes = [m for m in own if isinstance(m, Vote)]
        kept = votes[-self.replica.limits.max_pending_requests:]
        self.recovered_votes = {vote.request_digest: vote for vote in kept}
        # Older votes are beyond what the pending pool could still hold: their requests are long gone.
        self._dead_votes_backlog = [vote.request_digest for vote in votes[:len(votes) - len(kept)]]

    def take_dead_votes_backlog(self) -> list[bytes]:
        backlog, self._dead_votes_backlog = self._dead_votes_backlog, []
        return backlog

    @property
    def idle(self) -> bool:
        """Nothing waits here: no pending request or vote, no dead vote to report."""
        return not self.pending and not self._dead_votes_backlog

    def check_bounds(self) -> None:
        limits = self.replica.limits
        assert len(self.pending) <= limits.max_pending_requests
        self.pending.check_bounds()
        assert len(self.recovered_votes) <= limits.max_pending_requests

    def expire(self) -> None:
        """A tick: requests past their deadline and orphan votes too old are dropped; our votes on them are dead."""
        replica = self.replica
        limits = replica.limits
        expired = self.pending.expire(replica.now_ms, limits.max_clock_skew_ms, replica.ticks, limits.orphan_vote_ticks)
        replica._out.dead_votes.extend(p.digest for p in expired if replica.replica_id in p.votes)

    def mark_proposed(self, digests: tuple[bytes, ...], seq: int) -> None:
        for digest in digests:
            pending = self.pending.get(digest)
            if pending is not None:
                self.pending.set_proposed(pending, seq)

    def unmark_proposed_except(self, reproposed: set[bytes]) -> None:
        """A new view: requests it does not re-propose are proposable again."""
        for pending in self.pending:
            if pending.digest not in reproposed:
                self.pending.set_proposed(pending, None)

    def forget_executed(self, digests: tuple[bytes, ...]) -> None:
        """Executed: no longer pending, never voted on again; how long they took feeds the view-change timeout."""
        replica = self.replica
        for digest in digests:
            pending = self.pending.get(digest)
            if pending is not None:
                replica.views.note_ordering_ticks(replica.ticks - pending.created_tick)
            self.pending.discard(digest)
            self.recovered_votes.pop(digest, None)

    def forget_transferred(self, entries) -> None:
        """A state transfer finalized ``entries``: their requests are no longer pending, nor voted on again."""
        execution = self.replica.execution
        self.pending.remove_where(lambda p: p.request is not None and (
            execution.cached_reply(*p.request.key) is not None or execution.is_stale(*p.request.key)))
        for entry in entries:
            self.recovered_votes.pop(entry.request_digest, None)

    def on_forwarded_request(self, request: Request) -> None:
        """A peer forwards the requests it has not seen ordered.  One that already finalized here is not
        answered: its client had the verdict or retransmits for it, and a lagging replica (or a Byzantine
        one) forwarding every request it missed must not make this replica re-send every verdict."""
        self.on_request(request, answer_from_cache=False)

    def on_request(self, request: Request, answer_from_cache: bool = True) -> None:
        replica = self.replica
        digest = request_digest(replica.config.cluster_id, request)
        cached = replica.execution.cached_reply(*request.key)
        if cached is not None:
            if cached.request_digest != digest:
                raise RemoteProtocolError("conflicting-request", "this request number already finalized another action")
            if answer_from_cache and isinstance(cached, Reply):
                replica._out.to_clients.append((request.client_id, cached))
            return
        if replica.execution.is_stale(*request.key):
            raise RemoteProtocolError("stale-request",
                                      f"request number {request.request_number} is below the client window")
        if request.deadline_ms < replica.now_ms:
            raise RemoteProtocolError("expired", f"deadline {request.deadline_ms} ms already passed")
        pending = self.pending.get_or_create(digest, replica.ticks)
        if pending is None:
            raise RemoteProtocolError("overloaded", "the pending-request pool is full")
        if pending.request is None:
            self.pending.attach_request(pending, request)
        if not pending.evaluation_requested:
            pending.evaluation_requested = True
            replica._out.evaluate.append(request)
        replica.role_steps.propose(replica)

    def record_decision(self, digest: bytes, decision: Decision, reason: str) -> None:
        replica = self.replica
        pending = self.pending.get(digest)
        if pending is None or not pending.evaluation_requested or replica.replica_id in pending.votes:
            return  # The request finalized or expired while the policy ran; nothing to vote on.
        vote = self.recovered_votes.pop(digest, None)
        if vote is None:
            vote = replica._sign(Vote(digest, decision, truncate_reason(reason), replica.replica_id, bytes(64)))
            replica._out.persist.append(vote)
        replica.role_steps.send_own_vote(replica, vote)
        self.pending.note_own_vote(pending)
        self.add_vote(pending, vote)

    def send_vote_to_primary(self, vote: Vote) -> None:
        """A backup's votes go to the primary alone: only its batch needs them, and it carries them to everyone.

        A vote still unproposed after a view-change timeout goes to everyone (``share_overdue_votes``),
        so backups still time a withholding primary on a quorum of votes, and votes not yet proposed go
        again to each new primary (``resend_votes_to_primary``); SPEC.md sections 5 (step 3) and 11b.
        """
        replica = self.replica
        replica._out.to_replicas.append((replica.primary_id, vote))

    def share_overdue_votes(self) -> None:
        """Votes go to the primary alone, so a backup sees no quorum of votes to time the primary on.  A
        vote on a request that no pre-prepare carried for a whole view-change timeout goes to every
        replica, with its request: if a quorum of replicas is in the same position, each of them now
        sees a quorum of votes, and the ordinary timer (a request with a quorum of votes, no progress)
        replaces a primary that withholds it.  A backup cut off from the others shares into the void
        and never sees a quorum, so it never changes view alone (SPEC.md section 11b)."""
        replica = self.replica
        arrived_by_tick = replica.ticks - replica.limits.view_change_timeout_ticks
        for pending in self.pending.take_overdue_votes(arrived_by_tick):
            replica._send_to_others(pending.votes[replica.replica_id])
            if not pending.forwarded:
                pending.forwarded = True
                replica._send_to_others(pending.request)

    def forward_unordered_requests(self) -> None:
        for pending in self.pending:
            if pending.request is not None and not pending.forwarded:
                pending.forwarded = True
                self.replica._send_to_others(pending.request)

    def resend_votes_to_primary(self) -> None:
        """A new view's primary may never have received our votes: send those it has not proposed."""
        replica = self.replica
        for pending in self.pending.voted_unproposed():
            replica.role_steps.send_own_vote(replica, pending.votes[replica.replica_id])

    def on_vote(self, vote: Vote) -> None:
        pending = self.pending.get(vote.request_digest)
        existing = pending.votes.get(vote.replica_id) if pending else None
        if existing is not None:
            if existing != vote:
                raise RemoteProtocolError("equivocation", "two different votes on one request")
            return
        pending = pending or self.pending.get_or_create_orphan(vote.request_digest, self.replica.ticks, vote.replica_id)
        if pending is None:
            raise RemoteProtocolError("overloaded",
                                      f"no room for more votes on unknown requests from replica {vote.replica_id}")
        self.add_vote(pending, vote)

    def add_vote(self, pending: PendingRequest, vote: Vote) -> None:
        replica = self.replica
        assert vote.replica_id not in pending.votes
        pending.votes[vote.replica_id] = vote
        # A quarantined replica's vote does not count, so it must not start the wait for stragglers either:
        # the wait starts once a quorum of counted votes is in.
        if pending.quorum_tick is None and self._counted_vote_count(pending) >= replica.quorum:
            self.pending.note_quorum(pending, replica.ticks)
        replica.role_steps.propose(replica)

    def keep_votes_of(self, members: frozenset[int]) -> None:
        """A new epoch (``_replica_epochs``): only its members' votes count, with its quorum."""
        replica = self.replica

        def request_valid(request: Request) -> bool:
            try:
                replica._verifier.verify(request)
            except RemoteProtocolError:
                return False
            return True

        self.pending.retain_votes(members.__contains__,
                                  lambda pending: self._counted_vote_count(pending) >= replica.quorum,
                                  request_valid, replica.ticks)

    def _counted_vote_count(self, pending: PendingRequest) -> int:
        accountability = self.replica.execution.accountability
        uncounted = accountability.uncounted if accountability is not None else frozenset()
        return len(pending.votes.keys() - uncounted)

    def proposable(self) -> list[PendingRequest]:
        chosen, keys = [], set()
        for pending in self.pending.proposal_candidates():
            if len(chosen) == self.replica.limits.max_batch_requests:
                break
            if self._ready_to_propose(pending) and pending.request.key not in keys:
                chosen.append(pending)
                keys.add(pending.request.key)
        return chosen

    def _ready_to_propose(self, pending: PendingRequest) -> bool:
        """A request goes into a batch once it has a quorum of votes and more votes could not change
        its verdict, or it has waited ``vote_wait_ticks`` for the stragglers."""
        replica = self.replica
        assert pending.request is not None and pending.proposed_seq is None and pending.quorum_tick is not None, \
            "the pool's proposal candidates are requests with a quorum of votes that are not yet proposed"
        if replica.execution.cached_reply(*pending.request.key) or replica.execution.is_stale(*pending.request.key):
            return False
        waited = replica.ticks - pending.quorum_tick >= replica.limits.vote_wait_ticks
        votes = pending.vote_tuple()
        return waited or replica.execution.is_settled(pending.request.risk, votes, replica.config.replica_count)
