"""Protocol messages: frozen, slotted records with a strict wire schema.

Every record lists its fields once, in ``SCHEMA``, as (name, kind) pairs in
dataclass order (checked at import).  Signed messages end with a
``signature`` field; what is signed is everything else, prefixed with a
domain tag, the cluster id and the message type (see ``_crypto``), so a
signature cannot be replayed as another message type or in another cluster.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import ClassVar

from ._json_shape import text_depth
from ._schema import Bytes, Enum, Int, ListOf, Nested, Text, check_schema_matches_fields

# Hard protocol maxima.  Configured limits (``Limits``) may be tighter, never looser.
MAX_REPLICAS = 128
MAX_ID_BYTES = 64
MAX_ACTION_BYTES = 32 * 1024
# Brackets deep, the action object itself being 1: deep enough for any real tool call, shallow enough
# that every JSON parser and policy walks it far from Python's recursion limit.
MAX_ACTION_DEPTH = 32
MAX_REASON_BYTES = 200
MAX_BATCH_ENTRIES = 256
MAX_PREPARED_PROOFS = 1024
DIGEST_BYTES = 32
SIGNATURE_BYTES = 64


class Risk(enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Decision(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"


def action_shape_problem(text: str, depth_max: int = MAX_ACTION_DEPTH,
                         bytes_max: int = MAX_ACTION_BYTES) -> str | None:
    """Why action ``text`` is beyond ``depth_max`` levels of nesting or ``bytes_max`` bytes, or None.

    Measured without recursion and before any JSON parser runs, so no input can drive
    a parser or a policy's walk towards Python's recursion limit.
    """
    size = len(text) if text.isascii() else len(text.encode())
    if size > bytes_max:
        return f"the action is larger than {bytes_max} bytes"
    if text_depth(text) > depth_max:
        return f"the action nests deeper than {depth_max} levels"
    return None


def _json_object_problem(text: str) -> str | None:
    problem = action_shape_problem(text)
    if problem:
        return problem
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:  # Hostile JSON: bad syntax, huge ints, deep nesting.
        return f"action is not valid JSON ({type(error).__name__})"
    if not isinstance(value, dict):
        return "action must be a JSON object"
    return None


def _identifier_problem(text: str) -> str | None:
    if not text.isprintable() or text != text.strip():
        return "identifier must be printable with no surrounding spaces"
    return None


class CodecMemo:
    """Base of every signed message: a slot where the codec keeps the message's canonical encoding.

    A replica encodes, signs, verifies and digests the same message several
    times (for every peer, for storage, for the verifier's cache), and each of
    those used to walk the record again; with the encoding kept, each is a
    slice of it.  The slot is not a dataclass field, so equality, hashing,
    ``repr``, ``fields`` and pickling ignore it, and a message made by
    ``dataclasses.replace`` starts without it.  Messages are frozen, so a
    filled slot never goes stale.  Only ``_codec`` reads or writes it.
    """

    __slots__ = ("_wire",)


DIGEST = Bytes(DIGEST_BYTES, DIGEST_BYTES)
SIGNATURE = Bytes(SIGNATURE_BYTES, SIGNATURE_BYTES)
REPLICA_ID = Int(0, MAX_REPLICAS - 1)
CLIENT_ID = Text(MAX_ID_BYTES, min_length=1, check=_identifier_problem)
REASON = Text(MAX_REASON_BYTES)
SEQ = Int(0, 2**63 - 1)
VIEW = Int(0, 2**63 - 1)
TIME_MS = Int(0, 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Request(CodecMemo):
    """A client's question: may ``action`` (a JSON object) run, at ``risk``, before ``deadline_ms``?"""

    client_id: str
    request_number: int
    risk: Risk
    action: str
    deadline_ms: int
    signature: bytes
    TAG: ClassVar[int] = 1
    SCHEMA: ClassVar = (
        ("client_id", CLIENT_ID),
        ("request_number", Int(1, 2**63 - 1)),
        ("risk", Enum(Risk)),
        ("action", Text(MAX_ACTION_BYTES, check=_json_object_problem)),
        ("deadline_ms", TIME_MS),
        ("signature", SIGNATURE),
    )

    @property
    def key(self) -> tuple[str, int]:
        """Exactly-once identity of the request."""
        return (self.client_id, self.request_number)


@dataclass(frozen=True, slots=True)
class Vote(CodecMemo):
    """One replica's signed policy decision on one request (independent of view)."""

    request_digest: bytes
    decision: Decision
    reason: str
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 2
    SCHEMA: ClassVar = (
        ("request_digest", DIGEST),
        ("decision", Enum(Decision)),
        ("reason", REASON),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """A request with the signed votes the primary proposes it with."""

    request: Request
    votes: tuple[Vote, ...]
    SCHEMA: ClassVar = (
        ("request", Nested(Request)),
        ("votes", ListOf(Nested(Vote), MAX_REPLICAS)),
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """What one sequence number orders.  An empty batch is the no-op a new view fills gaps with."""

    timestamp_ms: int
    entries: tuple[BatchEntry, ...]
    SCHEMA: ClassVar = (
        ("timestamp_ms", TIME_MS),
        ("entries", ListOf(Nested(BatchEntry), MAX_BATCH_ENTRIES)),
    )


NULL_BATCH = Batch(timestamp_ms=0, entries=())


@dataclass(frozen=True, slots=True)
class PrePrepare(CodecMemo):
    view: int
    seq: int
    batch: Batch
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 3
    SCHEMA: ClassVar = (
        ("view", VIEW),
        ("seq", SEQ),
        ("batch", Nested(Batch)),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class Prepare(CodecMemo):
    view: int
    seq: int
    batch_digest: bytes
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 4
    SCHEMA: ClassVar = (
        ("view", VIEW),
        ("seq", SEQ),
        ("batch_digest", DIGEST),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class Commit(CodecMemo):
    view: int
    seq: int
    batch_digest: bytes
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 5
    SCHEMA: ClassVar = Prepare.SCHEMA


@dataclass(frozen=True, slots=True)
class Reply(CodecMemo):
    """A replica's signed statement that it executed ``request_digest`` at ``seq`` with this verdict.

    It carries the agreed vote set, so f+1 matching replies form a certificate
    that an auditor can re-check against the verdict rule offline.
    ``uncounted_voters`` lists the replicas quarantined at this log position,
    whose votes did not count (see ``effective_rule``); it is keyword-only and
    empty by default.
    """

    client_id: str
    request_number: int
    request_digest: bytes
    seq: int
    timestamp_ms: int
    decision: Decision
    reason: str
    votes: tuple[Vote, ...]
    uncounted_voters: tuple[int, ...] = field(default=(), kw_only=True)
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 6
    SCHEMA: ClassVar = (
        ("client_id", CLIENT_ID),
        ("request_number", Int(1, 2**63 - 1)),
        ("request_digest", DIGEST),
        ("seq", SEQ),
        ("timestamp_ms", TIME_MS),
        ("decision", Enum(Decision)),
        ("reason", REASON),
        ("votes", ListOf(Nested(Vote), MAX_REPLICAS)),
        ("uncounted_voters", ListOf(REPLICA_ID, MAX_REPLICAS)),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )

    def outcome(self) -> tuple:
        """Everything replicas must agree on for their replies to match."""
        return (self.client_id, self.request_number, self.request_digest, self.seq,
                self.timestamp_ms, self.decision, self.reason, self.votes, self.uncounted_voters)


@dataclass(frozen=True, slots=True)
class Checkpoint(CodecMemo):
    seq: int
    state_digest: bytes
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 7
    SCHEMA: ClassVar = (
        ("seq", SEQ),
        ("state_digest", DIGEST),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class PreparedProof:
    """Evidence that a batch prepared: its pre-prepare and a quorum of matching prepares."""

    preprepare: PrePrepare
    prepares: tuple[Prepare, ...]
    SCHEMA: ClassVar = (
        ("preprepare", Nested(PrePrepare)),
        ("prepares", ListOf(Nested(Prepare), MAX_REPLICAS)),
    )


@dataclass(frozen=True, slots=True)
class ViewChange(CodecMemo):
    new_view: int
    stable_seq: int
    stable_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedProof, ...]
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 8
    SCHEMA: ClassVar = (
        ("new_view", VIEW),
        ("stable_seq", SEQ),
        ("stable_proof", ListOf(Nested(Checkpoint), MAX_REPLICAS)),
        ("prepared", ListOf(Nested(PreparedProof), MAX_PREPARED_PROOFS)),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class NewView(CodecMemo):
    view: int
    view_changes: tuple[ViewChange, ...]
    preprepares: tuple[PrePrepare, ...]
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 9
    SCHEMA: ClassVar = (
        ("view", VIEW),
        ("view_changes", ListOf(Nested(ViewChange), MAX_REPLICAS)),
        ("preprepares", ListOf(Nested(PrePrepare), MAX_PREPARED_PROOFS)),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class Bundle(CodecMemo):
    """A primary's forward of one phase's quorum: the signed PREPAREs or COMMITs of one slot, as their
    authors sent them (SPEC.md section 5, steps 6-7).

    It has no signature of its own: it asserts nothing but what its parts do, and every part is checked
    as if it came from its author.  ``replica_id`` names the forwarder, for logs and blame only.
    """

    prepares: tuple[Prepare, ...]
    commits: tuple[Commit, ...]
    replica_id: int
    TAG: ClassVar[int] = 13
    SCHEMA: ClassVar = (
        ("prepares", ListOf(Nested(Prepare), MAX_REPLICAS)),
        ("commits", ListOf(Nested(Commit), MAX_REPLICAS)),
        ("replica_id", REPLICA_ID),
    )


# Why a replica may refuse a request instead of ordering it.  A fixed set, checked on decode, so that
# a peer cannot put free text into a client's answer or grow a metric's label set.
NO_QUORUM = "no quorum"
REFUSAL_REASONS = (NO_QUORUM,)


def _refusal_reason_problem(text: str) -> str | None:
    return None if text in REFUSAL_REASONS else "unknown refusal reason"


@dataclass(frozen=True, slots=True)
class Refusal(CodecMemo):
    """A replica's signed statement that it will not order this request now, and why.

    It is not a verdict and carries no decision.  One replica's refusal proves
    nothing (it may lie); f+1 from distinct replicas include a correct one, so
    a client may stop waiting and answer REFUSED early.
    """

    client_id: str
    request_number: int
    request_digest: bytes
    reason: str
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 10
    SCHEMA: ClassVar = (
        ("client_id", CLIENT_ID),
        ("request_number", Int(1, 2**63 - 1)),
        ("request_digest", DIGEST),
        ("reason", Text(MAX_REASON_BYTES, check=_refusal_reason_problem)),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


# State transfer carries log entries and an execution-state snapshot as opaque canonical msgpack:
# their record types live in ``_execution`` (which imports this module), and the receiver checks
# them against a quorum-certified state digest, not against this schema.
MAX_STATE_TRANSFER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StateRequest(CodecMemo):
    """A lagging replica asks a peer for part of the state of a stable checkpoint.

    With ``first_position == 0`` it asks for the snapshot of the peer's latest
    stable checkpoint at or above ``checkpoint_seq``, with its quorum proof.
    With ``first_position == 0`` and ``last_position > checkpoint_seq`` it is a
    catch-up request (``bft.core._catch_up``): the commit certificates of the
    peer's committed slots in ``(checkpoint_seq, last_position]``.
    Otherwise it asks for the verdict-log entries at positions
    ``first_position..last_position`` (at most the configured chunk).
    ``view`` is the requester's view: a peer in a later view adds its NEW-VIEW
    to a catch-up answer.
    """

    checkpoint_seq: int
    first_position: int
    last_position: int
    view: int
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 11
    SCHEMA: ClassVar = (
        ("checkpoint_seq", SEQ),
        ("first_position", SEQ),
        ("last_position", SEQ),
        ("view", VIEW),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class StateReply(CodecMemo):
    """A peer's answer to ``StateRequest``: a snapshot with its proof, or a chunk of log entries.

    A snapshot reply has ``stable_proof`` (a quorum of matching checkpoints at
    ``checkpoint_seq``) and ``state`` (``ExecutionState.export_state`` bytes,
    whose digest the proof certifies), and no entries.  A chunk reply has
    ``entries`` (canonical msgpack of consecutive ``LogEntry`` records starting
    at ``first_position``) and no proof or state.  Nothing in it is trusted
    until it checks against the certified digest and hash chain.
    """

    checkpoint_seq: int
    stable_proof: tuple[Checkpoint, ...]
    state: bytes
    first_position: int
    entries: bytes
    replica_id: int
    signature: bytes
    TAG: ClassVar[int] = 12
    SCHEMA: ClassVar = (
        ("checkpoint_seq", SEQ),
        ("stable_proof", ListOf(Nested(Checkpoint), MAX_REPLICAS)),
        ("state", Bytes(0, MAX_STATE_TRANSFER_BYTES)),
        ("first_position", SEQ),
        ("entries", Bytes(0, MAX_STATE_TRANSFER_BYTES)),
        ("replica_id", REPLICA_ID),
        ("signature", SIGNATURE),
    )


SIGNED_MESSAGE_TYPES = (Request, Vote, PrePrepare, Prepare, Commit, Reply, Checkpoint, ViewChange, NewView, Refusal,
                        StateRequest, StateReply)
# Messages that carry only other signed messages and sign nothing themselves.
UNSIGNED_MESSAGE_TYPES = (Bundle,)
MESSAGE_TYPES = SIGNED_MESSAGE_TYPES + UNSIGNED_MESSAGE_TYPES
MESSAGE_TYPE_BY_TAG = {message_type.TAG: message_type for message_type in MESSAGE_TYPES}
Message = (Request | Vote | PrePrepare | Prepare | Commit | Reply | Checkpoint | ViewChange | NewView | Refusal
           | StateRequest | StateReply | Bundle)
ReplicaMessage = (Vote | PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView | StateRequest | StateReply
                  | Bundle)

assert len(MESSAGE_TYPE_BY_TAG) == len(MESSAGE_TYPES), "message tags must be unique"
for _record_type in (*MESSAGE_TYPES, BatchEntry, Batch, PreparedProof):
    check_schema_matches_fields(_record_type)
for _signed_type in SIGNED_MESSAGE_TYPES:
    assert _signed_type.SCHEMA[-1][0] == "signature", _signed_type
    assert issubclass(_signed_type, CodecMemo), _signed_type
