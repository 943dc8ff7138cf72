"""Durable storage behind one small interface: ``persist(items) -> count``.

``MemoryStore`` serves the deterministic simulator; the SQLite store serves real replicas.
"""

from ._memory import MemoryStore

__all__ = ["MemoryStore"]
