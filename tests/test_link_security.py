"""Sealed links: the handshake agrees fresh per-direction keys that only the two configured parties hold, and every later frame is sealed and numbered, so a frame altered, replayed, reordered, dropped or injected on a link (by hand or by the harness's fault proxy) ends that connection with a counted reason while the replica keeps serving, a handshake with a wrong key fails on either side, and one spliced by a man in the middle fails."""

from __future__ import annotations

import functools

import msgpack
import nacl.bindings
import pytest
import trio

from bft.core import ClusterConfig, KeyPair, RemoteProtocolError, Risk
from bft.policies import ApproveEverything
from bft.runtime import (FrameDecoder, FramedConnection, Identity, ReplicaNode, encode_frame, open_client,
                         open_local_cluster)
from bft.runtime import _handshake
from bft.runtime._link_cipher import SEAL_OVERHEAD_BYTES, FrameOpener, FrameSealer, derive_session_keys
from harness._proxy import FaultProxy, Toxics

pytestmark = pytest.mark.slow  # real processes and their links: make test runs it, make test-fast does not

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
KEY = bytes(range(32))
MAX_FRAME_BYTES = 1024


def sealed_frames(sealer: FrameSealer, payloads: list[bytes]) -> list[bytes]:
    """Each payload as the wire carries it, without its 4-byte header: what the opener is handed."""
    return [sealer.seal(payload)[4:] for payload in payloads]


# ---------------------------------------------------------------------------- the cipher alone

def test_sealed_frames_open_in_order_and_hide_their_payload():
    sealer, opener = FrameSealer(KEY), FrameOpener(KEY)
    payloads = [b"first", b"", b"x" * 300]
    frames = sealed_frames(sealer, payloads)
    assert [opener.open(frame) for frame in frames] == payloads
    assert all(len(frame) == len(payload) + SEAL_OVERHEAD_BYTES for frame, payload in zip(frames, payloads))
    assert b"first" not in frames[0] and b"xxxx" not in frames[2]
    # Sealing a batch of plain frames gives the wire bytes of sealing each payload in turn.
    wire = FrameSealer(KEY).seal_frames([encode_frame(payload, MAX_FRAME_BYTES) for payload in payloads])
    one_by_one = FrameSealer(KEY)
    assert wire == b"".join(one_by_one.seal(payload) for payload in payloads)


@pytest.mark.parametrize("tamper, reason", [
    (lambda frames: [frames[0][:-1] + bytes([frames[0][-1] ^ 1])], "bad-frame-auth"),  # the tag
    (lambda frames: [frames[0][:10] + bytes([frames[0][10] ^ 0x80]) + frames[0][11:]], "bad-frame-auth"),
    (lambda frames: [frames[0], frames[0]], "replayed-frame"),
    (lambda frames: [frames[1], frames[0]], "replayed-frame"),  # the two swapped
    (lambda frames: [frames[0], frames[2], frames[1]], "replayed-frame"),
    (lambda frames: sealed_frames(FrameSealer(bytes(32)), [b"injected"]), "bad-frame-auth"),  # another key
    (lambda frames: [b"short"], "bad-frame-auth"),
])
def test_a_frame_altered_replayed_reordered_or_injected_is_refused_with_its_reason(tamper, reason):
    frames = sealed_frames(FrameSealer(KEY), [b"one", b"two", b"three"])
    opener = FrameOpener(KEY)
    with pytest.raises(RemoteProtocolError) as raised:
        for frame in tamper(frames):
            opener.open(frame, "peer")
    assert raised.value.reason == reason


def test_a_removed_frame_leaves_a_gap_that_is_accepted_and_counted():
    frames = sealed_frames(FrameSealer(KEY), [b"one", b"two", b"three", b"four"])
    opener = FrameOpener(KEY)
    assert [opener.open(frame) for frame in (frames[0], frames[3])] == [b"one", b"four"]
    assert (opener.frames_opened, opener.frames_skipped) == (2, 2)
    with pytest.raises(RemoteProtocolError) as raised:
        opener.open(frames[2])  # Removed once, it can never come back later.
    assert raised.value.reason == "replayed-frame"


def test_session_keys_differ_per_direction_and_per_handshake():
    shared = bytes(range(32, 64))
    outgoing, incoming = derive_session_keys(shared, b"transcript one")
    assert outgoing != incoming and len(outgoing) == len(incoming) == 32
    assert derive_session_keys(shared, b"transcript two") != (outgoing, incoming)
    assert derive_session_keys(bytes(32), b"transcript one") != (outgoing, incoming)
    assert derive_session_keys(shared, b"transcript one") == (outgoing, incoming)


# ---------------------------------------------------------------------------- live links

async def authenticated_client(cluster) -> FramedConnection:
    stream = await trio.open_tcp_stream(*cluster.addresses[0])
    connection = FramedConnection(stream, cluster.options.transport, "test")
    await _handshake.initiate(connection, cluster.config, Identity("client", "client-0"),
                              cluster.client_keys["client-0"].seed, Identity("replica", 0))
    assert connection.secured
    return connection


async def assert_closed_by_peer(stream: trio.SocketStream) -> None:
    with trio.fail_after(5):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return
            except trio.BrokenResourceError:
                return


async def wait_for_counter(node: ReplicaNode, key: str) -> None:
    with trio.fail_after(5):
        while node.counters[key] < 1:
            await trio.sleep(0.01)


def altered(wire: bytes) -> bytes:
    """``wire`` with one bit of its ciphertext flipped, as a tampering router would."""
    return wire[:12] + bytes([wire[12] ^ 1]) + wire[13:]


def twice(wire: bytes) -> bytes:
    return wire + wire


@pytest.mark.parametrize("tamper, reason", [(altered, "bad-frame-auth"), (twice, "replayed-frame")])
async def test_a_frame_tampered_with_on_a_live_link_is_rejected_counted_and_costs_only_that_link(tamper, reason):
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)],
                                      client_ids=("client-0", "client-1")) as cluster:
            node = cluster.nodes[0]
            connection = await authenticated_client(cluster)
            keepalive = connection.seal_frames([encode_frame(b"", MAX_FRAME_BYTES)])
            await connection.stream.send_all(tamper(keepalive))
            await assert_closed_by_peer(connection.stream)
            await wait_for_counter(node, f"connection-dropped:{reason}")
            await connection.aclose()
            async with cluster.open_client("client-1") as client:
                outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=10_000)
            assert outcome.status == "ALLOW", outcome.reason


async def test_a_handshake_with_a_wrong_key_fails_on_either_side():
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)]) as cluster:
            config, node = cluster.config, cluster.nodes[0]
            stranger = KeyPair.from_seed(bytes(range(32)))
            connection = FramedConnection(await trio.open_tcp_stream(*cluster.addresses[0]),
                                          cluster.options.transport, "test")
            with pytest.raises(RemoteProtocolError) as raised:  # A client key that is not client-0's.
                await _handshake.initiate(connection, config, Identity("client", "client-0"), stranger.seed,
                                          Identity("replica", 0))
            await connection.aclose()
            await wait_for_counter(node, "connection-refused:bad-key")
            assert not connection.secured and raised.value.reason in ("refused", "bad-key")

            # The client expects another key for replica 0: the replica's signature does not verify for it.
            replica_keys = (stranger.public_key, *config.replica_keys[1:])
            misinformed = ClusterConfig.create(config.cluster_id, replica_keys,
                                               {"client-0": config.client_keys["client-0"]})
            connection = FramedConnection(await trio.open_tcp_stream(*cluster.addresses[0]),
                                          cluster.options.transport, "test")
            with pytest.raises(RemoteProtocolError) as raised:
                await _handshake.initiate(connection, misinformed, Identity("client", "client-0"),
                                          cluster.client_keys["client-0"].seed, Identity("replica", 0))
            assert raised.value.reason == "bad-key" and not connection.secured
            await connection.aclose()


async def test_a_frame_the_fault_proxy_duplicates_ends_the_link_and_one_it_drops_is_a_counted_gap():
    with trio.fail_after(60):
        async with open_local_cluster([ApproveEverything() for _ in range(4)],
                                      client_ids=("client-0", "client-1")) as cluster, trio.open_nursery() as nursery:
            node = cluster.nodes[0]
            proxy = FaultProxy(cluster.addresses[0], name="to replica 0")
            await nursery.start(proxy.serve)
            addresses = {**cluster.addresses, 0: proxy.address}

            def client_through_proxy(client_id: str):
                return open_client(cluster.config, client_id, cluster.client_keys[client_id].seed, addresses,
                                   clock=cluster.clock, limits=cluster.options.transport)

            proxy.set_toxics(upstream=Toxics(duplicate_probability=1.0))
            async with client_through_proxy("client-0") as client:
                # Replicas 1-3 are reached directly, so verdicts keep coming; a repeated frame on the way
                # to replica 0 carries a number it already passed.
                for _ in range(10):
                    outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=5_000)
                    assert outcome.status == "ALLOW", outcome.reason
                    if node.counters["connection-dropped:replayed-frame"]:
                        break
                await wait_for_counter(node, "connection-dropped:replayed-frame")
            dropped_before = sum(count for key, count in node.counters.items() if key.startswith("connection-dropped"))
            proxy.set_toxics(upstream=Toxics(drop_probability=0.5))
            async with client_through_proxy("client-1") as client:
                for _ in range(10):
                    outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=5_000)
                    assert outcome.status == "ALLOW", outcome.reason
            # Frames removed on the way are gaps: the link to replica 0 stays up (the client's own close
            # at the end is not a drop either).
            assert sum(count for key, count in node.counters.items()
                       if key.startswith("connection-dropped")) == dropped_before
            nursery.cancel_scope.cancel()


async def splice_first_hello(client: trio.SocketStream, replica_address) -> None:
    """A man in the middle: forwards the client's hello with his own ephemeral key in it, then relays."""
    replica = await trio.open_tcp_stream(*replica_address)
    decoder = FrameDecoder(1024)
    while (hello := decoder.next_frame()) is None:
        decoder.receive_data(await client.receive_some(1024))
    magic, cluster_id, role, name, _ = msgpack.unpackb(hello)
    own_ephemeral = nacl.bindings.crypto_scalarmult_base(bytes(range(1, 33)))
    await replica.send_all(encode_frame(msgpack.packb([magic, cluster_id, role, name, own_ephemeral]), 1024))

    async def pipe(source: trio.SocketStream, target: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            while data := await source.receive_some(65536):
                await target.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, replica, client)
        nursery.start_soon(pipe, client, replica)


async def test_a_man_in_the_middle_who_swaps_an_ephemeral_key_breaks_the_handshake():
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)]) as cluster, \
                trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(
                trio.serve_tcp, functools.partial(splice_first_hello, replica_address=cluster.addresses[0]), 0,
                host="127.0.0.1"))
            connection = FramedConnection(await trio.open_tcp_stream(*listeners[0].socket.getsockname()[:2]),
                                          cluster.options.transport, "test")
            with pytest.raises(RemoteProtocolError) as raised:
                await _handshake.initiate(connection, cluster.config, Identity("client", "client-0"),
                                          cluster.client_keys["client-0"].seed, Identity("replica", 0))
            # The replica signed the hello it received, which is not the one the client sent.
            assert raised.value.reason == "bad-key" and not connection.secured
            await connection.aclose()
            nursery.cancel_scope.cancel()
