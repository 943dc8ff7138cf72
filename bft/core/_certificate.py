"""Verdict certificates: self-contained proof of a verdict, checkable offline.

A certificate is the client's signed request plus at least f+1 matching signed
replies.  Each reply carries the agreed vote set, so the verifier also
re-applies the cluster's verdict rule to the signed votes: a certificate is
valid only if the verdict follows from votes that the replicas really signed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from ._codec import pack, request_digest
from ._config import ClusterConfig
from ._crypto import Verifier
from ._errors import CertificateError, LocalProtocolError, RemoteProtocolError
from ._json_shape import text_depth
from ._messages import MAX_ACTION_DEPTH, MAX_REPLICAS, Decision, Reply, Request, Vote
from ._schema import ListOf, Nested, check_schema_matches_fields, record_from_wire, record_to_wire
from ._accountability import is_command_request
from ._verdict import BLOCKLISTED_PREFIX, COMMAND_REJECTED_PREFIX, counted_votes, decide, effective_rule

import msgpack

# A document holds the action and three levels around it (the submit output, the summary, a vote).
DOCUMENT_DEPTH_MAX = MAX_ACTION_DEPTH + 4


@dataclass(frozen=True, slots=True)
class VerdictCertificate:
    request: Request
    replies: tuple[Reply, ...]
    SCHEMA: ClassVar = (
        ("request", Nested(Request)),
        ("replies", ListOf(Nested(Reply), MAX_REPLICAS, min_length=1)),
    )

    @property
    def decision(self) -> Decision:
        return self.replies[0].decision

    @property
    def reason(self) -> str:
        return self.replies[0].reason

    @property
    def seq(self) -> int:
        return self.replies[0].seq

    @property
    def votes(self) -> tuple[Vote, ...]:
        return self.replies[0].votes

    def verify(self, config: ClusterConfig, verifier: Verifier | None = None) -> None:
        """Raise ``CertificateError`` naming the first problem; return None if the certificate holds.

        Offline, each signature is checked afresh.  A caller that already checked
        some of them (a client verifies each reply as it arrives) may pass its own
        ``verifier``, built for this same configuration: its cache holds only
        signatures that verified under these keys, so skipping them is as strict.
        """
        if verifier is None:
            verifier = Verifier(config.cluster_id, config.replica_keys, dict(config.client_keys))
        elif not verifier.checks_for(config.cluster_id, config.replica_keys, config.client_keys):
            raise LocalProtocolError("the verifier given was built for another cluster configuration")
        try:
            verifier.verify(self.request)
            digest = request_digest(config.cluster_id, self.request)
            self._check_replies(verifier, digest, config.reply_quorum)
            self._check_votes(verifier, digest, config)
        except RemoteProtocolError as error:
            raise CertificateError(f"invalid signature or signer: {error.detail or error.reason}") from None
        self._check_verdict(config)

    @property
    def uncounted_voters(self) -> tuple[int, ...]:
        return self.replies[0].uncounted_voters

    def _check_verdict(self, config: ClusterConfig) -> None:
        """Re-apply the verdict rule to the counted votes, under the membership the replies state.

        The replies name the replicas quarantined at this log position; f+1
        matching signed replies include a correct replica's, so that set is
        true, and ``effective_rule`` never goes below 2f+1 whatever it is.  A
        DENY that execution itself decided (shared blocklist, refused command)
        cannot be recomputed from votes; it is accepted on the replies'
        signatures alone, since a DENY can never make anything unsafe.  An
        ALLOW must always follow from the votes.
        """
        uncounted = self.uncounted_voters
        if list(uncounted) != sorted(set(uncounted)) or any(r >= config.replica_count for r in uncounted):
            raise CertificateError("the uncounted voters must be distinct replicas of this cluster, in ascending order")
        rule = effective_rule(config.rules[self.request.risk], config.replica_count, config.faulty_max, len(uncounted))
        expected = decide(rule, counted_votes(self.votes, frozenset(uncounted)), self.replies[0].timestamp_ms,
                          self.request.deadline_ms)
        if expected == (self.decision, self.reason) or self._is_execution_denial():
            return
        raise CertificateError(f"the votes imply {expected[0].value} ({expected[1]}), "
                               f"the replies say {self.decision.value}")

    def _is_execution_denial(self) -> bool:
        if self.decision is not Decision.DENY:
            return False
        prefix = COMMAND_REJECTED_PREFIX if is_command_request(self.request.client_id) else BLOCKLISTED_PREFIX
        return self.reason.startswith(prefix)

    def is_valid(self, config: ClusterConfig) -> bool:
        try:
            self.verify(config)
        except CertificateError:
            return False
        return True

    def _check_replies(self, verifier: Verifier, digest: bytes, reply_quorum: int) -> None:
        outcome = self.replies[0].outcome()
        if (outcome[0], outcome[1], outcome[2]) != (self.request.client_id, self.request.request_number, digest):
            raise CertificateError("the replies are for a different request")
        if any(reply.outcome() != outcome for reply in self.replies):
            raise CertificateError("the replies do not all state the same verdict")
        replica_ids = {reply.replica_id for reply in self.replies}
        if len(replica_ids) != len(self.replies) or len(replica_ids) < reply_quorum:
            raise CertificateError(f"{len(replica_ids)} distinct replicas replied, {reply_quorum} needed")
        for reply in self.replies:
            verifier.verify(reply)

    def _check_votes(self, verifier: Verifier, digest: bytes, config: ClusterConfig) -> None:
        replica_ids = [vote.replica_id for vote in self.votes]
        if replica_ids != sorted(set(replica_ids)) or len(replica_ids) < config.quorum:
            raise CertificateError(f"the vote set must hold at least {config.quorum} votes from distinct replicas")
        for vote in self.votes:
            if vote.request_digest != digest:
                raise CertificateError(f"replica {vote.replica_id}'s vote is for another request")
            verifier.verify(vote)

    # ------------------------------------------------------------- serialization

    def to_bytes(self) -> bytes:
        return pack(record_to_wire(self))

    @staticmethod
    def from_bytes(data: bytes) -> "VerdictCertificate":
        """Parse canonical certificate bytes; any malformation raises ``CertificateError``."""
        try:
            plain = msgpack.unpackb(data, raw=False, max_map_len=0, max_ext_len=0)
            certificate = record_from_wire(VerdictCertificate, plain, "certificate")
        except RemoteProtocolError as error:
            raise CertificateError(f"malformed certificate: {error.detail}") from None
        except Exception as error:
            raise CertificateError(f"malformed certificate: {type(error).__name__}") from None
        if certificate.to_bytes() != data:
            raise CertificateError("certificate bytes are not canonical")
        return certificate

    def readable_fields(self) -> dict[str, Any]:
        """The human-readable summary, every value derived from the signed content."""
        return {
            "decision": self.decision.value, "reason": self.reason, "seq": self.seq,
            "client_id": self.request.client_id, "request_number": self.request.request_number,
            "risk": self.request.risk.value, "action": json.loads(self.request.action),
            "votes": [{"replica": v.replica_id, "decision": v.decision.value, "reason": v.reason} for v in self.votes],
            "signers": [reply.replica_id for reply in self.replies],
        }

    def to_json(self) -> str:
        """Readable summary plus the canonical bytes; only the bytes are trusted on reading."""
        summary = {**self.readable_fields(), "certificate": base64.b64encode(self.to_bytes()).decode()}
        return json.dumps(summary, indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "VerdictCertificate":
        """Parse ``to_json`` output and check every readable field equals what the signed bytes say."""
        return VerdictCertificate.from_document(load_json_document(text))

    @staticmethod
    def from_document(summary: Any, where: str = "") -> "VerdictCertificate":
        """The certificate in a parsed ``to_json`` document; ``where`` prefixes field names in errors.

        Each field is compared by its JSON text, so a look-alike value (``1.0`` or
        ``true`` for a sequence number of 1) differs, as it would to a strict reader.
        """
        if not isinstance(summary, dict) or "certificate" not in summary:
            raise CertificateError(f"malformed certificate JSON: {where}certificate is missing")
        try:
            encoded = base64.b64decode(summary["certificate"], validate=True)
        except (ValueError, TypeError) as error:
            raise CertificateError(f"malformed certificate JSON: {where}certificate is not base64 ({error})") from None
        certificate = VerdictCertificate.from_bytes(encoded)
        check_fields_match(summary, certificate.readable_fields(), where, signed_keys={"certificate"})
        return certificate


def check_fields_match(document: dict, expected: dict[str, Any], where: str = "",
                       signed_keys: frozenset[str] | set[str] = frozenset()) -> None:
    """Raise ``CertificateError`` naming the first field of ``document`` that is not exactly ``expected``.

    ``signed_keys`` are fields checked elsewhere; any other field ``expected`` lacks is refused too:
    a reader cannot tell a field nobody signed from one that was checked.
    """
    for key in [*expected, *sorted(set(document) - set(expected) - set(signed_keys))]:
        if key not in document or key not in expected or _json_text(document[key]) != _json_text(expected[key]):
            raise CertificateError(f"{where}{key} does not match the signed content")


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _RepeatedKey(key)
        document[key] = value
    return document


def load_json_document(text: str) -> Any:
    """Parse a certificate document strictly: bounded nesting, and no key given twice.

    Readers disagree on a repeated key (Python keeps the last, others the first), so a
    document that repeats one could say ALLOW to one reader and DENY to another.
    """
    if text_depth(text) > DOCUMENT_DEPTH_MAX:
        raise CertificateError(f"malformed certificate JSON: nested deeper than {DOCUMENT_DEPTH_MAX} levels")
    try:
        return json.loads(text, object_pairs_hook=_object_without_repeats)
    except _RepeatedKey as repeated:
        raise CertificateError(f"{repeated.key} does not match the signed content (it appears twice)") from None
    except ValueError as error:
        raise CertificateError(f"malformed certificate JSON: {error}") from None


check_schema_matches_fields(VerdictCertificate)
