"""S1-S6: the invariants over the correct replicas' verdict logs and the certificates clients accepted."""

from __future__ import annotations

from typing import Iterable, Sequence

from bft.core import (GENESIS_HASH, ClusterConfig, Decision, LogEntry, Request, VerdictCertificate, Vote,
                      effective_rule, request_digest)
from bft.core._accountability import voters_of

from ._common import Evidence, Logs, Violation, _describe, _signature_ok, _verifier

# ----------------------------------------------------------------------------- S1 agreement


def check_agreement(logs: Logs) -> list[Violation]:
    """S1: no two correct replicas finalize different entries at one log position or one sequence number."""
    violations = []
    first_at_position: dict[int, tuple[int, LogEntry]] = {}
    for replica_id in sorted(logs):
        for entry in logs[replica_id]:
            other_id, other = first_at_position.setdefault(entry.position, (replica_id, entry))
            if other != entry:
                violations.append(Violation(
                    "S1", f"replicas {other_id} and {replica_id} finalized different entries at position "
                          f"{entry.position}: {_describe(other)} vs {_describe(entry)}"))
    return violations + _check_agreement_by_seq(logs)


def _outcome(entry: LogEntry) -> tuple:
    return (entry.key, entry.request_digest, entry.decision, entry.reason, entry.timestamp_ms, entry.votes_digest)


def _check_agreement_by_seq(logs: Logs) -> list[Violation]:
    """Replicas that both executed ``seq`` (their log reaches it or beyond) must list the same outcomes there.

    A batch whose requests were all duplicates leaves no entry, so "executed" is
    inferred conservatively from the highest sequence number in each log.
    """
    by_seq: dict[int, dict[int, list[tuple]]] = {}
    executed_through: dict[int, int] = {}
    for replica_id, log in logs.items():
        executed_through[replica_id] = max((entry.seq for entry in log), default=0)
        table = by_seq[replica_id] = {}
        for entry in log:
            table.setdefault(entry.seq, []).append(_outcome(entry))
    violations = []
    for seq in sorted({seq for table in by_seq.values() for seq in table}):
        executed = sorted(r for r in logs if executed_through[r] >= seq)
        outcomes = {replica_id: by_seq[replica_id].get(seq, []) for replica_id in executed}
        reference = executed[0]
        for replica_id in executed[1:]:
            if outcomes[replica_id] != outcomes[reference]:
                violations.append(Violation("S1", f"replicas {reference} and {replica_id} executed seq {seq} "
                                                  f"differently: {len(outcomes[reference])} vs "
                                                  f"{len(outcomes[replica_id])} entries, or different verdicts"))
    return violations


# ----------------------------------------------------------------------------- S2 validity


def allow_problem(votes: Sequence[Vote], digest_of_request: bytes, rule_min_allow: int, rule_max_deny: int,
                  config: ClusterConfig, uncounted: Iterable[int] = ()) -> str | None:
    """Why ``votes`` cannot justify ALLOW for the request with ``digest_of_request``, or None if they can.

    ALLOW needs a quorum of distinct, validly signed votes for this very request,
    at least max(min_allow_votes, 2f+1) ALLOW votes from replicas that are not
    quarantined (``uncounted``), and no more counted DENY votes than the rule
    tolerates.  Whatever ``uncounted`` says, 2f+1 distinct signed ALLOW votes
    stay the floor, so at least f+1 correct replicas approved.
    """
    verifier = _verifier(config)
    replica_ids = [vote.replica_id for vote in votes]
    if len(set(replica_ids)) != len(replica_ids):
        return "the vote set names a replica more than once"
    invalid = [vote.replica_id for vote in votes
               if vote.request_digest != digest_of_request or not _signature_ok(verifier, vote)]
    if invalid:
        return f"votes from replicas {invalid} are not validly signed for this request"
    if len(votes) < config.quorum:
        return f"only {len(votes)} votes, a quorum is {config.quorum}"
    uncounted = frozenset(uncounted)
    counted = [vote for vote in votes if vote.replica_id not in uncounted]
    allow = sum(1 for vote in counted if vote.decision is Decision.ALLOW)
    needed = max(rule_min_allow, 2 * config.faulty_max + 1)
    if allow < needed:
        return f"{allow} distinct signed ALLOW votes, {needed} needed"
    if len(counted) - allow > rule_max_deny:
        return f"{len(counted) - allow} DENY votes, the veto tolerates {rule_max_deny}"
    return None


def _rule_under_quarantine(config: ClusterConfig, risk, uncounted: Sequence[int]):
    """The configured rule for ``risk`` as it applies while ``uncounted`` replicas are quarantined."""
    return effective_rule(config.rules[risk], config.replica_count, config.faulty_max, len(uncounted))


def check_validity(logs: Logs, config: ClusterConfig, evidence: Evidence | None = None,
                   certificates: Sequence[VerdictCertificate] = (), *,
                   require_evidence: bool = False) -> list[Violation]:
    """S2 (fail-closed): every ALLOW rests on at least min_allow_votes >= 2f+1 distinct signed ALLOW votes."""
    violations = []
    for certificate in certificates:
        if certificate.decision is not Decision.ALLOW:
            continue
        uncounted = certificate.uncounted_voters
        rule = _rule_under_quarantine(config, certificate.request.risk, uncounted)
        problem = allow_problem(certificate.votes, request_digest(config.cluster_id, certificate.request),
                                rule.min_allow_votes, rule.max_deny_votes, config, uncounted)
        if problem:
            violations.append(Violation("S2", f"certificate for {certificate.request.key} says ALLOW but {problem}"))
    verdicts: dict[tuple[bytes, bytes, object], str | None] = {}
    for replica_id in sorted(logs):
        for entry in logs[replica_id]:
            if entry.decision is not Decision.ALLOW:
                continue
            problem = _entry_allow_problem(entry, config, evidence, require_evidence, verdicts)
            if problem:
                violations.append(Violation(
                    "S2", f"replica {replica_id} logged ALLOW {_describe(entry)} but {problem}"))
    return violations


def _entry_allow_problem(entry: LogEntry, config: ClusterConfig, evidence: Evidence | None,
                         require_evidence: bool, verdicts: dict) -> str | None:
    votes = evidence.vote_sets.get(entry.votes_digest) if evidence else None
    if votes is None:
        return "no vote set with its votes_digest is known" if require_evidence else None
    cache_key = (entry.votes_digest, entry.request_digest, entry.risk, entry.uncounted_voters)
    if cache_key not in verdicts:
        uncounted = voters_of(entry.uncounted_voters)
        rule = _rule_under_quarantine(config, entry.risk, uncounted)
        verdicts[cache_key] = allow_problem(votes, entry.request_digest, rule.min_allow_votes,
                                            rule.max_deny_votes, config, uncounted)
    return verdicts[cache_key]


# ----------------------------------------------------------------------------- S3 integrity


def check_integrity(logs: Logs, config: ClusterConfig | None = None, evidence: Evidence | None = None,
                    certificates: Sequence[VerdictCertificate] = (), *,
                    require_evidence: bool = False) -> list[Violation]:
    """S3: hash chains link and recompute; finalized requests and certificates carry valid signatures.

    Without ``config`` only the chain is checked (no keys to verify against).
    """
    violations = []
    for replica_id in sorted(logs):
        violations += _chain_problems(replica_id, logs[replica_id])
    if config is None:
        return violations
    for replica_id in sorted(logs):
        violations += _request_problems(replica_id, logs[replica_id], config, evidence, require_evidence)
    return violations + certificate_violations(certificates, config)


def certificate_violations(certificates, config) -> list[Violation]:
    """S3 for each certificate judged under ``config``: one violation per certificate that does not verify."""
    return [Violation("S3", f"certificate for {certificate.request.key}: {problem}")
            for certificate in certificates if (problem := certificate_problem(certificate, config))]


def _chain_problems(replica_id: int, log: Sequence[LogEntry]) -> list[Violation]:
    violations = []
    previous: LogEntry | None = None
    for entry in log:
        where = f"replica {replica_id} position {entry.position}"
        if entry.entry_hash != entry.computed_hash():
            violations.append(Violation("S3", f"{where}: the entry hash does not recompute from its fields"))
        if previous is None:
            if entry.position == 1 and entry.previous_hash != GENESIS_HASH:
                violations.append(Violation("S3", f"{where}: the first entry does not link to the genesis hash"))
        else:
            if entry.position != previous.position + 1:
                violations.append(Violation("S3", f"{where}: follows position {previous.position}"))
            if entry.previous_hash != previous.entry_hash:
                violations.append(Violation("S3", f"{where}: previous_hash does not match the entry before it"))
            if entry.seq < previous.seq:
                violations.append(Violation("S3", f"{where}: seq {entry.seq} after seq {previous.seq}"))
        previous = entry
    return violations


def _request_problems(replica_id: int, log: Sequence[LogEntry], config: ClusterConfig,
                      evidence: Evidence | None, require_evidence: bool) -> list[Violation]:
    verifier = _verifier(config)
    violations = []
    for entry in log:
        candidates = evidence.requests.get(entry.request_digest, []) if evidence else []
        if not candidates:
            if require_evidence:
                violations.append(Violation("S3", f"replica {replica_id} finalized {_describe(entry)} but no "
                                                  f"signed request with its digest is known"))
            continue
        if not any(_request_matches(entry, request) and _signature_ok(verifier, request) for request in candidates):
            violations.append(Violation("S3", f"replica {replica_id} finalized {_describe(entry)} but no validly "
                                              f"client-signed request matches it"))
    return violations


def _request_matches(entry: LogEntry, request: Request) -> bool:
    return (request.client_id, request.request_number, request.risk, request.deadline_ms) == \
        (entry.client_id, entry.request_number, entry.risk, entry.deadline_ms)


def certificate_problem(certificate: VerdictCertificate, config: ClusterConfig) -> str | None:
    """Why a certificate's signatures or replies do not hold together (S3), or None.

    This re-checks signatures and reply agreement independently of
    ``VerdictCertificate.verify``; whether its votes justify ALLOW is S2.
    """
    verifier = _verifier(config)
    if not _signature_ok(verifier, certificate.request):
        return "the request is not signed by its client"
    expected = (certificate.request.client_id, certificate.request.request_number,
                request_digest(config.cluster_id, certificate.request))
    outcomes = {reply.outcome() for reply in certificate.replies}
    if len(outcomes) != 1:
        return "the replies state different outcomes"
    if next(iter(outcomes))[:3] != expected:
        return "the replies are for another request"
    signers = {reply.replica_id for reply in certificate.replies if _signature_ok(verifier, reply)}
    if len(signers) < config.reply_quorum:
        return f"{len(signers)} distinct validly signed replies, {config.reply_quorum} needed"
    return None


# ----------------------------------------------------------------------------- S4 exactly-once


def check_exactly_once(logs: Logs, certificates: Sequence[VerdictCertificate] = ()) -> list[Violation]:
    """S4: a (client, request_number) appears at most once per log, and all its certificates agree with it."""
    violations = []
    entry_by_key: dict[tuple[str, int], tuple[int, LogEntry]] = {}
    for replica_id in sorted(logs):
        positions: dict[tuple[str, int], int] = {}
        for entry in logs[replica_id]:
            if entry.key in positions:
                violations.append(Violation("S4", f"replica {replica_id} finalized {entry.key} twice, at positions "
                                                  f"{positions[entry.key]} and {entry.position}"))
            positions.setdefault(entry.key, entry.position)
            entry_by_key.setdefault(entry.key, (replica_id, entry))
    certificate_by_key: dict[tuple[str, int], VerdictCertificate] = {}
    for certificate in certificates:
        key = certificate.request.key
        first = certificate_by_key.setdefault(key, certificate)
        if _certificate_outcome(first) != _certificate_outcome(certificate):
            violations.append(Violation("S4", f"two certificates for {key} state different outcomes: "
                                              f"{first.decision.value} at seq {first.seq} vs "
                                              f"{certificate.decision.value} at seq {certificate.seq}"))
        if key in entry_by_key:
            replica_id, entry = entry_by_key[key]
            logged = (entry.request_digest, entry.seq, entry.timestamp_ms, entry.decision, entry.reason)
            if logged != _certificate_outcome(certificate):
                violations.append(Violation("S4", f"the certificate for {key} says {certificate.decision.value} at "
                                                  f"seq {certificate.seq}, replica {replica_id} logged "
                                                  f"{_describe(entry)}"))
    return violations


def _certificate_outcome(certificate: VerdictCertificate) -> tuple:
    reply = certificate.replies[0]
    return (reply.request_digest, reply.seq, reply.timestamp_ms, reply.decision, reply.reason)


# ----------------------------------------------------------------------------- S5 deadline


def check_deadline(logs: Logs, certificates: Sequence[VerdictCertificate] = ()) -> list[Violation]:
    """S5: nothing is ALLOWed at an agreed batch timestamp later than its deadline."""
    violations = []
    for replica_id in sorted(logs):
        for entry in logs[replica_id]:
            if entry.decision is Decision.ALLOW and entry.timestamp_ms > entry.deadline_ms:
                violations.append(Violation(
                    "S5", f"replica {replica_id} logged ALLOW {_describe(entry)} at {entry.timestamp_ms} ms, "
                          f"after the deadline {entry.deadline_ms} ms"))
    for certificate in certificates:
        timestamp_ms = certificate.replies[0].timestamp_ms
        if certificate.decision is Decision.ALLOW and timestamp_ms > certificate.request.deadline_ms:
            violations.append(Violation("S5", f"certificate for {certificate.request.key} says ALLOW at {timestamp_ms} "
                                              f"ms, after the deadline {certificate.request.deadline_ms} ms"))
    return violations


# ----------------------------------------------------------------------------- S6 stability


def check_stability(earlier: Logs, later: Logs) -> list[Violation]:
    """S6: what a correct replica finalized stays finalized: each earlier log is a prefix of the later one.

    Together with S1 this is what "a verdict committed in a view stays in later
    views" means for an observer of the logs.
    """
    violations = []
    for replica_id in sorted(earlier):
        before, after = earlier[replica_id], later.get(replica_id, ())
        if len(after) < len(before):
            violations.append(Violation("S6", f"replica {replica_id}'s log shrank from {len(before)} to {len(after)}"))
            continue
        changed = next((index for index, entry in enumerate(before) if after[index] != entry), None)
        if changed is not None:
            violations.append(Violation("S6", f"replica {replica_id} rewrote position {before[changed].position}: "
                                              f"{_describe(before[changed])} became {_describe(after[changed])}"))
    return violations
