"""The trio runtime over real loopback TCP: the handshake admits exactly the configured keys, bad bytes (garbage, oversize, truncated, slow, flooding, undecodable) cost the sender its connection while the replica keeps serving, links reconnect, queues stay bounded, a 4-replica cluster finalizes verdicts whose certificates verify offline (or refuses without a quorum), overrunning policies vote DENY, stores are pruned and recovered, and a slow disk blocks neither the event loop nor persist-before-send."""

from __future__ import annotations

import random
import threading
import time

import pytest
import trio

from bft.core import (ClusterConfig, Commit, Decision, KeyPair, Limits, PrePrepare, Prepare, RemoteProtocolError, Risk,
                      Vote)
from bft.policies import ApproveEverything, CapabilityDenyList, ContextRules, PatternMatcher
from bft.policy import PolicyDecision
from bft.runtime import (Backoff, FramedConnection, Identity, NodeOptions, ReplicaNode, RuntimeClock, SendQueue,
                         TransportLimits, derive_keypair, encode_frame, open_client, open_local_cluster)
from bft.runtime import _handshake
from bft.runtime._link_cipher import SEAL_OVERHEAD_BYTES
from bft.storage import MemoryStore, SqliteStore

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
DANGEROUS = {"tool": "shell", "command": "rm -rf / --no-preserve-root", "cwd": "/"}
CLIENTS = ("client-0", "client-1")


def honest_policies() -> list:
    return [CapabilityDenyList(), ContextRules(), PatternMatcher(), ApproveEverything()]


async def raw_stream(cluster, replica_id: int = 0) -> trio.SocketStream:
    return await trio.open_tcp_stream(*cluster.addresses[replica_id])


async def authenticated(cluster, config: ClusterConfig, identity: Identity, seed: bytes,
                        replica_id: int = 0) -> FramedConnection:
    connection = FramedConnection(await raw_stream(cluster, replica_id), cluster.options.transport, "test")
    await _handshake.initiate(connection, config, identity, seed, Identity("replica", replica_id))
    return connection


async def assert_closed_by_peer(stream: trio.SocketStream, timeout_s: float = 5.0) -> None:
    """Read until the replica closes the connection (keep-alives may come first)."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return


async def wait_for_counter(node: ReplicaNode, key: str, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while node.counters[key] < 1:
            await trio.sleep(0.01)


async def assert_serves_a_client(cluster, client_id: str = "client-1") -> None:
    async with cluster.open_client(client_id) as client:
        outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=5000)
    assert outcome.status == "ALLOW", outcome.reason
    outcome.certificate.verify(cluster.config)


# ---------------------------------------------------------------------------- handshake

async def test_handshake_admits_configured_keys_and_refuses_unknown_ones():
    with trio.fail_after(20):
        async with open_local_cluster(honest_policies(), client_ids=CLIENTS) as cluster:
            config, node = cluster.config, cluster.nodes[0]
            good = await authenticated(cluster, config, Identity("client", "client-0"),
                                       cluster.client_keys["client-0"].seed)
            await good.aclose()

            stranger = KeyPair.from_seed(bytes(range(32)))
            with pytest.raises(RemoteProtocolError):  # A client whose key is not configured at all.
                mallory_config = ClusterConfig.create(config.cluster_id, config.replica_keys,
                                                      {"mallory": stranger.public_key})
                await authenticated(cluster, mallory_config, Identity("client", "mallory"), stranger.seed)
            await wait_for_counter(node, "connection-refused:unknown-identity")

            with pytest.raises(RemoteProtocolError):  # A configured name with someone else's key.
                await authenticated(cluster, config, Identity("client", "client-0"), stranger.seed)
            await wait_for_counter(node, "connection-refused:bad-key")

            node.counters.clear()
            with pytest.raises(RemoteProtocolError):  # A replica impersonated without its key.
                await authenticated(cluster, config, Identity("replica", 1), stranger.seed)
            await wait_for_counter(node, "connection-refused:bad-key")

            other_cluster = ClusterConfig.create("elsewhere", config.replica_keys, config.client_keys)
            with pytest.raises(RemoteProtocolError):
                await authenticated(cluster, other_cluster, Identity("client", "client-0"),
                                    cluster.client_keys["client-0"].seed)
            await wait_for_counter(node, "connection-refused:wrong-cluster")
            await assert_serves_a_client(cluster)


async def test_the_initiator_refuses_a_replica_that_is_not_the_one_it_dialled():
    with trio.fail_after(20):
        async with open_local_cluster(honest_policies(), client_ids=CLIENTS) as cluster:
            connection = FramedConnection(await raw_stream(cluster, 0), cluster.options.transport, "test")
            with pytest.raises(RemoteProtocolError) as raised:
                await _handshake.initiate(connection, cluster.config, Identity("client", "client-0"),
                                          cluster.client_keys["client-0"].seed, Identity("replica", 2))
            assert raised.value.reason == "wrong-identity"
            await connection.aclose()


# ---------------------------------------------------------------------------- bad bytes

FAST_LIMITS = TransportLimits(frame_timeout_s=0.3, handshake_timeout_s=0.6, receive_frames_per_s=200.0)


async def send_garbage(cluster) -> trio.SocketStream:
    stream = await raw_stream(cluster)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return stream


async def send_truncated_hello(cluster) -> trio.SocketStream:
    stream = await raw_stream(cluster)
    await stream.send_all(b"\x00\x00\x00\x40half a hello")
    await stream.send_eof()
    return stream


async def send_slowly(cluster) -> trio.SocketStream:
    stream = await raw_stream(cluster)
    for byte in b"\x00\x00\x00\x20slowloris":  # Each byte well within the frame timeout, the frame never.
        try:
            await stream.send_all(bytes([byte]))
        except trio.BrokenResourceError:
            break  # The replica already hung up on us.
        await trio.sleep(0.05)
    return stream


async def say_nothing(cluster) -> trio.SocketStream:
    return await raw_stream(cluster)


async def after_handshake(cluster, data: bytes | list[bytes], eof: bool = False) -> trio.SocketStream:
    """Authenticate as a client, then send ``data``: raw bytes, or frames to seal as the link would."""
    connection = await authenticated(cluster, cluster.config, Identity("client", "client-0"),
                                     cluster.client_keys["client-0"].seed)
    await connection.stream.send_all(data if isinstance(data, bytes) else connection.seal_frames(data))
    if eof:
        await connection.stream.send_eof()
    return connection.stream


async def send_oversize_frame(cluster) -> trio.SocketStream:
    # Beyond the largest sealed frame (a maximum payload plus the seal), so refused from its header alone.
    length = FAST_LIMITS.max_frame_bytes + SEAL_OVERHEAD_BYTES + 1
    return await after_handshake(cluster, length.to_bytes(4, "big") + b"x" * 100)


async def send_truncated_frame(cluster) -> trio.SocketStream:
    return await after_handshake(cluster, b"\x00\x00\x01\x00" + b"y" * 10, eof=True)


async def send_undecodable_message(cluster) -> trio.SocketStream:
    return await after_handshake(cluster, [encode_frame(b"\x93\x63\x02\x03", FAST_LIMITS.max_frame_bytes)])


async def send_an_unsealed_message(cluster) -> trio.SocketStream:
    return await after_handshake(cluster, encode_frame(b"\x93\x63\x02\x03", FAST_LIMITS.max_frame_bytes))


async def flood(cluster) -> trio.SocketStream:
    return await after_handshake(cluster, [encode_frame(b"", FAST_LIMITS.max_frame_bytes)] * 1000)


@pytest.mark.parametrize("attack, counter", [
    (send_garbage, "connection-refused:oversized-frame"),
    (send_truncated_hello, "connection-refused:truncated-frame"),
    (send_slowly, "connection-refused:slow-frame"),
    (say_nothing, "connection-refused:timeout"),
    (send_oversize_frame, "connection-dropped:oversized-frame"),
    (send_truncated_frame, "connection-dropped:truncated-frame"),
    (send_undecodable_message, "connection-dropped:unknown-type"),
    (send_an_unsealed_message, "connection-dropped:bad-frame-auth"),
    (flood, "connection-dropped:flood"),
])
async def test_bad_input_drops_that_connection_and_the_replica_keeps_serving(attack, counter):
    with trio.fail_after(20):
        async with open_local_cluster(honest_policies(), client_ids=CLIENTS,
                                      options=NodeOptions(transport=FAST_LIMITS)) as cluster:
            node = cluster.nodes[0]
            status_before = node.status()
            stream = await attack(cluster)
            await assert_closed_by_peer(stream)
            await wait_for_counter(node, counter)
            assert node.replica.last_executed == status_before["last_executed"]
            await stream.aclose()
            await assert_serves_a_client(cluster)
            assert node.replica.last_executed == status_before["last_executed"] + 1


async def test_strangers_cannot_hold_every_connection_slot_and_one_identity_holds_one_connection():
    limits = TransportLimits(handshake_timeout_s=5.0, max_handshakes_in_progress=2)
    with trio.fail_after(20):
        async with open_local_cluster(honest_policies(), client_ids=CLIENTS,
                                      options=NodeOptions(transport=limits)) as cluster:
            node = cluster.nodes[0]
            assert await cluster.wait_connected()  # so that no replica link is mid-handshake
            evicted_before = node.counters["connection-refused:evicted"]
            silent = [await raw_stream(cluster) for _ in range(2)]
            await trio.sleep(0.1)
            third = await raw_stream(cluster)
            # The newcomer displaces the oldest silent connection at once, long before the handshake timeout.
            await assert_closed_by_peer(silent[0], timeout_s=1.0)
            assert node.counters["connection-refused:evicted"] == evicted_before + 1
            for stream in (*silent, third):
                await stream.aclose()

            seed = cluster.client_keys["client-0"].seed
            first = await authenticated(cluster, cluster.config, Identity("client", "client-0"), seed)
            second = await authenticated(cluster, cluster.config, Identity("client", "client-0"), seed)
            await assert_closed_by_peer(first.stream)  # the newer connection replaced the older
            assert node.counters["connection-replaced"] == 1
            await first.aclose()
            await second.aclose()
            await assert_serves_a_client(cluster)


# ---------------------------------------------------------------------------- a working cluster

async def test_a_cluster_of_four_finalizes_verdicts_with_verifiable_certificates():
    with trio.fail_after(30):
        async with open_local_cluster(honest_policies(), client_ids=CLIENTS) as cluster:
            assert await cluster.wait_connected(timeout_s=10)
            async with cluster.open_client("client-0") as client:
                assert await client.wait_connected(timeout_s=10)
                outcomes = []
                for action, risk in [(BENIGN, Risk.LOW), (DANGEROUS, Risk.LOW), (BENIGN, Risk.HIGH),
                                     (DANGEROUS, Risk.CRITICAL)]:
                    outcomes.append(await client.submit(action, risk))
                async with trio.open_nursery() as nursery:  # and a few at once
                    for _ in range(4):
                        nursery.start_soon(lambda: _append(outcomes, client.submit(BENIGN, Risk.MEDIUM)))
            assert [o.status for o in outcomes[:4]] == ["ALLOW", "DENY", "ALLOW", "DENY"]
            assert [o.status for o in outcomes[4:]] == ["ALLOW"] * 4
            for outcome in outcomes:
                outcome.certificate.verify(cluster.config)
                assert len(outcome.certificate.replies) >= cluster.config.reply_quorum
            for vote in outcomes[1].certificate.votes:  # Honest replicas deny; the compromised one allows.
                assert vote.decision is (Decision.ALLOW if vote.replica_id == 3 else Decision.DENY)
            with trio.fail_after(5):
                while min(node.finalized_count for node in cluster.nodes) < len(outcomes):
                    await trio.sleep(0.01)
            assert [node.replica.execution.head_hash for node in cluster.nodes].count(
                cluster.nodes[0].replica.execution.head_hash) == 4


async def _append(results: list, awaitable) -> None:
    results.append(await awaitable)


async def test_the_client_refuses_when_no_quorum_is_reachable():
    with trio.fail_after(20):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], client_ids=CLIENTS) as cluster:
            # The client reaches replica 0 alone, so it can never hold f+1 = 2 replies.  (Reaching two
            # replicas would be enough: a backup forwards a request it voted on to the others.)
            unused = [(await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] for _ in range(3)]
            dead_ports = [listener.socket.getsockname()[1] for listener in unused]
            for listener in unused:
                await listener.aclose()
            addresses = dict(cluster.addresses)
            for replica_id, port in zip((1, 2, 3), dead_ports):
                addresses[replica_id] = ("127.0.0.1", port)
            async with open_client(cluster.config, "client-0", cluster.client_keys["client-0"].seed, addresses,
                                   clock=cluster.clock, reply_grace_ms=0) as client:
                outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=600)
            assert outcome.status == "REFUSED" and outcome.certificate is None
            assert "no verdict certificate" in outcome.reason
            assert 500 <= outcome.latency_ms < 3000


async def test_a_policy_that_overruns_its_deadline_votes_deny():
    release = threading.Event()

    class Stuck:
        name = "stuck"

        def evaluate(self, action, context):
            release.wait(10)
            return PolicyDecision.allow("too late")

    policies = [ApproveEverything(), ApproveEverything(), ApproveEverything(), Stuck()]
    # A critical request needs every vote, and the primary waits (up to 2 s) for the straggler.
    try:
        with trio.fail_after(20):
            async with open_local_cluster(policies, client_ids=CLIENTS, limits=Limits(vote_wait_ticks=200),
                                          options=NodeOptions(policy_deadline_ms=200)) as cluster:
                async with cluster.open_client() as client:
                    outcome = await client.submit(BENIGN, Risk.CRITICAL)
                assert outcome.status == "DENY" and outcome.reason.startswith("vetoed")
                stuck_votes = [v for v in outcome.certificate.votes if v.replica_id == 3]
                assert [(v.decision, v.reason) for v in stuck_votes] == [(Decision.DENY, "policy deadline exceeded")]
                assert 150 <= outcome.latency_ms < 2000
                assert cluster.nodes[3].counters["policy-deadline-exceeded"] == 1
                own_votes = [m for m in cluster.nodes[3].store.signed if isinstance(m, Vote)]
                assert own_votes == stuck_votes  # persisted before it was sent
    finally:
        release.set()


async def test_links_reconnect_when_a_peer_comes_up_late():
    replica_count = 4
    keys = [derive_keypair(7, f"replica-{i}") for i in range(replica_count)]
    config = ClusterConfig.create("late", tuple(k.public_key for k in keys), {})
    listeners = [(await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] for _ in range(replica_count)]
    addresses = {i: ("127.0.0.1", listener.socket.getsockname()[1]) for i, listener in enumerate(listeners)}
    await listeners[3].aclose()  # Replica 3 is down at first: connecting to it is refused.
    options = NodeOptions(transport=TransportLimits(reconnect_delay_s_min=0.01, reconnect_delay_s_max=0.1))
    nodes = [ReplicaNode(config, i, keys[i].seed, ApproveEverything(), addresses, options=options)
             for i in range(replica_count)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                await nursery.start(nodes[i].run, listeners[i])
            with trio.fail_after(5):
                while nodes[0].counters["link-error:connect"] < 2:
                    await trio.sleep(0.01)
            assert not nodes[0].links[3].connected
            await nursery.start(nodes[3].run)  # Binds its configured address itself.
            with trio.fail_after(5):
                while any(node.peers_connected < replica_count - 1 for node in nodes):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_nodes_prune_their_stores_at_stable_checkpoints():
    limits = Limits(checkpoint_interval=2, log_window=8, max_in_flight_batches=4)
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], limits=limits) as cluster:
            async with cluster.open_client() as client:
                for number in range(6):
                    outcome = await client.submit({"tool": "read_file", "path": f"/workspace/{number}"})
                    assert outcome.status == "ALLOW", outcome.reason
            with trio.fail_after(5):
                while min(node.replica.low_water for node in cluster.nodes) < 4:
                    await trio.sleep(0.01)
            for node in cluster.nodes:
                low_water = node.replica.low_water
                await node.wait_durable()  # The store follows the core once the persister caught up.
                assert node.counters["store-pruned"] > 0
                stale = [m for m in node.store.signed
                         if isinstance(m, (PrePrepare, Prepare, Commit)) and m.seq < low_water]
                assert stale == []
                assert len(node.store.log) == 6  # Pruning drops signed protocol messages, never verdicts.


async def test_a_restarted_cluster_recovers_every_verdict_from_sqlite(tmp_path):
    paths = [tmp_path / f"replica-{i}.sqlite" for i in range(4)]
    stores = [SqliteStore(path) for path in paths]
    try:
        with trio.fail_after(30):
            async with open_local_cluster(honest_policies(), stores=stores) as cluster:
                async with cluster.open_client() as client:
                    statuses = [(await client.submit(action, Risk.LOW)).status for action in (BENIGN, DANGEROUS)]
                with trio.fail_after(5):
                    while min(node.finalized_count for node in cluster.nodes) < 2:
                        await trio.sleep(0.01)
                heads = [node.replica.execution.head_hash for node in cluster.nodes]
    finally:
        for store in stores:
            store.close()
    assert statuses == ["ALLOW", "DENY"] and len(set(heads)) == 1
    stores = [SqliteStore(path) for path in paths]
    try:
        with trio.fail_after(30):
            async with open_local_cluster(honest_policies(), stores=stores) as cluster:
                for node, head in zip(cluster.nodes, heads):
                    assert node.replica.execution.log_length == 2 and node.replica.execution.head_hash == head
                    assert [entry.decision for entry in node.store.load().log] == [Decision.ALLOW, Decision.DENY]
    finally:
        for store in stores:
            store.close()


class GatedStore(MemoryStore):
    """A store whose writes wait while ``gate`` is closed, as a slow fsync would."""

    waits_for_disk = True

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting_writes = 0

    def persist(self, items, **options):
        if not self.gate.is_set():
            self.waiting_writes += 1
        assert self.gate.wait(20), "the test never opened the gate"
        return super().persist(items, **options)


async def test_a_slow_disk_blocks_neither_the_event_loop_nor_the_rule_persist_before_send():
    store = GatedStore()
    try:
        with trio.fail_after(30):
            async with open_local_cluster([ApproveEverything() for _ in range(4)], client_ids=CLIENTS,
                                          stores=[store, MemoryStore(), MemoryStore(), MemoryStore()]) as cluster:
                assert await cluster.wait_connected()
                store.gate.clear()
                outcomes = []
                async with cluster.open_client() as client, trio.open_nursery() as nursery:
                    nursery.start_soon(_append, outcomes, client.submit(BENIGN, Risk.LOW, timeout_ms=20_000))
                    with trio.fail_after(5):
                        while store.waiting_writes < 1:
                            await trio.sleep(0.01)
                    # Replica 0 is stuck on its disk, yet its event loop still completes a handshake...
                    connection = await authenticated(cluster, cluster.config, Identity("client", "client-1"),
                                                     cluster.client_keys["client-1"].seed)
                    await connection.aclose()
                    await trio.sleep(0.2)
                    # ...and nothing it produced since has left it: the primary's vote and pre-prepare wait.
                    assert outcomes == [] and all(len(node.replica.slots) == 0 for node in cluster.nodes[1:])
                    store.gate.set()
                [outcome] = outcomes
                assert outcome.status == "ALLOW", outcome.reason
                primary_votes = [v for v in outcome.certificate.votes if v.replica_id == 0]
                assert primary_votes and all(v in store.signed for v in primary_votes)
    finally:
        store.gate.set()


# ---------------------------------------------------------------------------- bounded pieces

async def test_send_queue_drops_oldest_or_newest_and_counts():
    oldest = SendQueue(frames_max=3, bytes_max=1000, policy="drop-oldest")
    newest = SendQueue(frames_max=3, bytes_max=1000, policy="drop-newest")
    for frame in (b"1", b"2", b"3", b"4", b"5"):
        oldest.put(frame)
        newest.put(frame)
    assert (oldest.dropped, newest.dropped) == (2, 2)
    joined = b"".join  # Sealing is left out here: the queue hands frames to whatever seals them.
    assert await oldest.get_wire(0.01, 1000, joined) == b"345"
    assert await newest.get_wire(0.01, 1000, joined) == b"123"
    assert await oldest.get_wire(0.01, 1000, joined) == b""
    by_bytes = SendQueue(frames_max=100, bytes_max=10)
    for _ in range(5):
        by_bytes.put(b"abcd")
    assert len(by_bytes) == 2 and by_bytes.queued_bytes == 8 and by_bytes.dropped == 3
    assert await by_bytes.get_wire(0.01, 5, joined) == b"abcd"  # A batch stops at its byte budget.


def test_backoff_grows_exponentially_with_jitter_and_stays_capped():
    backoff = Backoff(0.01, 1.0, random.Random(3))
    delays = [backoff.next_delay_s() for _ in range(60)]
    assert all(0.01 <= delay <= 1.0 for delay in delays)
    assert max(delays[:3]) <= 0.08 and max(delays[10:]) > 0.5
    assert len(set(delays)) > 50  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.next_delay_s() == 0.01


def test_runtime_settings_are_checked_at_start_up():
    from bft.core import ConfigError
    assert TransportLimits().problem() is None
    assert "send_queue_policy" in TransportLimits(send_queue_policy="keep-all").problem()
    assert "send_queue_bytes" in TransportLimits(send_queue_bytes=10).problem()
    assert "max_handshakes_in_progress" in TransportLimits(max_connections=8, max_handshakes_in_progress=9).problem()
    with pytest.raises(ConfigError):
        NodeOptions(tick_ms=0).check()
    with pytest.raises(ConfigError):
        NodeOptions(transport=TransportLimits(idle_timeout_s=0)).check()


async def test_the_runtime_clock_is_monotonic_and_anchored_to_the_epoch():
    clock = RuntimeClock()
    first = clock.now_ms()
    assert abs(first - time.time_ns() // 1_000_000) < 1000
    target = first + 30
    await trio.sleep_until(clock.trio_time_at(target))
    assert clock.now_ms() >= target
    readings = [clock.now_ms() for _ in range(100)]
    assert readings == sorted(readings)
