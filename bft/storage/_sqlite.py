"""Durable storage in one SQLite file (stdlib ``sqlite3``): WAL journal, ``synchronous=FULL``.

One ``persist`` call is one transaction: all of its items become durable, or
none do.  With WAL and ``synchronous=FULL`` the commit returns only after the
log has been fsynced, so anything acknowledged survives a process kill or a
power cut.  That is the order ``apply_ready`` relies on: persist, then send.

The file is meant to be read by people too.  ``verdict_log`` has one plain
column per ``LogEntry`` field (text for risk and decision, blobs for hashes),
so an auditor can query it with the ``sqlite3`` tool (see ``bft.audit``).  The
database enforces what it can by itself: ``UNIQUE(client_id, request_number)``
(exactly-once), an insert trigger that refuses an entry that does not extend
the chain, and triggers that make the log append-only.  ``signed_messages``
holds ``bft.core.encode`` bytes plus the columns pruning needs (``view``,
``seq``, and ``request_digest`` for votes, an addition to the minimal layout).

Threads: one connection, opened with ``check_same_thread=False``, and every
public method holds one lock for its whole transaction.  Calls from several
threads (the trio runtime's worker threads) are therefore safe and run one at a
time.  Calls block on disk I/O; run them off the event loop.  One process
writes a file: the store caches the log head, and the insert trigger refuses
(rather than merges) a second writer's entries.

Failures: an ``AssertionError`` from ``persist`` is a caller bug and nothing
was written.  Any other error (``sqlite3.OperationalError`` for a full disk or
an I/O error) leaves durability unknown; the replica must stop, not retry,
because a failed fsync cannot be trusted to have kept or dropped the data.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Collection, Mapping

from ..audit import LOG_COLUMNS, log_entry_from_row, log_entry_to_row, verify_log
from ..core import GENESIS_HASH, LogEntry, Message, ProtocolError, Risk, decode, encode
from ._recovered import (LogHead, MetadataValue, RecoveredState, StorageError, check_metadata,
                         check_metadata_count, signed_columns)

# Version 2 added the accountability columns of the verdict log; a version-1 file is refused, not migrated.
SCHEMA_VERSION = 2
APPLICATION_ID = int.from_bytes(b"bftv", "big")  # Marks the file as ours in its header.
SYNCHRONOUS_FULL = 2

_RISKS = ", ".join(f"'{risk.value}'" for risk in Risk)

_SCHEMA = f"""
CREATE TABLE signed_messages (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    view INTEGER,
    seq INTEGER,
    request_digest BLOB CHECK (request_digest IS NULL OR length(request_digest) = 32),
    body BLOB NOT NULL
) STRICT;
CREATE INDEX signed_messages_by_seq ON signed_messages (seq) WHERE seq IS NOT NULL;
CREATE INDEX signed_messages_by_request ON signed_messages (request_digest) WHERE request_digest IS NOT NULL;

CREATE TABLE verdict_log (
    position INTEGER PRIMARY KEY CHECK (position >= 1),
    seq INTEGER NOT NULL CHECK (seq >= 1),
    client_id TEXT NOT NULL,
    request_number INTEGER NOT NULL CHECK (request_number >= 1),
    request_digest BLOB NOT NULL CHECK (length(request_digest) = 32),
    risk TEXT NOT NULL CHECK (risk IN ({_RISKS})),
    decision TEXT NOT NULL CHECK (decision IN ('ALLOW', 'DENY')),
    reason TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    votes_digest BLOB NOT NULL CHECK (length(votes_digest) = 32),
    allow_voters TEXT NOT NULL,
    deny_voters TEXT NOT NULL,
    uncounted_voters TEXT NOT NULL,
    command TEXT NOT NULL,
    events TEXT NOT NULL,
    previous_hash BLOB NOT NULL CHECK (length(previous_hash) = 32),
    entry_hash BLOB NOT NULL CHECK (length(entry_hash) = 32),
    UNIQUE (client_id, request_number)
) STRICT;
CREATE INDEX verdict_log_by_request ON verdict_log (request_digest);
CREATE TRIGGER verdict_log_extends_chain BEFORE INSERT ON verdict_log
WHEN NEW.position IS NOT coalesce((SELECT max(position) FROM verdict_log), 0) + 1
  OR NEW.previous_hash IS NOT coalesce(
       (SELECT entry_hash FROM verdict_log ORDER BY position DESC LIMIT 1), zeroblob(32))
BEGIN SELECT RAISE(ABORT, 'verdict_log: entry does not extend the hash chain'); END;
CREATE TRIGGER verdict_log_no_update BEFORE UPDATE ON verdict_log
BEGIN SELECT RAISE(ABORT, 'verdict_log is append-only'); END;
CREATE TRIGGER verdict_log_no_delete BEFORE DELETE ON verdict_log
BEGIN SELECT RAISE(ABORT, 'verdict_log is append-only'); END;

CREATE TABLE replica_metadata (
    key TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT;
"""

_INSERT_SIGNED = "INSERT INTO signed_messages (kind, view, seq, request_digest, body) VALUES (?, ?, ?, ?, ?)"
_INSERT_ENTRY = f"INSERT INTO verdict_log ({', '.join(LOG_COLUMNS)}) VALUES ({', '.join('?' * len(LOG_COLUMNS))})"
_UPSERT_METADATA = ("INSERT INTO replica_metadata (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value")

assert GENESIS_HASH == bytes(32), "the insert trigger's zeroblob(32) stands for GENESIS_HASH"


def schema_statements(script: str) -> list[str]:
    """Split a script into whole statements (a trigger body holds semicolons of its own)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    assert not pending.strip(), f"incomplete statement at the end of the schema: {pending!r}"
    return statements


class SqliteStore:
    """A replica's durable state in the SQLite file at ``path`` (created on first open)."""

    waits_for_disk = True

    def __init__(self, path: str | os.PathLike, *, busy_timeout_ms: int = 5000) -> None:
        self.path = os.fspath(path)
        assert self.path and self.path != ":memory:" and not self.path.startswith("file:"), \
            "SqliteStore needs a plain file path: WAL durability does not exist in memory"
        assert busy_timeout_ms > 0
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                           timeout=busy_timeout_ms / 1000)
        try:
            self._configure()
            self._create_or_check_schema()
            self._head = self._read_head()
        except BaseException:
            self._connection.close()
            raise

    # ------------------------------------------------------------ opening

    def _configure(self) -> None:
        connection = self._connection
        journal_mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if journal_mode != "wal":
            raise StorageError(f"{self.path}: could not switch to WAL (journal_mode is {journal_mode})")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA trusted_schema = OFF")
        synchronous = connection.execute("PRAGMA synchronous").fetchone()[0]
        assert synchronous == SYNCHRONOUS_FULL, synchronous

    def _create_or_check_schema(self) -> None:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")  # Two processes opening a new file must not both create it.
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            if version == 0 and application_id == 0:
                self._create_schema()
            elif application_id != APPLICATION_ID:
                raise StorageError(f"{self.path} is not a bft verdict store (application_id {application_id})")
            elif version != SCHEMA_VERSION:
                raise StorageError(f"{self.path} has schema version {version}; this code reads {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _create_schema(self) -> None:
        connection = self._connection
        tables = connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if tables != 0:
            raise StorageError(f"{self.path} already holds another database ({tables} schema objects)")
        for statement in schema_statements(_SCHEMA):
            connection.execute(statement)
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _read_head(self) -> LogHead:
        row = self._connection.execute(
            "SELECT position, entry_hash FROM verdict_log ORDER BY position DESC LIMIT 1").fetchone()
        return LogHead() if row is None else LogHead(row[0], row[1])

    # ------------------------------------------------------------ the Store interface

    def persist(self, items: tuple[Message | LogEntry, ...], *,
                metadata: Mapping[str, MetadataValue] | None = None) -> int:
        """Make ``items`` (and ``metadata``) durable in one transaction; return how many items were stored.

        An entry that does not extend the chain, or repeats a finalized request
        key, is a bug in the caller: the transaction is rolled back and an
        ``AssertionError`` raised, leaving the store as it was.
        """
        signed_rows = [None if isinstance(item, LogEntry) else (*signed_columns(item), encode(item)) for item in items]
        check_metadata(metadata or {})
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                head = self._insert_items(items, signed_rows)
                if metadata:
                    self._connection.executemany(_UPSERT_METADATA, metadata.items())
                    check_metadata_count(key for (key,) in self._connection.execute("SELECT key FROM replica_metadata"))
                self._connection.execute("COMMIT")
            except sqlite3.IntegrityError as error:
                self._rollback()
                raise AssertionError(f"{self.path}: the database refused the write: {error}") from error
            except BaseException:
                self._rollback()
                raise
            self._head = head
        return len(items)

    def _insert_items(self, items: tuple[Message | LogEntry, ...], signed_rows: list) -> LogHead:
        head = self._head
        for item, signed_row in zip(items, signed_rows):
            if signed_row is None:
                head = head.after(item)
                cursor = self._connection.execute(_INSERT_ENTRY, log_entry_to_row(item))
            else:
                cursor = self._connection.execute(_INSERT_SIGNED, signed_row)
            assert cursor.rowcount == 1, cursor.rowcount
        return head

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (after an I/O error, for example).
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    def load(self) -> RecoveredState:
        """Read everything back, checked: a damaged message or a broken chain raises ``StorageError``."""
        with self._lock:
            self._connection.execute("BEGIN")
            try:
                signed = tuple(self._load_signed())
                log = tuple(self._load_log())
                metadata = dict(self._connection.execute("SELECT key, value FROM replica_metadata"))
            finally:
                self._connection.execute("COMMIT")
        report = verify_log(log)
        if not report.ok:
            raise StorageError(f"{self.path}: the verdict log is damaged: {report.problems[0]}")
        assert len(log) == self._head.length, (len(log), self._head)
        return RecoveredState(signed, log, metadata)

    def _load_signed(self):
        for row_id, kind, body in self._connection.execute("SELECT id, kind, body FROM signed_messages ORDER BY id"):
            try:
                message = decode(body)
            except ProtocolError as error:
                raise StorageError(f"{self.path}: signed message {row_id} does not decode: {error}") from None
            if type(message).__name__ != kind:
                raise StorageError(f"{self.path}: signed message {row_id} is a {type(message).__name__}, not a {kind}")
            yield message

    def _load_log(self):
        for row in self._connection.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM verdict_log ORDER BY position"):
            try:
                yield log_entry_from_row(row)
            except ProtocolError as error:
                raise StorageError(f"{self.path}: verdict_log position {row[0]} is malformed: {error}") from None

    def prune_signed_below(self, seq: int) -> int:
        """Delete signed messages made obsolete by a stable checkpoint at ``seq``; return how many.

        Slot messages with a seq below ``seq`` go, and votes whose request
        executed below ``seq``.  The verdict log is never pruned: it is the audit record.
        """
        assert seq >= 0, seq
        # EXISTS probes verdict_log_by_request once per stored vote; an IN over "seq < ?" would scan
        # the whole log at every checkpoint, and the log grows without bound.
        return self._delete(
            "DELETE FROM signed_messages WHERE (seq IS NOT NULL AND seq < ?1) OR (kind = 'Vote' AND EXISTS "
            "(SELECT 1 FROM verdict_log WHERE verdict_log.request_digest = signed_messages.request_digest "
            "AND verdict_log.seq < ?1))", (seq,))

    def prune_views_below(self, view: int) -> int:
        """Delete view-change and new-view messages of views below ``view``; return how many."""
        assert view >= 0, view
        return self._delete("DELETE FROM signed_messages WHERE kind IN ('ViewChange', 'NewView') AND view < ?", (view,))

    def prune_votes(self, request_digests: Collection[bytes]) -> int:
        """Delete this replica's votes on these requests (they expired unordered); return how many."""
        digests = [(digest,) for digest in set(request_digests)]
        assert all(type(digest) is bytes and len(digest) == 32 for (digest,) in digests)
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                removed = sum(self._connection.execute(
                    "DELETE FROM signed_messages WHERE kind = 'Vote' AND request_digest = ?", row).rowcount
                    for row in digests)
                self._connection.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return removed

    def read_log(self, first_position: int, last_position: int) -> tuple[LogEntry, ...]:
        """The entries at positions ``first_position..last_position`` that exist, in order (checked)."""
        assert 1 <= first_position <= last_position, (first_position, last_position)
        with self._lock:
            rows = self._connection.execute(
                f"SELECT {', '.join(LOG_COLUMNS)} FROM verdict_log WHERE position BETWEEN ? AND ? ORDER BY position",
                (first_position, last_position)).fetchall()
        entries = []
        for row in rows:
            try:
                entries.append(log_entry_from_row(row))
            except ProtocolError as error:
                raise StorageError(f"{self.path}: verdict_log position {row[0]} is malformed: {error}") from None
        return tuple(entries)

    def _delete(self, statement: str, parameters: tuple) -> int:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                removed = self._connection.execute(statement, parameters).rowcount
                self._connection.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        assert removed >= 0
        return removed

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> "SqliteStore":
        return self

    def __exit__(self, *exception_info) -> None:
        self.close()

    # ------------------------------------------------------------ inspection

    @property
    def log_head(self) -> LogHead:
        """Length and head hash of the durable log (as of the last committed persist)."""
        return self._head

    def settings(self) -> dict[str, int | str]:
        """The pragmas durability depends on, read back from the live connection."""
        with self._lock:
            return {name: self._connection.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("journal_mode", "synchronous", "user_version", "application_id")}
