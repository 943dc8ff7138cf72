"""Proves the primary's batching rule under load (SPEC.md section 5, step 4): a lone request is proposed at once,
each batch in flight raises the number of ready requests a new batch needs, and no request waits longer than
the batches already in flight."""

from __future__ import annotations

from bft.core import Decision, Limits, PrePrepare, Ready

LIMITS = Limits(max_batch_requests=4, max_in_flight_batches=2)  # Each batch in flight asks for 2 more requests.


def proposals(ready: Ready) -> list[PrePrepare]:
    return list({message for _, message in ready.messages_to_replicas if isinstance(message, PrePrepare)})


def numbers(preprepare: PrePrepare) -> list[int]:
    return [entry.request.request_number for entry in preprepare.batch.entries]


def make_ready(kit, primary, number: int) -> list[PrePrepare]:
    """Request ``number`` reaches the primary with a quorum of ALLOW votes; returns what it proposed."""
    request = kit.request("alice", number)
    proposed = proposals(primary.submit(request))
    proposed += proposals(primary.record_decision(kit.digest(request), Decision.ALLOW, "fine"))
    for voter in range(1, kit.config.quorum):
        proposed += proposals(primary.step(kit.vote(voter, request)))
    return proposed


def execute(kit, primary, seq: int) -> list[PrePrepare]:
    """The backups' PREPAREs and COMMITs for ``seq`` reach the primary; returns what it proposed meanwhile."""
    digest = primary.slots[seq].batch_digest
    proposed = []
    for voter in range(1, kit.config.quorum):
        proposed += proposals(primary.step(kit.prepare(voter, seq, digest)))
    for voter in range(1, kit.config.quorum):
        proposed += proposals(primary.step(kit.commit(voter, seq, digest)))
    assert primary.last_executed == seq
    return proposed


def test_a_lone_request_goes_at_once_and_later_ones_gather_while_a_batch_is_in_flight(make_kit) -> None:
    kit = make_kit(4, LIMITS)
    primary = kit.replica(0)
    assert [numbers(p) for p in make_ready(kit, primary, 1)] == [[1]]
    assert make_ready(kit, primary, 2) == []  # One batch in flight: the next needs two ready requests.
    second, = make_ready(kit, primary, 3)
    assert (second.seq, numbers(second)) == (2, [2, 3])
    assert make_ready(kit, primary, 4) == []  # Two batches in flight: the window is full.


def test_a_waiting_request_is_proposed_once_the_batches_ahead_of_it_execute(make_kit) -> None:
    kit = make_kit(4, LIMITS)
    primary = kit.replica(0)
    make_ready(kit, primary, 1)
    make_ready(kit, primary, 2)
    make_ready(kit, primary, 3)
    assert make_ready(kit, primary, 4) == []
    assert execute(kit, primary, 1) == []  # One batch still in flight, one request ready: it still waits.
    third, = execute(kit, primary, 2)
    assert (third.seq, numbers(third)) == (3, [4])


def test_with_one_request_per_batch_every_ready_request_is_proposed_at_once(make_kit) -> None:
    kit = make_kit(4, Limits(max_batch_requests=1, max_in_flight_batches=4))
    primary = kit.replica(0)
    assert [[numbers(p) for p in make_ready(kit, primary, number)] for number in (1, 2, 3)] == [[[1]], [[2]], [[3]]]
