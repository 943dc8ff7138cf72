"""Making a replica's output durable off the event loop, in order, before any of it is sent.

SQLite with ``synchronous=FULL`` blocks on fsync; done on the event loop it
would stall every connection of the replica.  The core's task therefore hands
what it produced to a bounded queue and goes on; one ``Persister`` task takes
what has piled up, makes it durable in a worker thread through ``bft.core.persist_then_send``
(one transaction, one fsync, for the whole batch: group commit), and only then
releases the messages to be sent.  Batches are handled one at a time in the
order the core produced them, so everything sent was persisted first, and so
was everything the core produced before it.  The persister never enters the
core.  It also does the store work a ``Ready`` asks of its driver: forgetting
dead votes and reading log entries a peer asked for (``Ready.log_reads``), after
the batch's own writes, so a read sees everything the core produced before it.

The queue is bounded in items, and the core's task never blocks in the middle
of its work: it waits for room (``wait_for_room``) before it starts a round of
inputs, and a round hands over exactly one item (``put_nowait``).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

import outcome
import trio

from ..core import LogEntry, Message, Ready, Reply, persist_then_send
from ..storage import Store


@dataclass(frozen=True, slots=True)
class Durable:
    """The ``Ready`` values of one round of the core's task, in order, and the store pruning the
    replica's water marks allowed once they are durable."""

    readies: tuple[Ready, ...]
    prune_signed_below_seq: int | None = None
    prune_views_below: int | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """What a durable batch may now send, the verdicts it finalized, and the log reads it answered."""

    to_replicas: tuple[tuple[int, Message], ...]
    to_clients: tuple[tuple[str, Reply], ...]
    finalized: tuple[LogEntry, ...]
    # (the core's LogRead, the entries read for it); the core signs the answer.
    log_reads: tuple[tuple[Any, tuple[LogEntry, ...]], ...] = ()


class Persister:
    """The one task that writes a replica's store while the replica runs."""

    def __init__(self, store: Store, queue_capacity: int, batch_max: int, counters: Counter,
                 on_released: Callable[[Released], None]) -> None:
        assert queue_capacity >= 1 and batch_max >= 1
        self._store = store
        self._capacity = queue_capacity
        self._batch_max = batch_max
        self._counters = counters
        self._on_released = on_released
        self._queue: deque[Durable] = deque()
        self._work_arrived = trio.lowlevel.ParkingLot()
        self._room_made = trio.lowlevel.ParkingLot()
        # One worker thread: the store sees the batches in order.
        self._thread = StoreThread()
        self._items_put = 0
        self._items_released = 0
        self._progress = trio.Event()

    @property
    def has_room(self) -> bool:
        return len(self._queue) < self._capacity

    async def wait_for_room(self) -> None:
        """Wait until ``put_nowait`` may be called: back-pressure from the disk on the core's task."""
        if self.has_room:
            return
        self._counters["persist-queue-full"] += 1
        while not self.has_room:
            await self._room_made.park()

    def put_nowait(self, item: Durable) -> None:
        """Queue ``item``; the caller made sure there is room (``wait_for_room``) without yielding since."""
        assert self.has_room, "put_nowait without room: call wait_for_room first"
        self._queue.append(item)
        self._items_put += 1
        assert len(self._queue) <= self._capacity
        self._work_arrived.unpark_all()

    async def wait_released(self) -> None:
        """Wait until every item put so far is durable and released (needs ``run`` to be running)."""
        target = self._items_put
        while self._items_released < target:
            await self._progress.wait()

    async def run(self) -> None:
        """Persist and release batches until cancelled.  A storage error escapes and stops the replica:
        after a failed fsync nobody knows what is on disk, so it must not go on signing."""
        try:
            while True:
                await self._persist_next_batch()
        finally:
            self._thread.stop()

    async def _persist_next_batch(self) -> None:
        while not self._queue:
            await self._work_arrived.park()
        batch = [self._queue.popleft() for _ in range(min(self._batch_max, len(self._queue)))]
        self._room_made.unpark_all()
        released, pruned = await self._thread.run(self._make_durable, batch)
        self._counters["store-pruned"] += pruned
        self._counters["persist-batches"] += 1
        self._on_released(released)
        self._items_released += len(batch)
        assert self._items_released <= self._items_put
        self._progress.set()
        self._progress = trio.Event()

    def _make_durable(self, batch: list[Durable]) -> tuple[Released, int]:
        """Runs in the worker thread: persist the whole batch in one transaction, then prune."""
        readies = [ready for durable in batch for ready in durable.readies]
        merged = Ready(persist=tuple(item for ready in readies for item in ready.persist),
                       to_replicas=tuple(entry for ready in readies for entry in ready.to_replicas),
                       to_clients=tuple(entry for ready in readies for entry in ready.to_clients),
                       finalized=tuple(entry for ready in readies for entry in ready.finalized),
                       dead_votes=tuple(digest for ready in readies for digest in ready.dead_votes))
        # Steps 1 to 4 of the driving contract; "sending" only collects here, and the collected messages go
        # out on the event loop after this returns, so the contract's order holds end to end.
        output = _BatchOutput(self._store)
        persist_then_send(merged, output)
        assert len(output.to_replicas) == len(merged.to_replicas) and len(output.to_clients) == len(merged.to_clients)
        pruned = output.votes_pruned
        for durable in batch:
            if durable.prune_signed_below_seq is not None:
                pruned += self._store.prune_signed_below(durable.prune_signed_below_seq)
            if durable.prune_views_below is not None:
                pruned += self._store.prune_views_below(durable.prune_views_below)
        # Step 6's store read, after the batch's own writes; the core signs the answers on its own task.
        log_reads = tuple((read, self._store.read_log(read.first_position, read.last_position))
                          for ready in readies for read in ready.log_reads)
        released = Released(tuple(output.to_replicas), tuple(output.to_clients), output.finalized_entries, log_reads)
        return released, pruned


class _BatchOutput:
    """``ReadyOutput`` in the persister's thread: the store is written, sends and finals are collected."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.to_replicas: list[tuple[int, Message]] = []
        self.to_clients: list[tuple[str, Reply]] = []
        self.finalized_entries: tuple[LogEntry, ...] = ()
        self.votes_pruned = 0

    def persist(self, items: tuple[Message | LogEntry, ...]) -> int:
        return self.store.persist(items)

    def send_to_replica(self, replica_id: int, message: Message) -> None:
        self.to_replicas.append((replica_id, message))

    def send_to_client(self, client_id: str, reply: Reply) -> None:
        self.to_clients.append((client_id, reply))

    def finalized(self, entries: tuple[LogEntry, ...]) -> None:
        self.finalized_entries = entries

    def forget_votes(self, request_digests: tuple[bytes, ...]) -> None:
        if request_digests:
            self.votes_pruned += self.store.prune_votes(request_digests)


class StoreThread:
    """A worker thread of the persister's own, running one store job at a time.

    ``trio.to_thread.run_sync`` does more per call than a store job needs (it
    names the OS thread twice, copies the context, takes a capacity limiter,
    and lets idle threads expire), and a replica makes a few store jobs per
    verdict.  This hands a job over with a queue and back with the trio token.
    A job is never abandoned on cancellation: a shutdown waits for the
    transaction rather than leaving it half done.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, function: Callable[..., Any], *arguments: Any) -> Any:
        """``function(*arguments)`` in the thread: its result, or its exception raised here."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, args=(self._jobs,), name="bft-store", daemon=True)
            self._thread.start()
        self._jobs.put((function, arguments, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token()))
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    def stop(self) -> None:
        """Let the thread end once it finished its job (it holds none when the persister stops)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    @staticmethod
    def _work(jobs: queue.SimpleQueue) -> None:
        while (job := jobs.get()) is not None:
            function, arguments, task, token = job
            result = outcome.capture(function, *arguments)
            del function, arguments  # Nothing of the job outlives it in this thread.
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)
