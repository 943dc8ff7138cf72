"""A PREPARE for an already prepared slot or a COMMIT for an already committed one, from a replica not heard in that phase, changes nothing, so it is dropped before its signature is checked (a forged one is not even rejected) and the slot keeps the quorum it decided on; a late message that conflicts with one the slot holds is still checked and proves equivocation."""

from __future__ import annotations

import dataclasses

from bft.core import Prepare

from conftest import batch_digest_of

FORGED = bytes(64)


def prepared_and_committed_backup(kit):
    backup = kit.replica(1)
    preprepare = kit.preprepare(1, (kit.entry(kit.request()),))
    digest = batch_digest_of(preprepare)
    backup.step(preprepare)
    backup.step(kit.prepare(0, 1, digest))
    backup.step(kit.prepare(2, 1, digest))
    backup.step(kit.commit(0, 1, digest))
    backup.step(kit.commit(2, 1, digest))
    assert backup.slots[1].prepared and backup.slots[1].committed and backup.last_executed == 1
    return backup, digest


def test_a_late_prepare_or_commit_is_neither_verified_nor_kept(kit):
    backup, digest = prepared_and_committed_backup(kit)
    prepares, commits = dict(backup.slots[1].prepares), dict(backup.slots[1].commits)
    for late in (kit.prepare(3, 1, digest), kit.commit(3, 1, digest)):
        forged = dataclasses.replace(late, signature=FORGED)
        for message in (late, forged):
            ready = backup.step(message)
            assert ready.is_empty(), ready
    assert backup.slots[1].prepares == prepares and backup.slots[1].commits == commits
    assert backup.rejected_counts["bad-signature"] == 0


def test_a_forged_prepare_before_the_quorum_is_still_rejected(kit):
    backup = kit.replica(1)
    preprepare = kit.preprepare(1, (kit.entry(kit.request()),))
    digest = batch_digest_of(preprepare)
    backup.step(preprepare)
    forged = dataclasses.replace(kit.prepare(2, 1, digest), signature=FORGED)
    ready = backup.step(forged)
    assert [rejection.reason for rejection in ready.rejected] == ["bad-signature"]
    assert 2 not in backup.slots[1].prepares and isinstance(backup.slots[1].prepares[1], Prepare)


def test_a_late_prepare_that_conflicts_with_a_kept_one_is_checked_and_proves_equivocation(kit):
    backup, digest = prepared_and_committed_backup(kit)
    kept = backup.slots[1].prepares[2]
    conflicting = kit.prepare(2, 1, bytes(32))
    ready = backup.step(conflicting)
    [rejection] = ready.rejected
    assert rejection.reason == "equivocation" and rejection.evidence is not None
    assert backup.slots[1].prepares[2] == kept
    assert backup.step(kept).is_empty()  # An exact repeat of what the slot holds adds nothing.
