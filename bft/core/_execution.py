"""Executing ordered batches: the hash-chained verdict log and the exactly-once client table.

This is the replicated state.  Every correct replica that executes the same
batches in the same order reaches the same ``state_digest``; checkpoints compare it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping

from sortedcontainers import SortedDict

from ._accountability import is_command_request, voter_text_problem, voters_text
from ._accountability_state import EVENTS_BYTES_MAX, AccountabilityState, EntryOutcome
from ._codec import digest, pack, unpack_plain
from ._config import ClusterConfig
from ._errors import RemoteProtocolError
from ._messages import DIGEST, MAX_ACTION_BYTES, MAX_REPLICAS, REASON, Batch, Decision, Reply, Request, Risk, Vote
from ._schema import Bytes, Enum, Int, Text, check_schema_matches_fields, record_to_wire
from ._verdict import VerdictRule, decide, is_settled

GENESIS_HASH = bytes(32)
VOTERS = Text(4 * MAX_REPLICAS, check=voter_text_problem)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One finalized verdict, chained to the previous one by ``previous_hash``.

    The accountability fields are keyword-only with empty defaults: who voted
    ALLOW and DENY in the agreed vote set, whose votes did not count (the
    replicas quarantined at this position), the command document if the
    request was a command, and the accountability events this entry caused
    (canonical JSON).  They are inside ``entry_hash``, so the log is also the
    audit trail of every quarantine, release, evidence and blocklist change,
    and replaying the log rebuilds the accountability state.
    """

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
    allow_voters: str = field(default="", kw_only=True)
    deny_voters: str = field(default="", kw_only=True)
    uncounted_voters: str = field(default="", kw_only=True)
    command: str = field(default="", kw_only=True)
    events: str = field(default="", kw_only=True)
    previous_hash: bytes
    entry_hash: bytes
    SCHEMA: ClassVar = (
        ("position", Int(1)), ("seq", Int(1)), ("client_id", Text(64, 1)), ("request_number", Int(1)),
        ("request_digest", DIGEST), ("risk", Enum(Risk)), ("decision", Enum(Decision)), ("reason", REASON),
        ("timestamp_ms", Int()), ("deadline_ms", Int()), ("votes_digest", DIGEST),
        ("allow_voters", VOTERS), ("deny_voters", VOTERS), ("uncounted_voters", VOTERS),
        ("command", Text(MAX_ACTION_BYTES)), ("events", Text(EVENTS_BYTES_MAX)),
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

    __slots__ = ("stale_below", "replies", "verdicts")

    def __init__(self) -> None:
        self.stale_below = 1
        self.replies: SortedDict[int, Reply | LogEntry] = SortedDict()
        # The same requests' verdicts as policies see them, made once per request rather than once per
        # evaluation: every request's evaluation reads the whole window (``agreed_history``).
        self.verdicts: dict[int, AgreedVerdict] = {}


@dataclass(frozen=True, slots=True)
class AgreedVerdict:
    """One of a client's finalized verdicts, as every correct replica logged it."""

    request_number: int
    seq: int
    decision: Decision


class ExecutionState:
    """Applies committed batches in sequence order.

    With a ``config`` (as every replica passes) it also keeps the replicated
    ``AccountabilityState``: commands take effect, quarantined replicas' votes
    stop counting and the shared blocklist applies.  Without one it only
    applies ``rules``, and command signers' requests are judged like any other.
    """

    def __init__(self, rules: Mapping[Risk, VerdictRule], client_window: int,
                 config: ClusterConfig | None = None) -> None:
        assert client_window >= 1
        assert config is None or config.rules == rules
        self._rules = rules
        self._client_window = client_window
        self.last_executed_seq = 0
        self.log_length = 0
        self.head_hash = GENESIS_HASH
        self.clients: dict[str, ClientRecord] = {}
        self.accountability = AccountabilityState(config) if config is not None else None

    def cached_reply(self, client_id: str, request_number: int) -> Reply | LogEntry | None:
        record = self.clients.get(client_id)
        return record.replies.get(request_number) if record else None

    def restore(self, log: tuple[LogEntry, ...], last_executed_seq: int) -> None:
        """Rebuild from the durable verdict log after a restart (only on a fresh state)."""
        assert self.log_length == 0 and self.last_executed_seq == 0
        for entry in log:
            self._append_restored(entry)
        self._set_last_executed(max(last_executed_seq, log[-1].seq if log else 0))

    def agreed_history(self, client_id: str) -> tuple[AgreedVerdict, ...]:
        """The client's latest finalized verdicts (at most ``client_window``), by request number.

        This is what a policy may judge a client's behaviour by: every correct
        replica logged the same verdicts, though a replica that has executed
        less sees fewer of the newest ones.
        """
        record = self.clients.get(client_id)
        if record is None:
            return ()
        return tuple(map(record.verdicts.__getitem__, record.replies))

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
        self._set_last_executed(seq)
        return executed

    def _set_last_executed(self, seq: int) -> None:
        """Executed through ``seq``: the next seq's epoch applies from now on (``enter_epoch_of``)."""
        self.last_executed_seq = seq
        if self.accountability is not None:
            self.accountability.enter_epoch_of(seq + 1)

    def _apply(self, seq: int, timestamp_ms: int, request: Request, request_digest: bytes,
               votes: tuple[Vote, ...], sign_reply: Callable[[Reply], Reply]) -> tuple[LogEntry, Reply]:
        votes = tuple(sorted(votes, key=lambda vote: vote.replica_id))
        outcome = self._outcome(request, votes, timestamp_ms, seq)
        is_command = self.accountability is not None and is_command_request(request.client_id)
        unhashed = LogEntry(self.log_length + 1, seq, request.client_id, request.request_number,
                            request_digest, request.risk, outcome.decision, outcome.reason, timestamp_ms,
                            request.deadline_ms, votes_digest(votes), self.head_hash, entry_hash=GENESIS_HASH,
                            allow_voters=voters_text(v.replica_id for v in votes if v.decision is Decision.ALLOW),
                            deny_voters=voters_text(v.replica_id for v in votes if v.decision is Decision.DENY),
                            uncounted_voters=voters_text(outcome.uncounted),
                            command=request.action if is_command else "", events=outcome.events_text)
        log_entry = dataclasses.replace(unhashed, entry_hash=unhashed.computed_hash())
        reply = sign_reply(Reply(request.client_id, request.request_number, request_digest, seq, timestamp_ms,
                                 outcome.decision, outcome.reason, votes, replica_id=0, signature=bytes(64),
                                 uncounted_voters=tuple(sorted(outcome.uncounted))))
        self.log_length += 1
        self.head_hash = log_entry.entry_hash
        self._remember(reply)
        return log_entry, reply

    def _outcome(self, request: Request, votes: tuple[Vote, ...], timestamp_ms: int, seq: int) -> EntryOutcome:
        if self.accountability is not None:
            return self.accountability.execute(request, votes, timestamp_ms, self.log_length + 1, seq)
        decision, reason = decide(self._rules[request.risk], votes, timestamp_ms, request.deadline_ms)
        return EntryOutcome(decision, reason, frozenset(), ())

    def is_settled(self, risk: Risk, votes: tuple[Vote, ...], replica_count: int) -> bool:
        """``is_settled`` under the rule and membership that apply now (quarantined votes do not count)."""
        if self.accountability is None:
            return is_settled(self._rules[risk], votes, replica_count)
        return self.accountability.is_settled(risk, votes)

    def _remember(self, reply: Reply | LogEntry) -> None:
        record = self.clients.setdefault(reply.client_id, ClientRecord())
        record.replies[reply.request_number] = reply
        record.verdicts[reply.request_number] = AgreedVerdict(reply.request_number, reply.seq, reply.decision)
        while len(record.replies) > self._client_window:
            evicted_number, _ = record.replies.popitem(0)
            del record.verdicts[evicted_number]
            record.stale_below = max(record.stale_below, evicted_number + 1)
        assert len(record.replies) == len(record.verdicts) <= self._client_window

    def state_digest(self) -> bytes:
        """Digest of the replicated state; equal on every correct replica at the same seq."""
        return digest(self.export_state())

    # ------------------------------------------------------------ state transfer (owned by _state_transfer)

    def export_state(self) -> bytes:
        """The replicated state in canonical wire form; ``state_digest`` is its SHA-256.

        This is the one definition of what a checkpoint certifies and of what
        state transfer carries.  It starts with the fields ``read_state_header``
        parses (seq, log length, head hash), then the client table.  A field added to the
        replicated state is appended here, so the digest covers it, and taken
        over in ``adopt_transferred`` (unless the verdict log determines it,
        as it determines the client table).
        """
        clients = [[client_id, record.stale_below,
                    [[number, reply.request_digest, reply.seq] for number, reply in record.replies.items()]]
                   for client_id, record in sorted(self.clients.items())]
        # The accountability state is a function of the log too (replayed in _append_restored).
        accountability = self.accountability.to_wire() if self.accountability is not None else []
        fields = [self.last_executed_seq, self.log_length, self.head_hash, clients, accountability]
        # The epochs after the genesis one (``_reconfiguration``); the genesis epoch is the configuration every
        # replica starts from, so a cluster that never reconfigured exports exactly what it did before.
        later_epochs = self.accountability.epochs.to_wire()[1:] if self.accountability is not None else []
        return pack(fields + [later_epochs] if later_epochs else fields)

    def adopt_transferred(self, state: bytes, entries: tuple[LogEntry, ...]) -> None:
        """Become ``state`` by appending ``entries`` to the log, as a state transfer.

        The caller has checked that ``state`` hashes to a quorum-certified
        digest and that ``entries`` chain from this state's head to the head
        ``state`` names.  The client table is a function of the log, so
        replaying ``entries`` rebuilds it; the result must then export to
        exactly ``state`` (anything else is a bug here, not a peer's fault).
        """
        header = read_state_header(state)
        assert header.last_executed_seq > self.last_executed_seq
        assert header.log_length == self.log_length + len(entries), (header, self.log_length, len(entries))
        for entry in entries:
            self._append_restored(entry)
        self._set_last_executed(header.last_executed_seq)
        assert self.head_hash == header.head_hash
        assert self.export_state() == state, "replaying the certified log did not reproduce the certified state"

    def _append_restored(self, entry: LogEntry) -> None:
        assert entry.position == self.log_length + 1 and entry.previous_hash == self.head_hash
        assert entry.entry_hash == entry.computed_hash()
        if self.accountability is not None:
            self.accountability.replay(entry)
        self.log_length, self.head_hash = entry.position, entry.entry_hash
        self._remember(entry)

    def replace_outcome(self, reply: Reply) -> bool:
        """Put a re-signed ``reply`` where a restored log entry stood (same key, digest and seq), so a
        retried request is answered in full again after a restart; False if nothing matches."""
        record = self.clients.get(reply.client_id)
        cached = record.replies.get(reply.request_number) if record else None
        if not isinstance(cached, LogEntry) or (cached.request_digest, cached.seq) != (reply.request_digest, reply.seq):
            return False
        record.replies[reply.request_number] = reply
        return True


@dataclass(frozen=True, slots=True)
class StateHeader:
    """The leading fields of an exported state: where the state stands and where its log ends."""

    last_executed_seq: int
    log_length: int
    head_hash: bytes


def read_state_header(state: bytes) -> StateHeader:
    """Parse the header of a peer's exported state, or raise ``RemoteProtocolError("bad-state")``."""
    plain = unpack_plain(state)
    if type(plain) is not list or len(plain) < 3:
        raise RemoteProtocolError("bad-state", "a state must be an array starting with seq, log length and head")
    seq, log_length, head_hash = plain[:3]
    if type(seq) is not int or type(log_length) is not int or seq < 0 or log_length < 0:
        raise RemoteProtocolError("bad-state", "the state's seq and log length must be non-negative integers")
    if type(head_hash) is not bytes or len(head_hash) != len(GENESIS_HASH):
        raise RemoteProtocolError("bad-state", "the state's head hash must be 32 bytes")
    return StateHeader(seq, log_length, head_hash)
