"""Proves the replica's normal case step by step: proposing, the three phases, every documented rejection (with no state change), idempotence, replay, checkpoints and persist-before-send."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.core import (BatchEntry, Checkpoint, Commit, Decision, Limits, LocalProtocolError,
                      PrePrepare, Prepare, Ready, Request, Risk, Vote)
from bft.policy import PolicyDecision, evaluate_fail_safe

START_MS = 1_000_000
ALLOW, DENY = Decision.ALLOW, Decision.DENY


def sent(ready: Ready, message_type: type) -> list:
    return [message for _, message in ready.messages_to_replicas if isinstance(message, message_type)]


def only_rejection(ready: Ready) -> str:
    """The single rejection reason of a Ready that must have no other effect."""
    assert len(ready.rejected) == 1, ready
    assert dataclasses.replace(ready, rejected=()) == Ready(), ready
    return ready.rejected[0].reason


def changed_fields(before: dict, after: dict) -> set[str]:
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


# ---------------------------------------------------------------- the primary

def test_the_primary_proposes_once_it_holds_a_quorum_of_votes(kit) -> None:
    primary = kit.replica(0)
    request = kit.request(risk=Risk.LOW)
    ready = primary.submit(request)
    assert ready.evaluate == (request,) and ready.messages_to_replicas == ()
    ready = primary.record_decision(kit.digest(request), ALLOW, "fine")
    # The primary keeps its own vote (votes go to the primary alone) and persists it.
    assert sent(ready, Vote) == [] and [type(item) for item in ready.persist] == [Vote]
    assert sent(ready, PrePrepare) == []
    for voter in range(1, kit.config.quorum - 1):
        assert sent(primary.step(kit.vote(voter, request)), PrePrepare) == []
    ready = primary.step(kit.vote(kit.config.quorum - 1, request))
    proposals = sent(ready, PrePrepare)
    assert len(proposals) == kit.n - 1 and len(set(proposals)) == 1
    proposal = proposals[0]
    assert (proposal.view, proposal.seq, proposal.replica_id) == (0, 1, 0)
    assert [entry.request for entry in proposal.batch.entries] == [request]
    assert [vote.replica_id for vote in proposal.batch.entries[0].votes] == list(range(kit.config.quorum))
    assert proposal.batch.timestamp_ms == primary.now_ms
    # It prepares its own proposal, durably, and keeps that PREPARE: PREPAREs come to the primary.
    own_prepares = [item for item in ready.persist if isinstance(item, Prepare)]
    assert proposal in ready.persist and len(own_prepares) == 1 and sent(ready, Prepare) == []
    assert primary.next_seq == 2


def test_the_primary_waits_for_stragglers_when_one_more_vote_could_flip_the_verdict(kit) -> None:
    primary = kit.replica(0)
    request = kit.request(risk=Risk.HIGH)  # HIGH tolerates no DENY: three ALLOWs are not settled with four replicas.
    primary.submit(request)
    primary.record_decision(kit.digest(request), ALLOW, "fine")
    assert sent(primary.step(kit.vote(1, request)), PrePrepare) == []
    assert sent(primary.step(kit.vote(2, request)), PrePrepare) == []
    now = START_MS
    for _ in range(kit.config.limits.vote_wait_ticks - 1):
        now += 10
        assert sent(primary.tick(now), PrePrepare) == []
    proposals = sent(primary.tick(now + 10), PrePrepare)
    assert len(proposals) == kit.n - 1
    assert len(proposals[0].batch.entries[0].votes) == 3


def test_the_straggler_vote_settles_the_verdict_at_once(kit) -> None:
    primary = kit.replica(0)
    request = kit.request(risk=Risk.HIGH)
    primary.submit(request)
    primary.record_decision(kit.digest(request), ALLOW, "fine")
    for voter in (1, 2):
        primary.step(kit.vote(voter, request))
    proposals = sent(primary.step(kit.vote(3, request, DENY, "no")), PrePrepare)
    assert len(proposals) == kit.n - 1 and len(proposals[0].batch.entries[0].votes) == 4


def test_a_backup_never_proposes(kit) -> None:
    backup = kit.replica(1)
    request = kit.request()
    backup.submit(request)
    backup.record_decision(kit.digest(request), ALLOW, "fine")
    ready = backup.step(kit.vote(0, request))
    ready2 = backup.step(kit.vote(2, request))
    assert sent(ready, PrePrepare) == sent(ready2, PrePrepare) == [] and backup.next_seq == 1


# ---------------------------------------------------------------- a backup through the three phases

def test_a_backup_prepares_commits_and_executes_in_order(kit, batch_digest) -> None:
    backup = kit.replica(1)
    request = kit.request()
    preprepare = kit.preprepare(1, (kit.entry(request),))
    digest = batch_digest(preprepare)
    ready = backup.step(preprepare)
    # PREPAREs and COMMITs go to the primary alone (replica 0 in view 0), durable first.
    assert ready.messages_to_replicas == ((0, kit.prepare(1, 1, digest)),)
    assert ready.persist == (kit.prepare(1, 1, digest),)
    # The primary's own prepare plus ours is two; the quorum of three needs one more.
    assert sent(backup.step(kit.prepare(0, 1, digest)), Commit) == []
    ready = backup.step(kit.prepare(2, 1, digest))
    assert [(to, message) for to, message in ready.messages_to_replicas if isinstance(message, Commit)] == [
        (0, kit.commit(1, 1, digest))]
    assert backup.slots[1].prepared and not backup.slots[1].committed
    assert backup.step(kit.commit(0, 1, digest)).finalized == ()
    ready = backup.step(kit.commit(3, 1, digest))
    assert len(ready.finalized) == 1 and ready.finalized[0].decision is ALLOW
    (client_id, reply), = ready.to_clients
    assert client_id == "alice" and reply.replica_id == 1 and reply.seq == 1
    assert ready.persist == ready.finalized
    assert backup.last_executed == 1


def test_prepares_and_commits_may_arrive_before_the_preprepare(kit, batch_digest) -> None:
    backup = kit.replica(2)
    preprepare = kit.preprepare(1, (kit.entry(kit.request()),))
    digest = batch_digest(preprepare)
    for message in (kit.prepare(0, 1, digest), kit.prepare(1, 1, digest), kit.commit(0, 1, digest),
                    kit.commit(1, 1, digest)):
        assert backup.step(message).rejected == ()
    ready = backup.step(preprepare)
    assert len(ready.finalized) == 1 and backup.last_executed == 1


def test_prepares_for_a_different_digest_do_not_count(kit, batch_digest) -> None:
    backup = kit.replica(1)
    preprepare = kit.preprepare(1, (kit.entry(kit.request()),))
    backup.step(preprepare)
    for sender in (0, 2, 3):
        assert sent(backup.step(kit.prepare(sender, 1, bytes(32))), Commit) == []
    assert not backup.slots[1].prepared


def test_execution_waits_for_the_previous_sequence_number(kit, batch_digest) -> None:
    backup = kit.replica(1)
    first = kit.preprepare(1, (kit.entry(kit.request("alice", 1)),))
    second = kit.preprepare(2, (kit.entry(kit.request("alice", 2)),))
    for preprepare in (second, first):
        backup.step(preprepare)
    digests = {1: batch_digest(first), 2: batch_digest(second)}
    for sender in (0, 2):
        backup.step(kit.prepare(sender, 2, digests[2]))
        backup.step(kit.commit(sender, 2, digests[2]))
    assert backup.slots[2].committed and backup.last_executed == 0
    for sender in (0, 2):
        backup.step(kit.prepare(sender, 1, digests[1]))
    finalized = []
    for sender in (0, 2):
        finalized.extend(backup.step(kit.commit(sender, 1, digests[1])).finalized)
    assert [entry.seq for entry in finalized] == [1, 2] and backup.last_executed == 2


# ---------------------------------------------------------------- rejections leave no trace

def rejected_without_effect(replica, message, snapshot) -> str:
    before = snapshot(replica)
    reason = only_rejection(replica.step(message) if not isinstance(message, Request) else replica.submit(message))
    after = snapshot(replica)
    assert before == after, changed_fields(before, after)
    return reason


def test_a_preprepare_from_a_non_primary_is_rejected(kit, snapshot) -> None:
    backup = kit.replica(1)
    forged = kit.preprepare(1, (kit.entry(kit.request()),), replica_id=2)
    assert rejected_without_effect(backup, forged, snapshot) == "not-primary"


@pytest.mark.parametrize("where", ["zero", "above-high-water"])
def test_a_preprepare_outside_the_window_is_rejected(kit, snapshot, where: str) -> None:
    backup = kit.replica(1)
    seq = 0 if where == "zero" else backup.high_water + 1
    assert rejected_without_effect(backup, kit.preprepare(seq, (kit.entry(kit.request()),)), snapshot) == "outside-window"


@pytest.mark.parametrize("message_kind", ["prepare", "commit"])
def test_phase_votes_outside_the_window_are_rejected(kit, snapshot, message_kind: str) -> None:
    backup = kit.replica(1)
    build = kit.prepare if message_kind == "prepare" else kit.commit
    for seq in (0, backup.high_water + 1):
        assert rejected_without_effect(backup, build(2, seq, bytes(32)), snapshot) == "outside-window"


def test_a_conflicting_preprepare_is_rejected_as_equivocation(kit, snapshot) -> None:
    backup = kit.replica(1)
    backup.step(kit.preprepare(1, (kit.entry(kit.request("alice", 1)),)))
    rival = kit.preprepare(1, (kit.entry(kit.request("alice", 2)),))
    assert rejected_without_effect(backup, rival, snapshot) == "equivocation"


def test_conflicting_phase_votes_and_checkpoints_are_rejected_as_equivocation(kit, snapshot) -> None:
    backup = kit.replica(1)
    backup.step(kit.prepare(2, 1, bytes(32)))
    backup.step(kit.commit(2, 1, bytes(32)))
    backup.step(kit.checkpoint(2, kit.config.limits.checkpoint_interval, bytes(32)))
    request = kit.request()
    backup.step(kit.vote(2, request, ALLOW))
    assert rejected_without_effect(backup, kit.prepare(2, 1, b"\x01" * 32), snapshot) == "equivocation"
    assert rejected_without_effect(backup, kit.commit(2, 1, b"\x01" * 32), snapshot) == "equivocation"
    rival_checkpoint = kit.checkpoint(2, kit.config.limits.checkpoint_interval, b"\x01" * 32)
    assert rejected_without_effect(backup, rival_checkpoint, snapshot) == "equivocation"
    assert rejected_without_effect(backup, kit.vote(2, request, DENY, "changed my mind"), snapshot) == "equivocation"


def bad_batches(kit):
    """(name, entries, timestamp, expected reason) for every batch rule a correct primary obeys, except the
    two that only stop a backup's PREPARE (``unvoted_batches``)."""
    request, other = kit.request("alice", 1), kit.request("bob", 1)
    q = kit.config.quorum
    foreign_vote = kit.vote(1, other)
    mixed_votes = tuple(foreign_vote if vote.replica_id == 1 else vote for vote in kit.votes(request))
    forged_vote = dataclasses.replace(kit.votes(request)[0], signature=bytes(64))
    unsigned_request = dataclasses.replace(request, signature=bytes(64))
    return [
        ("vote-for-another-request", (BatchEntry(request, mixed_votes),), START_MS, "bad-votes"),
        ("duplicate-voters", (BatchEntry(request, kit.votes(request)[:1] * q),), START_MS, "bad-votes"),
        ("descending-voters", (BatchEntry(request, tuple(reversed(kit.votes(request)))),), START_MS, "bad-votes"),
        ("below-quorum", (BatchEntry(request, kit.votes(request, range(q - 1))),), START_MS, "bad-votes"),
        ("no-votes", (BatchEntry(request, ()),), START_MS, "bad-votes"),
        ("forged-vote", (BatchEntry(request, (forged_vote,) + kit.votes(request)[1:]),), START_MS, "bad-signature"),
        ("unknown-voter", (BatchEntry(request, kit.votes(request) + (dataclasses.replace(
            kit.votes(request)[0], replica_id=kit.n),)),), START_MS, "unknown-signer"),
        ("forged-request", (BatchEntry(unsigned_request, kit.votes(unsigned_request)),), START_MS, "bad-signature"),
        ("same-request-twice", (kit.entry(request), kit.entry(request)), START_MS, "bad-batch"),
        ("same-key-twice", (kit.entry(request), kit.entry(kit.request("alice", 1, action={"x": 1}))), START_MS,
         "bad-batch"),
        ("too-many", tuple(kit.entry(kit.request("alice", n)) for n in range(1, kit.config.limits.max_batch_requests + 2)),
         START_MS, "bad-batch"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_every_bad_batch_is_rejected_with_its_reason_and_no_state_change(kit, snapshot, case: int) -> None:
    name, entries, timestamp_ms, expected = bad_batches(kit)[case]
    backup = kit.replica(1)
    backup.submit(kit.request("alice", 1))  # Some pending state that a bad batch must not touch.
    preprepare = kit.preprepare(1, entries, timestamp_ms=timestamp_ms)
    assert rejected_without_effect(backup, preprepare, snapshot) == expected, name
    # The same slot still accepts a good batch afterwards: the rejection left nothing half-done.
    assert backup.step(kit.preprepare(1, (kit.entry(kit.request("alice", 1)),))).rejected == ()


def test_the_bad_batch_table_covers_every_case(kit) -> None:
    assert len(bad_batches(kit)) == 11


def unvoted_batches(kit):
    """(name, entries, timestamp) of batches a backup keeps but does not prepare: a time too far from its clock
    (its own clock may be the wrong one, after a pause) or no entries (only a NEW-VIEW re-proposes those)."""
    request = kit.request("alice", 1)
    skew = kit.config.limits.max_clock_skew_ms
    return [("timestamp-too-late", (kit.entry(request),), START_MS + skew + 1),
            ("timestamp-too-early", (kit.entry(request),), START_MS - skew - 1),
            ("empty", (), START_MS)]


@pytest.mark.parametrize("case", range(3))
def test_a_stale_or_empty_batch_is_kept_to_learn_its_outcome_but_never_prepared(kit, case: int) -> None:
    name, entries, timestamp_ms = unvoted_batches(kit)[case]
    backup = kit.replica(1)
    backup.submit(kit.request("alice", 1))
    preprepare = kit.preprepare(1, entries, timestamp_ms=timestamp_ms)
    ready = backup.step(preprepare)
    assert ready.rejected == () and sent(ready, Prepare) == [], name
    assert backup.slots[1].preprepare == preprepare, "kept: a quorum of commits for it makes it execute"
    digest = backup.slots[1].batch_digest
    for sender in (0, 2, 3):
        backup.step(kit.commit(sender, 1, digest))
    assert backup.last_executed == 1, name


def test_signature_and_identity_failures_are_rejected_without_effect(kit, snapshot) -> None:
    backup = kit.replica(1)
    request = kit.request()
    backup.submit(request)
    cases = [
        (dataclasses.replace(kit.prepare(2, 1, bytes(32)), signature=bytes(64)), "bad-signature"),
        (dataclasses.replace(kit.prepare(2, 1, bytes(32)), replica_id=3), "bad-signature"),
        (kit.replica_signers[0].sign(Prepare(0, 1, bytes(32), kit.n, bytes(64))), "unknown-signer"),
        (dataclasses.replace(kit.vote(2, request), decision=DENY), "bad-signature"),
        (dataclasses.replace(kit.request("bob"), signature=bytes(64)), "bad-signature"),
        (kit.client_signers["alice"].sign(dataclasses.replace(kit.request(), client_id="mallory")), "unknown-signer"),
        (kit.request(deadline_ms=START_MS - 1), "expired"),
        (kit.checkpoint(2, kit.config.limits.checkpoint_interval + 1, bytes(32)), "bad-checkpoint"),
    ]
    for message, expected in cases:
        assert rejected_without_effect(backup, message, snapshot) == expected, message


def test_checkpoints_above_the_window_are_lag_evidence_only_once_f_plus_1_replicas_send_them(kit) -> None:
    backup = kit.replica(1)
    far = backup.high_water + kit.config.limits.checkpoint_interval
    assert not backup.step(kit.checkpoint(2, far, bytes(32))).rejected
    assert backup.lag_target_seq == 0, "one replica (maybe a liar) claiming to be ahead proves nothing"
    backup.step(kit.checkpoint(3, far + kit.config.limits.checkpoint_interval, bytes(32)))
    assert backup.lag_target_seq == far, "f+1 claims: at least one correct replica is past the lower one"
    assert backup.low_water == 0 and backup.last_executed == 0, "a claim moves nothing until a certified state arrives"


def test_a_reply_is_not_a_replica_message(kit, snapshot) -> None:
    backup = kit.replica(1)
    reply = kit.reply(2, kit.request(), 1, START_MS, ALLOW, "ok", kit.votes(kit.request()))
    assert rejected_without_effect(backup, reply, snapshot) == "unexpected-type"


# ---------------------------------------------------------------- idempotence and replay

def test_duplicate_messages_are_idempotent(kit, snapshot, batch_digest) -> None:
    backup = kit.replica(1)
    request = kit.request()
    preprepare = kit.preprepare(1, (kit.entry(request),))
    digest = batch_digest(preprepare)
    messages = [request, kit.vote(2, request), preprepare, kit.prepare(2, 1, digest), kit.commit(2, 1, digest),
                kit.checkpoint(2, kit.config.limits.checkpoint_interval, bytes(32))]
    for message in messages:
        deliver = backup.submit if isinstance(message, Request) else backup.step
        deliver(message)
        before = snapshot(backup)
        again = deliver(message)
        assert again == Ready(), (type(message).__name__, again)
        assert snapshot(backup) == before


def test_a_cluster_with_every_message_delivered_twice_agrees(kit, make_net) -> None:
    net = make_net(kit)
    original_handle = net.handle

    def handle_twice(replica_id, ready):
        result = original_handle(replica_id, ready)
        for destination, message in ready.messages_to_replicas:
            net.queue.append((destination, message))
        return result

    net.handle = handle_twice
    for number in (1, 2, 3):
        net.submit(kit.request("alice", number))
    net.deliver_all()
    assert net.rejections() == []
    # Every replica executed the same seqs (requests ready while a batch is in flight share the next one).
    assert len({replica.last_executed for replica in net.replicas}) == 1
    assert all(replica.execution.log_length == 3 for replica in net.replicas)
    assert len({replica.execution.state_digest() for replica in net.replicas}) == 1
    per_replica = {}
    for replica_id, _, in net.replies:
        per_replica[replica_id] = per_replica.get(replica_id, 0) + 1
    assert per_replica == {replica_id: 3 for replica_id in range(kit.n)}  # One reply per request: no double execution.


def test_replay_of_an_executed_request_returns_the_cached_reply(kit, make_net) -> None:
    net = make_net(kit)
    request = kit.request()
    net.submit(request)
    net.deliver_all()
    replies = dict(net.replies)
    for replica in net.replicas:
        before_digest = replica.execution.state_digest()
        ready = replica.submit(request)
        assert ready.to_clients == (("alice", replies[replica.replica_id]),)
        assert ready.evaluate == () and ready.persist == () and ready.messages_to_replicas == ()
        assert replica.execution.state_digest() == before_digest
        rival = kit.request(action={"op": "something else"})
        assert rival.key == request.key
        assert only_rejection(replica.submit(rival)) == "conflicting-request"


def test_an_executed_request_in_a_later_batch_does_not_execute_again(kit, make_net, batch_digest) -> None:
    net = make_net(kit)
    request = kit.request()
    net.submit(request)
    net.deliver_all()
    backup = net.replicas[1]
    again = kit.preprepare(2, (kit.entry(request),))
    digest = batch_digest(again)
    finalized = []
    for message in [again] + [kit.prepare(i, 2, digest) for i in (0, 2)] + [kit.commit(i, 2, digest) for i in (0, 2)]:
        ready = backup.step(message)
        assert ready.rejected == ()
        finalized.extend(ready.finalized)
    assert backup.last_executed == 2 and finalized == [] and backup.execution.log_length == 1


# ---------------------------------------------------------------- checkpoints and the window

def test_checkpoints_become_stable_and_the_window_advances(make_kit, make_net) -> None:
    limits = Limits(log_window=4, checkpoint_interval=2, max_in_flight_batches=2, max_batch_requests=1)
    kit = make_kit(4, limits=limits)
    net = make_net(kit)
    total = 2 * limits.log_window + 5
    for number in range(1, total + 1):
        net.submit(kit.request("alice" if number % 2 else "bob", number))
    net.deliver_all()
    assert net.rejections() == []
    for replica in net.replicas:
        assert replica.last_executed == total
        assert replica.low_water == total - total % limits.checkpoint_interval
        assert len(replica.slots) <= limits.log_window
        assert all(seq > replica.low_water for seq in replica.slots)
        assert all(seq > replica.low_water for seq in replica.checkpoints)
        proof = replica.stable_proof
        assert len(proof) == kit.config.quorum and len({c.replica_id for c in proof}) == len(proof)
        assert {c.seq for c in proof} == {replica.low_water} and len({c.state_digest for c in proof}) == 1
    assert len({replica.execution.state_digest() for replica in net.replicas}) == 1
    entries = [e for replica_id, ready in net.readies if replica_id == 0 for e in ready.finalized]
    assert [entry.seq for entry in entries] == list(range(1, total + 1))


def test_the_primary_stops_at_the_high_water_mark_without_stable_checkpoints(make_kit, make_net) -> None:
    limits = Limits(log_window=4, checkpoint_interval=2, max_in_flight_batches=4, max_batch_requests=1)
    kit = make_kit(4, limits=limits)
    # Checkpoint messages are held back, so no checkpoint becomes stable and the window cannot move.
    net = make_net(kit, hold=lambda source, destination, message: isinstance(message, Checkpoint))
    for number in range(1, 8):
        net.submit(kit.request("alice", number))
    net.deliver_all()
    primary = net.replicas[0]
    assert primary.low_water == 0 and primary.next_seq == limits.log_window + 1
    assert all(replica.last_executed == limits.log_window for replica in net.replicas)
    assert len(primary.pending) == 3  # The rest wait, bounded, for the window to move.


def test_late_checkpoints_below_the_low_water_mark_are_ignored(make_kit, make_net, snapshot) -> None:
    limits = Limits(log_window=4, checkpoint_interval=2, max_in_flight_batches=2, max_batch_requests=1)
    kit = make_kit(4, limits=limits)
    net = make_net(kit)
    for number in range(1, 5):
        net.submit(kit.request("alice", number))
    net.deliver_all()
    backup = net.replicas[1]
    assert backup.low_water == 4
    before = snapshot(backup)
    assert backup.step(kit.checkpoint(2, 2, bytes(32))) == Ready()
    assert snapshot(backup) == before


# ---------------------------------------------------------------- Ready ordering

def test_a_backup_persists_its_vote_and_sends_it_to_the_primary_alone(kit) -> None:
    backup = kit.replica(2)
    request = kit.request()
    backup.submit(request)
    ready = backup.record_decision(kit.digest(request), ALLOW, "ok")
    [vote] = [item for item in ready.persist if isinstance(item, Vote)]
    assert ready.messages_to_replicas == ((backup.primary_id, vote),)


# ---------------------------------------------------------------- API misuse is local and loud

def test_the_clock_cannot_go_backwards(kit) -> None:
    replica = kit.replica(0)
    with pytest.raises(LocalProtocolError):
        replica.tick(START_MS - 1)


def test_a_replica_needs_its_own_key(kit) -> None:
    from bft.core import Replica
    with pytest.raises(LocalProtocolError):
        Replica(kit.config, 1, kit.replica_pairs[2].seed)
    with pytest.raises(LocalProtocolError):
        Replica(kit.config, kit.n, kit.replica_pairs[0].seed)


def test_a_policy_reason_is_truncated_to_fit_the_wire(kit) -> None:
    replica = kit.replica(1)
    request = kit.request()
    replica.submit(request)
    ready = replica.record_decision(kit.digest(request), DENY, "é" * 300)
    vote = sent(ready, Vote)[0]
    assert len(vote.reason.encode()) <= 200 and vote.reason == "é" * 100


# ---------------------------------------------------------------- fuzz: validly signed nonsense

@pytest.fixture(scope="module")
def busy(kit, make_net):
    """A cluster that ordered three requests and holds one pending, replayable into fresh replicas."""
    net = make_net(kit)
    for number in (1, 2, 3):
        net.submit(kit.request("alice", number))
        net.deliver_all()
    net.submit(kit.request("bob", 1), to=(1, 2))
    net.deliver_all()
    return net


def signed_nonsense(kit):
    """Messages that pass signature checks (signed by the replica or client they name) with arbitrary content."""
    seqs = st.integers(min_value=0, max_value=12)
    digests = st.sampled_from([bytes(32), b"\x01" * 32])
    senders = st.integers(min_value=0, max_value=kit.n - 1)
    requests = st.builds(lambda client, number, deadline: kit.request(client, number, deadline_ms=deadline),
                         st.sampled_from(["alice", "bob"]), st.integers(1, 5),
                         st.sampled_from([START_MS - 1, START_MS + 60_000]))

    @st.composite
    def entries(draw):
        request = draw(requests)
        voters = draw(st.sets(senders, max_size=kit.n))
        deny = tuple(draw(st.sets(senders, max_size=kit.n)))
        return BatchEntry(request, kit.votes(request, voters, deny))

    @st.composite
    def preprepares(draw):
        batch_entries = tuple(draw(st.lists(entries(), max_size=3)))
        timestamp = draw(st.sampled_from([START_MS, START_MS + 5_000, START_MS - 2_000]))
        return kit.preprepare(draw(seqs), batch_entries, timestamp_ms=timestamp,
                              replica_id=draw(st.one_of(st.just(0), senders)))  # Mostly the real primary.

    return st.one_of(
        requests,
        st.builds(lambda sender, request, decision: kit.vote(sender, request, decision), senders, requests,
                  st.sampled_from(Decision)),
        preprepares(),
        st.builds(kit.prepare, senders, seqs, digests),
        st.builds(kit.commit, senders, seqs, digests),
        st.builds(kit.checkpoint, senders, seqs, digests),
    )


class Target:
    def __init__(self, net, replica_id: int) -> None:
        self.net, self.replica_id = net, replica_id
        self.replica = net.replay(replica_id)


@pytest.fixture(scope="module")
def target(busy) -> Target:
    return Target(busy, 1)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validly_signed_nonsense_is_rejected_without_effect_or_accepted(kit, target, snapshot, data) -> None:
    message = data.draw(signed_nonsense(kit))
    replica = target.replica
    before = snapshot(replica)
    ready = replica.submit(message) if isinstance(message, Request) else replica.step(message)
    if ready.rejected:
        assert only_rejection(ready)
        after = snapshot(replica)
        assert before == after, changed_fields(before, after)
    else:
        target.replica = target.net.replay(target.replica_id)  # Accepted input may change state; start clean.


def test_rejected_higher_view_messages_outside_the_window_change_nothing(kit, snapshot) -> None:
    backup = kit.replica(1)
    for sender in (2, 3):
        assert rejected_without_effect(backup, kit.prepare(sender, 10_000, bytes(32), view=1), snapshot) \
            == "outside-window"


def test_a_rejected_higher_view_prepare_inside_the_window_changes_nothing(kit, snapshot) -> None:
    backup = kit.replica(1)
    before = snapshot(backup)
    ready = backup.step(kit.prepare(2, 1, bytes(32), view=1))
    if ready.rejected:
        assert snapshot(backup) == before, changed_fields(before, snapshot(backup))


# ---------------------------------------------------------------- known gaps (strict xfail: they flip when fixed)

def test_one_byzantine_replica_cannot_fill_the_pending_pool(make_kit) -> None:
    kit = make_kit(4, limits=Limits(max_pending_requests=8))
    backup = kit.replica(1)
    for index in range(kit.config.limits.max_pending_requests):
        backup.step(kit.vote(3, bytes([index]) * 32))  # Orphan votes for requests nobody sent.
    assert backup.submit(kit.request()).rejected == ()


class ScriptedPolicy:
    """A broken policy: returns or raises whatever it is given."""

    name = "scripted"

    def __init__(self, outcome) -> None:
        self.outcome = outcome

    def evaluate(self, action, context):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize("outcome", [
    PolicyDecision(Decision.ALLOW, 123),  # Malformed: must fail closed.
    ValueError("lone surrogate \ud800"),
    PolicyDecision.deny("lone surrogate \ud800"),
], ids=["int-reason", "surrogate-exception", "surrogate-reason"])
def test_a_broken_policy_ends_as_a_deny_vote_not_a_crash(kit, outcome) -> None:
    replica = kit.replica(1)
    request = kit.request()
    replica.submit(request)
    decision = evaluate_fail_safe(ScriptedPolicy(outcome), request, 1)
    ready = replica.record_decision(kit.digest(request), decision.decision, decision.reason)
    vote = sent(ready, Vote)[0]
    assert vote.decision is DENY and len(vote.reason.encode()) <= 200
