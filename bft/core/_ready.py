"""The output of every core input: what to persist, send, report and evaluate.

The order is the contract: a driver must make ``persist`` durable *before* it
sends any message, so that a replica restarted at any point can never sign
something that contradicts what it already sent.  ``apply_ready`` is the one
place that order is written down, and every driver (the simulator, the trio
runtime, the model checker) calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ._execution import LogEntry
from ._messages import Message, Reply, Request


@dataclass(frozen=True, slots=True)
class Rejection:
    """A remote party's input that was refused, with a stable reason token and a sentence."""

    sender: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Ready:
    persist: tuple[Message | LogEntry, ...] = ()
    to_replicas: tuple[tuple[int, Message], ...] = ()
    to_clients: tuple[tuple[str, Reply], ...] = ()
    finalized: tuple[LogEntry, ...] = ()
    evaluate: tuple[Request, ...] = ()
    rejected: tuple[Rejection, ...] = ()

    def is_empty(self) -> bool:
        return not (self.persist or self.to_replicas or self.to_clients or self.finalized
                    or self.evaluate or self.rejected)


class DurableStore(Protocol):
    def persist(self, items: tuple[Message | LogEntry, ...]) -> int:
        """Make ``items`` durable and return how many were stored."""


def apply_ready(ready: Ready, store: DurableStore,
                send_to_replica: Callable[[int, Message], None],
                send_to_client: Callable[[str, Reply], None]) -> None:
    """Persist, then send.  Finalized entries are among ``persist`` so replies follow durability."""
    if ready.persist:
        stored = store.persist(ready.persist)
        assert stored == len(ready.persist), "storage must acknowledge every item before anything is sent"
    for replica_id, message in ready.to_replicas:
        send_to_replica(replica_id, message)
    for client_id, reply in ready.to_clients:
        send_to_client(client_id, reply)


class ReadyBuilder:
    """Accumulates the effects of one input; ``build`` freezes them."""

    __slots__ = ("persist", "to_replicas", "to_clients", "finalized", "evaluate", "rejected")

    def __init__(self) -> None:
        self.persist: list = []
        self.to_replicas: list = []
        self.to_clients: list = []
        self.finalized: list = []
        self.evaluate: list = []
        self.rejected: list = []

    def build(self) -> Ready:
        return Ready(tuple(self.persist), tuple(self.to_replicas), tuple(self.to_clients),
                     tuple(self.finalized), tuple(self.evaluate), tuple(self.rejected))
