"""Batched delivery: a connection's one reader hands over every message of a socket read as one list (keep-alives left out, order kept), a replica turns each such list into one inbox item, and one watchdog per connection still ends a connection that is idle, trickles a frame, or (a client session) sends nothing but keep-alives."""

from __future__ import annotations

import pytest
import trio

from bft.core import RemoteProtocolError, Request, Risk, canonical_action, encode
from bft.policies import ApproveEverything
from bft.runtime import FramedConnection, Identity, TransportLimits, encode_frame, open_local_cluster
from bft.runtime import _handshake
from bft.runtime._link_cipher import FrameOpener, FrameSealer

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
KEY = bytes(range(32))
LIMITS = TransportLimits(idle_timeout_s=0.4, frame_timeout_s=0.3)


async def sealed_pair(limits: TransportLimits = LIMITS) -> tuple[FramedConnection, trio.SocketStream, FrameSealer]:
    """A secured connection on loopback TCP, the raw peer stream, and the sealer the peer must use."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        ours = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
        peer = await listener.accept()
    connection = FramedConnection(ours, limits, "test peer")
    connection.secure(FrameSealer(bytes(32)), FrameOpener(KEY))
    return connection, peer, FrameSealer(KEY)


async def test_every_message_of_one_read_arrives_in_one_batch_in_order_without_keepalives():
    connection, peer, sealer = await sealed_pair()
    payloads = [b"first", b"", b"second", b"x" * 3000, b""]
    await peer.send_all(b"".join(sealer.seal(payload) for payload in payloads))
    batches: list[list[bytes]] = []

    async def on_payloads(messages: list[bytes]) -> None:
        batches.append(messages)
        if sum(map(len, batches)) == 3:
            await peer.aclose()  # A clean close ends the reader.

    with trio.fail_after(5):
        await connection.read_batches(on_payloads)
    assert batches == [[b"first", b"second", b"x" * 3000]]
    await connection.aclose()


async def one_byte_then_silence(peer: trio.SocketStream, sealer: FrameSealer) -> None:
    await peer.send_all(sealer.seal(b"hello")[:3])


async def silence(peer: trio.SocketStream, sealer: FrameSealer) -> None:
    pass


async def keepalives_only(peer: trio.SocketStream, sealer: FrameSealer) -> None:
    for _ in range(20):  # Bounded: far longer than the quiet timeout.
        await peer.send_all(sealer.seal(b""))
        await trio.sleep(0.05)


@pytest.mark.parametrize("behaviour, quiet_timeout_s, reason", [
    (silence, None, "idle"),
    (one_byte_then_silence, None, "slow-frame"),
    (keepalives_only, 0.3, "idle-session"),
])
async def test_the_connection_watchdog_ends_idle_slow_and_quiet_connections(behaviour, quiet_timeout_s, reason):
    connection, peer, sealer = await sealed_pair()
    if quiet_timeout_s is not None:
        connection.close_when_quiet(quiet_timeout_s)

    async def never_called(messages: list[bytes]) -> None:
        raise AssertionError(f"no message was sent, yet {messages!r} arrived")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(behaviour, peer, sealer)
            with pytest.raises(RemoteProtocolError) as raised:
                await connection.read_batches(never_called)
            nursery.cancel_scope.cancel()
    assert raised.value.reason == reason
    await connection.aclose()
    await peer.aclose()


async def test_a_replica_enqueues_one_inbox_item_per_read():
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)]) as cluster:
            node = cluster.nodes[0]
            items: list[tuple] = []
            enqueue = node._enqueue

            async def recording_enqueue(item: tuple) -> None:
                items.append(item)
                await enqueue(item)

            node._enqueue = recording_enqueue
            connection = FramedConnection(await trio.open_tcp_stream(*cluster.addresses[0]),
                                          cluster.options.transport, "test")
            await _handshake.initiate(connection, cluster.config, Identity("client", "client-0"),
                                      cluster.client_keys["client-0"].seed, Identity("replica", 0))
            requests = [Request("client-0", number, Risk.LOW, canonical_action(BENIGN), 2**62, bytes(64))
                        for number in (1, 2, 3)]
            frames = [encode_frame(encode(request), cluster.options.transport.max_frame_bytes)
                      for request in requests]
            await connection.stream.send_all(connection.seal_frames(frames))
            with trio.fail_after(5):
                while not any(item[0] == "client-batch" for item in items):
                    await trio.sleep(0.01)
            assert [item for item in items if item[0] == "client-batch"] == [("client-batch", requests)]
            await connection.aclose()
