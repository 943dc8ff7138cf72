"""Structured logs: one JSON object per line, built on the standard ``logging`` module.

Every line has ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``,
``message`` and ``replica_id``, plus any fields the call passed with
``extra={...}`` (the runtime passes ``peer`` and ``reason`` where it has them),
and ``exception`` when a traceback was logged.  A log shipper can therefore
filter on fields instead of parsing sentences.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from ..core import LogEntry

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is emitted as a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON; values JSON cannot hold are written as their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and name not in fields:
                fields[name] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        # A message is one line whatever it holds: json.dumps escapes newlines inside strings.
        return json.dumps(fields, ensure_ascii=False, default=str)


class _ReplicaIdFilter(logging.Filter):
    """Gives records without a ``replica_id`` of their own the process's one (None if it has none)."""

    def __init__(self, replica_id: int | None) -> None:
        super().__init__()
        self.replica_id = replica_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "replica_id"):
            record.replica_id = self.replica_id
        return True


def configure_json_logging(stream: TextIO | None = None, level: int | str = logging.INFO,
                           replica_id: int | None = None) -> logging.Handler:
    """Send every log record of the process to ``stream`` (default stderr) as JSON lines.

    Replaces the root logger's handlers (so it is meant for a program's entry
    point, such as ``bft replica``) and returns the new handler; calling it
    again replaces that handler too.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_ReplicaIdFilter(replica_id))
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


# Accountability events that call for an operator's attention; the others (releases, endorsements,
# expiries, cleared suspicions) are routine and logged at INFO.
ALERT_EVENTS = frozenset({"evidence", "quarantined", "suspected", "quarantine-skipped"})


def log_accountability_events(logger: logging.Logger, replica_id: int, entry: LogEntry) -> int:
    """Log one line per accountability event ``entry`` recorded; returns how many.

    Each line carries ``event`` (its type), ``replica`` (the replica it is about,
    or None for a blocklist pattern), ``position`` (of the log entry) and
    ``details`` (the event's other fields).  The events come from our own core,
    which bounds them (``EVENTS_BYTES_MAX``), so they are trusted JSON.
    """
    if not entry.events:
        return 0
    events = json.loads(entry.events)
    assert isinstance(events, list), entry.position
    for event in events:
        kind = event["event"]
        subject = next((event[key] for key in ("replica", "accused", "by") if type(event.get(key)) is int), None)
        details = {key: value for key, value in event.items() if key != "event"}
        about = "" if subject is None else f" replica {subject}"
        logger.log(logging.WARNING if kind in ALERT_EVENTS else logging.INFO,
                   "replica %d at log position %d: %s%s", replica_id, entry.position, kind, about,
                   extra={"replica_id": replica_id, "event": kind, "replica": subject, "position": entry.position,
                          "details": details})
    return len(events)
