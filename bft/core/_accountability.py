"""Accountability commands and their effect on the replicated state: pure, deterministic, bounded.

A *command* is an ordinary ``Request`` whose signer is reserved: "replica:I"
(signed with replica I's key) or "operator:NAME" (signed with an operator key
from ``ClusterConfig.operator_keys``).  Its action is a command document::

    {"command": "evidence", "first": B64, "second": B64}         any command signer
    {"command": "quarantine", "replica": 3, "note": "..."}       operators only
    {"command": "release", "replica": 3, "note": "..."}          operators only
    {"command": "blocklist-endorse", "pattern": "...", "ttl_ms": 3600000}   replicas only
    {"command": "config-change", ...}                             operators only, at CRITICAL risk
                                                                  (see ``_reconfiguration``)

(B64 is the base64 of ``encode(message)``.)  Commands are ordered by consensus
like verdicts, and their effect is decided when they *execute*, from the
command itself and the state at that log position, never by a policy: every
correct replica therefore changes its state at the same position.

The state this module keeps (``AccountabilityState``):

- **Quarantine.**  A quarantined replica's votes stop counting; the verdict rule
  is recomputed by ``effective_rule`` (never below 2f+1).  Causes: a proof of
  equivocation (always applied), an operator's command, or suspicion when the
  deployer enabled ``auto_quarantine_suspects``.  Without proof, at most f
  replicas may be quarantined at once.
- **Evidence.**  Two validly signed, conflicting messages from one replica for
  the same (phase, view, seq).  A correct replica never signs such a pair (S7).
- **Suspicion.**  Over the last ``suspicion_window_entries`` verdicts, a replica
  that is one-sided: it rarely votes the way its peers often do, and it goes
  against most other voters on nearly every request they decided the other way
  (``AccountabilityOptions`` has the thresholds).  Deterministic integer arithmetic over
  the agreed vote sets only (vote latency is a local observation, so it is not used).
- **Shared blocklist.**  Literal text patterns that replicas endorse.  A pattern
  is active while at least f+1 distinct, non-quarantined replicas hold an
  unexpired endorsement; an active pattern turns every matching request into
  DENY at execution.  One replica alone can never activate anything.

Every change is reported as an event and written into the log entry that caused
it, so the verdict log is also the audit log of accountability.
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ._codec import decode, encode, record_digest
from ._config import OPERATOR_SIGNER_PREFIX, REPLICA_SIGNER_PREFIX, RESERVED_SIGNER_PREFIXES
from ._crypto import Verifier
from ._errors import RemoteProtocolError
from ._messages import MAX_REASON_BYTES, Commit, Decision, PrePrepare, Prepare, Request, Risk
from ._reconfiguration import CONFIG_CHANGE, CONFIG_CHANGE_FIELDS, ChangeError, ConfigChange, parse_change

EVIDENCE, QUARANTINE, RELEASE, BLOCKLIST_ENDORSE = "evidence", "quarantine", "release", "blocklist-endorse"
COMMANDS = (EVIDENCE, QUARANTINE, RELEASE, BLOCKLIST_ENDORSE, CONFIG_CHANGE)
PHASE_OF = {PrePrepare: "pre-prepare", Prepare: "prepare", Commit: "commit"}
NOTE_BYTES_MAX = 200
PATTERN_CHARS_MIN = 6
PATTERN_ALPHANUMERICS_MIN = 4
PATTERN_BYTES_MAX = 120
PhaseMessage = PrePrepare | Prepare | Commit


class CommandError(ValueError):
    """A command document that is malformed or whose effect is refused; the message says why."""


def is_command_request(client_id: str) -> bool:
    return client_id.startswith(RESERVED_SIGNER_PREFIXES)


def fit_reason(text: str) -> str:
    """``text`` cut to the reason limit on a character boundary."""
    return text.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ----------------------------------------------------------------------------- equivocation proofs


def _signed_digest(message: PhaseMessage) -> bytes:
    """What a replica commits to for a (phase, view, seq): the batch digest."""
    return record_digest(message.batch) if isinstance(message, PrePrepare) else message.batch_digest


@dataclass(frozen=True, slots=True)
class EquivocationProof:
    """Two messages of one phase, view and seq from one replica that commit to different batches."""

    first: PhaseMessage
    second: PhaseMessage

    @staticmethod
    def of(existing: PhaseMessage, message: PhaseMessage) -> "EquivocationProof | None":
        """The proof these two messages form, or None if they do not conflict (signatures unchecked)."""
        same_slot = (type(existing) is type(message) and type(message) in PHASE_OF
                     and (existing.replica_id, existing.view, existing.seq)
                     == (message.replica_id, message.view, message.seq))
        if not same_slot or _signed_digest(existing) == _signed_digest(message):
            return None
        first, second = sorted((existing, message), key=encode)  # One canonical order per pair.
        return EquivocationProof(first, second)

    @property
    def accused(self) -> int:
        return self.first.replica_id

    @property
    def key(self) -> tuple[int, str, int, int]:
        """What the proof is about: (accused, phase, view, seq)."""
        return (self.accused, PHASE_OF[type(self.first)], self.first.view, self.first.seq)

    def problem(self, verifier: Verifier) -> str | None:
        """Why this is not a proof under the cluster's keys, or None if it is one."""
        if EquivocationProof.of(self.first, self.second) != self:
            return "the two messages are not a canonical conflicting pair for one (phase, view, seq)"
        for message in (self.first, self.second):
            try:
                verifier.verify(message)
            except RemoteProtocolError as error:
                return f"a message does not verify ({error.reason})"
        return None

    def to_document(self) -> dict[str, Any]:
        return {"command": EVIDENCE, "first": base64.b64encode(encode(self.first)).decode(),
                "second": base64.b64encode(encode(self.second)).decode()}


def _proof_from_document(document: dict[str, Any]) -> EquivocationProof:
    messages = []
    for field_name in ("first", "second"):
        text = document.get(field_name)
        if not isinstance(text, str):
            raise CommandError(f"evidence needs {field_name!r} as base64 text")
        try:
            message = decode(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError, RemoteProtocolError) as error:
            raise CommandError(f"evidence {field_name!r} is not an encoded message ({type(error).__name__})") from None
        if type(message) not in PHASE_OF:
            raise CommandError(f"evidence {field_name!r} is a {type(message).__name__}, not a phase message")
        messages.append(message)
    proof = EquivocationProof.of(messages[0], messages[1])
    if proof is None or proof != EquivocationProof(messages[0], messages[1]):
        raise CommandError("evidence must be two conflicting messages for one (phase, view, seq), in canonical order")
    return proof


# ----------------------------------------------------------------------------- blocklist patterns


def normalize_text(text: str) -> str:
    """Fold compatibility forms, invisible format characters, case and runs of whitespace."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return " ".join(visible.casefold().split())


def pattern_problem(pattern: str) -> str | None:
    """Why a (normalized) pattern may not be endorsed: empty, too short, too generic or too long."""
    if len(pattern.encode()) > PATTERN_BYTES_MAX:
        return f"a pattern is at most {PATTERN_BYTES_MAX} bytes"
    if len(pattern) < PATTERN_CHARS_MIN or sum(ch.isalnum() for ch in pattern) < PATTERN_ALPHANUMERICS_MIN:
        return (f"pattern {pattern!r} is over-broad: it needs at least {PATTERN_CHARS_MIN} characters, "
                f"{PATTERN_ALPHANUMERICS_MIN} of them letters or digits")
    return None


def action_texts(action: str) -> Iterator[str]:
    """Every string (keys and values) in an action's JSON, normalized; iterative, so depth cannot hurt."""
    stack = [json.loads(action)]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield normalize_text(value)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


# ----------------------------------------------------------------------------- parsing commands


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed, well-formed command; which fields matter depends on ``kind``."""

    kind: str
    issuer: str
    replica: int = -1
    note: str = ""
    pattern: str = ""
    ttl_ms: int = 0
    proof: EquivocationProof | None = None
    change: ConfigChange | None = None


def _int_field(document: dict[str, Any], name: str, minimum: int, maximum: int) -> int:
    value = document.get(name)
    if type(value) is not int or not minimum <= value <= maximum:
        raise CommandError(f"{name!r} must be an integer in [{minimum}, {maximum}]")
    return value


def _note(document: dict[str, Any]) -> str:
    note = document.get("note", "")
    if not isinstance(note, str) or len(note.encode()) > NOTE_BYTES_MAX:
        raise CommandError(f"'note' must be text of at most {NOTE_BYTES_MAX} bytes")
    return note


_ALLOWED_FIELDS = {EVIDENCE: {"first", "second"}, QUARANTINE: {"replica", "note"}, RELEASE: {"replica", "note"},
                   BLOCKLIST_ENDORSE: {"pattern", "ttl_ms"}, CONFIG_CHANGE: CONFIG_CHANGE_FIELDS}


def parse_command(client_id: str, action: str, risk: Risk) -> Command:
    """Check a command without any state: its document, who may issue it, and its risk class.

    Raises ``CommandError`` naming the problem.  Needs no configuration, so a
    replica's vote and an operator's tool can run it before anything is ordered.
    """
    if not is_command_request(client_id):
        raise CommandError(f"{client_id!r} is not a command signer")
    document = json.loads(action)
    kind = document.get("command")
    if kind not in COMMANDS:
        raise CommandError(f"unknown command {str(kind)[:40]!r}; the commands are {', '.join(COMMANDS)}")
    required_risk = Risk.CRITICAL if kind == CONFIG_CHANGE else Risk.LOW  # A change needs every replica's vote.
    if risk is not required_risk:
        raise CommandError(f"{kind} commands are ordered at {required_risk.value} risk")
    unknown = set(document) - _ALLOWED_FIELDS[kind] - {"command"}
    if unknown:
        raise CommandError(f"unknown fields for {kind}: {', '.join(sorted(unknown))[:80]}")
    is_operator = client_id.startswith(OPERATOR_SIGNER_PREFIX)
    if kind in (QUARANTINE, RELEASE, CONFIG_CHANGE) and not is_operator:
        raise CommandError(f"only an operator may {kind} a replica")
    if kind == BLOCKLIST_ENDORSE and not client_id.startswith(REPLICA_SIGNER_PREFIX):
        raise CommandError("only replicas endorse blocklist patterns")
    if kind == EVIDENCE:
        return Command(kind, client_id, proof=_proof_from_document(document))
    if kind == CONFIG_CHANGE:
        try:
            return Command(kind, client_id, change=parse_change(document))
        except ChangeError as error:
            raise CommandError(str(error)) from None
    if kind in (QUARANTINE, RELEASE):
        return Command(kind, client_id, replica=_int_field(document, "replica", 0, 2**16), note=_note(document))
    raw_pattern = document.get("pattern")
    if not isinstance(raw_pattern, str):
        raise CommandError("'pattern' must be text")
    pattern = normalize_text(raw_pattern)
    problem = pattern_problem(pattern)
    if problem:
        raise CommandError(problem)
    return Command(kind, client_id, pattern=pattern, ttl_ms=_int_field(document, "ttl_ms", 1, 2**53))


def command_vote(request: Request) -> tuple[Decision, str]:
    """A replica's vote on a command request: is it well formed?  Its effect is decided at execution."""
    try:
        command = parse_command(request.client_id, request.action, request.risk)
    except CommandError as error:
        return Decision.DENY, fit_reason(f"malformed command: {error}")
    return Decision.ALLOW, f"well-formed {command.kind} command"


def endorsement_document(pattern: str, ttl_ms: int) -> dict[str, Any]:
    return {"command": BLOCKLIST_ENDORSE, "pattern": pattern, "ttl_ms": ttl_ms}


def operator_document(kind: str, replica_id: int, note: str = "") -> dict[str, Any]:
    assert kind in (QUARANTINE, RELEASE), kind
    return {"command": kind, "replica": replica_id, "note": note}


# ----------------------------------------------------------------------------- voter sets


def voters_text(replica_ids: Iterable[int]) -> str:
    """The canonical text of a set of replica ids: ascending, comma separated ("" for none)."""
    return ",".join(str(replica_id) for replica_id in sorted(replica_ids))


def voters_of(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",")) if text else ()


def voter_text_problem(text: str) -> str | None:
    parts = text.split(",") if text else []
    if not all(part.isdigit() and part.isascii() and len(part) <= 3 for part in parts):
        return "a voter set is comma-separated replica ids"
    if voters_text(frozenset(int(part) for part in parts)) != text:
        return "a voter set lists distinct ids in ascending order, without leading zeros"
    return None
