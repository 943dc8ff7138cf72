"""The fault proxy applies each Toxiproxy-style toxic (latency and jitter, bandwidth, slicing, blackhole, dropped
and refused connections) to a loopback echo server, and drops, duplicates and reorders whole frames while leaving
the handshake alone, with bounded buffers; routed through per-link proxies, a real in-process cluster replaces a
blackholed primary, and a partitioned minority refuses rather than decides."""

from __future__ import annotations

import functools
import hashlib
from contextlib import asynccontextmanager

import pytest
import trio

from bft.core import ClusterConfig, KeyPair, Risk
from bft.policies import build_policy
from bft.runtime import FrameDecoder, NodeOptions, ReplicaNode, RuntimeClock, encode_frame, open_client
from harness._proxy import (BLACKHOLE, CLEAN, FaultProxy, LinkProxies, ProxyLimits, Toxics, slices)

pytestmark = pytest.mark.slow  # real processes behind the fault proxy: make test runs it, make test-fast does not

MAX_FRAME_BYTES = 64 * 1024
HANDSHAKE = [b"hello", b"proof"]
QUIET_S = 0.3  # How long "nothing arrives" is watched for.


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def proxied_echo(**options):
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        proxy = FaultProxy(listeners[0].socket.getsockname()[:2], **options)
        await nursery.start(proxy.serve)
        stream = await trio.open_tcp_stream(*proxy.address)
        async with stream:
            yield proxy, stream
        nursery.cancel_scope.cancel()


async def receive_bytes(stream: trio.SocketStream, count: int, timeout_s: float = 5.0) -> bytes:
    data = b""
    with trio.move_on_after(timeout_s):
        while len(data) < count:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def receive_frames(stream: trio.SocketStream, count: int, timeout_s: float = 5.0) -> list[bytes]:
    decoder, frames = FrameDecoder(MAX_FRAME_BYTES), []
    with trio.move_on_after(timeout_s):
        while len(frames) < count:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            decoder.receive_data(chunk)
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
    return frames


def frames_of(payloads: list[bytes]) -> bytes:
    return b"".join(encode_frame(payload, MAX_FRAME_BYTES) for payload in payloads)


MESSAGES = [f"message-{number:03d}".encode() for number in range(40)]


# ----------------------------------------------------------------- byte-level toxics


async def test_a_clean_proxy_forwards_bytes_both_ways_unchanged():
    async with proxied_echo(framed=False) as (proxy, stream):
        payload = bytes(range(256)) * 40
        await stream.send_all(payload)
        assert await receive_bytes(stream, len(payload)) == payload
        with trio.fail_after(5):  # The proxy counts a write once it returns, which may be after the echo arrived.
            while proxy.counters["bytes-downstream"] < len(payload):
                await trio.sleep(0.01)
        assert proxy.counters["bytes-upstream"] == proxy.counters["bytes-downstream"] == len(payload)


async def test_latency_with_jitter_delays_every_byte_and_keeps_their_order():
    async with proxied_echo(framed=False) as (proxy, stream):
        proxy.set_toxics(upstream=Toxics(latency_ms=150, jitter_ms=40))
        pieces = [f"piece {number};".encode() for number in range(20)]
        started = trio.current_time()
        for piece in pieces:
            await stream.send_all(piece)
            await trio.sleep(0.002)
        echoed = await receive_bytes(stream, sum(map(len, pieces)))
        assert echoed == b"".join(pieces)  # Jitter never reorders a byte stream.
        assert trio.current_time() - started >= 0.110  # At least latency minus jitter, whatever the machine.


@pytest.mark.parametrize("toxics", [Toxics(latency_ms=200), Toxics(bandwidth_bytes_per_s=100_000)],
                         ids=["latency", "bandwidth"])
async def test_bytes_sent_after_a_heal_never_overtake_bytes_still_held(toxics):
    async with proxied_echo(framed=False) as (proxy, stream):
        proxy.set_toxics(upstream=toxics)
        held = b"held;" * 4_000  # 20 000 bytes: 0.2 s at the bandwidth cap.
        await stream.send_all(held)
        await trio.sleep(0.02)  # The proxy has read it and holds it in its delay line.
        proxy.heal()
        after = b"".join(f"after {number};".encode() for number in range(20))
        for number in range(20):  # A clean link writes directly; these must still wait their turn.
            await stream.send_all(f"after {number};".encode())
        assert await receive_bytes(stream, len(held) + len(after)) == held + after


async def test_a_bandwidth_cap_limits_the_rate():
    async with proxied_echo(framed=False) as (proxy, stream):
        proxy.set_toxics(upstream=Toxics(bandwidth_bytes_per_s=100_000))
        payload = b"x" * 30_000
        started = trio.current_time()
        await stream.send_all(payload)
        assert await receive_bytes(stream, len(payload)) == payload
        assert trio.current_time() - started >= 0.29  # 30 000 bytes at 100 000 bytes/s.


async def test_slicing_cuts_writes_into_small_pieces():
    assert list(slices(b"abcdefg", 3)) == [b"abc", b"def", b"g"] and list(slices(b"abc", 0)) == [b"abc"]
    async with proxied_echo(framed=False) as (proxy, stream):
        proxy.set_toxics(upstream=Toxics(slice_bytes=10, slice_delay_ms=1))
        payload = bytes(range(200)) * 5
        await stream.send_all(payload)
        assert await receive_bytes(stream, len(payload)) == payload
        assert proxy.counters["writes-upstream"] >= len(payload) // 10


async def test_a_blackhole_swallows_everything_until_it_is_lifted():
    async with proxied_echo(framed=False) as (proxy, stream):
        proxy.set_toxics(both=BLACKHOLE)
        await stream.send_all(b"into the void")
        assert await receive_bytes(stream, 1, timeout_s=QUIET_S) == b""
        assert proxy.counters["bytes-blackholed"] == len(b"into the void") and proxy.open_connections == 1
        proxy.heal()
        await stream.send_all(b"back again")
        assert await receive_bytes(stream, len(b"back again")) == b"back again"


async def test_dropping_connections_closes_both_ends_and_refusing_closes_new_ones():
    async with proxied_echo(framed=False) as (proxy, stream):
        await stream.send_all(b"ping")
        assert await receive_bytes(stream, 4) == b"ping"
        assert proxy.drop_connections() == 1
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError, EOFError)):
            with trio.fail_after(5):
                if await stream.receive_some(10) == b"":
                    raise EOFError("closed by the proxy")
        proxy.refuse_connections = True
        refused = await trio.open_tcp_stream(*proxy.address)
        async with refused:
            with trio.fail_after(5):
                assert await refused.receive_some(10) == b""
        assert proxy.counters["connections-refused"] == 1 and proxy.counters["connections-dropped"] == 1


async def test_invalid_toxics_are_rejected_with_the_reason():
    proxy = FaultProxy(("127.0.0.1", 1))
    with pytest.raises(ValueError, match="probabilities"):
        proxy.set_toxics(upstream=Toxics(drop_probability=1.5))
    with pytest.raises(ValueError, match="jitter"):
        proxy.set_toxics(both=Toxics(latency_ms=10, jitter_ms=20))
    assert proxy.toxics("upstream") == proxy.toxics("downstream") == CLEAN


async def test_buffers_stay_bounded_when_the_receiver_lags():
    limits = ProxyLimits(chunk_bytes=1024, queued_chunks_max=4)
    async with proxied_echo(framed=False, limits=limits) as (proxy, stream):
        proxy.set_toxics(upstream=Toxics(latency_ms=10_000))
        payload = b"y" * (32 * 1024 * 1024)
        with trio.move_on_after(1.0) as waited:
            await stream.send_all(payload)
        assert waited.cancelled_caught, "the proxy must push back instead of buffering 32 MiB"
        assert proxy.counters["queued-chunks-peak"] <= limits.queued_chunks_max


# ----------------------------------------------------------------- message-level toxics


async def test_dropped_frames_vanish_but_the_handshake_frames_pass():
    async with proxied_echo() as (proxy, stream):
        proxy.set_toxics(upstream=Toxics(drop_probability=1.0))
        await stream.send_all(frames_of(HANDSHAKE + MESSAGES))
        assert await receive_frames(stream, 2) == HANDSHAKE
        assert await receive_frames(stream, 1, timeout_s=QUIET_S) == []
        assert proxy.counters["frames-dropped"] == len(MESSAGES)


async def test_partly_dropped_frames_arrive_in_order():
    async with proxied_echo(seed=7) as (proxy, stream):
        proxy.set_toxics(upstream=Toxics(drop_probability=0.5))
        await stream.send_all(frames_of(HANDSHAKE + MESSAGES))
        received = await receive_frames(stream, 2 + len(MESSAGES), timeout_s=1.0)  # Whatever arrives in 1 s.
        dropped = proxy.counters["frames-dropped"]
        assert received[:2] == HANDSHAKE and 0 < dropped < len(MESSAGES)
        assert len(received) - 2 + dropped == len(MESSAGES)
        assert received[2:] == [message for message in MESSAGES if message in received[2:]]


async def test_duplicated_frames_arrive_twice_each():
    async with proxied_echo() as (proxy, stream):
        proxy.set_toxics(upstream=Toxics(duplicate_probability=1.0))
        await stream.send_all(frames_of(HANDSHAKE + MESSAGES))
        received = await receive_frames(stream, 2 + 2 * len(MESSAGES))
        assert received == HANDSHAKE + [m for message in MESSAGES for m in (message, message)]


async def test_reordered_frames_all_arrive_but_out_of_order():
    async with proxied_echo() as (proxy, stream):
        proxy.set_toxics(upstream=Toxics(reorder_probability=1.0))
        await stream.send_all(frames_of(HANDSHAKE + MESSAGES))
        received = await receive_frames(stream, 2 + len(MESSAGES))
        assert received[:2] == HANDSHAKE
        assert sorted(received[2:]) == MESSAGES and received[2:] != MESSAGES
        assert proxy.counters["frames-reordered"] >= 1


async def test_a_stream_that_is_not_frames_ends_the_connection():
    async with proxied_echo(limits=ProxyLimits(max_frame_bytes=1024)) as (proxy, stream):
        await stream.send_all((10_000_000).to_bytes(4, "big") + b"garbage")
        with trio.fail_after(5):
            while await stream.receive_some(100):
                pass
        assert proxy.counters["connections-unframed"] == 1


def test_a_partition_blackholes_only_the_links_between_the_groups():
    proxies = LinkProxies({0: ("127.0.0.1", 1), 1: ("127.0.0.1", 2), 2: ("127.0.0.1", 3)})
    proxies.partition({0}, {1, 2})
    assert all(proxies.link(a, b).toxics(direction).blackhole
               for a, b in ((0, 1), (1, 0), (0, 2), (2, 0)) for direction in ("upstream", "downstream"))
    assert proxies.link(1, 2).toxics("upstream") == proxies.link(2, 1).toxics("downstream") == CLEAN
    proxies.heal()
    assert all(proxy.toxics("upstream") == CLEAN for proxy in proxies.links.values())


# ----------------------------------------------------------------- a real cluster behind the proxies


def _key(name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(f"fault-proxy-test/{name}".encode()).digest())


@asynccontextmanager
async def proxied_cluster():
    """Four replicas whose every replica-to-replica link, and every client link, runs through a proxy."""
    replica_keys = [_key(f"replica-{i}") for i in range(4)]
    client_key = _key("client-0")
    config = ClusterConfig.create("proxied", tuple(k.public_key for k in replica_keys),
                                  {"client-0": client_key.public_key})
    listeners = [(await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] for _ in replica_keys]
    proxies = LinkProxies({i: ("127.0.0.1", listener.socket.getsockname()[1]) for i, listener in enumerate(listeners)})
    policies = [build_policy(name) for name in ("deny-list", "context-rules", "pattern-matcher", "rate")]
    clock = RuntimeClock()
    async with trio.open_nursery() as nursery:
        await proxies.start(nursery)
        nodes = [ReplicaNode(config, i, replica_keys[i].seed, policies[i], proxies.addresses_for(i),
                             options=NodeOptions(tick_ms=10), clock=clock) for i in range(4)]
        for node, listener in zip(nodes, listeners):
            await nursery.start(node.run, listener)
        with trio.fail_after(10):
            while any(node.peers_connected < 3 for node in nodes):
                await trio.sleep(0.01)
        async with open_client(config, "client-0", client_key.seed, proxies.client_addresses(), clock=clock,
                               timeout_ms=8000) as client:
            yield config, nodes, proxies, client
        nursery.cancel_scope.cancel()


READ = {"tool": "read_file", "path": "/workspace/project/README.md"}


async def test_a_blackholed_primary_is_replaced_and_the_cluster_keeps_deciding():
    async with proxied_cluster() as (config, nodes, proxies, client):
        assert nodes[0].replica.primary_id == 0
        proxies.isolate(0)
        outcome = await client.submit(READ, Risk.LOW)
        assert outcome.status == "ALLOW", outcome.reason
        outcome.certificate.verify(config)
        assert all(node.replica.view >= 1 for node in nodes[1:])
        assert proxies.link(1, 0).counters["bytes-blackholed"] > 0


async def test_a_partitioned_minority_refuses_and_the_healed_cluster_decides():
    async with proxied_cluster() as (config, nodes, proxies, client):
        proxies.isolate(0)
        for replica in (1, 2, 3):  # The client reaches only the minority.
            proxies.clients[replica].set_toxics(both=BLACKHOLE)
        outcome = await client.submit(READ, Risk.LOW, timeout_ms=1500)
        assert outcome.status == "REFUSED" and outcome.certificate is None
        assert all(node.finalized_count == 0 for node in nodes)
        proxies.heal()
        for proxy in proxies.clients.values():  # Handshakes stuck in the blackhole start over at once.
            proxy.drop_connections()
        healed = await client.submit(dict(READ, path="/workspace/project/setup.py"), Risk.LOW)
        assert healed.status == "ALLOW", healed.reason
