"""Proves PREPAREs and COMMITs go to the primary alone and come back as one bundle per quorum (SPEC.md section 5,
steps 6-7): each part of a bundle is checked as if its author sent it, a forged part is rejected and blamed on
the forwarder, a bundle never makes a replica prepare or commit without a real quorum, and a Byzantine primary
forging bundles breaks agreement only when backups trust their forwarder (the planted mutant); a bundle leaves
ahead of the disk (``Ready.forwards``) unless it carries the primary's own message that the same input persists."""

from __future__ import annotations

import dataclasses

import pytest

from bft.core import Bundle, Commit, Decision, PrePrepare, Ready, Risk, decode, encode
from bft.core._ready import ReadyBuilder
from bft.testing import SimCluster, forging_collector
from harness._mutants import MUTANTS
from specs.invariants import SimMonitor

CLIENTS = ("client-0", "client-1")


def sent(ready: Ready, message_type: type) -> list[tuple[int, object]]:
    return [(to, message) for to, message in ready.messages_to_replicas if isinstance(message, message_type)]


def proposed(kit, primary):
    """The primary proposes one request; returns its PRE-PREPARE and the batch digest."""
    request = kit.request()
    primary.submit(request)
    primary.record_decision(kit.digest(request), Decision.ALLOW, "fine")
    for voter in range(1, kit.config.quorum):
        ready = primary.step(kit.vote(voter, request))
    (_, preprepare), *_ = sent(ready, PrePrepare)
    return preprepare, primary.slots[preprepare.seq].batch_digest


def test_a_bundle_leaves_ahead_of_the_disk_unless_it_carries_an_own_message_the_same_input_persists(kit) -> None:
    primary = kit.replica(0)
    preprepare, digest = proposed(kit, primary)
    primary.step(kit.prepare(1, 1, digest))
    ready = primary.step(kit.prepare(2, 1, digest))  # Prepared: its own COMMIT is persisted by this input.
    [own_commit] = [item for item in ready.persist if isinstance(item, Commit)]
    assert {to for to, message in ready.forwards if isinstance(message, Bundle)} == {1, 2, 3}
    assert not [message for _, message in ready.to_replicas if isinstance(message, Bundle)]

    primary._out = ReadyBuilder()  # An input whose own persist holds the COMMIT the bundle carries.
    primary._out.persist.append(own_commit)
    commits = (own_commit, kit.commit(1, 1, digest), kit.commit(2, 1, digest))
    primary._forward_to_others(Bundle((), commits, 0))
    held_back = primary._out.build()
    primary._out = None
    assert held_back.forwards == () and {to for to, _ in held_back.to_replicas} == {1, 2, 3}


def test_the_primary_forwards_each_quorum_once_as_one_bundle_to_every_backup(kit) -> None:
    primary = kit.replica(0)
    preprepare, digest = proposed(kit, primary)
    assert sent(primary.step(kit.prepare(1, 1, digest)), Bundle) == []  # Two of a quorum of three.
    ready = primary.step(kit.prepare(2, 1, digest))
    bundles = sent(ready, Bundle)
    assert [to for to, _ in bundles] == [1, 2, 3] and len({bundle for _, bundle in bundles}) == 1
    bundle = bundles[0][1]
    assert [part.replica_id for part in bundle.prepares] == [0, 1, 2] and bundle.commits == ()
    assert sent(ready, Commit) == [] and any(isinstance(item, Commit) for item in ready.persist)
    assert sent(primary.step(kit.prepare(3, 1, digest)), Bundle) == []  # A late PREPARE is not forwarded.
    assert sent(primary.step(kit.commit(1, 1, digest)), Bundle) == []
    ready = primary.step(kit.commit(2, 1, digest))
    (_, bundle), *_ = sent(ready, Bundle)
    assert bundle.prepares == () and [part.replica_id for part in bundle.commits] == [0, 1, 2]
    assert len(ready.finalized) == 1


def test_a_backup_prepares_from_a_bundle_commits_to_the_primary_and_executes_on_the_next(kit, batch_digest) -> None:
    backup = kit.replica(1)
    preprepare = kit.preprepare(1, (kit.entry(kit.request()),))
    digest = batch_digest(preprepare)
    own_prepare = backup.step(preprepare).messages_to_replicas[0][1]
    ready = backup.step(Bundle((kit.prepare(0, 1, digest), own_prepare, kit.prepare(2, 1, digest)), (), 0))
    assert ready.rejected == () and sent(ready, Commit) == [(0, kit.commit(1, 1, digest))]
    assert backup.slots[1].prepared and not backup.slots[1].committed
    commits = tuple(kit.commit(replica_id, 1, digest) for replica_id in (0, 1, 2))
    ready = backup.step(Bundle((), commits, 0))
    assert ready.rejected == () and len(ready.finalized) == 1 and backup.last_executed == 1


def test_a_forged_part_is_rejected_and_blamed_on_the_forwarder_and_the_slot_does_not_prepare(kit,
                                                                                              batch_digest) -> None:
    backup = kit.replica(1)
    preprepare = kit.preprepare(1, (kit.entry(kit.request()),))
    digest = batch_digest(preprepare)
    backup.step(preprepare)
    forged = dataclasses.replace(kit.prepare(2, 1, digest), signature=bytes(64))
    ready = backup.step(Bundle((kit.prepare(0, 1, digest), forged), (), 0))
    assert [(r.sender, r.reason) for r in ready.rejected] == [("replica 2 (forwarded by replica 0)", "bad-signature")]
    assert not backup.slots[1].prepared and sent(ready, Commit) == []
    assert backup.slots[1].prepares.keys() == {0, 1}


def test_commits_for_another_digest_in_a_bundle_never_commit_the_slot(kit, batch_digest) -> None:
    backup = kit.replica(1)
    preprepare = kit.preprepare(1, (kit.entry(kit.request()),))
    backup.step(preprepare)
    other = bytes(32)
    ready = backup.step(Bundle((), tuple(kit.commit(replica_id, 1, other) for replica_id in (0, 2, 3)), 0))
    assert ready.rejected == () and ready.finalized == () and not backup.slots[1].committed


def test_a_bundle_with_more_parts_than_replicas_is_rejected_whole_and_changes_nothing(kit, batch_digest) -> None:
    backup = kit.replica(1)
    preprepare = kit.preprepare(1, (kit.entry(kit.request()),))
    digest = batch_digest(preprepare)
    backup.step(preprepare)
    parts = tuple(kit.prepare(replica_id % kit.n, 1, digest) for replica_id in range(kit.n + 1))
    ready = backup.step(Bundle(parts, (), 0))
    assert [r.reason for r in ready.rejected] == ["bad-bundle"] and ready.messages_to_replicas == ()
    assert backup.slots[1].prepares.keys() == {1}


def test_a_bundle_has_one_canonical_encoding(kit, batch_digest) -> None:
    digest = batch_digest(kit.preprepare(1, (kit.entry(kit.request()),)))
    bundle = Bundle((kit.prepare(0, 1, digest),), (kit.commit(2, 1, digest),), 0)
    assert decode(encode(bundle)) == bundle and encode(decode(encode(bundle))) == encode(bundle)


def forging_cluster(seed: int) -> tuple[SimCluster, SimMonitor]:
    """Replica 0, the first primary, sends replica 3 another batch and a forged quorum for it."""
    cluster = SimCluster(4, seed=seed, client_ids=CLIENTS, interceptors={0: forging_collector([3], 4)})
    return cluster, SimMonitor(cluster, {1, 2, 3})


def run_a_few_requests(cluster: SimCluster) -> None:
    for number in range(4):
        cluster.submit(CLIENTS[number % 2], {"tool": "ls", "n": number}, Risk.LOW)
    cluster.run_until(cluster.all_done, 20_000)


@pytest.mark.parametrize("seed", range(3))
def test_a_primary_forging_bundles_never_breaks_agreement(seed: int) -> None:
    cluster, monitor = forging_cluster(seed)
    run_a_few_requests(cluster)
    monitor.assert_ok("a forging collector")
    assert cluster.replicas[3].rejected_counts["bad-signature"] > 0, "the forgeries reached the target"


def test_backups_that_trust_their_forwarder_let_a_forging_primary_break_agreement() -> None:
    with MUTANTS["bundle-trusts-forwarder"].activate():
        cluster, monitor = forging_cluster(0)
        run_a_few_requests(cluster)
        violations = monitor.check()
    assert violations, "the planted mutant must be caught by the invariant checker"
