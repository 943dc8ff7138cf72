"""The audit tool accepts a real cluster's verdict log and names the position of every kind of tampering.

A simulated cluster writes replica 0's log into SQLite.  Each test copies that
file, changes it the way an attacker with write access could (dropping the
append-only triggers first), and checks the exact (position, kind) problems
``verify_database`` reports; pure ``verify_log`` cases cover what a file
cannot hold.  It also runs the hand-check query quoted in ``bft.audit``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import sqlite3

import pytest

import bft.audit
from bft.audit import (CHAIN_LINK_QUERY, LOG_COLUMNS, PROBLEMS_MAX, log_entry_from_row, log_entry_to_row, main,
                       verify_database, verify_log)
from bft.core import GENESIS_HASH, Decision, LogEntry, Risk
from bft.policy import PolicyDecision
from bft.storage import SqliteStore
from bft.testing import SimCluster

REQUEST_COUNT = 12
INSERT_ENTRY = f"INSERT INTO verdict_log ({', '.join(LOG_COLUMNS)}) VALUES ({', '.join('?' * len(LOG_COLUMNS))})"


class DenyEveryThird:
    """A policy with a mix of answers, so the log holds both ALLOW and DENY verdicts."""

    name = "deny-every-third"

    def evaluate(self, action, context) -> PolicyDecision:
        if action["number"] % 3 == 0:
            return PolicyDecision.deny("every third action is refused")
        return PolicyDecision.allow("fine")


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """Replica 0 of a simulated cluster logs into SQLite; returns (database path, replica 1's log)."""
    path = tmp_path_factory.mktemp("audit") / "replica-0.db"
    cluster = SimCluster(4, seed=5, client_ids=("alice", "bob"), policies={i: DenyEveryThird() for i in range(4)})
    cluster.stores[0] = SqliteStore(path)
    for number in range(REQUEST_COUNT):
        cluster.submit(("alice", "bob")[number % 2], {"number": number}, risk=(Risk.LOW, Risk.MEDIUM)[number % 2])
    assert cluster.run_until(lambda: all(len(store.load().log) == REQUEST_COUNT for store in cluster.stores),
                             max_ms=30_000)
    cluster.stores[0].close()
    return path, cluster.stores[1].load().log


@pytest.fixture
def database(cluster_run, tmp_path):
    """A private copy of replica 0's file, free to tamper with."""
    path = tmp_path / "copy.db"
    shutil.copyfile(cluster_run[0], path)
    return path


def tamper(path, *statements, parameters=()) -> None:
    """Change the file as an attacker would: first drop the triggers that make the log append-only."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("DROP TRIGGER IF EXISTS verdict_log_no_update")
        connection.execute("DROP TRIGGER IF EXISTS verdict_log_no_delete")
        connection.execute("DROP TRIGGER IF EXISTS verdict_log_extends_chain")
        for statement in statements:
            connection.execute(statement, parameters)
        connection.commit()
    finally:
        connection.close()


def read_log(path) -> list[LogEntry]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM verdict_log ORDER BY position").fetchall()
    finally:
        connection.close()
    return [log_entry_from_row(row) for row in rows]


def problems_of(report) -> set[tuple[int, str]]:
    return {(problem.position, problem.kind) for problem in report.problems}


def rehashed(entry: LogEntry, **changes) -> LogEntry:
    changed = dataclasses.replace(entry, **changes)
    return dataclasses.replace(changed, entry_hash=changed.computed_hash())


# --------------------------------------------------------------------- intact logs

def test_a_simulated_cluster_log_verifies(cluster_run, database):
    _, other_replica_log = cluster_run
    report = verify_database(database)
    assert report.ok, str(report)
    assert report.entries == REQUEST_COUNT and report.problems == ()
    # Correct replicas agree byte for byte, so another replica's head is a valid anchor.
    assert report.head_hash == other_replica_log[-1].entry_hash.hex()
    assert verify_database(database, expected_head=(3, other_replica_log[2].entry_hash)).ok
    assert verify_log(other_replica_log).ok
    decisions = {entry.decision for entry in read_log(database)}
    assert decisions == {Decision.ALLOW, Decision.DENY}
    with SqliteStore(database) as store:
        assert store.load().log == other_replica_log


def test_an_empty_log_verifies_with_the_genesis_head():
    report = verify_log([])
    assert report.ok and report.entries == 0 and report.head_hash == GENESIS_HASH.hex()


def test_auditing_does_not_change_the_file(database):
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    assert verify_database(database).ok
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_a_missing_or_foreign_file_is_reported_not_raised(tmp_path):
    missing = verify_database(tmp_path / "absent.db")
    assert not missing.ok and problems_of(missing) == {(0, "file")}
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    assert problems_of(verify_database(garbage)) == {(0, "file")}
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    report = verify_database(empty)
    assert problems_of(report) == {(0, "file")} and "verdict_log" in report.problems[0].detail


# --------------------------------------------------------------------- each kind of tampering, in the file

def test_the_intact_file_refuses_edits_deletes_and_duplicates(database):
    log = read_log(database)
    duplicate = rehashed(log[-1], position=len(log) + 1, previous_hash=log[-1].entry_hash, seq=log[-1].seq + 1,
                         client_id=log[4].client_id, request_number=log[4].request_number)
    connection = sqlite3.connect(database)
    try:
        for statement, parameters in (("UPDATE verdict_log SET decision = 'ALLOW'", ()),
                                      ("DELETE FROM verdict_log WHERE position = 3", ()),
                                      (INSERT_ENTRY, log_entry_to_row(duplicate))):
            with pytest.raises(sqlite3.IntegrityError):
                connection.execute(statement, parameters)
    finally:
        connection.close()
    assert verify_database(database).ok


@pytest.mark.parametrize("position", [1, 6, REQUEST_COUNT])
def test_an_edited_decision_is_found_at_its_position(database, position):
    tamper(database, "UPDATE verdict_log SET decision = CASE decision WHEN 'ALLOW' THEN 'DENY' ELSE 'ALLOW' END "
                     f"WHERE position = {position}")
    report = verify_database(database)
    assert not report.ok and problems_of(report) == {(position, "hash")}


def test_an_edited_reason_is_found(database):
    tamper(database, "UPDATE verdict_log SET reason = 'tampered after the fact' WHERE position = 4")
    assert problems_of(verify_database(database)) == {(4, "hash")}


def test_a_deleted_row_is_found_as_a_gap(database):
    tamper(database, "DELETE FROM verdict_log WHERE position = 5")
    report = verify_database(database)
    assert problems_of(report) == {(5, "gap"), (6, "link")}
    assert report.entries == REQUEST_COUNT - 1


def test_deleting_the_newest_rows_needs_a_trusted_head_to_be_seen(cluster_run, database):
    _, other_replica_log = cluster_run
    tamper(database, f"DELETE FROM verdict_log WHERE position > {REQUEST_COUNT - 2}")
    # A shorter log is a valid chain on its own: this is the documented limit of a self-contained audit.
    assert verify_database(database).ok
    anchor = (REQUEST_COUNT, other_replica_log[-1].entry_hash)
    assert problems_of(verify_database(database, expected_head=anchor)) == {(REQUEST_COUNT, "truncated")}


def test_swapped_rows_are_found_at_both_positions(database):
    first = 7
    tamper(database,
           f"UPDATE verdict_log SET position = 1000 WHERE position = {first}",
           f"UPDATE verdict_log SET position = {first} WHERE position = {first + 1}",
           f"UPDATE verdict_log SET position = {first + 1} WHERE position = 1000")
    report = verify_database(database)
    # Both moved rows fail their own hash and link; the row after them no longer links either.
    assert problems_of(report) == {(first, "hash"), (first, "link"), (first + 1, "hash"), (first + 1, "link"),
                                   (first + 2, "link")}


def test_a_changed_entry_hash_breaks_the_next_link(database):
    tamper(database, "UPDATE verdict_log SET entry_hash = zeroblob(32) WHERE position = 3")
    assert problems_of(verify_database(database)) == {(3, "hash"), (4, "link")}


def test_a_changed_previous_hash_is_found_at_its_own_position(database):
    tamper(database, "UPDATE verdict_log SET previous_hash = randomblob(32) WHERE position = 9")
    assert problems_of(verify_database(database)) == {(9, "hash"), (9, "link")}


def test_an_inserted_duplicate_request_is_found(database):
    log = read_log(database)
    last = log[-1]
    forged = rehashed(last, position=last.position + 1, previous_hash=last.entry_hash, seq=last.seq + 1,
                      client_id=log[4].client_id, request_number=log[4].request_number, decision=Decision.ALLOW)
    # The attacker must rebuild the table without its UNIQUE constraint to get the row in at all.
    tamper(database, "CREATE TABLE loose AS SELECT * FROM verdict_log", "DROP TABLE verdict_log",
           "ALTER TABLE loose RENAME TO verdict_log")
    tamper_insert(database, forged)
    report = verify_database(database)
    assert problems_of(report) == {(REQUEST_COUNT + 1, "duplicate")}
    assert "position 5" in report.problems[0].detail


def tamper_insert(path, entry: LogEntry) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute(INSERT_ENTRY, log_entry_to_row(entry))
        connection.commit()
    finally:
        connection.close()


def test_a_malformed_row_is_reported_not_raised(database):
    tamper(database, "CREATE TABLE loose AS SELECT * FROM verdict_log", "DROP TABLE verdict_log",
           "ALTER TABLE loose RENAME TO verdict_log",
           "UPDATE verdict_log SET risk = 'extreme' WHERE position = 2")
    assert problems_of(verify_database(database)) == {(2, "malformed"), (3, "link")}


def test_a_consistently_rewritten_chain_is_caught_only_by_a_trusted_head(cluster_run, database):
    _, other_replica_log = cluster_run
    forged, previous = [], GENESIS_HASH
    for entry in read_log(database):
        flipped = Decision.DENY if entry.decision is Decision.ALLOW else Decision.ALLOW
        decision = flipped if entry.position == 3 else entry.decision
        forged.append(rehashed(entry, decision=decision, previous_hash=previous))
        previous = forged[-1].entry_hash
    tamper(database, "DELETE FROM verdict_log")
    for entry in forged:
        tamper_insert(database, entry)
    assert verify_database(database).ok  # Hashes are not signatures: a writer can rebuild the chain.
    anchor = (REQUEST_COUNT, other_replica_log[-1].entry_hash)
    assert problems_of(verify_database(database, expected_head=anchor)) == {(REQUEST_COUNT, "anchor")}


# --------------------------------------------------------------------- pure checks on entry lists

def test_a_reordered_list_is_found(cluster_run):
    log = list(cluster_run[1])
    log[4], log[5] = log[5], log[4]
    assert problems_of(verify_log(log)) == {(5, "gap"), (6, "link"), (5, "order"), (5, "link"), (7, "link")}


def test_an_allow_after_the_deadline_is_found(cluster_run):
    log = list(cluster_run[1])
    late = rehashed(log[-1], position=len(log) + 1, previous_hash=log[-1].entry_hash, request_number=10_000,
                    decision=Decision.ALLOW, timestamp_ms=log[-1].deadline_ms + 1)
    report = verify_log([*log, late])
    assert problems_of(report) == {(len(log) + 1, "late-allow")}
    denied = rehashed(late, decision=Decision.DENY)
    assert verify_log([*log, denied]).ok


def test_problems_are_capped_and_counted(cluster_run):
    entry = cluster_run[1][0]
    broken = [dataclasses.replace(entry, position=index + 1) for index in range(PROBLEMS_MAX)]
    report = verify_log(broken)
    assert not report.ok and len(report.problems) == PROBLEMS_MAX and report.problems_omitted > 0


# --------------------------------------------------------------------- the hand-check query and the command line

def normalized(text: str) -> str:
    return " ".join(text.split())


def run_chain_link_query(path) -> list[int]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in connection.execute(CHAIN_LINK_QUERY)]
    finally:
        connection.close()


def test_the_documented_sqlite3_query_is_the_one_tested_here():
    assert normalized(CHAIN_LINK_QUERY) in normalized(bft.audit.__doc__)


def test_the_chain_link_query_finds_broken_links_by_hand(database, tmp_path):
    assert run_chain_link_query(database) == []
    tamper(database, "UPDATE verdict_log SET entry_hash = zeroblob(32) WHERE position = 3")
    assert run_chain_link_query(database) == [4]
    second = tmp_path / "second.db"
    shutil.copyfile(database, second)
    tamper(second, "DELETE FROM verdict_log WHERE position = 8")
    assert run_chain_link_query(second) == [4, 9]


def test_the_command_line_exit_code_follows_the_verdict(database, capsys):
    assert main([str(database)]) == 0
    assert re.match(rf"OK: {REQUEST_COUNT} entries, head [0-9a-f]{{64}}", capsys.readouterr().out)
    tamper(database, "UPDATE verdict_log SET decision = CASE decision WHEN 'ALLOW' THEN 'DENY' ELSE 'ALLOW' END "
                     "WHERE position = 3")
    assert main([str(database)]) == 1
    assert "position 3: hash" in capsys.readouterr().out


def test_the_command_line_checks_a_trusted_head(cluster_run, database, capsys):
    other_replica_log = cluster_run[1]
    assert main([str(database), "--expected-head", f"{REQUEST_COUNT}:{other_replica_log[-1].entry_hash.hex()}"]) == 0
    assert main([str(database), "--expected-head", f"{REQUEST_COUNT}:{bytes(32).hex()}"]) == 1
    assert f"position {REQUEST_COUNT}: anchor" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(database), "--expected-head", "twelve:zz"])
