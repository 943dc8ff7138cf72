"""S11 holds on good data and names the replica on bad: a removed or re-keyed replica signing for a later epoch's
seq, and one view spanning two epochs at a replica, are violations; members signing in a later view are not."""

from __future__ import annotations

import hashlib

from bft.core import ClusterConfig, Commit, KeyPair, Prepare, Signer
from specs.invariants import check_epoch_membership, check_epoch_views

ZERO = bytes(64)


def _seed(name: str) -> bytes:
    return hashlib.sha256(f"bft-epoch-invariant-test/{name}".encode()).digest()


def _config(names: list[str]) -> ClusterConfig:
    return ClusterConfig.create("s11", tuple(KeyPair.from_seed(_seed(n)).public_key for n in names), {})


GENESIS = _config(["r0", "r1", "r2", "r3", "r4", "r5", "r6"])
SHRUNK = _config(["r0", "r1", "r2", "r3b"])  # Epoch 1 from seq 13: 4, 5, 6 removed, 3 re-keyed.
EPOCHS = [(0, GENESIS), (12, SHRUNK)]


def _prepare(name: str, replica_id: int, view: int, seq: int, kind=Prepare):
    return Signer("s11", _seed(name)).sign(kind(view, seq, bytes(32), replica_id, ZERO))


def test_members_signing_in_a_later_view_keep_s11() -> None:
    signed = {0: [_prepare("r0", 0, 0, 12), _prepare("r0", 0, 1, 13), _prepare("r0", 0, 1, 14, Commit)],
              3: [_prepare("r3", 3, 0, 11)]}
    assert check_epoch_membership(signed, EPOCHS) == [] and check_epoch_views(signed, EPOCHS) == []


def test_a_removed_or_rekeyed_replica_signing_after_the_switch_breaks_s11() -> None:
    signed = {5: [_prepare("r5", 5, 1, 13)], 3: [_prepare("r3", 3, 1, 14)]}
    violations = check_epoch_membership(signed, EPOCHS)
    assert [v.invariant for v in violations] == ["S11", "S11"]
    assert "replica 3" in violations[0].message and "replica 5" in violations[1].message


def test_one_view_spanning_two_epochs_breaks_s11() -> None:
    signed = {1: [_prepare("r1", 1, 0, 12), _prepare("r1", 1, 0, 13)]}
    violations = check_epoch_views(signed, EPOCHS)
    assert len(violations) == 1 and "replica 1" in violations[0].message and "view 0" in violations[0].message
