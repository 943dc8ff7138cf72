"""Connection admission: silent connections cannot shut out clients or peers (a newcomer displaces the oldest pending handshake, per address and in all, while connections naming a configured identity have their own pool), idle client sessions are closed, every refusal is counted, every limit is set from the cluster file, and with 1,000 idle TCP connections held open against the primary a client still gets verdicts and the replicas, cut apart and healed, reach each other again."""

from __future__ import annotations

import resource
import tomllib
from collections import Counter

import pytest
import tomli_w
import trio

from bft.cluster import create_cluster_directory, load_cluster_file
from bft.core import Risk
from bft.policies import ApproveEverything
from bft.runtime import Identity, NodeOptions, TransportLimits, open_local_cluster
from bft.runtime._admission import Admission

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
IDLE_CONNECTIONS = 1000


def later() -> float:
    return trio.current_time() + 60


def admission(**limits) -> tuple[Admission, Counter]:
    counters: Counter = Counter()
    return Admission(TransportLimits(**limits), counters), counters


async def test_a_new_connection_displaces_the_oldest_silent_one_from_its_address_then_overall():
    pool, counters = admission(max_handshakes_in_progress=4, max_handshakes_per_address=2)
    first, second = pool.admit("10.0.0.1", later()), pool.admit("10.0.0.1", later())
    third = pool.admit("10.0.0.1", later())
    assert first.evicted and first.cancel_scope.cancel_called
    assert not second.evicted and not third.evicted
    others = [pool.admit(f"10.0.0.{host}", later()) for host in (2, 3)]
    assert pool.anonymous_count == 4 and not any(pending.evicted for pending in others)
    pool.admit("10.0.0.4", later())  # The pool is full: the oldest of all goes, whatever its address.
    assert second.evicted and pool.anonymous_count == 4
    assert counters["connection-refused:evicted"] == 2


async def test_a_connection_that_names_a_configured_identity_is_out_of_the_strangers_reach():
    pool, counters = admission(max_handshakes_in_progress=2, max_handshakes_per_address=2,
                               max_handshakes_per_identity=2)
    replica = pool.admit("127.0.0.1", later())
    pool.identify(replica, Identity("replica", 1))
    strangers = [pool.admit("127.0.0.1", later()) for _ in range(50)]
    assert not replica.evicted and not replica.cancel_scope.cancel_called
    assert pool.anonymous_count == 2 and pool.identified_count == 1
    assert sum(pending.evicted for pending in strangers) == 48 == counters["connection-refused:evicted"]
    # Only claims of the same identity compete for its slots, the oldest giving way.
    claims = []
    for _ in range(2):
        claim = pool.admit("127.0.0.1", later())
        pool.identify(claim, Identity("replica", 1))
        claims.append(claim)
    assert replica.evicted and not any(claim.evicted for claim in claims)
    for claim in claims:
        pool.release(claim)
        pool.release(claim)  # Releasing twice frees one slot once.
    assert pool.identified_count == 0


def raise_descriptor_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit of {hard} file descriptors is below the {needed} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def open_idle_connections(address, count: int) -> list[trio.SocketStream]:
    """``count`` connections that never send a byte; the replica may close them, the test holds them."""
    streams = []
    for _ in range(count):
        streams.append(await trio.open_tcp_stream(*address))
    return streams


@pytest.mark.slow
async def test_a_thousand_idle_connections_shut_out_neither_clients_nor_peers():
    raise_descriptor_limit(2 * 4 * IDLE_CONNECTIONS + 512)  # Both ends of every connection live in this process.
    with trio.fail_after(90):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], relayed=True,
                                      client_ids=("client-0", "client-1")) as cluster:
            primary = cluster.nodes[0]
            assert await cluster.wait_connected()
            idle = []
            for address in cluster.addresses.values():  # A thousand against every replica.
                idle += await open_idle_connections(address, IDLE_CONNECTIONS)
            try:
                async with cluster.open_client() as client:
                    for _ in range(3):
                        outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=10_000)
                        assert outcome.status == "ALLOW", outcome.reason
                # Every replica link to the primary is cut and must get back in past the idle crowd.
                reconnections_before = [node.links[0].connections for node in cluster.nodes[1:]]
                cluster.partition({0}, {1, 2, 3})
                await trio.sleep(0.2)
                cluster.heal()
                assert await cluster.wait_connected(timeout_s=20)
                assert all(node.links[0].connections > before
                           for node, before in zip(cluster.nodes[1:], reconnections_before))
                async with cluster.open_client("client-1") as client:
                    outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=10_000)
                    assert outcome.status == "ALLOW", outcome.reason
            finally:
                for stream in idle:
                    await trio.aclose_forcefully(stream)
            for node in cluster.nodes:
                refused = node.counters["connection-refused:evicted"] + node.counters["connection-refused:timeout"]
                assert refused >= IDLE_CONNECTIONS - node.options.transport.max_handshakes_in_progress
                assert node.replica.last_executed == 4


async def test_an_authenticated_client_that_asks_nothing_is_disconnected_and_counted():
    limits = TransportLimits(client_idle_timeout_s=0.3)
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)],
                                      options=NodeOptions(transport=limits)) as cluster:
            node = cluster.nodes[0]
            async with cluster.open_client() as client:
                assert await client.wait_connected()
                with trio.fail_after(10):
                    while node.counters["connection-dropped:idle-session"] < 1:
                        await trio.sleep(0.05)
                # The client reconnects on its own and is served as before.
                outcome = await client.submit(BENIGN, Risk.LOW, timeout_ms=10_000)
                assert outcome.status == "ALLOW", outcome.reason


def test_every_admission_limit_is_set_in_the_cluster_file(tmp_path):
    create_cluster_directory(tmp_path, 4, 1)
    document = tomllib.loads((tmp_path / "cluster.toml").read_text())
    chosen = {"handshake_timeout_s": 0.5, "max_handshakes_in_progress": 32, "max_handshakes_per_address": 4,
              "max_handshakes_per_identity": 3, "client_idle_timeout_s": 120.0, "max_connections": 128}
    document["node"] = {"transport": chosen}
    (tmp_path / "cluster.toml").write_text(tomli_w.dumps(document))
    transport = load_cluster_file(tmp_path / "cluster.toml").node_options.transport
    assert {name: getattr(transport, name) for name in chosen} == chosen
    defaults = TransportLimits()
    assert defaults.handshake_timeout_s == 1.0 and defaults.problem() is None
    assert "max_handshakes_per_address" in TransportLimits(max_handshakes_per_address=0).problem()
    assert "max_handshakes_per_identity" in TransportLimits(max_handshakes_per_identity=0).problem()
