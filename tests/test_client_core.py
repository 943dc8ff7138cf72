"""Proves the client accepts a verdict only from f+1 matching, validly signed replies for its own request, and refuses after the deadline."""

from __future__ import annotations

import dataclasses

import pytest

from bft.core import (ActionShapeError, ClientCore, ConfigError, Decision, Limits, LocalProtocolError, Reply, Risk,
                      VerdictCertificate, canonical_action)
from conftest import Kit

DEADLINE_MS = 1_060_000


@pytest.fixture
def client(kit) -> ClientCore:
    return ClientCore(kit.config, "alice", kit.client_pairs["alice"].seed)


@pytest.fixture
def answered(kit, make_net, client):
    """A request from ``client`` and the genuine replies of all four replicas, in replica order."""
    request = client.new_request({"op": "read"}, Risk.LOW, DEADLINE_MS)
    net = make_net(kit)
    net.submit(request)
    net.deliver_all()
    replies = sorted((reply for _, reply in net.replies), key=lambda reply: reply.replica_id)
    assert [reply.replica_id for reply in replies] == list(range(kit.n))
    assert all(reply.outcome() == replies[0].outcome() for reply in replies)
    return request, replies


def resign(kit, reply: Reply, **changes) -> Reply:
    """A Byzantine replica's reply: altered, then validly signed with that replica's own key."""
    changed = dataclasses.replace(reply, **changes)
    return kit.replica_signers[changed.replica_id].sign(changed)


def test_new_requests_are_signed_numbered_and_canonical(kit, client) -> None:
    first = client.new_request({"b": 1, "a": [1, 2]}, Risk.HIGH, DEADLINE_MS)
    second = client.new_request('{"z": null}', Risk.LOW, DEADLINE_MS)
    assert (first.request_number, second.request_number) == (1, 2)
    assert first.action == '{"a":[1,2],"b":1}'
    assert client.outstanding == (first, second)
    assert first == kit.client_signers["alice"].sign(first)  # Signed by alice's key, deterministically.


def test_unknown_clients_and_bad_actions_are_local_errors(kit, client) -> None:
    with pytest.raises(LocalProtocolError):
        ClientCore(kit.config, "mallory", bytes(32))
    for action in ("[1, 2]", "3", '"text"'):
        with pytest.raises(LocalProtocolError):
            client.new_request(action, Risk.LOW, DEADLINE_MS)
    with pytest.raises(LocalProtocolError):
        canonical_action({"blob": "x" * 40_000})
    assert client.outstanding == ()


def test_f_plus_one_matching_replies_make_a_verified_certificate(kit, client, answered) -> None:
    request, replies = answered
    assert kit.config.reply_quorum == 2
    assert client.on_reply(replies[0]) is None  # f replies are not enough.
    certificate = client.on_reply(replies[2])
    assert isinstance(certificate, VerdictCertificate)
    assert certificate.request == request and certificate.decision is Decision.ALLOW
    assert [reply.replica_id for reply in certificate.replies] == [0, 2]
    certificate.verify(kit.config)
    assert client.outstanding == ()
    assert client.on_reply(replies[3]) is None  # Late replies after completion are ignored.


def test_the_same_reply_twice_counts_once(client, answered) -> None:
    _, replies = answered
    assert client.on_reply(replies[1]) is None
    assert client.on_reply(replies[1]) is None
    assert client.outstanding != ()


def test_replies_for_another_digest_or_client_or_number_are_ignored(kit, client, answered) -> None:
    _, replies = answered
    other_digest = resign(kit, replies[0], request_digest=bytes(32))
    other_client = resign(kit, replies[1], client_id="bob")
    other_number = resign(kit, replies[2], request_number=7)
    for reply in (other_digest, other_client, other_number):
        assert client.on_reply(reply) is None
    assert client.rejected_replies == 0  # Not addressed to this request: ignored, not counted as attacks.
    assert client.on_reply(replies[3]) is None  # Only one genuine reply so far.
    assert client.on_reply(replies[0]) is not None


def test_forged_signatures_are_counted_and_never_contribute(kit, client, answered) -> None:
    _, replies = answered
    forged = dataclasses.replace(replies[1], signature=bytes(64))
    impostor = kit.replica_signers[3].sign(dataclasses.replace(replies[1], replica_id=2))  # 3 signs as 2.
    assert client.on_reply(forged) is None
    assert client.on_reply(impostor) is None
    assert client.rejected_replies == 2
    assert client.on_reply(replies[0]) is None  # Still a single valid reply.
    certificate = client.on_reply(replies[2])
    assert certificate is not None and {reply.replica_id for reply in certificate.replies} == {0, 2}


def test_a_single_byzantine_reply_cannot_decide(kit, client, answered) -> None:
    _, replies = answered
    lie = resign(kit, replies[3], decision=Decision.DENY, reason="I say no")
    assert client.on_reply(lie) is None
    assert client.on_reply(replies[0]) is None  # One honest reply does not match the lie.
    certificate = client.on_reply(replies[1])
    assert certificate is not None and certificate.decision is Decision.ALLOW
    assert 3 not in {reply.replica_id for reply in certificate.replies}


def test_a_byzantine_reply_cannot_block_the_honest_majority(kit, client, answered) -> None:
    _, replies = answered
    # The liar speaks first and is remembered; the three honest replicas still complete the request.
    assert client.on_reply(resign(kit, replies[0], seq=replies[0].seq + 5)) is None
    assert client.on_reply(replies[1]) is None
    assert client.on_reply(replies[2]) is not None


def test_colluding_replies_whose_votes_do_not_support_them_are_refused(kit, client, answered) -> None:
    # More than f liars is outside the fault model, but the client still re-checks the verdict rule.
    request, replies = answered
    deny_votes = kit.votes(request, replica_ids=range(kit.n), deny=tuple(range(kit.n)))
    lies = [resign(kit, replies[i], votes=deny_votes) for i in (0, 1)]  # Votes say DENY, reply says ALLOW.
    assert client.on_reply(lies[0]) is None
    assert client.on_reply(lies[1]) is None
    assert client.rejected_replies == 2
    assert client.outstanding != ()


def test_expire_refuses_after_the_deadline_only(kit, client, answered) -> None:
    request, replies = answered
    assert client.expire(DEADLINE_MS) == ()  # At the deadline the request is still alive.
    assert client.expire(DEADLINE_MS + 1) == (request,)
    assert client.outstanding == ()
    assert client.expire(DEADLINE_MS + 2) == ()
    assert all(client.on_reply(reply) is None for reply in replies)  # Too late: refused means DENY.


def test_expire_keeps_requests_with_later_deadlines(client) -> None:
    early = client.new_request({"op": 1}, Risk.LOW, 100)
    late = client.new_request({"op": 2}, Risk.LOW, 200)
    assert client.expire(150) == (early,)
    assert client.outstanding == (late,)


def nested_lists(depth: int) -> list:
    """``depth`` lists, each inside the next."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_deeply_nested_or_self_containing_action_is_refused_before_signing(client) -> None:
    self_containing: dict = {"a": []}
    self_containing["a"].append(self_containing)
    text = '{"a":' + "[" * 10_000 + "]" * 10_000 + "}"
    for action in ({"a": nested_lists(10_000)}, self_containing, text):
        with pytest.raises(ActionShapeError, match="^the action nests deeper than 32 levels") as caught:
            client.new_request(action, Risk.LOW, DEADLINE_MS)
        assert isinstance(caught.value, LocalProtocolError) and isinstance(caught.value, ValueError)
    assert client.outstanding == ()
    request = client.new_request({"a": nested_lists(31)}, Risk.LOW, DEADLINE_MS)  # 32 levels with the object.
    assert request.action.count("[") == 31


def test_the_configured_action_limits_are_enforced_before_signing() -> None:
    kit = Kit(limits=Limits(action_depth_max=3, action_bytes_max=64))
    client = ClientCore(kit.config, "alice", kit.client_pairs["alice"].seed)
    with pytest.raises(ActionShapeError, match="nests deeper than 3 levels"):
        client.new_request({"a": [[[1]]]}, Risk.LOW, DEADLINE_MS)
    with pytest.raises(ActionShapeError, match="larger than 64 bytes"):
        client.new_request({"a": "x" * 60}, Risk.LOW, DEADLINE_MS)
    assert client.new_request({"a": [[1]]}, Risk.LOW, DEADLINE_MS).action == '{"a":[[1]]}'
    for limits in (Limits(action_depth_max=0), Limits(action_depth_max=33), Limits(action_bytes_max=40_000)):
        with pytest.raises(ConfigError, match="action_"):
            Kit(limits=limits)
