"""A PREPARE for an already prepared slot or a COMMIT for an already committed one, from a replica not heard in that phase, changes nothing, so it is held without its signature being checked and the slot keeps the quorum it decided on; a message that contradicts one the slot keeps or holds from the same sender is checked and proves equivocation."""

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


def test_a_late_prepare_or_commit_is_held_unverified_and_changes_nothing(kit):
    backup, digest = prepared_and_committed_backup(kit)
    prepares, commits = dict(backup.slots[1].prepares), dict(backup.slots[1].commits)
    for late in (kit.prepare(3, 1, digest), kit.commit(3, 1, digest)):
        for message in (late, late):
            assert backup.step(message).is_empty()
    assert backup.slots[1].prepares == prepares and backup.slots[1].commits == commits
    assert backup.rejected_counts["bad-signature"] == 0 and len(backup.slots[1].late) == 2


def test_a_forged_late_message_costs_a_check_only_when_its_sender_is_contradicted(kit):
    backup, digest = prepared_and_committed_backup(kit)
    forged = dataclasses.replace(kit.prepare(3, 1, digest), signature=FORGED)
    assert backup.step(forged).is_empty()  # Held unverified: nothing depends on it.
    genuine = kit.prepare(3, 1, digest)
    assert backup.step(genuine).is_empty()  # It differs: the held forgery is checked, fails, and is replaced.
    assert backup.slots[1].late[("Prepare", 3)] == genuine and 3 not in backup.slots[1].prepares


def test_two_conflicting_late_prepares_from_one_sender_prove_equivocation(kit):
    backup, digest = prepared_and_committed_backup(kit)
    assert backup.step(kit.prepare(3, 1, digest)).is_empty()
    ready = backup.step(kit.prepare(3, 1, bytes(32)))
    [rejection] = ready.rejected
    assert rejection.reason == "equivocation" and rejection.evidence is not None


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
