"""Replica metrics: counters, gauges and the latency histogram move as verdicts finalize, each replica's numbers live in its own registry, prometheus-client's HTTP endpoint serves them, rejected messages are counted by reason, and label sets stay bounded whatever reasons a peer invents."""

from __future__ import annotations

import urllib.request

import trio
from prometheus_client.parser import text_string_to_metric_families

from bft.core import Decision, Limits, LogEntry, Request, Risk, canonical_action, encode
from bft.policies import ApproveEverything, CapabilityDenyList, ContextRules, PatternMatcher
from bft.runtime import FramedConnection, Identity, ReplicaMetrics, open_local_cluster, serve_metrics
from bft.runtime import _handshake
from bft.runtime._metrics import OTHER_REASON, REJECTION_REASONS

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
DANGEROUS = {"tool": "shell", "command": "rm -rf / --no-preserve-root", "cwd": "/"}
STATUS_GAUGES = ("bft_view", "bft_last_executed_seq", "bft_stable_checkpoint_seq", "bft_peers_connected")


def sample(metrics: ReplicaMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics and parse it with prometheus-client's own parser: {(sample name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_follow_finalized_verdicts_and_the_endpoint_serves_them():
    policies = [CapabilityDenyList(), ContextRules(), PatternMatcher(), ApproveEverything()]
    with trio.fail_after(30):
        async with open_local_cluster(policies, limits=Limits(checkpoint_interval=2)) as cluster:
            assert await cluster.wait_connected()
            async with cluster.open_client() as client:
                statuses = [(await client.submit(action, Risk.LOW)).status for action in (BENIGN, DANGEROUS)]
            assert statuses == ["ALLOW", "DENY"]
            with trio.fail_after(5):
                while min(node.replica.low_water for node in cluster.nodes) < 2:
                    await trio.sleep(0.01)
            for node in cluster.nodes:
                await node.wait_durable()
            server = serve_metrics(cluster.nodes[0].metrics, "127.0.0.1", 0)
            try:
                scraped = await trio.to_thread.run_sync(scrape, server.port)
            finally:
                server.close()
            for node in cluster.nodes:
                metrics = node.metrics
                assert sample(metrics, "bft_requests_total") == 2
                assert sample(metrics, "bft_verdicts_total", decision="ALLOW", risk="low") == 1
                assert sample(metrics, "bft_verdicts_total", decision="DENY", risk="low") == 1
                assert sample(metrics, "bft_verdicts_total", decision="ALLOW", risk="critical") == 0
                assert sample(metrics, "bft_consensus_latency_seconds_count") == 2
                assert sample(metrics, "bft_consensus_latency_seconds_sum") > 0
                assert sample(metrics, "bft_last_executed_seq") == node.replica.last_executed == 2
                assert sample(metrics, "bft_stable_checkpoint_seq") == node.replica.low_water == 2
                assert sample(metrics, "bft_checkpoints_total") == 1
                assert sample(metrics, "bft_view") == 0 and sample(metrics, "bft_view_changes_total") == 0
                assert sample(metrics, "bft_peers_connected") == 3
                assert sample(metrics, "bft_quorum_reachable") == 1
    first = cluster.nodes[0].metrics
    for name in STATUS_GAUGES:
        assert scraped[(name, ())] == sample(first, name)
    assert scraped[("bft_verdicts_total", (("decision", "DENY"), ("risk", "low")))] == 1
    assert scraped[("bft_consensus_latency_seconds_count", ())] == 2
    assert len({id(node.metrics.registry) for node in cluster.nodes}) == 4, "one registry per replica"


async def test_rejected_input_is_counted_by_reason_at_the_connection_and_in_the_core():
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)]) as cluster:
            node = cluster.nodes[0]
            stream = await trio.open_tcp_stream(*cluster.addresses[0])
            await stream.send_all(b"\xff" * 64)  # A length header far beyond the handshake's frame limit.
            await stream.aclose()
            connection = FramedConnection(await trio.open_tcp_stream(*cluster.addresses[0]),
                                          cluster.options.transport, "test")
            await _handshake.initiate(connection, cluster.config, Identity("client", "client-0"),
                                      cluster.client_keys["client-0"].seed, Identity("replica", 0))
            unsigned = Request("client-0", 1, Risk.LOW, canonical_action(BENIGN), 2**62, bytes(64))
            await connection.send(encode(unsigned))
            with trio.fail_after(5):
                while sample(node.metrics, "bft_messages_rejected_total", reason="bad-signature") < 1:
                    await trio.sleep(0.01)
                while sample(node.metrics, "bft_messages_rejected_total", reason="oversized-frame") < 1:
                    await trio.sleep(0.01)
            await connection.aclose()
            assert sample(node.metrics, "bft_messages_rejected_total", reason=OTHER_REASON) == 0
            assert node.replica.last_executed == 0


def test_label_sets_stay_bounded_whatever_reasons_arrive():
    metrics = ReplicaMetrics()
    for number in range(500):
        metrics.rejected(f"invented-{number}")
        metrics.refused(f"excuse-{number}")
    metrics.rejected("flood")
    rejected = [s for s in metrics.messages_rejected.collect()[0].samples if s.name.endswith("_total")]
    assert {s.labels["reason"] for s in rejected} == REJECTION_REASONS | {OTHER_REASON}
    assert sample(metrics, "bft_messages_rejected_total", reason=OTHER_REASON) == 500
    assert sample(metrics, "bft_messages_rejected_total", reason="flood") == 1
    refusals = [s for s in metrics.refusals.collect()[0].samples if s.name.endswith("_total")]
    assert len(refusals) == 2 and sample(metrics, "bft_refusals_total", reason=OTHER_REASON) == 500


def test_view_changes_and_checkpoints_count_transitions_and_latency_tracking_is_bounded():
    metrics = ReplicaMetrics(max_tracked_requests=3)
    metrics.observe_replica(view=2, view_active=True, last_executed=4, stable_seq=4)  # a restart: the baseline
    metrics.observe_replica(view=3, view_active=False, last_executed=4, stable_seq=4)  # view change under way
    metrics.observe_replica(view=3, view_active=True, last_executed=6, stable_seq=6)
    metrics.observe_replica(view=3, view_active=True, last_executed=7, stable_seq=6)
    assert sample(metrics, "bft_view_changes_total") == 1 and sample(metrics, "bft_checkpoints_total") == 1
    assert sample(metrics, "bft_view") == 3 and sample(metrics, "bft_last_executed_seq") == 7
    for number in range(1, 6):
        metrics.request_accepted(("alice", number), now_s=10.0)
    for number in range(1, 6):
        metrics.verdict_finalized(log_entry("alice", number), now_s=10.5)
    # Only the three newest arrivals were kept; the older two finalized without a measurement.
    assert sample(metrics, "bft_consensus_latency_seconds_count") == 3
    assert sample(metrics, "bft_consensus_latency_seconds_sum") == 1.5
    assert sample(metrics, "bft_verdicts_total", decision="ALLOW", risk="medium") == 5


def log_entry(client_id: str, number: int) -> LogEntry:
    return LogEntry(number, number, client_id, number, bytes(32), Risk.MEDIUM, Decision.ALLOW, "ok", 0, 0,
                    bytes(32), bytes(32), bytes(32))
