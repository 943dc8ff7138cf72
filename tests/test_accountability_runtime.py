"""Accountability in the running cluster: an operator's quarantine, ordered through the client library, shows in every replica's metrics (counts and per-replica gauges) and in one structured JSON log line per event at its log position; a release and a refused command show too; the gauges rebuild from the durable log after a restart; and what the metrics expose (suspects, evidence, active blocklist patterns) parses back into the status view with bounded labels; and the offline listing describes every event in a verdict log and flags unreadable ones."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sqlite3

import trio

from bft.cluster import AccountabilityView, create_cluster_directory, describe_event, parse_metrics, verdict_log_events
from bft.cli import EXIT_FAILED, EXIT_OK, main
from bft.core import (GENESIS_HASH, AccountabilityOptions, AccountabilityState, ClusterConfig, Decision, KeyPair,
                      LogEntry, Risk, canonical_action, operator_document)
from bft.core._accountability_state import EvidenceRecord, QuarantineRecord, Suspicion
from bft.policies import CapabilityDenyList, ContextRules, PatternMatcher, RatePolicy
from bft.runtime import JsonFormatter, ReplicaMetrics, open_local_cluster, serve_metrics
from bft.runtime._logging import log_accountability_events
from bft.storage import MemoryStore

OPTIONS = AccountabilityOptions(suspicion_window_entries=50, suspicion_min_votes=5)


def policies() -> list:
    return [CapabilityDenyList(), ContextRules(), PatternMatcher(), RatePolicy()]


def gauge(metrics: ReplicaMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def quarantined_by_gauge(metrics: ReplicaMetrics, replica_count: int) -> list[int]:
    return [r for r in range(replica_count) if gauge(metrics, "bft_replica_quarantined", replica=str(r)) == 1]


async def operator_command(cluster, operator, kind: str, replica_id: int, note: str = ""):
    outcome = await operator.submit(canonical_action(operator_document(kind, replica_id, note)), Risk.LOW)
    assert outcome.certificate is not None, outcome.reason
    for node in cluster.nodes:  # Every replica executes it; wait until each has made it durable.
        with trio.fail_after(10):
            while node.replica.last_executed < outcome.certificate.seq:
                await trio.sleep(0.01)
        await node.wait_durable()
    return outcome


async def test_an_operator_quarantine_shows_in_every_replicas_metrics_and_logs_and_a_release_clears_it(caplog):
    caplog.set_level(logging.INFO, logger="bft.runtime.accountability")
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            cluster = await stack.enter_async_context(
                open_local_cluster(policies(), accountability=OPTIONS, operator_ids=("alice",)))
            assert cluster.config.accountability == OPTIONS
            assert await cluster.wait_connected()
            for node in cluster.nodes:  # Primed at start: every replica id has a series, all zero.
                assert [gauge(node.metrics, "bft_replica_quarantined", replica=str(r)) for r in range(4)] == [0] * 4
                assert gauge(node.metrics, "bft_quarantined_replicas") == 0

            operator = await stack.enter_async_context(cluster.open_client("operator:alice"))
            outcome = await operator_command(cluster, operator, "quarantine", 3, "INC-42")
            assert outcome.status == "ALLOW", outcome.reason
            for node in cluster.nodes:
                metrics = node.metrics
                assert quarantined_by_gauge(metrics, 4) == [3]
                assert gauge(metrics, "bft_quarantined_replicas") == 1
                assert gauge(metrics, "bft_suspected_replicas") == 0
                assert gauge(metrics, "bft_evidence_records") == 0
                assert gauge(metrics, "bft_blocklist_patterns_active") == 0

            quarantine_lines = [record for record in caplog.records if getattr(record, "event", "") == "quarantined"]
            assert sorted(record.replica_id for record in quarantine_lines) == [0, 1, 2, 3]
            position = quarantine_lines[0].position  # Executed at one log position on every replica.
            for record in quarantine_lines:
                assert (record.replica, record.position, record.levelname) == (3, position, "WARNING")
                line = json.loads(JsonFormatter().format(record))
                assert line["event"] == "quarantined" and line["replica"] == 3 and line["position"] == position
                assert line["details"] == {"replica": 3, "cause": "operator", "by": "operator:alice",
                                           "detail": "INC-42"}

            # A second quarantine without proof would exceed f.
            refused = await operator_command(cluster, operator, "quarantine", 2)
            assert refused.status == "DENY"
            assert refused.reason == "command rejected: without proof at most f = 1 replicas may be quarantined"
            assert all(quarantined_by_gauge(node.metrics, 4) == [3] for node in cluster.nodes)

            released = await operator_command(cluster, operator, "release", 3, "fixed")
            assert released.status == "ALLOW"
            for node in cluster.nodes:
                assert quarantined_by_gauge(node.metrics, 4) == []
                assert gauge(node.metrics, "bft_quarantined_replicas") == 0
            release_lines = [record for record in caplog.records if getattr(record, "event", "") == "released"]
            assert len(release_lines) == 4 and {record.levelname for record in release_lines} == {"INFO"}
            assert len({record.position for record in release_lines}) == 1
            assert release_lines[0].position > position


async def test_a_restarted_replica_shows_the_quarantine_it_recovers_from_its_log():
    stores = [MemoryStore() for _ in range(4)]
    with trio.fail_after(30):
        async with open_local_cluster(policies(), accountability=OPTIONS, operator_ids=("alice",),
                                      stores=stores) as cluster:
            assert await cluster.wait_connected()
            async with cluster.open_client("operator:alice") as operator:
                assert (await operator_command(cluster, operator, "quarantine", 1)).status == "ALLOW"
        async with open_local_cluster(policies(), accountability=OPTIONS, operator_ids=("alice",),
                                      stores=stores) as restarted:
            for node in restarted.nodes:  # Before any new entry: the gauges come from the replayed log.
                assert quarantined_by_gauge(node.metrics, 4) == [1]
                assert gauge(node.metrics, "bft_quarantined_replicas") == 1


def test_the_json_log_line_of_an_event_is_one_line_with_its_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.accountability.lines")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        entry = _entry_with_events([{"event": "pattern-active", "pattern": "drop table users", "endorsers": [0, 2]},
                                    {"event": "suspected", "replica": 2, "reason": "approval rate 1000/1000"}])
        assert log_accountability_events(logger, 1, entry) == 2
        assert log_accountability_events(logger, 1, _entry_with_events([])) == 0
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line["replica"], line["position"], line["level"]) for line in lines] == [
        ("pattern-active", None, 7, "INFO"), ("suspected", 2, 7, "WARNING")]
    assert lines[0]["details"] == {"pattern": "drop table users", "endorsers": [0, 2]}


def _entry_with_events(events: list[dict]) -> LogEntry:
    return LogEntry(7, 7, "client-0", 1, bytes(32), Risk.LOW, Decision.ALLOW, "approved", 0, 10, bytes(32),
                    events=json.dumps(events) if events else "", previous_hash=GENESIS_HASH, entry_hash=bytes(32))


def state_with_everything() -> AccountabilityState:
    """A state holding a quarantine, a suspect, two proofs, one active and one lone pattern (set directly)."""
    keys = tuple(KeyPair.from_seed(bytes([index]) * 32).public_key for index in range(4))
    state = AccountabilityState(ClusterConfig.create("metrics", keys, {}))
    state.quarantined[2] = QuarantineRecord(2, "evidence", "replica:0", 5, "two different prepare messages")
    state.suspects[1] = Suspicion(1, "approval rate 1000/1000, peers' median 500/1000", 9)
    state.evidence.extend([EvidenceRecord(2, "prepare", 0, 4, "replica:0", 5),
                           EvidenceRecord(2, "commit", 0, 4, "replica:1", 6)])
    state.endorsements['say "pwned" now'] = {0: 10**9, 1: 10**9}  # f+1 = 2 endorsers: active.
    state.endorsements["only one endorser"] = {3: 10**9}
    return state


def test_metrics_map_the_accountability_state_and_status_parses_it_back():
    metrics = ReplicaMetrics()
    state = state_with_everything()
    metrics.observe_accountability(state, 4)
    assert quarantined_by_gauge(metrics, 4) == [2]
    assert [gauge(metrics, "bft_replica_suspected", replica=str(r)) for r in range(4)] == [0, 1, 0, 0]
    assert [gauge(metrics, "bft_replica_evidence_records", replica=str(r)) for r in range(4)] == [0, 0, 2, 0]
    assert gauge(metrics, "bft_blocklist_pattern_endorsers", pattern='say "pwned" now') == 2
    assert gauge(metrics, "bft_blocklist_pattern_endorsers", pattern="only one endorser") is None
    gauges, view = parse_metrics(metrics.exposition().decode())
    assert view == AccountabilityView(quarantined=(2,), suspects=(1,), evidence_records=2,
                                      evidence_by_replica=((2, 2),), blocklist_patterns=2,
                                      active_patterns=(('say "pwned" now', 2),))

    del state.endorsements['say "pwned" now']  # No longer active: its series goes, the label set shrinks.
    state.quarantined.clear()
    metrics.observe_accountability(state, 4)
    assert gauge(metrics, "bft_blocklist_pattern_endorsers", pattern='say "pwned" now') is None
    _, view = parse_metrics(metrics.exposition().decode())
    assert (view.quarantined, view.active_patterns, view.blocklist_patterns) == ((), (), 1)


def test_metrics_without_accountability_gauges_parse_to_no_view():
    assert parse_metrics("# TYPE bft_view gauge\nbft_view 3.0\n") == ({"view": 3}, None)


def test_status_and_operator_listings_print_suspects_evidence_and_active_patterns(tmp_path, capsys):
    cluster = create_cluster_directory(tmp_path / "cluster", 4)
    metrics = ReplicaMetrics()
    metrics.observe_accountability(state_with_everything(), 4)
    host, port = cluster.replicas[1].metrics_address
    with serve_metrics(metrics, host, port):  # Replica 1's endpoint answers; the others are down.
        assert main(["status", "--config", str(cluster.path), "--timeout-ms", "500"]) == EXIT_FAILED
        status_out = capsys.readouterr().out
        assert main(["operator", "evidence", "--config", str(cluster.path), "--timeout-ms", "500"]) == EXIT_OK
        evidence_out = capsys.readouterr().out
        assert main(["operator", "blocklist", "--config", str(cluster.path), "--json"]) == EXIT_OK
        blocklist = json.loads(capsys.readouterr().out)
    assert status_out.endswith("accountability (replica 1, executed seq 0):\n"
                               "  quarantined: 2\n"
                               "  suspected:   1\n"
                               "  evidence:    2 records (2 against replica 2)\n"
                               "  blocklist:   1 active of 2 patterns endorsed\n"
                               '    "say \\"pwned\\" now" (endorsed by 2 replicas)\n'), status_out
    assert evidence_out == ("2 evidence records (replica 1, executed seq 0)\n"
                            "  replica 2: 2 proofs of equivocation, quarantined\n")
    assert blocklist == {"replica": 1, "executed_seq": 0, "blocklist_patterns": 2,
                         "active_patterns": [{"pattern": 'say "pwned" now', "endorsers": 2}]}


def test_offline_listings_describe_each_event_and_flag_unreadable_ones(tmp_path, capsys):
    database = tmp_path / "replica.db"
    evidence = {"event": "evidence", "accused": 2, "phase": "prepare", "view": 0, "seq": 4, "by": "replica:0"}
    endorsed = {"event": "endorsed", "pattern": "drop table users", "by": 1, "expires_ms": 99}
    with sqlite3.connect(database) as connection:  # Only the columns the listing reads.
        connection.execute("CREATE TABLE verdict_log (position INTEGER, events TEXT)")
        connection.executemany("INSERT INTO verdict_log VALUES (?, ?)",
                               [(1, ""), (2, json.dumps([evidence, endorsed])), (3, "{not json")])
    assert list(verdict_log_events(database)) == [(2, evidence), (2, endorsed), (3, None)]
    assert describe_event(evidence) == 'evidence replica 2 (phase="prepare", view=0, seq=4, by="replica:0")'
    assert describe_event(endorsed) == 'endorsed (pattern="drop table users", by=1, expires_ms=99)'
    assert main(["operator", "evidence", "--db", str(database)]) == EXIT_FAILED  # The unreadable entry counts.
    assert capsys.readouterr().out == (f"position 2: {describe_event(evidence)}\n"
                                       "position 3: (unreadable events: run bft audit verify on this log)\n"
                                       f"2 events in {database}\n")
