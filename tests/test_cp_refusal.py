"""CP-mode refusal: replicas that cannot reach a quorum refuse new requests with signed Refusals, clients answer REFUSED("no quorum") early only on f+1 valid refusals from distinct replicas (one liar cannot make them give up), and service resumes by itself once the partition heals."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from bft.core import (NO_QUORUM, ClientCore, Limits, Refusal, RemoteProtocolError, Risk, Signer, decode, encode,
                      request_digest)
from bft.policies import ApproveEverything
from bft.runtime import (CONNECTION_ERRORS, FramedConnection, Identity, NodeOptions, TransportLimits, derive_keypair,
                         open_client, open_local_cluster)
from bft.runtime import _handshake
from bft.runtime._quorum_watch import LOST, REFUSING, RESTORED, QuorumWatch
from bft.runtime._connection import KEEPALIVE

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
FAST_OPTIONS = NodeOptions(quorum_loss_grace_ms=200,
                           transport=TransportLimits(reconnect_delay_s_min=0.01, reconnect_delay_s_max=0.2))
LONG_TIMEOUT_MS = 30_000


def refusal_by(kit, replica_id: int, request, *, signer_id: int | None = None, digest: bytes | None = None) -> Refusal:
    """A refusal naming ``replica_id``, signed by ``signer_id`` (default: the same replica)."""
    unsigned = Refusal(request.client_id, request.request_number,
                       digest if digest is not None else kit.digest(request), NO_QUORUM, replica_id, bytes(64))
    return kit.replica_signers[replica_id if signer_id is None else signer_id].sign(unsigned)


def test_only_f_plus_one_distinct_validly_signed_refusals_end_a_request(kit):
    core = ClientCore(kit.config, "alice", kit.client_pairs["alice"].seed)
    request = core.new_request({"tool": "ls"}, Risk.LOW, deadline_ms=10**12)
    assert kit.config.reply_quorum == 2
    assert not core.on_refusal(refusal_by(kit, 0, request))
    assert not core.on_refusal(refusal_by(kit, 0, request)), "a repeat from one replica is still one replica"
    assert not core.on_refusal(refusal_by(kit, 1, request, signer_id=0)), "replica 0 cannot refuse as replica 1"
    assert not core.on_refusal(refusal_by(kit, 2, request, digest=bytes(32))), "a refusal of another request"
    assert core.rejected_replies == 1 and request in core.outstanding
    assert core.on_refusal(refusal_by(kit, 1, request))
    assert request not in core.outstanding
    assert not core.on_refusal(refusal_by(kit, 2, request)), "the request is already over"


def test_a_refusal_with_a_reason_outside_the_fixed_set_does_not_decode(kit):
    request = kit.request()
    valid = refusal_by(kit, 0, request)
    assert decode(encode(valid)) == valid
    invented = kit.replica_signers[0].sign(dataclasses.replace(valid, reason="the sky is falling"))
    with pytest.raises(RemoteProtocolError) as caught:
        decode(encode(invented))
    assert caught.value.reason == "schema"


def test_refusing_starts_after_the_grace_and_stops_as_soon_as_a_quorum_is_back():
    watch = QuorumWatch(quorum=3, grace_s=1.0, now_s=0.0)
    assert watch.update(1, now_s=0.5) is None and watch.accepting(1), "start-up is within the grace"
    assert watch.update(1, now_s=1.0) == REFUSING and not watch.accepting(2)
    assert watch.accepting(3), "a quorum that just came back counts before the next update"
    assert watch.update(3, now_s=1.1) == RESTORED and watch.accepting(1)
    assert watch.update(2, now_s=2.0) == LOST and watch.accepting(2)
    assert watch.update(2, now_s=2.9) is None and watch.accepting(2)
    assert watch.update(2, now_s=3.0) == REFUSING and not watch.accepting(2)
    assert watch.update(2, now_s=9.0) is None, "each change is reported once"


async def wait_until(predicate, timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


async def test_without_any_quorum_clients_are_refused_early_and_service_resumes_after_healing():
    with trio.fail_after(40):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], options=FAST_OPTIONS,
                                      relayed=True) as cluster:
            assert await cluster.wait_connected()
            async with cluster.open_client() as client:
                assert (await client.submit(BENIGN)).status == "ALLOW"
                cluster.partition({0, 1}, {2, 3})  # q = 3: neither side has a quorum.
                await wait_until(lambda: not any(node.accepting_requests for node in cluster.nodes))
                outcome = await client.submit(BENIGN, timeout_ms=LONG_TIMEOUT_MS)
                assert (outcome.status, outcome.reason, outcome.certificate) == ("REFUSED", NO_QUORUM, None)
                assert outcome.latency_ms < LONG_TIMEOUT_MS  # it did not wait for its deadline
                await wait_until(lambda: sum(node.counters["refused:no quorum"] for node in cluster.nodes) == 4)
                assert [node.metrics.registry.get_sample_value("bft_refusals_total", {"reason": NO_QUORUM})
                        for node in cluster.nodes] == [1, 1, 1, 1]
                assert all(node.replica.last_executed == 1 for node in cluster.nodes), "nothing refused was ordered"

                cluster.heal()
                assert await cluster.wait_connected()
                await wait_until(lambda: all(node.accepting_requests for node in cluster.nodes))
                resumed = await client.submit(BENIGN, timeout_ms=LONG_TIMEOUT_MS)
            assert resumed.status == "ALLOW", resumed.reason
            resumed.certificate.verify(cluster.config)


async def test_an_isolated_replica_refuses_alone_while_the_majority_keeps_serving():
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], options=FAST_OPTIONS,
                                      relayed=True) as cluster:
            assert await cluster.wait_connected()
            cluster.partition({0, 1, 2}, {3})
            await wait_until(lambda: not cluster.nodes[3].accepting_requests)
            assert all(node.accepting_requests for node in cluster.nodes[:3])
            async with cluster.open_client() as client:
                outcome = await client.submit(BENIGN, timeout_ms=LONG_TIMEOUT_MS)
                await wait_until(lambda: client.counters["refusals-received"] == 1)
            assert outcome.status == "ALLOW", outcome.reason  # one refusal is not f+1
            outcome.certificate.verify(cluster.config)
            assert cluster.nodes[3].counters["refused:no quorum"] == 1


async def serve_as_lying_replica(listener: trio.SocketListener, cluster, replica_id: int, sent: list) -> None:
    """Authenticate as ``replica_id`` (holding its real key) and refuse every request at once."""
    seed = derive_keypair(0, f"replica-{replica_id}").seed  # open_local_cluster's default key_seed
    signer = Signer(cluster.config.cluster_id, seed)
    async with listener:
        while True:
            connection = FramedConnection(await listener.accept(), cluster.options.transport, "client")
            try:
                await _handshake.accept(connection, cluster.config, Identity("replica", replica_id), seed)
                while (payload := await connection.receive()) is not None:
                    if payload == KEEPALIVE:
                        continue
                    request = decode(payload)
                    refusal = signer.sign(Refusal(request.client_id, request.request_number,
                                                  request_digest(cluster.config.cluster_id, request), NO_QUORUM,
                                                  replica_id, bytes(64)))
                    await connection.send(encode(refusal))
                    sent.append(refusal)
            except CONNECTION_ERRORS:
                pass
            finally:
                await connection.aclose()


async def closed_port() -> int:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


@pytest.mark.parametrize("reachable", [(0, 1, 2), (0,)], ids=["quorum-reachable", "client-cut-off"])
async def test_one_lying_replica_sending_refusals_cannot_make_a_client_give_up(reachable):
    """Replica 3's key is in the liar's hands: the client talks to the liar instead of the real replica 3.
    With the honest replicas reachable the verdict arrives anyway; with too few reachable for a
    certificate the client still waits for its deadline and fails closed (never "no quorum")."""
    timeout_ms = 5000 if reachable == (0, 1, 2) else 800
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], options=FAST_OPTIONS) as cluster:
            assert await cluster.wait_connected()
            liar_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            addresses = {replica_id: cluster.addresses[replica_id] if replica_id in reachable
                         else ("127.0.0.1", await closed_port()) for replica_id in range(3)}
            addresses[3] = ("127.0.0.1", liar_listener.socket.getsockname()[1])
            sent: list[Refusal] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_as_lying_replica, liar_listener, cluster, 3, sent)
                async with open_client(cluster.config, "client-0", cluster.client_keys["client-0"].seed, addresses,
                                       clock=cluster.clock, reply_grace_ms=0) as client:
                    assert await client.wait_connected(len(reachable) + 1)
                    outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=timeout_ms)
                    await wait_until(lambda: client.counters["refusals-received"] == 1)
                nursery.cancel_scope.cancel()
    assert len(sent) == 1
    if reachable == (0, 1, 2):
        assert outcome.status == "ALLOW", outcome.reason
        outcome.certificate.verify(cluster.config)
    else:
        assert (outcome.status, outcome.certificate) == ("REFUSED", None)
        assert outcome.reason.startswith(f"no verdict certificate within {timeout_ms} ms"), outcome.reason


async def test_a_replica_cut_off_past_stable_checkpoints_catches_up_after_healing():
    """The runtime drives state transfer: the store reads a peer asks for happen in the persister."""
    limits = Limits(checkpoint_interval=2, log_window=4, max_in_flight_batches=2)
    with trio.fail_after(40):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], options=FAST_OPTIONS, limits=limits,
                                      relayed=True) as cluster:
            assert await cluster.wait_connected()
            cluster.partition({0, 1, 2}, {3})
            async with cluster.open_client() as client:
                for number in range(10):
                    outcome = await client.submit({"tool": "read_file", "path": f"/workspace/{number}"})
                    assert outcome.status == "ALLOW", outcome.reason
            lagging, leader = cluster.nodes[3], cluster.nodes[0]
            assert lagging.replica.last_executed == 0 and leader.replica.low_water > limits.log_window
            cluster.heal()
            await wait_until(lambda: lagging.replica.last_executed >= leader.replica.last_executed, timeout_s=20)
            await lagging.wait_durable()
            assert lagging.replica.execution.head_hash == leader.replica.execution.head_hash
            assert lagging.accepting_requests
            assert sum(node.counters["log-reads-answered"] for node in cluster.nodes[:3]) >= 1
