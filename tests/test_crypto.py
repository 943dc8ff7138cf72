"""Proves signatures are bound to their message type, cluster and signer, unknown identities are refused, and the Verifier cache stays bounded."""

from __future__ import annotations

import dataclasses

import pytest

from bft.core import (Checkpoint, Commit, KeyPair, Prepare, RemoteProtocolError, Signer, Verifier, Vote, decode,
                      encode)
from bft.core._codec import signing_payload


def verifier_for(kit, cluster_id: str | None = None, cache_size: int = 8192) -> Verifier:
    config = kit.config
    return Verifier(cluster_id or config.cluster_id, config.replica_keys, dict(config.client_keys), cache_size)


def reason_of(verifier: Verifier, message) -> str:
    with pytest.raises(RemoteProtocolError) as caught:
        verifier.verify(message)
    return caught.value.reason


def test_valid_signatures_verify(kit) -> None:
    verifier = verifier_for(kit)
    request = kit.request()
    for message in (request, kit.vote(2, request), kit.prepare(1, 5, bytes(32)), kit.commit(3, 5, bytes(32)),
                    kit.checkpoint(0, 32, bytes(32)), kit.preprepare(1, (kit.entry(request),))):
        verifier.verify(message)  # Raises on failure.


def test_a_prepare_signature_does_not_verify_as_a_commit(kit) -> None:
    prepare = kit.prepare(1, 7, bytes(range(32)))
    # The two types have identical fields; only the domain tag (message type) in the payload differs.
    as_commit = Commit(prepare.view, prepare.seq, prepare.batch_digest, prepare.replica_id, prepare.signature)
    assert reason_of(verifier_for(kit), as_commit) == "bad-signature"
    # And the converse.
    commit = kit.commit(1, 7, bytes(range(32)))
    as_prepare = Prepare(commit.view, commit.seq, commit.batch_digest, commit.replica_id, commit.signature)
    assert reason_of(verifier_for(kit), as_prepare) == "bad-signature"


def test_retagging_on_the_wire_is_caught(kit) -> None:
    prepare = kit.prepare(2, 3, bytes(32))
    encoded = bytearray(encode(prepare))
    assert encoded[1] == Prepare.TAG
    encoded[1] = Commit.TAG
    retagged = decode(bytes(encoded))
    assert isinstance(retagged, Commit)
    assert reason_of(verifier_for(kit), retagged) == "bad-signature"


def test_signatures_do_not_cross_clusters(kit) -> None:
    other_cluster = verifier_for(kit, cluster_id=kit.cluster_id + "-other")
    request = kit.request()
    for message in (request, kit.vote(0, request), kit.prepare(1, 1, bytes(32)), kit.checkpoint(2, 32, bytes(32))):
        assert reason_of(other_cluster, message) == "bad-signature"


def test_payload_covers_every_field_but_the_signature(kit) -> None:
    vote = kit.vote(1, kit.request())
    verifier = verifier_for(kit)
    changes = {"request_digest": bytes(32), "decision": vote.decision.__class__.DENY, "reason": "changed",
               "replica_id": 2}
    for name, value in changes.items():
        assert getattr(vote, name) != value
        tampered = dataclasses.replace(vote, **{name: value})
        assert reason_of(verifier, tampered) == "bad-signature"
    assert signing_payload("a", vote) != signing_payload("b", vote)
    assert signing_payload("a", vote) == signing_payload("a", dataclasses.replace(vote, signature=bytes(64)))


def test_signer_is_deterministic_and_ignores_the_old_signature(kit) -> None:
    signer = kit.replica_signers[0]
    unsigned = Checkpoint(32, bytes(32), 0, bytes(64))
    first = signer.sign(unsigned)
    assert first == signer.sign(unsigned) == signer.sign(dataclasses.replace(unsigned, signature=b"\x01" * 64))
    assert first.signature != bytes(64)


def test_a_message_signed_by_the_wrong_replica_is_rejected(kit) -> None:
    forged = kit.replica_signers[2].sign(Prepare(0, 1, bytes(32), 1, bytes(64)))  # Replica 2 claims to be 1.
    assert reason_of(verifier_for(kit), forged) == "bad-signature"
    outsider = Signer(kit.cluster_id, KeyPair.from_seed(b"\x07" * 32).seed)
    assert reason_of(verifier_for(kit), outsider.sign(Prepare(0, 1, bytes(32), 1, bytes(64)))) == "bad-signature"


def test_unknown_replica_and_client_ids_are_rejected(kit) -> None:
    verifier = verifier_for(kit)
    stranger = kit.replica_signers[0].sign(Prepare(0, 1, bytes(32), kit.n, bytes(64)))
    assert reason_of(verifier, stranger) == "unknown-signer"
    assert reason_of(verifier, dataclasses.replace(stranger, replica_id=127)) == "unknown-signer"
    request = kit.request("alice")
    impostor = kit.client_signers["alice"].sign(dataclasses.replace(request, client_id="mallory"))
    assert reason_of(verifier, impostor) == "unknown-signer"


def test_a_client_cannot_sign_as_another_client(kit) -> None:
    as_bob = kit.client_signers["alice"].sign(dataclasses.replace(kit.request("alice"), client_id="bob"))
    assert reason_of(verifier_for(kit), as_bob) == "bad-signature"


def test_a_cached_verification_does_not_vouch_for_a_different_message(kit) -> None:
    verifier = verifier_for(kit)
    prepare = kit.prepare(1, 9, bytes(32))
    verifier.verify(prepare)
    verifier.verify(prepare)  # Served from the cache.
    assert reason_of(verifier, dataclasses.replace(prepare, seq=10)) == "bad-signature"
    assert reason_of(verifier, Commit(*(getattr(prepare, f) for f in ("view", "seq", "batch_digest", "replica_id",
                                                                       "signature")))) == "bad-signature"


def test_verifier_cache_is_bounded(kit) -> None:
    verifier = verifier_for(kit, cache_size=8)
    for seq in range(1, 40):
        verifier.verify(kit.prepare(seq % kit.n, seq, bytes(32)))
        assert len(verifier._verified) <= 8
    assert len(verifier._verified) == 8
    # A failed verification is never cached.
    bad = dataclasses.replace(kit.prepare(1, 1, bytes(32)), signature=bytes(64))
    for _ in range(3):
        assert reason_of(verifier, bad) == "bad-signature"


def test_verifier_rejects_malleated_signatures(kit) -> None:
    vote = kit.vote(0, kit.request())
    verifier = verifier_for(kit)
    for index in (0, 31, 32, 63):
        signature = bytearray(vote.signature)
        signature[index] ^= 0x01
        assert reason_of(verifier, dataclasses.replace(vote, signature=bytes(signature))) == "bad-signature"
    # S + L (the group order) is a classic malleation: libsodium must refuse the non-canonical scalar.
    group_order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(vote.signature[32:], "little") + group_order
    if s < 2**256:
        malleated = vote.signature[:32] + s.to_bytes(32, "little")
        assert reason_of(verifier, dataclasses.replace(vote, signature=malleated)) == "bad-signature"


def test_keypair_from_seed_is_deterministic() -> None:
    assert KeyPair.from_seed(b"\x01" * 32) == KeyPair.from_seed(b"\x01" * 32)
    assert KeyPair.from_seed(b"\x01" * 32).public_key != KeyPair.from_seed(b"\x02" * 32).public_key
    generated = KeyPair.generate()
    assert KeyPair.from_seed(generated.seed) == generated
    with pytest.raises(AssertionError):
        KeyPair.from_seed(b"short")


def test_vote_type_is_domain_separated_from_checkpoint(kit) -> None:
    # Different record shapes, but make sure a Vote signature is not accepted for any other signed type by id.
    vote = kit.vote(1, kit.request())
    checkpoint = Checkpoint(1, vote.request_digest, 1, vote.signature)
    assert reason_of(verifier_for(kit), checkpoint) == "bad-signature"
    assert isinstance(vote, Vote)
