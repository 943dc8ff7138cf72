"""The one way to apply a ``Ready``: what a driver does with each field, and in which order.

Every driver of the core (the trio runtime, the simulator, the interaction
scripts, the model checker and the benchmark's simulated cluster) applies a
``Ready`` through these functions against ``ReadyIO``, a narrow interface to its
own store, network and policy.  The order is the contract:

1. ``forwards``, then ``to_clients``, may be sent at once: they stand on
   nothing this Ready persists (a forward carries others' signed messages, and
   ours only once an earlier Ready made them durable; a reply is recomputed
   alike from its committed batch after any restart).  Then ``persist`` is
   made durable, *before* anything else is sent, so that a replica restarted
   at any point never signs something contradicting what it sent;
2. ``to_replicas`` are sent;
3. ``finalized`` entries (already among ``persist``) are reported;
4. ``dead_votes`` are handed to the store, which may forget them when convenient;
5. each of ``rejected`` is reported, and its evidence of a Byzantine sender, if
   any, goes back to the core (``report_equivocation``);
6. each of ``log_reads`` is read from the store and, if the store holds
   entries there, goes back to the core to be signed (``answer_log_read``);
7. each of ``evaluate`` is handed to the driver's policy, whose answer comes
   back later as an input (``record_decision``).

``apply_ready`` enters the core only for those two answers
(``report_equivocation``, ``answer_log_read``); each yields another ``Ready``,
which goes to ``ReadyIO.feed`` and is applied in turn.

A driver that makes its output durable off the core's thread, in batches (the
runtime's group commit), cannot run the seven steps in one call: it calls
``react`` (steps 5 and 7, which need no disk) as each ``Ready`` is produced,
and ``persist_then_send`` (steps 1 to 4) in its store thread for the whole
batch, with sends collected and released once that returns; it reads the
log for step 6 in the same thread and feeds the entries to ``answer_log_read``
on the core's thread.  Such a driver may send a Ready's ``forwards`` and
``to_clients`` (``send_unguarded``) before the store has its batch only
while every earlier Ready is durable, since a forward may carry our own
message that an earlier Ready persists; otherwise they go with the batch.  ``HANDLED_FIELDS`` names the step of every field, and
the module refuses to load if ``Ready`` gains a field no step handles.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from ._accountability import EquivocationProof
from ._execution import LogEntry
from ._messages import Message, Reply, Request
from ._ready import LogRead, Ready, Rejection

# Every field of ``Ready`` and the step of the contract that handles it (see the module docstring).
HANDLED_FIELDS = {
    "persist": "1 persist",
    "forwards": "1 send unguarded",
    "to_clients": "1 send unguarded",
    "to_replicas": "2 send",
    "finalized": "3 finalize",
    "dead_votes": "4 forget dead votes",
    "rejected": "5 report rejections and evidence",
    "log_reads": "6 read the log",
    "evaluate": "7 evaluate",
}
assert set(HANDLED_FIELDS) == {field.name for field in dataclasses.fields(Ready)}, \
    "a Ready field has no step in the driving contract: add it to HANDLED_FIELDS and to apply_ready"


class ReadyOutput(Protocol):
    """Steps 1 to 4: the driver's store and network."""

    def persist(self, items: tuple[Message | LogEntry, ...]) -> int:
        """Make ``items`` durable before returning, and return how many were stored."""

    def send_to_replica(self, replica_id: int, message: Message) -> None: ...

    def send_to_client(self, client_id: str, reply: Reply) -> None: ...

    def finalized(self, entries: tuple[LogEntry, ...]) -> None:
        """Verdicts now final and durable: count, record or log them."""

    def forget_votes(self, request_digests: tuple[bytes, ...]) -> None:
        """Votes the replica never uses again: the store may delete them now, later or in batches.

        Called once for every Ready, after its sends, even with no digests: the point where a driver that
        also prunes by the replica's water marks (``StorePruner``) does so."""


class ReadyReactions(Protocol):
    """Steps 5 and 7, which need no disk, and the way back into the core."""

    def rejected(self, rejection: Rejection) -> None:
        """Count or log a refused input (its evidence, if any, goes back to the core afterwards)."""

    def evaluate(self, request: Request) -> None:
        """Start the policy on ``request``; its decision comes back as ``record_decision``."""

    def feed(self, ready: Ready) -> None:
        """Apply a ``Ready`` the core produced in answer to evidence or a log read (usually: recurse)."""


class ReadyIO(ReadyOutput, ReadyReactions, Protocol):
    """Everything a driver that applies a whole ``Ready`` at once provides, and step 6's store read."""

    def read_log(self, read: LogRead) -> tuple[LogEntry, ...]:
        """The entries at ``read``'s positions that the store holds (possibly none)."""


class CoreFeedback(Protocol):
    """The replica's inputs ``apply_ready`` itself makes: answers to what a ``Ready`` asked for."""

    def report_equivocation(self, proof: EquivocationProof) -> Ready: ...

    def answer_log_read(self, read: LogRead, entries: tuple[LogEntry, ...]) -> Ready: ...


def apply_ready(ready: Ready, replica: CoreFeedback, io: ReadyIO) -> None:
    """Apply every field of ``ready`` in the contract's order (steps 1 to 7)."""
    persist_then_send(ready, io)
    report_rejections(ready, replica, io)
    answer_log_reads(ready, replica, io)
    start_evaluations(ready, io)


def persist_then_send(ready: Ready, io: ReadyOutput) -> None:
    """Steps 1 to 4: send what needs no disk, persist, send the rest, report what is final, hand dead
    votes to the store."""
    send_unguarded(ready, io)
    if ready.persist:
        stored = io.persist(ready.persist)
        assert stored == len(ready.persist), "storage must acknowledge every item before the rest is sent"
    for replica_id, message in ready.to_replicas:
        io.send_to_replica(replica_id, message)
    if ready.finalized:
        io.finalized(ready.finalized)
    io.forget_votes(ready.dead_votes)


def send_unguarded(ready: Ready, io: ReadyOutput) -> None:
    """Step 1's first half: the forwards and the replies, which stand on nothing ``ready`` persists."""
    for replica_id, message in ready.forwards:
        io.send_to_replica(replica_id, message)
    for client_id, reply in ready.to_clients:
        io.send_to_client(client_id, reply)


def react(ready: Ready, replica: CoreFeedback, io: ReadyReactions) -> None:
    """Steps 5 and 7, which need no disk: for a driver that persists and sends later, in batches."""
    report_rejections(ready, replica, io)
    start_evaluations(ready, io)


def report_rejections(ready: Ready, replica: CoreFeedback, io: ReadyReactions) -> None:
    """Step 5: each rejection is reported; proof of a Byzantine sender goes back to the core."""
    for rejection in ready.rejected:
        io.rejected(rejection)
        if rejection.evidence is not None:
            io.feed(replica.report_equivocation(rejection.evidence))


def answer_log_reads(ready: Ready, replica: CoreFeedback, io: ReadyIO) -> None:
    """Step 6: the core holds no log entries in memory; the store reads them and the core signs them."""
    for read in ready.log_reads:
        entries = io.read_log(read)
        assert all(read.first_position <= entry.position <= read.last_position for entry in entries), \
            "the store returned log entries outside the positions asked for"
        if entries:
            io.feed(replica.answer_log_read(read, entries))


def start_evaluations(ready: Ready, io: ReadyReactions) -> None:
    """Step 7: the policy runs outside the core; its decision is a later input."""
    for request in ready.evaluate:
        io.evaluate(request)
