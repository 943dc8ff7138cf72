"""What every invariant predicate shares: plain-data types, violations, the evidence and signature checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from bft.core import (ClusterConfig, LogEntry, Message, PrePrepare, RemoteProtocolError, Request, VerdictCertificate,
                      Verifier, Vote, request_digest, votes_digest)

Logs = Mapping[int, Sequence[LogEntry]]
SignedByReplica = Mapping[int, Sequence[Message]]

# Requests are indexed by the digest of their signed content, which excludes the
# signature, so one digest may collect a genuine and a forged copy.  A handful of
# candidates per digest is plenty; more would only come from a flood.
MAX_REQUEST_CANDIDATES = 8
_VERIFIERS_MAX = 8


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: its id ("S1".."S8") and a sentence saying where and how."""

    invariant: str
    message: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.message}"


@dataclass
class Evidence:
    """Signed material that backs log entries, indexed by digest.  Safe to fill from untrusted sources."""

    vote_sets: dict[bytes, tuple[Vote, ...]] = field(default_factory=dict)
    requests: dict[bytes, list[Request]] = field(default_factory=dict)

    def add_votes(self, votes: Iterable[Vote]) -> None:
        ordered = tuple(sorted(votes, key=lambda vote: vote.replica_id))
        self.vote_sets.setdefault(votes_digest(ordered), ordered)

    def add_request(self, cluster_id: str, request: Request) -> None:
        candidates = self.requests.setdefault(request_digest(cluster_id, request), [])
        if request not in candidates and len(candidates) < MAX_REQUEST_CANDIDATES:
            candidates.append(request)

    def add_batch_entries(self, cluster_id: str, preprepare: PrePrepare) -> None:
        for entry in preprepare.batch.entries:
            self.add_request(cluster_id, entry.request)
            self.add_votes(entry.votes)

    def add_certificate(self, cluster_id: str, certificate: VerdictCertificate) -> None:
        self.add_request(cluster_id, certificate.request)
        for reply in certificate.replies:
            self.add_votes(reply.votes)


# ----------------------------------------------------------------------------- helpers


# Verification results are pure facts about (key, payload, signature), so caching them keeps every
# predicate pure while letting a run that is checked after every phase verify each signature once.
_verifiers: dict[tuple, Verifier] = {}


def _verifier(config: ClusterConfig) -> Verifier:
    """One long-lived verifier per cluster identity, so repeated checks reuse its signature cache."""
    identity = (config.cluster_id, config.replica_keys, tuple(sorted(config.client_keys.items())))
    verifier = _verifiers.get(identity)
    if verifier is None:
        if len(_verifiers) >= _VERIFIERS_MAX:
            _verifiers.clear()
        verifier = _verifiers[identity] = Verifier(config.cluster_id, config.replica_keys, dict(config.client_keys))
    assert len(_verifiers) <= _VERIFIERS_MAX
    return verifier


def _signature_ok(verifier: Verifier, message: Message) -> bool:
    try:
        verifier.verify(message)
    except RemoteProtocolError:
        return False
    return True


def _describe(entry: LogEntry) -> str:
    return (f"(seq {entry.seq}, {entry.client_id}#{entry.request_number}, {entry.decision.value}, "
            f"hash {entry.entry_hash.hex()[:12]})")
