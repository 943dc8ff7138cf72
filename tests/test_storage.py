"""Storage keeps what it acknowledged: round trips, all-or-nothing persists, WAL+FULL sync, SIGKILL survival, snapshots.

Both stores are driven through the same ``Store`` interface and must agree:
what goes in comes back out in the same order after a reopen, a persist call
that breaks a rule leaves no trace, pruning never touches the verdict log
(and drops exactly the votes declared dead), and log reads by position (for
state transfer) return what exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.audit import LOG_COLUMNS, log_entry_to_row, verify_database, verify_log
from bft.core import (GENESIS_HASH, Batch, Checkpoint, Commit, Decision, LogEntry, NewView, PrePrepare, Prepare,
                      Risk, Signer, ViewChange, Vote, encode)
from bft.storage import LogHead, MemoryStore, RecoveredState, SqliteStore, StorageError, Store
from bft.storage._sqlite import SCHEMA_VERSION

SIGNER = Signer("storage-test", hashlib.sha256(b"storage-test-replica").digest())
NO_SIGNATURE = bytes(64)
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def digest_of(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


def next_entry(head: LogHead, seq: int, request_number: int, *, client_id: str = "alice",
               decision: Decision = Decision.DENY, request_digest: bytes | None = None) -> LogEntry:
    """A correctly hashed entry that extends ``head``."""
    unhashed = LogEntry(head.length + 1, seq, client_id, request_number,
                        request_digest or digest_of(("request", client_id, request_number)), Risk.MEDIUM, decision,
                        "policy said so", 1_000_000 + seq, 2_000_000, digest_of(("votes", seq)), head.head_hash,
                        GENESIS_HASH)
    return dataclasses.replace(unhashed, entry_hash=unhashed.computed_hash())


def chain(count: int, head: LogHead = LogHead(), first_request_number: int = 1) -> list[LogEntry]:
    entries = []
    for offset in range(count):
        entry = next_entry(head, seq=head.length + 1, request_number=first_request_number + offset)
        entries.append(entry)
        head = LogHead(entry.position, entry.entry_hash)
    return entries


def one_of_each_kind(view: int, seq: int) -> list:
    """One signed message of every kind a replica persists."""
    unsigned = [
        Vote(digest_of(("request", "alice", seq)), Decision.ALLOW, "fine", 0, NO_SIGNATURE),
        PrePrepare(view, seq, Batch(1_000_000, ()), 0, NO_SIGNATURE),
        Prepare(view, seq, digest_of(("batch", seq)), 0, NO_SIGNATURE),
        Commit(view, seq, digest_of(("batch", seq)), 0, NO_SIGNATURE),
        Checkpoint(seq, digest_of(("state", seq)), 0, NO_SIGNATURE),
        ViewChange(view + 1, 0, (), (), 0, NO_SIGNATURE),
        NewView(view + 1, (), (), 0, NO_SIGNATURE),
    ]
    return [SIGNER.sign(message) for message in unsigned]


def reopened(store: Store) -> Store:
    """The same durable contents through a fresh handle: a new connection, or a crash copy."""
    if isinstance(store, SqliteStore):
        store.close()
        return SqliteStore(store.path)
    return store.snapshot()


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    opened = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "replica.db")
    yield opened
    opened.close()


def test_both_stores_satisfy_the_store_protocol(tmp_path):
    with SqliteStore(tmp_path / "replica.db") as sqlite_store:
        assert isinstance(sqlite_store, Store)
    assert isinstance(MemoryStore(), Store)
    assert not isinstance(object(), Store)


def test_round_trip_returns_every_item_in_persist_order(store):
    entries = chain(3)
    first = (*one_of_each_kind(0, 1), entries[0])
    second = (entries[1], *one_of_each_kind(1, 2), entries[2])
    assert store.persist(first, metadata={"view": 0, "name": "r0", "proof": b"\x01\x02"}) == len(first)
    assert store.persist(second, metadata={"view": 1}) == len(second)
    store = reopened(store)
    state = store.load()
    assert isinstance(state, RecoveredState)
    assert state.signed == (*one_of_each_kind(0, 1), *one_of_each_kind(1, 2))
    assert [encode(message) for message in state.signed] == [encode(m) for m in (*first[:-1], *second[1:-1])]
    assert state.log == tuple(entries)
    assert dict(state.metadata) == {"view": 1, "name": "r0", "proof": b"\x01\x02"}
    assert state.head == LogHead(3, entries[2].entry_hash)
    store.close()


def test_an_empty_store_loads_empty(store):
    state = store.load()
    assert state.signed == () and state.log == () and dict(state.metadata) == {}
    assert state.head == LogHead(0, GENESIS_HASH)


def broken_continuations(head: LogHead, previous: LogEntry) -> dict[str, LogEntry]:
    """Entries that a buggy core might hand over after ``head``: each breaks one write rule."""
    good = next_entry(head, seq=head.length + 1, request_number=100)
    rehash = lambda entry: dataclasses.replace(entry, entry_hash=entry.computed_hash())  # noqa: E731
    return {
        "skipped-position": rehash(dataclasses.replace(good, position=good.position + 1)),
        "wrong-previous-hash": rehash(dataclasses.replace(good, previous_hash=digest_of("elsewhere"))),
        "stale-entry-hash": dataclasses.replace(good, decision=Decision.ALLOW),
        "duplicate-request-key": rehash(dataclasses.replace(good, request_number=previous.request_number)),
    }


@pytest.mark.parametrize("violation", ["skipped-position", "wrong-previous-hash", "stale-entry-hash",
                                       "duplicate-request-key"])
def test_a_persist_call_that_breaks_a_rule_leaves_nothing_behind(store, violation):
    entries = chain(2)
    store.persist((*one_of_each_kind(0, 1), *entries))
    head = LogHead(2, entries[-1].entry_hash)
    bad = broken_continuations(head, entries[0])[violation]
    good_first = next_entry(head, seq=3, request_number=50)
    # The bad entry comes last, so the messages and the good entry before it were already written in the transaction.
    doomed = (*one_of_each_kind(5, 5), good_first, bad)
    with pytest.raises(AssertionError):
        store.persist(doomed, metadata={"view": 5})
    store = reopened(store)
    state = store.load()
    assert state.signed == tuple(one_of_each_kind(0, 1))
    assert state.log == tuple(entries)
    assert dict(state.metadata) == {}
    # The store is still usable and still expects the chain to continue from its old head.
    assert store.persist((good_first,)) == 1
    assert reopened(store).load().log == (*entries, good_first)


def test_the_database_unique_constraint_alone_rolls_back_a_whole_call(tmp_path):
    """A duplicate key that only SQLite catches (the chain is fine) still undoes the entire call."""
    with SqliteStore(tmp_path / "replica.db") as store:
        entries = chain(1)
        store.persist(tuple(entries))
        duplicate = next_entry(LogHead(1, entries[0].entry_hash), seq=2, request_number=entries[0].request_number)
        with pytest.raises(AssertionError, match="UNIQUE"):
            store.persist((*one_of_each_kind(0, 2), duplicate))
        assert store.log_head == LogHead(1, entries[0].entry_hash)
    with SqliteStore(tmp_path / "replica.db") as store:
        assert store.load().log == tuple(entries) and store.load().signed == ()


def test_the_database_refuses_chain_breaks_edits_and_deletes_by_itself(tmp_path):
    path = tmp_path / "replica.db"
    entries = chain(3)
    with SqliteStore(path) as store:
        store.persist(tuple(entries[:2]))
    skipping = next_entry(LogHead(5, entries[1].entry_hash), seq=9, request_number=9)
    unlinked = next_entry(LogHead(2, digest_of("elsewhere")), seq=9, request_number=9)
    connection = sqlite3.connect(path)
    try:
        for entry in (skipping, unlinked):
            with pytest.raises(sqlite3.IntegrityError, match="hash chain"):
                connection.execute(f"INSERT INTO verdict_log ({', '.join(LOG_COLUMNS)}) VALUES "
                                   f"({', '.join('?' * len(LOG_COLUMNS))})", log_entry_to_row(entry))
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            connection.execute("UPDATE verdict_log SET decision = 'ALLOW' WHERE position = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            connection.execute("DELETE FROM verdict_log WHERE position = 2")
        connection.rollback()
    finally:
        connection.close()
    with SqliteStore(path) as store:
        assert store.load().log == tuple(entries[:2])


def test_wal_and_full_synchronous_are_really_set(tmp_path):
    path = tmp_path / "replica.db"
    with SqliteStore(path) as store:
        store.persist(tuple(chain(1)))
        settings_read = store.settings()
        assert settings_read["journal_mode"] == "wal"
        assert settings_read["synchronous"] == 2  # FULL
        assert settings_read["user_version"] == SCHEMA_VERSION
        # WAL is recorded in the file itself: an unrelated connection sees it too.
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            other.close()
    with open(path, "rb") as header_file:
        header = header_file.read(100)
    assert header[18] == 2 and header[19] == 2, "file format bytes 18-19 are 2 for a WAL database"


def test_opening_a_foreign_or_newer_file_is_refused(tmp_path):
    foreign = tmp_path / "foreign.db"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE unrelated (x)")
    connection.commit()
    connection.close()
    with pytest.raises(StorageError, match="another database"):
        SqliteStore(foreign)
    newer = tmp_path / "newer.db"
    SqliteStore(newer).close()
    connection = sqlite3.connect(newer)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(StorageError, match="schema version 99"):
        SqliteStore(newer)


def test_load_refuses_a_damaged_file(tmp_path):
    """A restarting replica must not trust a log or a message that was changed on disk (fail closed)."""
    path = tmp_path / "replica.db"
    with SqliteStore(path) as store:
        store.persist((*one_of_each_kind(0, 1), *chain(3)))
    connection = sqlite3.connect(path)
    connection.execute("DROP TRIGGER verdict_log_no_update")
    connection.execute("UPDATE verdict_log SET decision = 'ALLOW' WHERE position = 2")
    connection.commit()
    connection.close()
    with SqliteStore(path) as store, pytest.raises(StorageError, match="position 2"):
        store.load()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE signed_messages SET body = X'00' WHERE id = 3")
    connection.commit()
    connection.close()
    with SqliteStore(path) as store, pytest.raises(StorageError, match="signed message 3"):
        store.load()


def test_pruning_forgets_obsolete_messages_and_never_the_log(store):
    executed_digest, waiting_digest = digest_of("executed"), digest_of("waiting")
    votes = [SIGNER.sign(Vote(d, Decision.DENY, "no", 0, NO_SIGNATURE)) for d in (executed_digest, waiting_digest)]
    entry = next_entry(LogHead(), seq=3, request_number=1, request_digest=executed_digest)
    store.persist((*votes, *one_of_each_kind(0, 3), *one_of_each_kind(0, 4), entry))
    assert store.prune_signed_below(4) == 1 + 4  # The executed vote and the seq-3 slot messages and checkpoint.
    kept = store.load().signed
    assert votes[1] in kept and votes[0] not in kept
    assert all(getattr(message, "seq", 4) >= 4 for message in kept)
    assert sum(isinstance(message, (ViewChange, NewView)) for message in kept) == 4
    assert store.prune_views_below(1) == 0  # View changes here are for view 1, the current view.
    assert store.prune_views_below(2) == 4
    assert reopened(store).load().log == (entry,)


def test_votes_declared_dead_are_pruned_and_nothing_else(store):
    dead, live = digest_of(("request", "alice", 3)), digest_of(("request", "alice", 4))
    store.persist((*one_of_each_kind(0, 3), *one_of_each_kind(0, 4)))
    assert store.prune_votes({dead, digest_of("never voted on")}) == 1
    kept = store.load().signed
    assert not any(isinstance(m, Vote) and m.request_digest == dead for m in kept)
    assert any(isinstance(m, Vote) and m.request_digest == live for m in kept)
    assert len(kept) == 2 * 7 - 1
    assert store.prune_votes(()) == 0


def test_reading_log_positions_returns_the_entries_that_exist(store):
    entries = chain(5)
    store.persist(tuple(entries))
    assert store.read_log(2, 4) == tuple(entries[1:4])
    assert store.read_log(4, 9) == tuple(entries[3:]), "positions beyond the end are simply absent"
    assert store.read_log(6, 8) == ()
    with pytest.raises(AssertionError):
        store.read_log(3, 2)


def test_snapshot_is_an_independent_crash_copy():
    original = MemoryStore()
    entries = chain(2)
    original.persist((*one_of_each_kind(0, 1), entries[0]), metadata={"view": 0})
    crashed = original.snapshot()
    original.persist((entries[1],), metadata={"view": 1})
    original.prune_signed_below(5)
    assert crashed.load() == RecoveredState(tuple(one_of_each_kind(0, 1)), (entries[0],), {"view": 0})
    # The copy continues from its own head; a different continuation does not disturb the original.
    fork = next_entry(LogHead(1, entries[0].entry_hash), seq=2, request_number=77)
    crashed.persist((fork,))
    assert crashed.load().log == (entries[0], fork)
    assert original.load().log == tuple(entries)
    assert dict(original.load().metadata) == {"view": 1}
    with pytest.raises(AssertionError):
        crashed.persist((entries[1],))  # The original's next entry does not link to the fork.


def test_concurrent_threads_share_one_sqlite_store(tmp_path):
    thread_count, calls_per_thread = 4, 25
    with SqliteStore(tmp_path / "replica.db") as store:
        def writer(thread_index: int) -> None:
            for call in range(calls_per_thread):
                vote = SIGNER.sign(Vote(digest_of((thread_index, call)), Decision.ALLOW, "ok", 0, NO_SIGNATURE))
                assert store.persist((vote,)) == 1

        threads = [threading.Thread(target=writer, args=(index,)) for index in range(thread_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        signed = store.load().signed
    assert len(signed) == thread_count * calls_per_thread
    assert len(set(signed)) == len(signed)
    for index in range(thread_count):  # Each thread's own calls stay in the order it made them.
        expected = [digest_of((index, call)) for call in range(calls_per_thread)]
        assert [message.request_digest for message in signed if message.request_digest in set(expected)] == expected


def test_bad_metadata_is_a_bug_and_writes_nothing(store):
    with pytest.raises(AssertionError):
        store.persist(tuple(chain(1)), metadata={"view": 1.5})
    with pytest.raises(AssertionError):
        store.persist(tuple(chain(1)), metadata={f"key-{index}": index for index in range(65)})
    assert store.load().log == ()


# --------------------------------------------------------------------- both stores agree, on random histories

operation = st.one_of(
    st.tuples(st.just("persist"), st.lists(st.integers(0, 6), max_size=5), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("prune"), st.integers(0, 12)),
    st.tuples(st.just("prune-views"), st.integers(0, 4)),
    st.tuples(st.just("prune-votes"), st.sets(st.integers(1, 12), max_size=4)),
    st.tuples(st.just("read-log"), st.integers(1, 8), st.integers(0, 4)),
)


def apply_operations(store: Store, operations: list) -> list:
    """Run ``operations`` on ``store``; return the outcome of each (a count, or the exception type)."""
    head, seq, outcomes = LogHead(), 0, []
    for step, operation_item in enumerate(operations):
        if operation_item[0] == "prune":
            outcomes.append(store.prune_signed_below(operation_item[1]))
            continue
        if operation_item[0] == "prune-views":
            outcomes.append(store.prune_views_below(operation_item[1]))
            continue
        if operation_item[0] == "prune-votes":
            outcomes.append(store.prune_votes({digest_of(("request", "alice", n)) for n in operation_item[1]}))
            continue
        if operation_item[0] == "read-log":
            outcomes.append(store.read_log(operation_item[1], operation_item[1] + operation_item[2]))
            continue
        _, kinds, entry_count, break_chain = operation_item
        items, new_head = [one_of_each_kind(step % 3, (step % 11) + 1)[kind] for kind in kinds], head
        for _ in range(entry_count):
            seq += 1
            entry = next_entry(new_head, seq=seq, request_number=seq,
                               request_digest=digest_of(("request", "alice", seq % 11 + 1)))
            items.append(entry)
            new_head = LogHead(entry.position, entry.entry_hash)
        if break_chain and entry_count:
            items[-1] = dataclasses.replace(items[-1], previous_hash=digest_of("broken"))
        try:
            outcomes.append(store.persist(tuple(items), metadata={"step": step}))
            head = new_head
        except AssertionError:
            outcomes.append("refused")
    return outcomes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, max_size=12))
def test_memory_and_sqlite_stores_agree_on_any_history(tmp_path, operations):
    memory_store = MemoryStore()
    path = tmp_path / f"agree-{hashlib.sha256(repr(operations).encode()).hexdigest()[:16]}.db"
    if path.exists():
        path.unlink()
    sqlite_store = SqliteStore(path)
    try:
        assert apply_operations(memory_store, operations) == apply_operations(sqlite_store, operations)
        sqlite_store = reopened(sqlite_store)
        memory_state, sqlite_state = memory_store.snapshot().load(), sqlite_store.load()
        assert memory_state == sqlite_state
        assert verify_log(sqlite_state.log).ok
    finally:
        sqlite_store.close()


# --------------------------------------------------------------------- SIGKILL in the middle of writing

WRITER_SCRIPT = r"""
import hashlib, sys, time
from bft.core import LogEntry, Risk, encode
from bft.storage import SqliteStore
from bft.testing import SimCluster


class AcknowledgingStore(SqliteStore):
    '''Prints what is durable after every committed persist call, the way a driver would then send.'''

    def __init__(self, path):
        super().__init__(path)
        self.signed_count, self.signed_digest = 0, hashlib.sha256()

    def persist(self, items, **options):
        count = super().persist(items, **options)
        for item in items:
            if not isinstance(item, LogEntry):
                body = encode(item)
                self.signed_count += 1
                self.signed_digest.update(len(body).to_bytes(4, "big") + body)
        head = self.log_head
        print(self.signed_count, self.signed_digest.hexdigest(), head.length, head.head_hash.hex(), flush=True)
        return count


cluster = SimCluster(4, seed=11)
assert not cluster.stores[0].load().signed, "replica 0 must not have written before its store is swapped"
cluster.stores[0] = AcknowledgingStore(sys.argv[1])
started = time.monotonic()
for number in range(100_000):
    if time.monotonic() - started > 60:
        break
    cluster.submit("client-0", {"operation": number}, risk=Risk.LOW)
    cluster.run_until(cluster.all_done, max_ms=5_000)
"""


@pytest.mark.parametrize("acknowledged_calls", [7, 60])
def test_everything_acknowledged_survives_sigkill(tmp_path, acknowledged_calls):
    path = tmp_path / "replica.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)}
    process = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=environment, text=True)
    watchdog = threading.Timer(60, process.kill)  # Bounds the test if the writer hangs or never writes.
    watchdog.start()
    acknowledgements = []
    try:
        for line in process.stdout:
            acknowledgements.append(line.split())
            if len(acknowledgements) >= acknowledged_calls and int(acknowledgements[-1][2]) >= 1:
                os.kill(process.pid, signal.SIGKILL)  # The writer is busy with its next transaction.
                break
        process.wait(timeout=30)
    finally:
        watchdog.cancel()
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    assert len(acknowledgements) >= acknowledged_calls, "the watchdog, not the test, stopped the writer"
    signed_count, signed_digest, log_length, head_hash = acknowledgements[-1]
    with SqliteStore(path) as store:
        state = store.load()
    assert len(state.signed) >= int(signed_count) and len(state.log) >= int(log_length) >= 1
    running = hashlib.sha256()
    for message in state.signed[:int(signed_count)]:
        body = encode(message)
        running.update(len(body).to_bytes(4, "big") + body)
    assert running.hexdigest() == signed_digest
    assert state.log[int(log_length) - 1].entry_hash.hex() == head_hash
    report = verify_database(path)
    assert report.ok, str(report)
    assert report.entries == len(state.log)
