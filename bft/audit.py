"""Audit the hash-chained verdict log, from a list of entries or straight from a replica's SQLite file.

What is checked, entry by entry, in the order given (by position for a file):

- positions run 1, 2, 3, ... with no gap, repeat or reordering;
- ``previous_hash`` equals the ``entry_hash`` of the entry before (``GENESIS_HASH``, 32 zero
  bytes, for position 1);
- ``entry_hash`` equals ``LogEntry.computed_hash()``, so no field was edited after the fact;
- no request key ``(client_id, request_number)`` appears twice (exactly-once);
- no ALLOW was recorded with ``timestamp_ms`` after ``deadline_ms`` (fail closed).

Every problem names the position it is at and what is wrong.  What the log alone
cannot show: that it was cut short (deleting the newest entries leaves a valid
chain) or rewritten wholesale (entries are hashed, not signed, so someone who
can write the file can rebuild a consistent chain).  Both are caught by passing
``expected_head`` taken from a trusted source: another replica's log, a stable
checkpoint, or the entries named by verdict certificates.

``verify_database`` opens the file read-only (SQLite URI ``mode=ro``); the file
itself is never written, though SQLite may create empty ``-wal``/``-shm``
companions next to it, which a WAL reader needs.  From a shell::

    python -m bft.audit replica-0.db

The chain links (not the hashes, which need SHA-256 over msgpack) can be
checked by hand with the sqlite3 command-line tool; every row printed is a
broken link or a gap, so an intact log prints nothing::

    sqlite3 -readonly replica-0.db "
      SELECT position, hex(previous_hash) FROM (
        SELECT position, previous_hash,
               lag(entry_hash, 1, zeroblob(32)) OVER (ORDER BY position) AS expected_previous_hash,
               lag(position, 1, 0) OVER (ORDER BY position) AS previous_position
        FROM verdict_log)
      WHERE previous_hash IS NOT expected_previous_hash OR position IS NOT previous_position + 1;"
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .core import GENESIS_HASH, Decision, LogEntry, ProtocolError

# The query quoted in the module docstring, kept here so a test can run it.
CHAIN_LINK_QUERY = """
SELECT position, hex(previous_hash) FROM (
  SELECT position, previous_hash,
         lag(entry_hash, 1, zeroblob(32)) OVER (ORDER BY position) AS expected_previous_hash,
         lag(position, 1, 0) OVER (ORDER BY position) AS previous_position
  FROM verdict_log)
WHERE previous_hash IS NOT expected_previous_hash OR position IS NOT previous_position + 1;
"""

# The verdict_log columns are LogEntry's fields, in schema order.
LOG_COLUMNS = tuple(name for name, _ in LogEntry.SCHEMA)
PROBLEMS_MAX = 100
FILE_PROBLEM_POSITION = 0  # Problems with the file as a whole (not readable, wrong schema) sit at position 0.


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the log: where, a stable kind token, and a sentence."""

    position: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"position {self.position}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class AuditReport:
    ok: bool
    entries: int
    head_hash: str  # Hex of the last entry's entry_hash (of GENESIS_HASH for an empty log).
    problems: tuple[Problem, ...] = ()
    problems_omitted: int = 0  # Problems past ``PROBLEMS_MAX`` are counted, not listed.

    def __post_init__(self) -> None:
        assert self.ok == (not self.problems and not self.problems_omitted)
        assert len(self.problems) <= PROBLEMS_MAX

    def __str__(self) -> str:
        verdict = "OK" if self.ok else f"BROKEN ({len(self.problems) + self.problems_omitted} problems)"
        lines = [f"{verdict}: {self.entries} entries, head {self.head_hash}", *map(str, self.problems)]
        if self.problems_omitted:
            lines.append(f"... and {self.problems_omitted} more")
        return "\n".join(lines)


@dataclass
class _Auditor:
    """Walks the log once, remembering only what the checks need."""

    expected_head: tuple[int, bytes] | None = None
    entries: int = 0
    last_position: int = 0
    previous_hash: bytes = GENESIS_HASH
    positions_by_key: dict[tuple[str, int], int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    problems_omitted: int = 0
    anchor_seen: bool = False

    def report(self, position: int, kind: str, detail: str) -> None:
        if len(self.problems) < PROBLEMS_MAX:
            self.problems.append(Problem(position, kind, detail))
        else:
            self.problems_omitted += 1

    def observe(self, entry: LogEntry) -> None:
        self.entries += 1
        self._check_position(entry.position)
        self._check_hashes(entry)
        self._check_content(entry)
        self._check_anchor(entry)
        self.last_position = max(self.last_position, entry.position)
        self.previous_hash = entry.entry_hash

    def observe_unreadable(self, position: int, detail: str) -> None:
        """A row that is not a valid entry: reported, and the chain continues past it as broken."""
        self.entries += 1
        self._check_position(position)
        self.report(position, "malformed", detail)
        self.last_position = max(self.last_position, position)
        self.previous_hash = b""  # Nothing links to an unreadable entry.

    def _check_position(self, position: int) -> None:
        expected = self.last_position + 1
        if position > expected:
            missing = f"position {expected}" if position == expected + 1 else f"positions {expected} to {position - 1}"
            self.report(expected, "gap", f"{missing} missing: position {self.last_position} is followed by {position}")
        elif position < expected:
            self.report(position, "order", f"position {position} appears after position {self.last_position}")

    def _check_hashes(self, entry: LogEntry) -> None:
        if entry.entry_hash != entry.computed_hash():
            self.report(entry.position, "hash", "entry_hash does not match the entry's fields (edited after hashing)")
        if entry.previous_hash != self.previous_hash:
            before = f"position {self.last_position}" if self.entries > 1 else "the genesis hash"
            self.report(entry.position, "link", f"previous_hash does not equal the entry_hash of {before}")

    def _check_content(self, entry: LogEntry) -> None:
        first = self.positions_by_key.setdefault(entry.key, entry.position)
        if first != entry.position:
            self.report(entry.position, "duplicate",
                        f"request ({entry.client_id!r}, {entry.request_number}) already finalized at position {first}")
        if entry.decision is Decision.ALLOW and entry.timestamp_ms > entry.deadline_ms:
            self.report(entry.position, "late-allow",
                        f"ALLOW at {entry.timestamp_ms} ms is after the deadline of {entry.deadline_ms} ms")

    def _check_anchor(self, entry: LogEntry) -> None:
        if self.expected_head is None or entry.position != self.expected_head[0]:
            return
        self.anchor_seen = True
        if entry.entry_hash != self.expected_head[1]:
            self.report(entry.position, "anchor", "entry_hash differs from the trusted head for this position")

    def finish(self) -> AuditReport:
        if self.expected_head is not None and not self.anchor_seen:
            position = self.expected_head[0]
            self.report(position, "truncated", f"the trusted head is at position {position}, "
                                               f"the log ends at {self.last_position}")
        head = self.previous_hash if self.entries else GENESIS_HASH
        ok = not self.problems and not self.problems_omitted
        return AuditReport(ok, self.entries, head.hex(), tuple(self.problems), self.problems_omitted)


def verify_log(entries: Iterable[LogEntry], *, expected_head: tuple[int, bytes] | None = None) -> AuditReport:
    """Check a verdict log given in position order (pure; reads ``entries`` once).

    ``expected_head`` is an optional trusted (position, entry_hash) the log must
    contain; without it a truncated log cannot be told from a shorter one.
    """
    assert expected_head is None or (expected_head[0] >= 1 and len(expected_head[1]) == 32), expected_head
    auditor = _Auditor(expected_head)
    for entry in entries:
        assert isinstance(entry, LogEntry), type(entry).__name__
        auditor.observe(entry)
    return auditor.finish()


def log_entry_from_row(row: Sequence[Any]) -> LogEntry:
    """Rebuild one entry from its ``LOG_COLUMNS`` row, checking every field against LogEntry's schema.

    Raises ``ProtocolError`` naming the field if a value has the wrong type or range.
    """
    if len(row) != len(LogEntry.SCHEMA):
        raise ProtocolError(f"a verdict_log row needs {len(LogEntry.SCHEMA)} columns, got {len(row)}")
    values = {name: kind.from_wire(value, name) for (name, kind), value in zip(LogEntry.SCHEMA, row)}
    return LogEntry(**values)


def log_entry_to_row(entry: LogEntry) -> tuple:
    """The ``LOG_COLUMNS`` row of an entry: plain ints, text and blobs an auditor can read."""
    return tuple(kind.to_wire(getattr(entry, name)) for name, kind in LogEntry.SCHEMA)


def read_only_uri(path: str | os.PathLike) -> str:
    return "file:" + urllib.parse.quote(os.path.abspath(os.fspath(path))) + "?mode=ro"


def verify_database(path: str | os.PathLike, *,
                    expected_head: tuple[int, bytes] | None = None) -> AuditReport:
    """Audit the verdict log in a replica's SQLite file, opened read-only; never raises on bad content.

    Rows are streamed; memory grows only with the set of request keys seen (the duplicate check).
    """
    assert expected_head is None or (expected_head[0] >= 1 and len(expected_head[1]) == 32), expected_head
    if not os.path.isfile(path):
        return _file_problem(f"{os.fspath(path)} is not a file")
    try:
        connection = sqlite3.connect(read_only_uri(path), uri=True)
    except sqlite3.Error as error:
        return _file_problem(f"cannot open read-only: {error}")
    try:
        return _verify_connection(connection, expected_head)
    except sqlite3.Error as error:
        return _file_problem(f"cannot read the verdict log: {error}")
    finally:
        connection.close()


def _verify_connection(connection: sqlite3.Connection, expected_head: tuple[int, bytes] | None) -> AuditReport:
    auditor = _Auditor(expected_head)
    # One read transaction, so a replica writing concurrently cannot show us half a persist call.
    connection.execute("BEGIN")
    rows = connection.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM verdict_log ORDER BY position, rowid")
    for row in rows:
        try:
            entry = log_entry_from_row(row)
        except ProtocolError as error:
            position = row[0] if type(row[0]) is int else auditor.last_position + 1
            auditor.observe_unreadable(position, f"not a valid log entry ({error})")
            continue
        auditor.observe(entry)
    connection.execute("COMMIT")
    return auditor.finish()


def _file_problem(detail: str) -> AuditReport:
    problem = Problem(FILE_PROBLEM_POSITION, "file", detail)
    return AuditReport(False, 0, GENESIS_HASH.hex(), (problem,))


def main(arguments: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bft.audit", description="Audit a replica's verdict log.")
    parser.add_argument("database", help="the replica's SQLite file")
    parser.add_argument("--expected-head", metavar="POSITION:HEX",
                        help="a trusted log head (from another replica or a certificate) the log must contain")
    options = parser.parse_args(arguments)
    expected_head = None
    if options.expected_head:
        position, _, hash_hex = options.expected_head.partition(":")
        try:
            expected_head = (int(position), bytes.fromhex(hash_hex))
        except ValueError:
            parser.error("--expected-head must be POSITION:HEX")
        if expected_head[0] < 1 or len(expected_head[1]) != 32:
            parser.error("--expected-head needs a position of at least 1 and a 32-byte hash")
    report = verify_database(options.database, expected_head=expected_head)
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
