"""Hostile input against the TCP port of a live replica process (started with `bft replica` through LocalProcessCluster): garbage bytes, a signed request whose action nests 10,000 deep, a truncated frame, an oversize frame and an unknown key in the handshake each cost only that connection (the replica closes it and counts the reason in its metrics); a valid client replaying an old signed request gets the verdict already finalized, with no second execution, and a different action under an old number is rejected; after each, the replica keeps serving another client."""

from __future__ import annotations

import dataclasses
import json

import pytest
import trio

from bft import Client
from bft.cluster import ClusterFile, LocalProcessCluster, create_cluster_directory, load_cluster_file, scrape
from bft.core import (ClusterConfig, KeyPair, RemoteProtocolError, Reply, Request, Risk, Signer, Verifier, decode,
                      encode)
from bft.runtime import FramedConnection, Identity
from bft.runtime import _handshake
from bft.runtime._link_cipher import SEAL_OVERHEAD_BYTES
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow  # real processes fed bad input: make test runs it, make test-fast does not

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
TARGET = 0  # The replica under attack.


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> ClusterFile:
    directory = tmp_path_factory.mktemp("live") / "cluster"
    create_cluster_directory(directory, 4, 2)
    processes = LocalProcessCluster(directory / "cluster.toml")
    processes.start_all()
    try:
        processes.wait_listening(timeout_s=30)
        yield load_cluster_file(directory / "cluster.toml")
    finally:
        results = processes.stop_all(timeout_s=10)
        assert [result.outcome for result in results] == ["terminated"] * 4  # None crashed or hung.
        assert [processes.exit_code(replica_id) for replica_id in range(4)] == [0] * 4


def metric(cluster: ClusterFile, name: str, **labels: str) -> float:
    """One sample of the target replica's metrics (a family's first sample with these labels)."""
    text = scrape(cluster.replica(TARGET).metrics_address)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def rejections(cluster: ClusterFile, reason: str) -> float:
    return metric(cluster, "bft_messages_rejected_total", reason=reason)


async def raw_stream(cluster: ClusterFile) -> trio.SocketStream:
    return await trio.open_tcp_stream(*cluster.replica(TARGET).address)


async def authenticated(cluster: ClusterFile, config: ClusterConfig, client_id: str, seed: bytes) -> FramedConnection:
    connection = FramedConnection(await raw_stream(cluster), cluster.node_options.transport, "test")
    await _handshake.initiate(connection, config, Identity("client", client_id), seed, Identity("replica", TARGET))
    return connection


async def assert_closed_by_replica(stream: trio.SocketStream, timeout_s: float = 10.0) -> None:
    """Read (skipping keep-alives and anything else) until the replica closes the connection."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return
            except trio.BrokenResourceError:
                return


async def assert_serves_another_client(cluster: ClusterFile) -> None:
    async with Client.open(cluster, "client-1") as client:
        outcome = await client.submit(BENIGN, "low", timeout_ms=5000)
    assert outcome.status == "ALLOW", outcome.reason
    outcome.certificate.verify(cluster.config)


async def wait_for_count(cluster: ClusterFile, reason: str, above: float) -> None:
    with trio.fail_after(10):
        while rejections(cluster, reason) <= above:
            await trio.sleep(0.05)


async def send_garbage(cluster: ClusterFile) -> trio.SocketStream:
    stream = await raw_stream(cluster)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: replica\r\n\r\n")  # "GET " read as a 1.2 GB length.
    return stream


async def send_truncated_frame(cluster: ClusterFile) -> trio.SocketStream:
    connection = await authenticated(cluster, cluster.config, "client-0", cluster.client_seed("client-0"))
    await connection.stream.send_all((256).to_bytes(4, "big") + b"only ten b")
    await connection.stream.send_eof()
    return connection.stream


async def send_oversize_frame(cluster: ClusterFile) -> trio.SocketStream:
    connection = await authenticated(cluster, cluster.config, "client-0", cluster.client_seed("client-0"))
    # One byte beyond the largest sealed frame (a maximum payload plus the link's seal).
    too_large = cluster.node_options.transport.max_frame_bytes + SEAL_OVERHEAD_BYTES + 1
    await connection.stream.send_all(too_large.to_bytes(4, "big") + b"x" * 1000)
    return connection.stream


async def handshake(cluster: ClusterFile, config: ClusterConfig, client_id: str, seed: bytes) -> trio.SocketStream:
    """A handshake the replica must refuse; returns the stream it refused."""
    connection = FramedConnection(await raw_stream(cluster), cluster.node_options.transport, "test")
    with pytest.raises((RemoteProtocolError, trio.BrokenResourceError)):
        await _handshake.initiate(connection, config, Identity("client", client_id), seed,
                                  Identity("replica", TARGET))
    return connection.stream


STRANGER = KeyPair.from_seed(bytes(range(32)))


async def handshake_with_an_unknown_identity(cluster: ClusterFile) -> trio.SocketStream:
    config = cluster.config
    mallory_config = ClusterConfig.create(config.cluster_id, config.replica_keys, {"mallory": STRANGER.public_key})
    return await handshake(cluster, mallory_config, "mallory", STRANGER.seed)


async def handshake_with_someone_elses_key(cluster: ClusterFile) -> trio.SocketStream:
    return await handshake(cluster, cluster.config, "client-0", STRANGER.seed)


async def send_a_request_nested_10000_deep(cluster: ClusterFile) -> trio.SocketStream:
    """A validly signed request whose action is 10,000 nested lists (a client library would refuse to sign it)."""
    connection = await authenticated(cluster, cluster.config, "client-0", cluster.client_seed("client-0"))
    action = '{"a":' + "[" * 10_000 + "]" * 10_000 + "}"
    request = Signer(cluster.config.cluster_id, cluster.client_seed("client-0")).sign(
        Request("client-0", 2**40, Risk.LOW, action, 2**62, bytes(64)))
    await connection.send(encode(request))
    return connection.stream


@pytest.mark.parametrize("attack, reason", [
    (send_a_request_nested_10000_deep, "schema"),
    (send_garbage, "oversized-frame"),
    (send_truncated_frame, "truncated-frame"),
    (send_oversize_frame, "oversized-frame"),
    (handshake_with_an_unknown_identity, "unknown-identity"),
    (handshake_with_someone_elses_key, "bad-key"),
])
async def test_bad_bytes_cost_only_that_connection(cluster, attack, reason):
    with trio.fail_after(30):
        executed_before = metric(cluster, "bft_last_executed_seq")
        count_before = rejections(cluster, reason)
        stream = await attack(cluster)
        await assert_closed_by_replica(stream)
        await wait_for_count(cluster, reason, above=count_before)
        await stream.aclose()
        assert metric(cluster, "bft_last_executed_seq") == executed_before  # No state change.
        await assert_serves_another_client(cluster)


async def receive_reply(connection: FramedConnection, config: ClusterConfig) -> Reply:
    with trio.fail_after(10):
        while True:
            payload = await connection.receive()
            assert payload is not None, "the replica closed the connection instead of answering"
            if payload:
                message = decode(payload, config.limits.max_message_bytes)
                assert isinstance(message, Reply), type(message).__name__
                return message


async def test_a_replayed_request_gets_the_finalized_verdict_and_is_not_executed_again(cluster):
    config = cluster.config
    with trio.fail_after(40):
        async with Client.open(cluster, "client-0") as client:
            original = await client.submit(BENIGN, "low", timeout_ms=1000)
        assert original.status == "ALLOW", original.reason
        await trio.sleep(1.1)  # The replay arrives after the request's deadline: only the old answer is left.
        executed_before = metric(cluster, "bft_last_executed_seq")
        assert executed_before >= original.certificate.seq

        connection = await authenticated(cluster, config, "client-0", cluster.client_seed("client-0"))
        await connection.send(encode(original.request))
        reply = await receive_reply(connection, config)
        Verifier(config.cluster_id, config.replica_keys, dict(config.client_keys)).verify(reply)
        assert (reply.replica_id, reply.request_number, reply.seq, reply.decision.value) == \
            (TARGET, original.request_number, original.certificate.seq, "ALLOW")

        # The same number with another action, validly signed: refused, nothing executes.
        conflicting_before = rejections(cluster, "conflicting-request")
        forged_action = json.dumps({"tool": "shell", "command": "id"}, separators=(",", ":"), sort_keys=True)
        conflicting = Signer(config.cluster_id, cluster.client_seed("client-0")).sign(
            dataclasses.replace(original.request, action=forged_action, signature=bytes(64)))
        await connection.send(encode(conflicting))
        await wait_for_count(cluster, "conflicting-request", above=conflicting_before)
        await connection.aclose()
        assert metric(cluster, "bft_last_executed_seq") == executed_before
        await assert_serves_another_client(cluster)
