"""Proves a request a peer forwards is taken up like its client's, but one already finalized is not answered again: a lagging or Byzantine forwarder cannot make replicas re-send verdicts, while the client's own retransmission still gets its cached reply."""

from __future__ import annotations

import pytest

from bft.core import LocalProtocolError


def test_a_forwarded_request_that_already_finalized_is_not_answered_again(kit, make_net) -> None:
    request = kit.request("alice", 1)
    net = make_net(kit)
    net.submit(request)
    net.deliver_all()
    assert len(net.replies) == kit.n

    for replica in net.replicas:
        forwarded = replica.step(request)
        assert forwarded.to_clients == () and forwarded.rejected == () and forwarded.messages_to_replicas == ()
        retransmitted = replica.submit(request)
        assert [reply.replica_id for _, reply in retransmitted.to_clients] == [replica.replica_id]


def test_a_forwarded_request_not_seen_before_is_evaluated_and_ordered(kit, make_net) -> None:
    request = kit.request("alice", 1)
    net = make_net(kit)
    net.submit(request, to=(1,))  # Only replica 1 heard from the client; it forwarded to the others.
    for replica_id in (0, 2, 3):
        ready = net.handle(replica_id, net.replicas[replica_id].step(request))
        assert ready.evaluate == (request,)
    net.deliver_all()

    assert sorted(replica_id for replica_id, _ in net.replies) == list(range(kit.n))


def test_a_forwarded_request_that_conflicts_with_a_finalized_one_is_still_rejected(kit, make_net) -> None:
    net = make_net(kit)
    net.submit(kit.request("alice", 1, action={"op": "read"}))
    net.deliver_all()

    conflicting = kit.request("alice", 1, action={"op": "delete"})
    rejected = net.replicas[0].step(conflicting).rejected
    assert [rejection.reason for rejection in rejected] == ["conflicting-request"]


def test_submit_takes_only_client_requests(kit) -> None:
    with pytest.raises(LocalProtocolError, match="Vote"):
        kit.replica(0).submit(kit.vote(1, kit.request()))
