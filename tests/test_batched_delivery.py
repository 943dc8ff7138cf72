"""Batched delivery: a connection's one reader hands over every message of a socket read as one list (keep-alives left out, order kept), a replica steps its core over each such list as one round, and one lazily re-armed watchdog per connection still ends a connection that is idle, trickles a frame, or (a client session) sends nothing but keep-alives, while neither steady traffic nor the receiver's own back-pressure ever trips it."""

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
    await peer.aclose()  # A clean close ends the reader once it has read everything.
    batches: list[list[bytes]] = []
    with trio.fail_after(5):
        await connection.read_batches(batches.append)
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

    def never_called(messages: list[bytes]) -> None:
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


async def test_a_connection_that_keeps_sending_outlives_many_idle_timeouts():
    connection, peer, sealer = await sealed_pair()
    received: list[bytes] = []

    async def steady_then_close() -> None:
        for number in range(12):  # 1.2 s of traffic against an idle timeout of 0.4 s.
            await peer.send_all(sealer.seal(b"message %d" % number))
            await trio.sleep(0.1)
        await peer.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(steady_then_close)
            await connection.read_batches(received.extend)
    assert received == [b"message %d" % number for number in range(12)]
    await connection.aclose()


async def test_the_receivers_own_back_pressure_never_counts_against_the_peer():
    connection, peer, sealer = await sealed_pair()
    received: list[bytes] = []
    waits = [0]

    async def slow_consumer() -> None:
        waits[0] += 1
        if waits[0] == 2:  # After the first message: hold the reader for 2.5 idle timeouts.
            await trio.sleep(1.0)

    await peer.send_all(sealer.seal(b"before"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.read_batches, received.extend, slow_consumer)
            await trio.sleep(0.2)
            await peer.send_all(sealer.seal(b"after"))
            await peer.aclose()  # All of it waits in the socket while the reader is held.
    assert received == [b"before", b"after"]
    await connection.aclose()


async def test_a_replica_steps_its_core_once_per_read():
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)]) as cluster:
            node = cluster.nodes[0]
            items: list[tuple] = []
            take_inputs = node.take_inputs

            def recording_take_inputs(kind: str, messages: list) -> None:
                items.append((kind, messages))
                take_inputs(kind, messages)

            node.take_inputs = recording_take_inputs
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
                while not any(item[0] == "client" for item in items):
                    await trio.sleep(0.01)
            assert [item for item in items if item[0] == "client"] == [("client", requests)]
            await connection.aclose()
