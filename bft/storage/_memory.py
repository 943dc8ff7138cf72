"""In-memory store for deterministic tests: what was persisted, in order."""

from __future__ import annotations

from ..core import LogEntry, Message


class MemoryStore:
    def __init__(self) -> None:
        self.signed: list[Message] = []
        self.log: list[LogEntry] = []

    def persist(self, items: tuple[Message | LogEntry, ...]) -> int:
        for item in items:
            (self.log if isinstance(item, LogEntry) else self.signed).append(item)
        return len(items)
