"""Certificates of every epoch verify offline against the chain of configuration-change certificates from the
genesis; one whose replies are signed with a replaced replica's old key for a seq after its removal does not,
nor does a chain with a broken link.  Built from one simulated run that replaces replica 3."""

from __future__ import annotations

import dataclasses

import pytest

from bft.core import CertificateError, Signer, VerdictCertificate, Verifier
from bft.core._epoch_chain import chain_epochs, verify_in_chain
from harness._reconfiguration import OPERATOR, Reconfiguration, _key


@pytest.fixture(scope="module")
def replaced_run() -> Reconfiguration:
    run = Reconfiguration(seed=4)
    run.settle("genesis")
    run.change(run.config.replica_keys[:3] + (_key("replacement-3").public_key,))
    assert run.run_until(lambda: run.activated((0, 1, 2)), "activation")
    run.join(3, "replacement-3")
    run.settle("replaced")
    assert run.findings == []
    return run


def _certificates(run: Reconfiguration) -> list[VerdictCertificate]:
    return [r.certificate for r in run.cluster.operations.values() if r.certificate is not None]


def _links(run: Reconfiguration) -> list[VerdictCertificate]:
    return [c for c in _certificates(run) if c.request.client_id == OPERATOR]


def test_the_chain_yields_each_epoch_and_its_activation_seq(replaced_run) -> None:
    epochs = chain_epochs(replaced_run.chain[0][1], _links(replaced_run))
    assert [starts_after for starts_after, _ in epochs] == [starts_after for starts_after, _ in replaced_run.chain]
    assert epochs[1][1].replica_keys[3] == _key("replacement-3").public_key


def test_certificates_of_every_epoch_verify_against_the_chain(replaced_run) -> None:
    genesis, links = replaced_run.chain[0][1], _links(replaced_run)
    activation = replaced_run.chain[1][0]
    numbers = {verify_in_chain(certificate, genesis, links) for certificate in _certificates(replaced_run)}
    assert numbers == {0, 1}
    later = [c for c in _certificates(replaced_run) if c.seq > activation]
    assert later and all(verify_in_chain(c, genesis, links) == 1 for c in later)


def test_the_old_key_of_a_replaced_replica_signs_nothing_valid_after_its_removal(replaced_run) -> None:
    genesis, links = replaced_run.chain[0][1], _links(replaced_run)
    activation = replaced_run.chain[1][0]
    genuine = next(c for c in _certificates(replaced_run) if c.seq > activation and c.request.client_id != OPERATOR)
    old_signer = Signer(genesis.cluster_id, _key("replica-3").seed)
    forged_reply = old_signer.sign(dataclasses.replace(genuine.replies[0], replica_id=3, signature=bytes(64)))
    # The old key's signature is genuine under the genesis keys: only the chain makes it worthless here.
    Verifier(genesis.cluster_id, genesis.replica_keys, {}).verify(forged_reply)
    others = [reply for reply in genuine.replies if reply.replica_id != 3][:genesis.faulty_max]
    forged = VerdictCertificate(genuine.request, tuple(sorted(others + [forged_reply], key=lambda r: r.replica_id)))
    with pytest.raises(CertificateError, match="signature"):
        verify_in_chain(forged, genesis, links)


def test_a_broken_chain_does_not_verify(replaced_run) -> None:
    genesis, links = replaced_run.chain[0][1], _links(replaced_run)
    ordinary = next(c for c in _certificates(replaced_run) if c.request.client_id != OPERATOR)
    with pytest.raises(CertificateError, match="not a command signer"):
        chain_epochs(genesis, [ordinary])
    with pytest.raises(CertificateError, match="before epoch"):
        chain_epochs(genesis, links + links)  # The same change again cannot make a second epoch.
