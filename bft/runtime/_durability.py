"""Making a replica's output durable off the event loop, in order, before any of it is sent.

SQLite with ``synchronous=FULL`` blocks on fsync; done on the event loop it
would stall every connection of the replica.  A round of the core therefore
hands what it produced to a bounded queue and goes on; the ``Persister`` gives
what has piled up to its store thread, which makes it durable through
``bft.core.persist_then_send`` (one transaction, one fsync, for the whole batch:
group commit), and the event loop releases the messages to be sent once it
returns.  Batches are handled one at a time in the order the core produced them,
so everything sent was persisted first, and so was everything the core produced
before it.  The persister never enters the core.  It also does the store work a
``Ready`` asks of its driver: forgetting dead votes and reading log entries a
peer asked for (``Ready.log_reads``), after the batch's own writes, so a read
sees everything the core produced before it.  A store in memory
(``waits_for_disk`` False) is written in line, with no thread.

The queue is bounded in items, and a round of the core never blocks in the
middle of its work: its producer (a connection's reader, the ticker, a policy's
decision) waits for room (``wait_for_room``) before it starts, and the round
hands over exactly one item (``put``).  Producers run concurrently, so several
may have found room for the last slot: an item that finds the queue full is
merged into the newest one.  That overflow is bounded by one round per producer,
since each waits for room again before its next round.
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

    def followed_by(self, later: "Durable") -> "Durable":
        """One item doing what ``self`` then ``later`` do (marks only rise, so the later one wins)."""
        return Durable(self.readies + later.readies,
                       _later_mark(self.prune_signed_below_seq, later.prune_signed_below_seq),
                       _later_mark(self.prune_views_below, later.prune_views_below))


def _later_mark(earlier: int | None, later: int | None) -> int | None:
    assert earlier is None or later is None or later >= earlier, "pruning marks only rise"
    return earlier if later is None else later


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
        self._in_flight = 0  # Items of the batch the store's thread holds.
        self._running = False  # While ``run`` runs: batches start only then.
        self._failure: BaseException | None = None
        self._failed = trio.Event()
        self._room_made = trio.lowlevel.ParkingLot()
        # One worker thread: the store sees the batches in order.
        self._thread = StoreThread()
        self._items_put = 0
        self._items_released = 0
        self._progress = trio.Event()

    @property
    def is_idle(self) -> bool:
        """Everything put so far is durable: nothing queued, nothing at the store."""
        return not self._queue and not self._in_flight

    @property
    def has_room(self) -> bool:
        return len(self._queue) < self._capacity

    async def wait_for_room(self) -> None:
        """Wait until the queue has room for an item: back-pressure from the disk on the producers."""
        if self.has_room:
            return
        self._counters["persist-queue-full"] += 1
        while not self.has_room:
            await self._room_made.park()

    def put(self, item: Durable) -> None:
        """Queue ``item`` (its producer waited for room first); if another producer took the last slot
        meanwhile, merge it into the newest queued item, which is persisted and released with it."""
        if self.has_room:
            self._queue.append(item)
            self._items_put += 1
        else:  # Released with the item it joins, which is counted already.
            self._counters["persist-merged"] += 1
            self._queue[-1] = self._queue[-1].followed_by(item)
        assert len(self._queue) <= self._capacity
        self._start_next_batch()

    async def wait_released(self) -> None:
        """Wait until every item put so far is durable and released (needs ``run`` to be running)."""
        target = self._items_put
        while self._items_released < target:
            await self._progress.wait()

    async def run(self) -> None:
        """Persist and release batches until cancelled.  A storage error escapes and stops the replica:
        after a failed fsync nobody knows what is on disk, so it must not go on signing.

        No task waits on the store: a batch goes to the store's thread as soon as the previous one
        is released (``_start_next_batch``), and the thread hands the result back to the event loop
        as a callback that releases it and starts the next.  This task only holds the thread's
        lifetime (a store in memory needs none) and raises what a batch raised."""
        if self._store.waits_for_disk:
            self._thread.start(trio.lowlevel.current_trio_token())
        self._running = True
        try:
            self._start_next_batch()
            await self._failed.wait()
            assert self._failure is not None
            raise self._failure
        finally:
            self._running = False
            self._thread.stop()

    def _start_next_batch(self) -> None:
        while not self._in_flight and self._queue and self._running and self._failure is None:
            batch = [self._queue.popleft() for _ in range(min(self._batch_max, len(self._queue)))]
            self._in_flight = len(batch)
            self._room_made.unpark_all()
            if self._store.waits_for_disk:
                self._thread.submit(self._make_durable, batch, self._batch_done)
                return
            self._batch_done(outcome.capture(self._make_durable, batch), start_next=False)

    def _batch_done(self, result: outcome.Outcome, *, start_next: bool = True) -> None:
        """On the event loop, once the store made a batch durable (or failed to)."""
        try:
            released, pruned = result.unwrap()
            self._counters["store-pruned"] += pruned
            self._counters["persist-batches"] += 1
            self._on_released(released)
        except BaseException as error:  # Raised by ``run``: a callback must not raise into trio itself.
            self._failure = error
            self._failed.set()
            return
        self._items_released += self._in_flight
        self._in_flight = 0
        assert self._items_released <= self._items_put
        self._progress.set()
        self._progress = trio.Event()
        if start_next:
            self._start_next_batch()

    def _make_durable(self, batch: list[Durable]) -> tuple[Released, int]:
        """In the store's thread (in line for a store in memory): persist the whole batch in one
        transaction, then prune."""
        readies = [ready for durable in batch for ready in durable.readies]
        merged = Ready(persist=tuple(item for ready in readies for item in ready.persist),
                       to_replicas=tuple(entry for ready in readies for entry in ready.to_replicas),
                       to_clients=tuple(entry for ready in readies for entry in ready.to_clients),
                       finalized=tuple(entry for ready in readies for entry in ready.finalized),
                       dead_votes=tuple(digest for ready in readies for digest in ready.dead_votes),
                       forwards=tuple(entry for ready in readies for entry in ready.forwards))
        # Steps 1 to 4 of the driving contract; "sending" only collects here, and the collected messages go
        # out on the event loop after this returns, so the contract's order holds end to end.
        output = _BatchOutput(self._store)
        persist_then_send(merged, output)
        assert len(output.to_replicas) == len(merged.to_replicas) + len(merged.forwards)
        assert len(output.to_clients) == len(merged.to_clients)
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
    """A worker thread of the persister's own, running one store job at a time, in order.

    ``trio.to_thread.run_sync`` does more per call than a store job needs (it
    names the OS thread twice, copies the context, takes a capacity limiter,
    and lets idle threads expire), and a replica makes a few store jobs per
    verdict.  This hands a job over with a queue and its result back to the
    event loop as a callback, with no task waiting in between.  A job is never
    abandoned: a shutdown lets the transaction under way finish.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self, token: trio.lowlevel.TrioToken) -> None:
        assert self._thread is None, "started twice"
        self._thread = threading.Thread(target=self._work, args=(self._jobs, token), name="bft-store", daemon=True)
        self._thread.start()

    def submit(self, function: Callable[..., Any], argument: Any,
               on_done: Callable[[outcome.Outcome], None]) -> None:
        """Run ``function(argument)`` in the thread, then ``on_done(its outcome)`` on the event loop."""
        assert self._thread is not None, "submit before start"
        self._jobs.put((function, argument, on_done))

    def stop(self) -> None:
        """Let the thread end once it finished its job; a result it then has is dropped with the loop."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    @staticmethod
    def _work(jobs: queue.SimpleQueue, token: trio.lowlevel.TrioToken) -> None:
        while (job := jobs.get()) is not None:
            function, argument, on_done = job
            result = outcome.capture(function, argument)
            del function, argument, job  # Nothing of the job outlives it in this thread.
            try:
                token.run_sync_soon(on_done, result)
            except trio.RunFinishedError:
                return  # The replica stopped while the job ran.
