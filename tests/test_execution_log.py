"""Proves the verdict log is a correct hash chain, executes each request exactly once, and yields equal state digests for equal histories."""

from __future__ import annotations

import dataclasses

import pytest

from bft.core import GENESIS_HASH, Batch, BatchEntry, Decision, Limits, LogEntry, Risk, decide
from bft.core._execution import ExecutionState


def signer_as(replica_id: int):
    return lambda reply: dataclasses.replace(reply, replica_id=replica_id)


def fresh_state(kit, client_window: int = 64) -> ExecutionState:
    return ExecutionState(kit.config.rules, client_window)


def batch_of(kit, *requests, timestamp_ms: int = 1_000_000, deny: tuple[int, ...] = ()) -> tuple[Batch, tuple]:
    entries = tuple(BatchEntry(request, kit.votes(request, deny=deny)) for request in requests)
    return Batch(timestamp_ms, entries), tuple(kit.digest(request) for request in requests)


def run(kit, state: ExecutionState, batches, replica_id: int = 0) -> list[LogEntry]:
    entries = []
    for batch, digests in batches:
        results = state.execute(state.last_executed_seq + 1, batch, digests, signer_as(replica_id))
        entries.extend(entry for entry, _ in results)
    return entries


def assert_chain(entries: list[LogEntry]) -> None:
    previous = GENESIS_HASH
    for position, entry in enumerate(entries, start=1):
        assert entry.position == position
        assert entry.previous_hash == previous
        assert entry.entry_hash == entry.computed_hash()
        previous = entry.entry_hash


def test_the_hash_chain_links_and_every_hash_recomputes(kit) -> None:
    state = fresh_state(kit)
    requests = [kit.request("alice", number) for number in range(1, 7)]
    entries = run(kit, state, [batch_of(kit, *requests[:2]), batch_of(kit, requests[2]),
                               batch_of(kit, *requests[3:])])
    assert len(entries) == 6
    assert_chain(entries)
    assert state.head_hash == entries[-1].entry_hash and state.log_length == 6
    assert [entry.seq for entry in entries] == [1, 1, 2, 3, 3, 3]
    assert len({entry.entry_hash for entry in entries}) == 6


@pytest.mark.parametrize("field, value", [
    ("position", 99), ("seq", 99), ("client_id", "mallory"), ("request_number", 42), ("request_digest", bytes(32)),
    ("risk", Risk.CRITICAL), ("decision", Decision.DENY), ("reason", "edited"), ("timestamp_ms", 1),
    ("deadline_ms", 1), ("votes_digest", bytes(32)), ("previous_hash", b"\x01" * 32),
])
def test_editing_any_field_breaks_the_hash(kit, field: str, value) -> None:
    entry = run(kit, fresh_state(kit), [batch_of(kit, kit.request())])[0]
    assert getattr(entry, field) != value
    assert dataclasses.replace(entry, **{field: value}).computed_hash() != entry.entry_hash


def test_log_entries_record_the_rule_s_verdict(kit) -> None:
    allowed, denied, late = kit.request("alice", 1), kit.request("alice", 2), kit.request("alice", 3, deadline_ms=5)
    entries = run(kit, fresh_state(kit), [batch_of(kit, allowed), batch_of(kit, denied, deny=(0,)), batch_of(kit, late)])
    assert [entry.decision for entry in entries] == [Decision.ALLOW, Decision.DENY, Decision.DENY]
    assert entries[2].reason.startswith("expired")
    for entry, request, deny in zip(entries, (allowed, denied, late), ((), (0,), ())):
        expected = decide(kit.config.rules[request.risk], kit.votes(request, deny=deny), entry.timestamp_ms,
                          request.deadline_ms)
        assert (entry.decision, entry.reason) == expected


def test_a_request_ordered_in_two_batches_executes_once(kit) -> None:
    state = fresh_state(kit)
    request = kit.request("alice", 1)
    first = run(kit, state, [batch_of(kit, request)])
    digest_after_first = state.state_digest()
    second = state.execute(2, *batch_of(kit, request), signer_as(0))
    assert len(first) == 1 and second == []
    assert state.log_length == 1 and state.last_executed_seq == 2
    assert state.state_digest() != digest_after_first  # The seq advanced, nothing else did.
    # Twice inside one batch counts once as well.
    other = kit.request("bob", 1)
    results = state.execute(3, Batch(1_000_000, (BatchEntry(other, kit.votes(other)),) * 2),
                            (kit.digest(other),) * 2, signer_as(0))
    assert len(results) == 1


def test_a_second_request_with_a_reused_number_does_not_execute(kit) -> None:
    state = fresh_state(kit)
    run(kit, state, [batch_of(kit, kit.request("alice", 1, action={"op": "read"}))])
    rival = kit.request("alice", 1, action={"op": "delete everything"})
    assert state.execute(2, *batch_of(kit, rival), signer_as(0)) == []
    assert state.cached_reply("alice", 1).request_digest != kit.digest(rival)


def test_the_cached_reply_is_returned_for_a_retry(kit, make_net) -> None:
    net = make_net(kit)
    request = kit.request("alice", 1)
    net.submit(request)
    net.deliver_all()
    first_replies = {replica_id: reply for replica_id, reply in net.replies}
    assert set(first_replies) == set(range(kit.n))
    net.replies.clear()
    for replica in net.replicas:
        ready = replica.submit(request)
        assert ready.to_clients == ((request.client_id, first_replies[replica.replica_id]),)
        assert ready.persist == () and ready.evaluate == () and ready.finalized == () and ready.rejected == ()


def test_client_window_eviction_marks_numbers_stale(kit) -> None:
    state = fresh_state(kit, client_window=2)
    requests = [kit.request("alice", number) for number in (1, 2, 3)]
    run(kit, state, [batch_of(kit, request) for request in requests])
    assert state.cached_reply("alice", 1) is None and state.is_stale("alice", 1)
    assert state.cached_reply("alice", 3) is not None and not state.is_stale("alice", 3)
    assert not state.is_stale("alice", 4) and not state.is_stale("bob", 1)
    # A stale number ordered again must not execute a second time.
    assert state.execute(4, *batch_of(kit, requests[0]), signer_as(0)) == []
    assert len(state.clients["alice"].replies) == 2


def test_a_replica_refuses_stale_request_numbers(make_kit, make_net) -> None:
    kit = make_kit(4, limits=Limits(client_window=2))
    net = make_net(kit)
    for number in (1, 2, 3):
        net.submit(kit.request("alice", number))
        net.deliver_all()
    before = len(net.rejections())
    net.submit(kit.request("alice", 1))
    rejections = net.rejections()[before:]
    assert [rejection.reason for rejection in rejections] == ["stale-request"] * kit.n


def test_state_digest_is_equal_across_replicas_with_equal_histories(kit) -> None:
    batches = [batch_of(kit, kit.request("alice", 1), kit.request("bob", 1)), batch_of(kit, kit.request("alice", 2))]
    states = [fresh_state(kit) for _ in range(kit.n)]
    chains = [run(kit, state, batches, replica_id) for replica_id, state in enumerate(states)]
    assert len({state.state_digest() for state in states}) == 1
    assert all(chain == chains[0] for chain in chains)  # Log entries do not depend on who executed them.
    # A different history (the same requests in another order) gives a different digest.
    reordered = fresh_state(kit)
    run(kit, reordered, list(reversed(batches)))
    assert reordered.state_digest() != states[0].state_digest()


def test_state_digest_agrees_across_a_real_cluster(kit, make_net) -> None:
    net = make_net(kit)
    for number in range(1, 5):
        net.submit(kit.request("alice", number))
        net.submit(kit.request("bob", number))
    net.deliver_all()
    digests = {replica.execution.state_digest() for replica in net.replicas}
    heads = {replica.execution.head_hash for replica in net.replicas}
    assert len(digests) == 1 and len(heads) == 1
    finalized = [[entry for _, ready in net.readies if _ == replica_id for entry in ready.finalized]
                 for replica_id in range(kit.n)]
    assert all(log == finalized[0] for log in finalized) and len(finalized[0]) == 8
    assert_chain(finalized[0])
    # Finalized entries are always among what must be persisted first.
    for _, ready in net.readies:
        assert all(entry in ready.persist for entry in ready.finalized)


def test_execute_refuses_out_of_order_sequence_numbers(kit) -> None:
    state = fresh_state(kit)
    with pytest.raises(AssertionError):
        state.execute(2, *batch_of(kit, kit.request()), signer_as(0))
