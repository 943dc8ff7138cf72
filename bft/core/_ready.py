"""The output of every core input: what to persist, send, report and evaluate.

The order is the contract: a driver must make ``persist`` durable *before* it
sends ``to_replicas``, so that a replica restarted at any point can never sign
something that contradicts what it already sent.  ``forwards`` and
``to_clients`` stand on nothing in ``persist`` and may leave before it (SPEC.md
section 5, "What waits for the disk").  ``_driving.apply_ready`` is the one
place that order, and what to do with every other field, is written down;
every driver calls it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._accountability import EquivocationProof
from ._execution import LogEntry
from ._messages import Message, Reply, Request


@dataclass(frozen=True, slots=True)
class Rejection:
    """A remote party's input that was refused, with a stable reason token and a sentence.

    ``evidence`` holds an ``EquivocationProof`` when the input, together with
    what the replica already held, proves the sender Byzantine; the driver hands
    it back with ``Replica.report_equivocation``.
    """

    sender: str
    reason: str
    detail: str
    evidence: EquivocationProof | None = None


@dataclass(frozen=True, slots=True)
class LogRead:
    """A peer asked for verdict-log entries this replica holds only in its store.

    The driver reads positions ``first_position..last_position`` (those that
    exist) from its store and hands them to ``Replica.answer_log_read``, which
    signs the answer.  The core holds no log entries in memory.
    """

    replica_id: int
    first_position: int
    last_position: int


@dataclass(frozen=True, slots=True)
class Ready:
    persist: tuple[Message | LogEntry, ...] = ()
    to_replicas: tuple[tuple[int, Message], ...] = ()
    # Replies: signed, but recomputed alike from the committed batch after any restart, so they stand on
    # nothing in ``persist`` (their log entry is there) and may leave before it is durable.
    to_clients: tuple[tuple[str, Reply], ...] = ()
    finalized: tuple[LogEntry, ...] = ()
    evaluate: tuple[Request, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    log_reads: tuple[LogRead, ...] = ()
    # Requests this replica voted on that expired unordered: it never votes on them again, so the
    # driver may delete those votes from its store (``Store.prune_votes``) whenever convenient.
    dead_votes: tuple[bytes, ...] = ()
    # The primary's bundles: others' signed messages, and its own only where an earlier Ready persisted
    # them, so they too may leave before ``persist`` is durable.
    forwards: tuple[tuple[int, Message], ...] = ()

    def is_empty(self) -> bool:
        return not (self.persist or self.to_replicas or self.to_clients or self.finalized
                    or self.evaluate or self.rejected or self.log_reads or self.dead_votes or self.forwards)

    @property
    def messages_to_replicas(self) -> tuple[tuple[int, Message], ...]:
        """Everything for peers, in the order the contract sends it: ``forwards``, then ``to_replicas``."""
        return self.forwards + self.to_replicas

    def without_unguarded_sends(self) -> "Ready":
        """This Ready once a driver sent its ``forwards`` and ``to_clients`` ahead of its persist."""
        return dataclasses.replace(self, to_clients=(), forwards=())


class ReadyBuilder:
    """Accumulates the effects of one input; ``build`` freezes them."""

    __slots__ = ("persist", "to_replicas", "to_clients", "finalized", "evaluate", "rejected", "log_reads",
                 "dead_votes", "forwards")

    def __init__(self) -> None:
        self.persist: list = []
        self.to_replicas: list = []
        self.to_clients: list = []
        self.finalized: list = []
        self.evaluate: list = []
        self.rejected: list = []
        self.log_reads: list = []
        self.dead_votes: list = []
        self.forwards: list = []

    def build(self) -> Ready:
        return Ready(tuple(self.persist), tuple(self.to_replicas), tuple(self.to_clients),
                     tuple(self.finalized), tuple(self.evaluate), tuple(self.rejected), tuple(self.log_reads),
                     tuple(self.dead_votes), tuple(self.forwards))
