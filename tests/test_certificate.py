"""Proves verdict certificates: a real one verifies, any single-byte change, JSON edit, missing reply, stranger or inconsistent vote set is refused."""

from __future__ import annotations

import base64
import dataclasses
import json

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.core import (CertificateError, Decision, Risk, Signer, VerdictCertificate, Vote, decide,
                      request_digest)
from bft.policy import PolicyDecision
from bft.testing import SimCluster

CERTIFICATE_FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class DenyAll:
    name = "deny-all"

    def evaluate(self, action, context) -> PolicyDecision:
        return PolicyDecision.deny("deny-all")


class Issued:
    """A certificate produced by a real simulated run, with what is needed to forge variants of it."""

    def __init__(self, action: dict, policies=None, seed: int = 3) -> None:
        self.cluster = SimCluster(4, seed=seed, policies=policies)
        request = self.cluster.submit("client-0", action, Risk.LOW)
        assert self.cluster.run_until(self.cluster.all_done, max_ms=20_000)
        self.certificate = self.cluster.operations[request.key].certificate
        assert self.certificate is not None
        self.config = self.cluster.config
        self.signers = [Signer(self.config.cluster_id, seed) for seed in self.cluster.replica_seeds]

    def vote(self, replica_id: int, decision: Decision, digest: bytes | None = None) -> Vote:
        digest = digest or request_digest(self.config.cluster_id, self.certificate.request)
        return self.signers[replica_id].sign(Vote(digest, decision, decision.value.lower(), replica_id, bytes(64)))

    def forged(self, votes: tuple[Vote, ...] | None = None, decision: Decision | None = None, reason: str | None = None,
               repliers: tuple[int, ...] | None = None, **reply_changes) -> VerdictCertificate:
        """Replies re-signed by real replica keys, so only the logic of ``verify`` can catch the forgery."""
        template = self.certificate.replies[0]
        votes = self.certificate.votes if votes is None else votes
        if decision is None:
            decision, derived_reason = decide(self.config.rules[self.certificate.request.risk], votes,
                                              template.timestamp_ms, self.certificate.request.deadline_ms)
            reason = reason if reason is not None else derived_reason
        reason = reason if reason is not None else template.reason
        replies = []
        for replica_id in (repliers if repliers is not None else tuple(r.replica_id for r in self.certificate.replies)):
            unsigned = dataclasses.replace(template, votes=votes, decision=decision, reason=reason,
                                           replica_id=replica_id, **reply_changes)
            signer = self.signers[replica_id % len(self.signers)]
            replies.append(signer.sign(unsigned))
        return VerdictCertificate(self.certificate.request, tuple(replies))


@pytest.fixture(scope="module")
def issued() -> Issued:
    return Issued({"op": "write", "path": "/tmp/x"})


@pytest.fixture(scope="module")
def issued_deny() -> Issued:
    return Issued({"op": "delete", "path": "/"}, policies={i: DenyAll() for i in range(4)}, seed=5)


def refusal(certificate: VerdictCertificate, config) -> str:
    with pytest.raises(CertificateError) as caught:
        certificate.verify(config)
    assert not certificate.is_valid(config)
    return str(caught.value)


def test_a_certificate_from_a_run_verifies(issued, issued_deny) -> None:
    for case, decision in ((issued, Decision.ALLOW), (issued_deny, Decision.DENY)):
        certificate = case.certificate
        certificate.verify(case.config)
        assert certificate.is_valid(case.config)
        assert certificate.decision is decision
        assert len(certificate.replies) >= case.config.reply_quorum
        assert len(certificate.votes) >= case.config.quorum
        assert VerdictCertificate.from_bytes(certificate.to_bytes()) == certificate


def test_forging_helper_reproduces_the_genuine_certificate(issued) -> None:
    # Sanity check of the test's own forger: with nothing changed it rebuilds a valid certificate.
    assert issued.forged() == issued.certificate
    issued.forged().verify(issued.config)


def certificate_survives(data: bytes, config) -> bool:
    try:
        certificate = VerdictCertificate.from_bytes(data)
    except CertificateError:
        return False
    return certificate.is_valid(config)


def test_changing_any_single_byte_is_detected_exhaustively(issued) -> None:
    data = issued.certificate.to_bytes()
    for position in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            changed = bytearray(data)
            changed[position] ^= mask
            assert not certificate_survives(bytes(changed), issued.config), (position, mask)


@CERTIFICATE_FUZZ
@given(st.data())
def test_changing_any_single_byte_is_detected(issued, data) -> None:
    original = issued.certificate.to_bytes()
    position = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
    changed = bytearray(original)
    changed[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    assert not certificate_survives(bytes(changed), issued.config)


@CERTIFICATE_FUZZ
@given(st.binary(max_size=300))
def test_from_bytes_only_ever_raises_certificate_error(data: bytes) -> None:
    try:
        VerdictCertificate.from_bytes(data)
    except CertificateError:
        pass


def test_truncations_and_extensions_are_refused(issued) -> None:
    data = issued.certificate.to_bytes()
    for cut in range(len(data)):
        with pytest.raises(CertificateError):
            VerdictCertificate.from_bytes(data[:cut])
    with pytest.raises(CertificateError):
        VerdictCertificate.from_bytes(data + b"\x00")


def test_non_canonical_bytes_are_refused(issued) -> None:
    data = issued.certificate.to_bytes()
    assert data[0] == 0x92  # fixarray of two fields; the same array written as array16 is not canonical.
    with pytest.raises(CertificateError):
        VerdictCertificate.from_bytes(b"\xdc\x00\x02" + data[1:])
    with pytest.raises(CertificateError):
        VerdictCertificate.from_bytes(msgpack.packb({"request": 1}))


def test_json_round_trip(issued) -> None:
    text = issued.certificate.to_json()
    summary = json.loads(text)
    assert summary["decision"] == "ALLOW"
    assert summary["signers"] == [reply.replica_id for reply in issued.certificate.replies]
    parsed = VerdictCertificate.from_json(text)
    assert parsed == issued.certificate
    parsed.verify(issued.config)


@pytest.mark.parametrize("field, value", [
    ("decision", "DENY"), ("reason", "approved by everyone"), ("seq", 999), ("client_id", "someone-else"),
    ("request_number", 2), ("risk", "critical"), ("action", {"op": "read"}), ("signers", [0, 1, 2, 3]),
    ("votes", []), ("extra", "field"),
])
def test_editing_a_readable_json_field_is_detected(issued, field: str, value) -> None:
    summary = json.loads(issued.certificate.to_json())
    summary[field] = value
    with pytest.raises(CertificateError, match=f"^{field} does not match the signed content$"):
        VerdictCertificate.from_json(json.dumps(summary))


@pytest.mark.parametrize("field, look_alike", [
    ("seq", float), ("request_number", str), ("signers", lambda signers: [float(s) for s in signers]),
], ids=["float-seq", "text-number", "float-signers"])
def test_a_look_alike_json_value_is_not_the_signed_value(issued, field: str, look_alike) -> None:
    summary = json.loads(issued.certificate.to_json())
    summary[field] = look_alike(summary[field])
    with pytest.raises(CertificateError, match=f"^{field} does not match the signed content$"):
        VerdictCertificate.from_json(json.dumps(summary))


def test_a_repeated_or_too_deeply_nested_json_field_is_refused(issued) -> None:
    text = issued.certificate.to_json().replace('"decision": "ALLOW"', '"decision": "DENY", "decision": "ALLOW"', 1)
    with pytest.raises(CertificateError, match="decision does not match the signed content .it appears twice"):
        VerdictCertificate.from_json(text)
    with pytest.raises(CertificateError, match="nested deeper than"):
        VerdictCertificate.from_json('{"certificate": ' + "[" * 10_000 + "]" * 10_000 + "}")


def test_editing_the_deny_decision_in_json_is_detected(issued_deny) -> None:
    summary = json.loads(issued_deny.certificate.to_json())
    assert summary["decision"] == "DENY"
    summary["decision"] = "ALLOW"
    with pytest.raises(CertificateError):
        VerdictCertificate.from_json(json.dumps(summary))


@pytest.mark.parametrize("text", ["", "null", "[]", "{}", '{"certificate": 5}', '{"certificate": "!!!"}',
                                  '{"certificate": "AAAA"}', "not json"])
def test_malformed_json_is_a_certificate_error(text: str) -> None:
    with pytest.raises(CertificateError):
        VerdictCertificate.from_json(text)


def test_json_whose_embedded_bytes_are_swapped_is_refused(issued, issued_deny) -> None:
    summary = json.loads(issued.certificate.to_json())
    summary["certificate"] = base64.b64encode(issued_deny.certificate.to_bytes()).decode()
    with pytest.raises(CertificateError):
        VerdictCertificate.from_json(json.dumps(summary))


def test_f_replies_are_not_enough(issued) -> None:
    f = issued.config.faulty_max
    certificate = VerdictCertificate(issued.certificate.request, issued.certificate.replies[:f])
    assert "needed" in refusal(certificate, issued.config)


def test_the_same_replica_twice_does_not_count_twice(issued) -> None:
    reply = issued.certificate.replies[0]
    certificate = VerdictCertificate(issued.certificate.request, (reply,) * issued.config.reply_quorum)
    refusal(certificate, issued.config)


def test_a_reply_from_an_unknown_replica_is_refused(issued) -> None:
    n = issued.config.replica_count
    certificate = issued.forged(repliers=(0, n))  # Replica n does not exist; signed with replica 0's key.
    assert "signer" in refusal(certificate, issued.config)


def test_a_reply_signed_by_the_wrong_key_is_refused(issued) -> None:
    genuine = issued.certificate.replies
    impostor = dataclasses.replace(issued.signers[3].sign(dataclasses.replace(genuine[0], replica_id=3)),
                                   replica_id=genuine[1].replica_id if genuine[1].replica_id != 3 else 2)
    certificate = VerdictCertificate(issued.certificate.request, (genuine[0], impostor))
    refusal(certificate, issued.config)


def test_votes_below_quorum_are_refused_even_when_the_verdict_follows(issued) -> None:
    few = tuple(issued.vote(i, Decision.DENY) for i in range(issued.config.quorum - 1))
    certificate = issued.forged(votes=few)
    assert certificate.decision is Decision.DENY  # decide() agrees with DENY; the quorum check must still refuse.
    assert "vote set" in refusal(certificate, issued.config)


def test_votes_that_do_not_imply_the_verdict_are_refused(issued) -> None:
    n = issued.config.replica_count
    all_deny = tuple(issued.vote(i, Decision.DENY) for i in range(n))
    assert "imply" in refusal(issued.forged(votes=all_deny, decision=Decision.ALLOW, reason="approved"), issued.config)
    all_allow = tuple(issued.vote(i, Decision.ALLOW) for i in range(n))
    assert "imply" in refusal(issued.forged(votes=all_allow, decision=Decision.DENY, reason="nope"), issued.config)
    # The right decision with a reason that does not follow from the votes is refused too.
    refusal(issued.forged(votes=all_allow, decision=Decision.ALLOW, reason="approved: 9 allow, 0 deny"),
            issued.config)


def test_critical_risk_needs_every_vote_to_allow(issued) -> None:
    # The same votes that allow at LOW must not support ALLOW under the CRITICAL rule.
    request = issued.certificate.request
    assert request.risk is Risk.LOW and len(issued.certificate.votes) < issued.config.replica_count
    rule = issued.config.rules[Risk.CRITICAL]
    decision, _ = decide(rule, issued.certificate.votes, issued.certificate.replies[0].timestamp_ms,
                         request.deadline_ms)
    assert decision is Decision.DENY


def test_an_expired_allow_is_refused(issued) -> None:
    late = issued.certificate.request.deadline_ms + 1
    certificate = issued.forged(decision=Decision.ALLOW, reason=issued.certificate.reason, timestamp_ms=late)
    assert "imply" in refusal(certificate, issued.config)


def test_a_vote_for_another_request_is_refused(issued) -> None:
    votes = list(issued.certificate.votes)
    votes[0] = issued.vote(votes[0].replica_id, Decision.ALLOW, digest=bytes(32))
    assert "another request" in refusal(issued.forged(votes=tuple(votes)), issued.config)


def test_unsorted_or_duplicated_votes_are_refused(issued) -> None:
    votes = issued.certificate.votes
    claim = dict(decision=issued.certificate.decision, reason=issued.certificate.reason)
    refusal(issued.forged(votes=tuple(reversed(votes)), **claim), issued.config)
    refusal(issued.forged(votes=votes + (votes[0],), **claim), issued.config)


def test_a_vote_with_a_broken_signature_is_refused(issued) -> None:
    votes = list(issued.certificate.votes)
    votes[1] = dataclasses.replace(votes[1], signature=bytes(64))
    refusal(issued.forged(votes=tuple(votes)), issued.config)


def test_disagreeing_replies_are_refused(issued) -> None:
    genuine = issued.certificate.replies
    other = issued.signers[genuine[1].replica_id].sign(dataclasses.replace(genuine[1], seq=genuine[1].seq + 1))
    refusal(VerdictCertificate(issued.certificate.request, (genuine[0], other)), issued.config)


def test_replies_for_another_request_are_refused(issued) -> None:
    certificate = issued.forged(request_number=issued.certificate.request.request_number + 1)
    assert "different request" in refusal(certificate, issued.config)


def test_a_swapped_request_is_refused(issued, issued_deny) -> None:
    assert issued_deny.certificate.request.key == issued.certificate.request.key
    assert issued_deny.certificate.request != issued.certificate.request
    mixed = VerdictCertificate(issued_deny.certificate.request, issued.certificate.replies)
    refusal(mixed, issued.config)


def test_a_certificate_does_not_verify_under_another_cluster(issued) -> None:
    other = SimCluster(4, seed=3, key_seed=99).config
    refusal(issued.certificate, other)
    renamed = dataclasses.replace(issued.config, cluster_id="another-cluster")
    refusal(issued.certificate, renamed)


def test_an_unknown_client_is_refused(issued) -> None:
    config = dataclasses.replace(issued.config, client_keys={})
    assert "signer" in refusal(issued.certificate, config)
