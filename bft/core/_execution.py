"""Executing ordered batches: the hash-chained verdict log and the exactly-once client table.

This is the replicated state.  Every correct replica that executes the same
batches in the same order reaches the same ``state_digest``; checkpoints compare it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

from sortedcontainers import SortedDict

from ._codec import digest, pack
from ._messages import DIGEST, REASON, Batch, Decision, Reply, Request, Risk, Vote
from ._schema import Bytes, Enum, Int, Text, check_schema_matches_fields, record_to_wire
from ._verdict import VerdictRule, decide

GENESIS_HASH = bytes(32)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One finalized verdict, chained to the previous one by ``previous_hash``."""

    position: int
    seq: int
    client_id: str
    request_number: int
    request_digest: bytes
    risk: Risk
    decision: Decision
    reason: str
    timestamp_ms: int
    deadline_ms: int
    votes_digest: bytes
    previous_hash: bytes
    entry_hash: bytes
    SCHEMA: ClassVar = (
        ("position", Int(1)), ("seq", Int(1)), ("client_id", Text(64, 1)), ("request_number", Int(1)),
        ("request_digest", DIGEST), ("risk", Enum(Risk)), ("decision", Enum(Decision)), ("reason", REASON),
        ("timestamp_ms", Int()), ("deadline_ms", Int()), ("votes_digest", DIGEST),
        ("previous_hash", DIGEST), ("entry_hash", Bytes(32, 32)),
    )

    def computed_hash(self) -> bytes:
        """The hash this entry must carry: over every field but the hash itself."""
        return record_digest_of_fields(record_to_wire(self)[:-1])

    @property
    def key(self) -> tuple[str, int]:
        return (self.client_id, self.request_number)


check_schema_matches_fields(LogEntry)


def record_digest_of_fields(fields: list) -> bytes:
    return digest(pack(fields))


def votes_digest(votes: tuple[Vote, ...]) -> bytes:
    """The digest a log entry stores for its vote set: votes in replica order, canonically encoded."""
    ordered = sorted(votes, key=lambda vote: vote.replica_id)
    return record_digest_of_fields([record_to_wire(vote) for vote in ordered])


class ClientRecord:
    """Outcomes of one client's most recent requests, and the floor below which numbers are stale.

    An outcome is the signed ``Reply`` this replica sent, or, for requests
    recovered from the durable log after a restart, the ``LogEntry`` alone (the
    votes are not in the log, so such a reply cannot be re-sent; the client
    still gets f+1 replies from the other replicas).
    """

    __slots__ = ("stale_below", "replies")

    def __init__(self) -> None:
        self.stale_below = 1
        self.replies: SortedDict[int, Reply | LogEntry] = SortedDict()


class ExecutionState:
    """Applies committed batches in sequence order."""

    def __init__(self, rules: Mapping[Risk, VerdictRule], client_window: int) -> None:
        assert client_window >= 1
        self._rules = rules
        self._client_window = client_window
        self.last_executed_seq = 0
        self.log_length = 0
        self.head_hash = GENESIS_HASH
        self.clients: dict[str, ClientRecord] = {}

    def cached_reply(self, client_id: str, request_number: int) -> Reply | LogEntry | None:
        record = self.clients.get(client_id)
        return record.replies.get(request_number) if record else None

    def restore(self, log: tuple[LogEntry, ...], last_executed_seq: int) -> None:
        """Rebuild from the durable verdict log after a restart (only on a fresh state)."""
        assert self.log_length == 0 and self.last_executed_seq == 0
        for entry in log:
            assert entry.position == self.log_length + 1 and entry.previous_hash == self.head_hash
            assert entry.entry_hash == entry.computed_hash()
            self.log_length, self.head_hash = entry.position, entry.entry_hash
            self._remember(entry)
        self.last_executed_seq = max(last_executed_seq, log[-1].seq if log else 0)

    def is_stale(self, client_id: str, request_number: int) -> bool:
        """True for a number that may have executed but whose reply was evicted from the window."""
        record = self.clients.get(client_id)
        return record is not None and request_number < record.stale_below

    def execute(self, seq: int, batch: Batch, request_digests: tuple[bytes, ...],
                sign_reply: Callable[[Reply], Reply]) -> list[tuple[LogEntry, Reply]]:
        """Apply ``batch`` at ``seq``: one log entry and one signed reply per request not seen before."""
        assert seq == self.last_executed_seq + 1, (seq, self.last_executed_seq)
        assert len(request_digests) == len(batch.entries)
        executed = []
        for entry, request_digest in zip(batch.entries, request_digests):
            request = entry.request
            if self.cached_reply(*request.key) or self.is_stale(*request.key):
                continue  # Exactly-once: a request ordered twice takes effect the first time only.
            executed.append(self._apply(seq, batch.timestamp_ms, request, request_digest, entry.votes, sign_reply))
        self.last_executed_seq = seq
        return executed

    def _apply(self, seq: int, timestamp_ms: int, request: Request, request_digest: bytes,
               votes: tuple[Vote, ...], sign_reply: Callable[[Reply], Reply]) -> tuple[LogEntry, Reply]:
        votes = tuple(sorted(votes, key=lambda vote: vote.replica_id))
        decision, reason = decide(self._rules[request.risk], votes, timestamp_ms, request.deadline_ms)
        unhashed = LogEntry(self.log_length + 1, seq, request.client_id, request.request_number,
                            request_digest, request.risk, decision, reason, timestamp_ms, request.deadline_ms,
                            votes_digest(votes), self.head_hash, entry_hash=GENESIS_HASH)
        log_entry = dataclasses.replace(unhashed, entry_hash=unhashed.computed_hash())
        reply = sign_reply(Reply(request.client_id, request.request_number, request_digest, seq, timestamp_ms,
                                 decision, reason, votes, replica_id=0, signature=bytes(64)))
        self.log_length += 1
        self.head_hash = log_entry.entry_hash
        self._remember(reply)
        return log_entry, reply

    def _remember(self, reply: Reply | LogEntry) -> None:
        record = self.clients.setdefault(reply.client_id, ClientRecord())
        record.replies[reply.request_number] = reply
        while len(record.replies) > self._client_window:
            evicted_number, _ = record.replies.popitem(0)
            record.stale_below = max(record.stale_below, evicted_number + 1)
        assert len(record.replies) <= self._client_window

    def state_digest(self) -> bytes:
        """Digest of the replicated state; equal on every correct replica at the same seq."""
        clients = [[client_id, record.stale_below,
                    [[number, reply.request_digest, reply.seq] for number, reply in record.replies.items()]]
                   for client_id, record in sorted(self.clients.items())]
        return record_digest_of_fields([self.last_executed_seq, self.log_length, self.head_hash, clients])
