"""The safety invariants of SPEC.md, each written once as a pure predicate over plain data.

The same predicates serve unit tests, hypothesis schedules, the simulator, the
model checker and the harness's real-process runs, so their inputs are plain
values every driver can produce:

- ``logs``: ``Mapping[replica_id, Sequence[LogEntry]]`` holding only replicas
  assumed *correct*; a Byzantine replica's log proves nothing.
- ``certificates``: verdict certificates that clients accepted.
- ``Evidence``: signed vote sets (indexed by ``votes_digest``) and signed
  requests (indexed by request digest) gathered from batches, replies and
  certificates.  A log entry stores only the digest of its vote set, so the
  votes behind it must come from somewhere else; where they come from does not
  matter, because every vote is re-verified here against the configured keys.
- ``signed``: ``Mapping[replica_id, Sequence[Message]]``, what each correct
  replica persisted of its own signed messages.

What is checked from what:

==  ================  ===========================================================
S1  agreement         logs: equal entries at every position, equal entry lists at
                      every sequence number both replicas executed.
S2  validity          certificates that say ALLOW (their own vote sets), and ALLOW
                      log entries whose vote set is in the evidence (found by
                      recomputing ``votes_digest``).  With ``require_evidence``, an
                      ALLOW entry whose votes cannot be found is itself reported:
                      an ALLOW nobody can justify is treated as unjustified.
S3  integrity         logs alone for the hash chain; the evidence's requests for
                      "every finalized request was signed by its client"; the
                      certificates' own signatures for certificate integrity.
S4  exactly-once      logs (one entry per key per replica) and certificates (one
                      outcome per key, equal to the correct replicas' log entry).
S5  deadline          logs and certificates.
S6  stability         two snapshots of the same replicas' logs, taken in order.
S7  no equivocation   ``signed``.
S8  checkpoints       ``signed`` and each correct replica's stable proof.
S9  state transfer    each adoption a correct replica recorded (its proof, its state
                      digest, the log head it names), ``signed`` and the logs: the
                      proof certifies the digest, correct replicas checkpointed the
                      same digest there, and every correct log is a prefix of every
                      longer correct log.
S10 vote floor        ``signed`` in the order each replica persisted it (a repeated
                      message counts where it first appears): after a VIEW-CHANGE
                      for view w, no PRE-PREPARE, PREPARE or COMMIT of a view below w.
==  ================  ===========================================================

Predicates return violations and never raise on bad data: a checker that
crashes on the corruption it is looking for would hide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from bft.core import (GENESIS_HASH, Checkpoint, ClusterConfig, Commit, Decision, LogEntry, Message, PrePrepare,
                      Prepare, RemoteProtocolError, Request, VerdictCertificate, Verifier, ViewChange, Vote,
                      effective_rule, request_digest, votes_digest)
from bft.core._accountability import voters_of

if TYPE_CHECKING:
    from bft.testing import SimCluster

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
    for certificate in certificates:
        problem = certificate_problem(certificate, config)
        if problem:
            violations.append(Violation("S3", f"certificate for {certificate.request.key}: {problem}"))
    return violations


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


# ----------------------------------------------------------------------------- S7, S8 signed messages


def _equivocation_key(message: Message) -> tuple | None:
    """What a correct replica signs at most one message for."""
    if isinstance(message, (PrePrepare, Prepare, Commit)):
        return (type(message).__name__, message.view, message.seq)
    if isinstance(message, Checkpoint):
        return ("Checkpoint", message.seq)
    if isinstance(message, Vote):
        return ("Vote", message.request_digest)
    return None


def check_no_equivocation(signed: SignedByReplica) -> list[Violation]:
    """S7: no correct replica signs two different votes for one request, or two different pre-prepares,
    prepares, commits for one (view, seq), or two different checkpoints for one seq."""
    violations = []
    for replica_id in sorted(signed):
        first: dict[tuple, Message] = {}
        for message in signed[replica_id]:
            key = _equivocation_key(message)
            if key is None or message.replica_id != replica_id:
                continue
            if first.setdefault(key, message) != message:
                violations.append(Violation("S7", f"replica {replica_id} signed two different {key[0]} messages "
                                                  f"for {key[1:]}"))
    return violations


def check_vote_floor(signed: SignedByReplica) -> list[Violation]:
    """S10: a correct replica keeps the promise behind its VIEW-CHANGE: having asked to leave the views below
    ``w``, it signs no PRE-PREPARE, PREPARE or COMMIT in them (its own messages, in the order it persisted them)."""
    violations = []
    for replica_id in sorted(signed):
        floor, seen = 0, set()
        for message in signed[replica_id]:
            if getattr(message, "replica_id", None) != replica_id or message in seen:
                continue  # Another's, or a copy of one listed earlier (the same message seen on the wire too).
            seen.add(message)
            if isinstance(message, ViewChange):
                floor = max(floor, message.new_view)
            elif isinstance(message, (PrePrepare, Prepare, Commit)) and message.view < floor:
                violations.append(Violation("S10", f"replica {replica_id} signed a {type(message).__name__} for "
                                                   f"view {message.view} seq {message.seq} after its VIEW-CHANGE "
                                                   f"for view {floor}"))
    return violations


def check_checkpoints(signed: SignedByReplica, config: ClusterConfig | None = None,
                      stable_proofs: Mapping[int, Sequence[Checkpoint]] | None = None) -> list[Violation]:
    """S8: correct replicas' checkpoints at one seq carry one state digest, and every stable proof a correct
    replica holds is a quorum of distinct, validly signed checkpoints for that digest."""
    violations = []
    digest_at: dict[int, tuple[int, bytes]] = {}
    for replica_id in sorted(signed):
        for message in signed[replica_id]:
            if not isinstance(message, Checkpoint) or message.replica_id != replica_id:
                continue
            other_id, other_digest = digest_at.setdefault(message.seq, (replica_id, message.state_digest))
            if other_digest != message.state_digest:
                violations.append(Violation("S8", f"replicas {other_id} and {replica_id} checkpointed different "
                                                  f"states at seq {message.seq}"))
    for replica_id in sorted(stable_proofs or {}):
        proof = stable_proofs[replica_id]
        problem = _stable_proof_problem(proof, config, digest_at) if proof else None
        if problem:
            violations.append(Violation("S8", f"replica {replica_id}'s stable proof: {problem}"))
    return violations


def _stable_proof_problem(proof: Sequence[Checkpoint], config: ClusterConfig | None,
                          digest_at: Mapping[int, tuple[int, bytes]]) -> str | None:
    if len({(checkpoint.seq, checkpoint.state_digest) for checkpoint in proof}) != 1:
        return "the checkpoints name different seqs or states"
    seq, state = proof[0].seq, proof[0].state_digest
    if seq in digest_at and digest_at[seq][1] != state:
        return f"it certifies a state at seq {seq} that correct replica {digest_at[seq][0]} did not reach"
    if config is None:
        return None
    verifier = _verifier(config)
    signers = {checkpoint.replica_id for checkpoint in proof if _signature_ok(verifier, checkpoint)}
    if len(signers) < config.quorum:
        return f"{len(signers)} distinct validly signed checkpoints, a quorum is {config.quorum}"
    return None


# ----------------------------------------------------------------------------- S9 state transfer


def check_log_prefixes(logs: Logs) -> list[Violation]:
    """S9 (second half): every correct replica's log is a prefix of every longer correct replica's log.

    After a state transfer a replica's log jumps ahead by fetched entries; this
    says the jump never leaves a gap or a fork.  (S1 compares equal positions;
    this also catches a log that skips positions.)
    """
    violations = []
    by_length = sorted(logs.items(), key=lambda item: (len(item[1]), item[0]))
    if not by_length:
        return violations
    longest_id, longest = by_length[-1]
    for replica_id, log in by_length[:-1]:
        if tuple(longest[:len(log)]) != tuple(log):
            violations.append(Violation("S9", f"replica {replica_id}'s log of {len(log)} entries is not a prefix of "
                                              f"replica {longest_id}'s log of {len(longest)}"))
    return violations


def check_state_transfers(adoptions: Mapping[int, Sequence], logs: Logs, signed: SignedByReplica,
                          config: ClusterConfig) -> list[Violation]:
    """S9 (first half): every state a correct replica adopted by transfer is certified by a quorum checkpoint.

    ``adoptions[r]`` lists what replica ``r`` adopted (records with ``seq``,
    ``state_digest``, ``proof``, ``log_length``, ``head_hash``, such as
    ``bft.core``'s ``StateAdoption``).  Each proof must be a quorum of distinct,
    validly signed checkpoints on exactly that (seq, digest); correct replicas
    that checkpointed that seq must have computed the same digest; and the
    adopter's log must pass through the adopted head.
    """
    digest_at: dict[int, tuple[int, bytes]] = {}
    for replica_id in sorted(signed):
        for message in signed[replica_id]:
            if isinstance(message, Checkpoint) and message.replica_id == replica_id:
                digest_at.setdefault(message.seq, (replica_id, message.state_digest))
    violations = []
    for replica_id in sorted(adoptions):
        for adoption in adoptions[replica_id]:
            where = f"replica {replica_id} adopted the state at seq {adoption.seq}"
            proof = tuple(adoption.proof)
            if not proof or {(c.seq, c.state_digest) for c in proof} != {(adoption.seq, adoption.state_digest)}:
                violations.append(Violation("S9", f"{where} with a proof for another seq or state"))
                continue
            problem = _stable_proof_problem(proof, config, digest_at)
            if problem:
                violations.append(Violation("S9", f"{where}: {problem}"))
            log = logs.get(replica_id, ())
            if adoption.log_length and (len(log) < adoption.log_length
                                        or log[adoption.log_length - 1].entry_hash != adoption.head_hash):
                violations.append(Violation("S9", f"{where} but its log does not pass through the adopted head"))
    return violations


# ----------------------------------------------------------------------------- together


def check_all(logs: Logs, config: ClusterConfig, certificates: Sequence[VerdictCertificate] = (), *,
              evidence: Evidence | None = None, signed: SignedByReplica | None = None,
              stable_proofs: Mapping[int, Sequence[Checkpoint]] | None = None,
              adoptions: Mapping[int, Sequence] | None = None,
              require_evidence: bool = False) -> list[Violation]:
    """S1..S5 and the log-prefix half of S9 over logs and certificates, plus S7, S8 and the rest of S9
    when signed messages are given.

    Certificates also count as evidence (their requests and vote sets).
    ``evidence`` is not modified.
    """
    merged = Evidence(dict(evidence.vote_sets), {k: list(v) for k, v in evidence.requests.items()}) \
        if evidence else Evidence()
    for certificate in certificates:
        merged.add_certificate(config.cluster_id, certificate)
    violations = check_agreement(logs)
    violations += check_validity(logs, config, merged, certificates, require_evidence=require_evidence)
    violations += check_integrity(logs, config, merged, certificates, require_evidence=require_evidence)
    violations += check_exactly_once(logs, certificates)
    violations += check_deadline(logs, certificates)
    violations += check_log_prefixes(logs)
    if signed is not None:
        violations += check_no_equivocation(signed)
        violations += check_vote_floor(signed)
        violations += check_checkpoints(signed, config, stable_proofs)
        violations += check_state_transfers(adoptions or {}, logs, signed, config)
    return violations


# ----------------------------------------------------------------------------- the simulator adapter


def sim_certificates(cluster: "SimCluster") -> list[VerdictCertificate]:
    return [record.certificate for record in cluster.operations.values() if record.certificate is not None]


def gather_sim_evidence(cluster: "SimCluster", correct: Iterable[int], evidence: Evidence) -> Evidence:
    """Add to ``evidence`` every signed request and vote set the simulation still holds.

    Sources: the clients' submitted requests, every replica's accepted and
    persisted pre-prepares, and correct replicas' cached replies.  Sources may be
    Byzantine: nothing gathered here is trusted, only re-verified.
    """
    cluster_id = cluster.config.cluster_id
    for record in cluster.operations.values():
        evidence.add_request(cluster_id, record.request)
    for replica, store in zip(cluster.replicas, cluster.stores):
        for slot in replica.slots.values():
            if slot.preprepare is not None:
                evidence.add_batch_entries(cluster_id, slot.preprepare)
        for message in store.load().signed:
            if isinstance(message, PrePrepare):
                evidence.add_batch_entries(cluster_id, message)
    for replica_id in correct:
        for client_record in cluster.replicas[replica_id].execution.clients.values():
            for reply in client_record.replies.values():
                evidence.add_votes(getattr(reply, "votes", ()))  # Restored outcomes are log entries, without votes.
    return evidence


def check_sim(cluster: "SimCluster", correct: set[int], evidence: Evidence | None = None) -> list[Violation]:
    """S1..S5, S7 and S8 over a simulation, treating the replicas in ``correct`` as correct.

    Logs come from ``cluster.stores[i].log`` (checked equal to the finalized
    stream ``cluster.finalized[i]``), certificates from ``cluster.operations``.
    Evidence must cover every ALLOW here (``require_evidence``): pass the same
    ``evidence`` on every call of a long run so that votes whose replies left the
    client window are still known.
    """
    evidence = gather_sim_evidence(cluster, correct, evidence if evidence is not None else Evidence())
    durable = {replica_id: cluster.stores[replica_id].load() for replica_id in sorted(correct)}
    logs = {replica_id: state.log for replica_id, state in durable.items()}
    violations = [Violation("S3", f"replica {replica_id}'s persisted log differs from what it finalized")
                  for replica_id in sorted(correct)
                  if cluster.record_history and list(logs[replica_id]) != cluster.finalized[replica_id]]
    return violations + check_all(
        logs, cluster.config, sim_certificates(cluster), evidence=evidence,
        signed={replica_id: state.signed for replica_id, state in durable.items()},
        stable_proofs={replica_id: cluster.replicas[replica_id].stable_proof for replica_id in correct},
        adoptions={replica_id: tuple(cluster.replicas[replica_id].state_adoptions) for replica_id in correct},
        require_evidence=True)


class SimMonitor:
    """Checks a simulation after every phase: ``check_sim`` plus S6 between consecutive calls.

    It keeps the evidence gathered so far, so votes and requests that left the
    replicas' bounded windows still back the entries they justified.
    """

    def __init__(self, cluster: "SimCluster", correct: set[int]) -> None:
        assert correct <= set(range(len(cluster.replicas))), correct
        self.cluster = cluster
        self.correct = set(correct)
        self.evidence = Evidence()
        self._previous: dict[int, tuple[LogEntry, ...]] = {replica_id: () for replica_id in self.correct}
        self.checks = 0

    def check(self) -> list[Violation]:
        violations = check_sim(self.cluster, self.correct, self.evidence)
        current = {replica_id: self.cluster.stores[replica_id].load().log for replica_id in self.correct}
        violations += check_stability(self._previous, current)
        self._previous = current
        self.checks += 1
        return violations

    def assert_ok(self, context: str = "") -> None:
        violations = self.check()
        assert not violations, f"{context}\n" + "\n".join(map(str, violations[:20]))
