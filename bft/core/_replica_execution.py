"""The replica's execution component: it runs committed slots in sequence order against the verdict log.

It owns the execution state (the verdict log's head, the clients' answered
requests, the accountability state) and is the only one to change it, apart
from state transfer adopting a certified snapshot through
``ExecutionState.adopt_transferred``.  Slots execute strictly in order: the
next one is always ``last_executed + 1``, and a committed slot above a gap
waits for the gap to fill (by commits, catch-up or state transfer).
"""

from __future__ import annotations

import dataclasses

from ._codec import request_digest
from ._execution import ExecutionState, votes_digest
from ._messages import Message, Reply, Vote
from ._recovery import stored_preprepares
from ._slots import Slot


class Execution:
    def __init__(self, replica) -> None:
        self.replica = replica
        config = replica.config
        self.state = ExecutionState(config.rules, config.limits.client_window, config)

    def execute_committed(self) -> None:
        replica = self.replica
        while True:
            slot = replica.slots.get(replica.last_executed + 1)
            if slot is None or not slot.committed:
                return
            self._execute(slot)

    def _execute(self, slot: Slot) -> None:
        replica = self.replica
        results = self.state.execute(slot.seq, slot.preprepare.batch, slot.request_digests, self._sign_reply)
        for log_entry, reply in results:
            replica._out.persist.append(log_entry)
            replica._out.finalized.append(log_entry)
            replica._out.to_clients.append((reply.client_id, reply))
        replica.requests.forget_executed(slot.request_digests)
        replica.views.note_progress()
        if slot.seq % replica.limits.checkpoint_interval == 0:
            replica.checkpointing.take_checkpoint(slot.seq)
        replica.role_steps.propose(replica)

    def _sign_reply(self, reply: Reply) -> Reply:
        replica = self.replica
        return replica._sign(dataclasses.replace(reply, replica_id=replica.replica_id))

    def restore_replies(self, signed: list[Message]) -> None:
        replica = self.replica
        votes_at: dict[tuple[int, bytes], list[tuple[Vote, ...]]] = {}
        for preprepare in stored_preprepares(signed, replica.config.replica_count):
            for entry in preprepare.batch.entries:
                key = (preprepare.seq, request_digest(replica.config.cluster_id, entry.request))
                votes_at.setdefault(key, []).append(tuple(sorted(entry.votes, key=lambda vote: vote.replica_id)))
        restored = [outcome for record in self.state.clients.values() for outcome in record.replies.values()
                    if not isinstance(outcome, Reply) and (outcome.seq, outcome.request_digest) in votes_at]
        for entry in restored:
            votes = next((v for v in votes_at[(entry.seq, entry.request_digest)]
                          if votes_digest(v) == entry.votes_digest), None)
            if votes is not None:
                reply = Reply(entry.client_id, entry.request_number, entry.request_digest, entry.seq,
                              entry.timestamp_ms, entry.decision, entry.reason, votes, replica.replica_id, bytes(64))
                assert self.state.replace_outcome(replica._sign(reply))
