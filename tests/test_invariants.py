"""Proves every invariant predicate in specs.invariants (S1-S8) accepts an honest run and reports a
violation for each kind of broken data: forked logs, broken hash chains, unsigned requests, ALLOW with
too few or invalid votes, a vetoed ALLOW, duplicate keys, conflicting certificates, expired ALLOW,
rewritten logs, equivocating signatures and diverging checkpoints."""

from __future__ import annotations

import dataclasses

import pytest

from bft.core import (Checkpoint, Decision, LogEntry, Prepare, Risk, Signer, VerdictCertificate, ViewChange, Vote,
                      votes_digest)
from bft.testing import DenyEverything, SimCluster
from bft.testing import _sim
from specs.invariants import (Evidence, SimMonitor, Violation, check_agreement, check_all, check_checkpoints,
                              check_vote_floor,
                              check_deadline, check_exactly_once, check_integrity, check_no_equivocation,
                              check_sim, check_stability, check_validity, gather_sim_evidence)

ZERO_SIGNATURE = bytes(64)


class HonestRun:
    """A finished 4-replica run with ALLOW and DENY verdicts, and the data the predicates take."""

    def __init__(self) -> None:
        # Replica 3 denies everything: LOW and MEDIUM still pass (3 ALLOW of 4), HIGH and CRITICAL are vetoed.
        self.cluster = SimCluster(4, seed=11, policies={3: DenyEverything()}, client_ids=("client-0", "client-1"))
        for number, risk in enumerate([Risk.LOW, Risk.MEDIUM, Risk.HIGH, Risk.CRITICAL, Risk.LOW, Risk.MEDIUM]):
            self.cluster.submit(f"client-{number % 2}", {"tool": "write", "n": number}, risk)
        assert self.cluster.run_until(self.cluster.all_done, 5_000)
        self.config = self.cluster.config
        self.logs = {i: tuple(self.cluster.stores[i].log) for i in range(4)}
        self.certificates = [r.certificate for r in self.cluster.operations.values()]
        self.evidence = gather_sim_evidence(self.cluster, range(4), Evidence())
        self.signed = {i: tuple(self.cluster.stores[i].signed) for i in range(4)}

    def replica_signer(self, replica_id: int) -> Signer:
        return Signer(self.config.cluster_id, self.cluster.replica_seeds[replica_id])

    def client_signer(self, client_id: str) -> Signer:
        return Signer(self.config.cluster_id, _sim.keypair_for_test(0, client_id).seed)

    def allow_certificate(self) -> VerdictCertificate:
        return next(c for c in self.certificates if c.decision is Decision.ALLOW)

    def allow_position(self) -> int:
        return next(index for index, entry in enumerate(self.logs[0]) if entry.decision is Decision.ALLOW)

    def reissue(self, certificate: VerdictCertificate, **changes) -> VerdictCertificate:
        """The certificate with every reply changed as given and validly re-signed by its replica."""
        replies = tuple(self.replica_signer(reply.replica_id).sign(
            dataclasses.replace(reply, signature=ZERO_SIGNATURE, **changes)) for reply in certificate.replies)
        return VerdictCertificate(certificate.request, replies)

    def vote(self, replica_id: int, digest: bytes, decision: Decision) -> Vote:
        return self.replica_signer(replica_id).sign(Vote(digest, decision, "crafted", replica_id, ZERO_SIGNATURE))


@pytest.fixture(scope="module")
def run() -> HonestRun:
    return HonestRun()


def rechain(entries) -> tuple[LogEntry, ...]:
    """Entries renumbered from position 1 and re-hashed into a valid chain, so only the intended flaw remains."""
    chained, previous_hash = [], bytes(32)
    for position, entry in enumerate(entries, start=1):
        unhashed = dataclasses.replace(entry, position=position, previous_hash=previous_hash, entry_hash=bytes(32))
        chained.append(dataclasses.replace(unhashed, entry_hash=unhashed.computed_hash()))
        previous_hash = chained[-1].entry_hash
    return tuple(chained)


def ids(violations: list[Violation]) -> set[str]:
    return {violation.invariant for violation in violations}


# ----------------------------------------------------------------------------- the honest baseline


def test_the_honest_run_has_both_verdicts_and_no_violation(run: HonestRun) -> None:
    decisions = {entry.decision for entry in run.logs[0]}
    assert decisions == {Decision.ALLOW, Decision.DENY}
    assert len(run.logs[0]) == 6 and all(run.logs[i] == run.logs[0] for i in range(4))
    assert check_all(run.logs, run.config, run.certificates, evidence=run.evidence, signed=run.signed,
                     require_evidence=True) == []
    assert check_sim(run.cluster, {0, 1, 2, 3}) == []


def test_the_monitor_checks_a_running_cluster_repeatedly() -> None:
    cluster = SimCluster(4, seed=3)
    monitor = SimMonitor(cluster, {0, 1, 2, 3})
    for number in range(3):
        cluster.submit("client-0", {"n": number})
        cluster.run(50)
        assert monitor.check() == []
    assert monitor.checks == 3 and len(cluster.stores[0].log) == 3


def test_votes_digest_matches_what_replicas_log(run: HonestRun) -> None:
    by_key = {entry.key: entry for entry in run.logs[1]}
    for certificate in run.certificates:
        assert votes_digest(certificate.votes) == by_key[certificate.request.key].votes_digest
        assert votes_digest(reversed(certificate.votes)) == votes_digest(certificate.votes)


# ----------------------------------------------------------------------------- S1 agreement


def test_agreement_reports_a_fork_at_one_position(run: HonestRun) -> None:
    index = run.allow_position()
    forked = list(run.logs[2])
    forked[index] = dataclasses.replace(forked[index], decision=Decision.DENY, reason="forked")
    logs = {**run.logs, 2: rechain(forked)}
    violations = check_agreement(logs)
    assert ids(violations) == {"S1"}
    assert any(f"position {index + 1}" in v.message for v in violations)
    assert check_integrity(logs) == [], "the fork is a well-formed chain: only agreement can catch it"


def test_agreement_reports_a_replica_that_skipped_an_entry_of_an_executed_seq(run: HonestRun) -> None:
    skipped = rechain(entry for index, entry in enumerate(run.logs[1]) if index != 1)
    violations = check_agreement({0: run.logs[0], 1: skipped})
    assert any(v.invariant == "S1" and f"executed seq {run.logs[0][1].seq} differently" in v.message
               for v in violations)


def test_agreement_accepts_a_lagging_prefix(run: HonestRun) -> None:
    # A replica that lags has executed whole seqs: its log ends at a seq boundary (a batch may hold several).
    first_seq = run.logs[1][0].seq
    lagging = tuple(entry for entry in run.logs[1] if entry.seq == first_seq)
    assert 0 < len(lagging) < len(run.logs[1])
    assert check_agreement({0: run.logs[0], 1: lagging, 2: ()}) == []


# ----------------------------------------------------------------------------- S2 validity


def test_validity_reports_an_allow_certificate_with_only_2f_allow_votes(run: HonestRun) -> None:
    certificate = run.allow_certificate()
    digest = certificate.votes[0].request_digest
    f = run.config.faulty_max
    weakened = tuple(run.vote(i, digest, Decision.ALLOW if i < 2 * f else Decision.DENY) for i in range(4))
    crafted = run.reissue(certificate, votes=weakened)
    violations = check_validity({}, run.config, certificates=[crafted])
    assert ids(violations) == {"S2"} and "2 distinct signed ALLOW votes, 3 needed" in violations[0].message


def test_validity_does_not_count_the_votes_of_quarantined_replicas(run: HonestRun) -> None:
    certificate = run.allow_certificate()
    digest = certificate.votes[0].request_digest
    all_allow = tuple(run.vote(i, digest, Decision.ALLOW) for i in range(4))
    # Three ALLOW votes of four are enough for LOW, but not once two of the voters are quarantined.
    honest = run.reissue(certificate, votes=all_allow[:3], uncounted_voters=())
    assert check_validity({}, run.config, certificates=[honest]) == []
    quarantined = run.reissue(certificate, votes=all_allow[:3], uncounted_voters=(0, 1))
    violations = check_validity({}, run.config, certificates=[quarantined])
    assert ids(violations) == {"S2"} and "1 distinct signed ALLOW votes, 3 needed" in violations[0].message


@pytest.mark.parametrize("flaw", ["too-few", "forged-signature", "other-request", "duplicate-voter", "vetoed",
                                  "below-quorum"])
def test_validity_reports_an_allow_log_entry_whose_votes_do_not_justify_it(run: HonestRun, flaw: str) -> None:
    index = run.allow_position()
    entry = run.logs[0][index]
    digest = entry.request_digest
    allow = [run.vote(i, digest, Decision.ALLOW) for i in range(4)]
    votes = {
        "too-few": allow[:2] + [run.vote(i, digest, Decision.DENY) for i in (2, 3)],
        "forged-signature": allow[:3] + [dataclasses.replace(allow[3], signature=bytes(range(64)))],
        "other-request": allow[:3] + [run.vote(3, bytes(32), Decision.ALLOW)],
        "duplicate-voter": allow[:3] + [allow[2]],
        "vetoed": allow[:3] + [run.vote(3, digest, Decision.DENY)],
        "below-quorum": allow[:2],
    }[flaw]
    if flaw == "vetoed":
        entry = dataclasses.replace(entry, risk=Risk.HIGH)  # HIGH tolerates no DENY vote.
    # The flawed vote set is made to look like this entry's own: same digest in the log, found in the evidence.
    entry = dataclasses.replace(entry, votes_digest=votes_digest(votes))
    evidence = Evidence()
    evidence.vote_sets[entry.votes_digest] = tuple(votes)
    logs = {0: rechain([*run.logs[0][:index], entry, *run.logs[0][index + 1:]])}
    assert ids(check_validity(logs, run.config, evidence)) == {"S2"}


def test_validity_without_evidence_is_silent_unless_evidence_is_required(run: HonestRun) -> None:
    assert check_validity(run.logs, run.config) == []
    violations = check_validity(run.logs, run.config, Evidence(), require_evidence=True)
    allow_entries = sum(1 for log in run.logs.values() for entry in log if entry.decision is Decision.ALLOW)
    assert len(violations) == allow_entries > 0 and ids(violations) == {"S2"}


def test_validity_ignores_deny_entries_whatever_their_votes(run: HonestRun) -> None:
    denied = {i: tuple(e for e in log if e.decision is Decision.DENY) for i, log in run.logs.items()}
    assert check_validity(denied, run.config, Evidence(), require_evidence=True) == []


# ----------------------------------------------------------------------------- S3 integrity


@pytest.mark.parametrize("flaw", ["edited-field", "broken-link", "gap", "not-from-genesis", "seq-backwards"])
def test_integrity_reports_a_broken_hash_chain(run: HonestRun, flaw: str) -> None:
    log = list(run.logs[0])
    if flaw == "edited-field":
        log[2] = dataclasses.replace(log[2], decision=Decision.ALLOW, reason="edited after hashing")
    elif flaw == "broken-link":
        unhashed = dataclasses.replace(log[3], previous_hash=bytes(32))
        log[3] = dataclasses.replace(unhashed, entry_hash=unhashed.computed_hash())
    elif flaw == "gap":
        del log[2]
    elif flaw == "not-from-genesis":
        unhashed = dataclasses.replace(log[0], previous_hash=b"\x01" * 32)
        log[0] = dataclasses.replace(unhashed, entry_hash=unhashed.computed_hash())
    elif flaw == "seq-backwards":
        log = list(rechain([dataclasses.replace(log[0], seq=log[-1].seq + 5), *log[1:]]))
    violations = check_integrity({0: tuple(log)})
    assert ids(violations) == {"S3"}, violations


def test_integrity_reports_a_request_its_client_did_not_sign(run: HonestRun) -> None:
    forged = Evidence()
    for digest, requests in run.evidence.requests.items():
        forged.requests[digest] = [dataclasses.replace(r, signature=bytes(64)) for r in requests]
    violations = check_integrity(run.logs, run.config, forged)
    assert ids(violations) == {"S3"} and len(violations) == sum(len(log) for log in run.logs.values())
    assert check_integrity(run.logs, run.config, run.evidence, require_evidence=True) == []


def test_integrity_reports_a_request_whose_fields_differ_from_the_entry(run: HonestRun) -> None:
    entry = run.logs[0][0]
    moved = dataclasses.replace(entry, deadline_ms=entry.deadline_ms + 1)
    violations = check_integrity({0: rechain([moved])}, run.config, run.evidence)
    assert ids(violations) == {"S3"}


def test_integrity_requires_request_evidence_when_asked(run: HonestRun) -> None:
    assert check_integrity(run.logs, run.config, Evidence()) == []
    assert ids(check_integrity(run.logs, run.config, Evidence(), require_evidence=True)) == {"S3"}


@pytest.mark.parametrize("flaw", ["forged-reply", "single-reply", "mixed-outcomes", "unsigned-request"])
def test_integrity_reports_a_malformed_certificate(run: HonestRun, flaw: str) -> None:
    certificate = run.allow_certificate()
    first, second = certificate.replies[0], certificate.replies[1]
    replies = {
        "forged-reply": (first, dataclasses.replace(second, signature=bytes(64))),
        "single-reply": (first,),
        "mixed-outcomes": (first, run.replica_signer(second.replica_id).sign(
            dataclasses.replace(second, reason="another reason", signature=ZERO_SIGNATURE))),
        "unsigned-request": certificate.replies,
    }[flaw]
    request = dataclasses.replace(certificate.request, signature=bytes(64)) if flaw == "unsigned-request" \
        else certificate.request
    crafted = VerdictCertificate(request, replies)
    assert ids(check_integrity({}, run.config, certificates=[crafted])) == {"S3"}
    assert not crafted.is_valid(run.config), "the core's own verifier agrees the certificate is bad"


# ----------------------------------------------------------------------------- S4 exactly-once


def test_exactly_once_reports_a_key_finalized_twice(run: HonestRun) -> None:
    log = rechain([*run.logs[0], dataclasses.replace(run.logs[0][0], seq=run.logs[0][-1].seq + 1)])
    violations = check_exactly_once({0: log})
    assert ids(violations) == {"S4"} and "twice" in violations[0].message
    assert check_integrity({0: log}) == []


def test_exactly_once_reports_certificates_that_disagree(run: HonestRun) -> None:
    certificate = run.allow_certificate()
    other = run.reissue(certificate, decision=Decision.DENY, reason="conflicting")
    assert ids(check_exactly_once({}, [certificate, other])) == {"S4"}
    assert check_exactly_once(run.logs, [certificate, certificate]) == []


def test_exactly_once_reports_a_certificate_that_disagrees_with_the_log(run: HonestRun) -> None:
    certificate = run.allow_certificate()
    moved = run.reissue(certificate, seq=certificate.seq + 7)
    assert ids(check_exactly_once(run.logs, [moved])) == {"S4"}


# ----------------------------------------------------------------------------- S5 deadline


def test_deadline_reports_an_allow_after_the_deadline(run: HonestRun) -> None:
    index = run.allow_position()
    entry = run.logs[0][index]
    late = dataclasses.replace(entry, deadline_ms=entry.timestamp_ms - 1)
    logs = {0: rechain([*run.logs[0][:index], late, *run.logs[0][index + 1:]])}
    assert ids(check_deadline(logs)) == {"S5"}
    denied = {0: rechain([dataclasses.replace(late, decision=Decision.DENY)])}
    assert check_deadline(denied) == [], "an expired DENY is exactly what the deadline rule asks for"


def test_deadline_reports_an_expired_allow_certificate(run: HonestRun) -> None:
    certificate = run.allow_certificate()
    late = run.reissue(certificate, timestamp_ms=certificate.request.deadline_ms + 1)
    assert ids(check_deadline({}, [late])) == {"S5"}
    assert check_deadline({}, [certificate]) == []


# ----------------------------------------------------------------------------- S6 stability


def test_stability_reports_a_shrunk_or_rewritten_log(run: HonestRun) -> None:
    assert check_stability({0: run.logs[0][:3]}, {0: run.logs[0]}) == []
    assert ids(check_stability({0: run.logs[0]}, {0: run.logs[0][:3]})) == {"S6"}
    rewritten = list(run.logs[0])
    rewritten[1] = dataclasses.replace(rewritten[1], reason="rewritten")
    assert ids(check_stability({0: run.logs[0]}, {0: rechain(rewritten)})) == {"S6"}


def test_the_monitor_reports_a_log_that_changes_between_checks() -> None:
    cluster = SimCluster(4, seed=5)
    monitor = SimMonitor(cluster, {0, 1, 2, 3})
    cluster.submit("client-0", {"n": 1})
    cluster.run(80)
    assert monitor.check() == []
    cluster.stores[1] = type(cluster.stores[1])()  # The replica's durable log vanished.
    cluster.finalized[1] = []
    assert "S6" in ids(monitor.check())


# ----------------------------------------------------------------------------- S7, S8 signed messages


def test_no_equivocation_reports_two_prepares_for_one_slot(run: HonestRun) -> None:
    signer = run.replica_signer(1)
    first = signer.sign(Prepare(0, 1, bytes(32), 1, ZERO_SIGNATURE))
    second = signer.sign(Prepare(0, 1, b"\x01" * 32, 1, ZERO_SIGNATURE))
    assert check_no_equivocation({1: [first, first]}) == []
    assert ids(check_no_equivocation({1: [first, second]})) == {"S7"}
    assert check_no_equivocation({1: [first, signer.sign(Prepare(1, 1, b"\x01" * 32, 1, ZERO_SIGNATURE))]}) == [], \
        "a new view may prepare another batch at the same seq"


def test_vote_floor_reports_a_prepare_below_a_view_the_replica_asked_to_leave(run: HonestRun) -> None:
    signer = run.replica_signer(1)
    view_change = signer.sign(ViewChange(2, 0, (), (), 1, ZERO_SIGNATURE))
    below = signer.sign(Prepare(1, 5, bytes(32), 1, ZERO_SIGNATURE))
    at_floor = signer.sign(Prepare(2, 5, bytes(32), 1, ZERO_SIGNATURE))
    assert check_vote_floor({1: [below, view_change, at_floor]}) == [], "before the VIEW-CHANGE, or in its view"
    assert ids(check_vote_floor({1: [view_change, below]})) == {"S10"}


def test_no_equivocation_reports_two_votes_on_one_request(run: HonestRun) -> None:
    allow = run.vote(2, bytes(32), Decision.ALLOW)
    deny = run.vote(2, bytes(32), Decision.DENY)
    assert ids(check_no_equivocation({2: [allow, deny]})) == {"S7"}


def test_checkpoints_report_diverging_states_and_weak_stable_proofs(run: HonestRun) -> None:
    checkpoints = [run.replica_signer(i).sign(Checkpoint(32, bytes([i % 2]) * 32, i, ZERO_SIGNATURE)) for i in range(4)]
    assert ids(check_checkpoints({i: [checkpoints[i]] for i in range(4)})) == {"S8"}
    agreeing = [run.replica_signer(i).sign(Checkpoint(32, bytes(32), i, ZERO_SIGNATURE)) for i in range(4)]
    signed = {i: [agreeing[i]] for i in range(4)}
    assert check_checkpoints(signed, run.config, {0: tuple(agreeing[:3])}) == []
    assert ids(check_checkpoints(signed, run.config, {0: tuple(agreeing[:2])})) == {"S8"}
    forged = (*agreeing[:2], dataclasses.replace(agreeing[2], signature=bytes(64)))
    assert ids(check_checkpoints(signed, run.config, {0: forged})) == {"S8"}
    assert ids(check_checkpoints({0: [checkpoints[1]]}, run.config, {0: tuple(agreeing[:3])})) == set(), \
        "a checkpoint signed by another replica in replica 0's store is not replica 0's statement"


# ----------------------------------------------------------------------------- the simulator adapter


def test_check_sim_reports_a_finalized_stream_that_differs_from_the_store() -> None:
    cluster = SimCluster(4, seed=2)
    cluster.submit("client-0", {"n": 1})
    cluster.run(80)
    assert check_sim(cluster, {0, 1, 2, 3}) == []
    cluster.finalized[2].append(cluster.finalized[2][0])
    assert ids(check_sim(cluster, {0, 1, 2, 3})) == {"S3"}
    assert check_sim(cluster, {0, 1, 3}) == [], "replica 2 is not claimed correct, so its records are ignored"


def test_violation_reads_as_its_id_and_message() -> None:
    violation = Violation("S4", "replica 1 finalized ('c', 1) twice")
    assert str(violation) == "S4: replica 1 finalized ('c', 1) twice"
    with pytest.raises(dataclasses.FrozenInstanceError):
        violation.invariant = "S1"  # type: ignore[misc]
