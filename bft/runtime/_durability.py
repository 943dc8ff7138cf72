"""Making a replica's output durable off the event loop, in order, before any of it is sent.

SQLite with ``synchronous=FULL`` blocks on fsync; done on the event loop it
would stall every connection of the replica.  The core's task therefore hands
each ``Ready`` to a bounded queue and goes on; one ``Persister`` task takes
what has piled up, makes it durable in a worker thread through ``apply_ready``
(one transaction, one fsync, for the whole batch: group commit), and only then
releases the messages to be sent.  Batches are handled one at a time in the
order the core produced them, so everything sent was persisted first, and so
was everything the core produced before it.  The persister never enters the
core.  It also does the store work a ``Ready`` asks of its driver: forgetting
dead votes and reading log entries a peer asked for (``Ready.log_reads``), after
the batch's own writes, so a read sees everything the core produced before it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import trio

from ..core import LogEntry, Message, Ready, Reply, apply_ready
from ..storage import Store


@dataclass(frozen=True, slots=True)
class Durable:
    """One ``Ready``, and the store pruning the replica's water marks allowed once it is durable."""

    ready: Ready
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
        self._batch_max = batch_max
        self._counters = counters
        self._on_released = on_released
        self._send, self._receive = trio.open_memory_channel[Durable](queue_capacity)
        # One worker thread at a time: the store sees the batches in order.
        self._limiter = trio.CapacityLimiter(1)
        self._items_put = 0
        self._items_released = 0
        self._progress = trio.Event()

    async def put(self, item: Durable) -> None:
        """Queue ``item``; when the queue is full, wait for the disk (back-pressure on the core's task)."""
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self._counters["persist-queue-full"] += 1
            await self._send.send(item)
        self._items_put += 1

    async def wait_released(self) -> None:
        """Wait until every item put so far is durable and released (needs ``run`` to be running)."""
        target = self._items_put
        while self._items_released < target:
            await self._progress.wait()

    async def run(self) -> None:
        """Persist and release batches until cancelled.  A storage error escapes and stops the replica:
        after a failed fsync nobody knows what is on disk, so it must not go on signing."""
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            # Not abandoned on cancel: a shutdown waits for the transaction rather than leaving it mid-way.
            released, pruned = await trio.to_thread.run_sync(self._make_durable, batch, limiter=self._limiter)
            self._counters["store-pruned"] += pruned
            self._counters["persist-batches"] += 1
            self._on_released(released)
            self._items_released += len(batch)
            assert self._items_released <= self._items_put
            self._progress.set()
            self._progress = trio.Event()

    def _make_durable(self, batch: list[Durable]) -> tuple[Released, int]:
        """Runs in the worker thread: persist the whole batch in one transaction, then prune."""
        merged = Ready(persist=tuple(item for durable in batch for item in durable.ready.persist),
                       to_replicas=tuple(entry for durable in batch for entry in durable.ready.to_replicas),
                       to_clients=tuple(entry for durable in batch for entry in durable.ready.to_clients))
        to_replicas: list[tuple[int, Message]] = []
        to_clients: list[tuple[str, Reply]] = []
        # apply_ready persists, then "sends"; here sending only collects, and the collected messages
        # go out on the event loop after this returns, so the contract's order holds end to end.
        apply_ready(merged, self._store, lambda replica_id, message: to_replicas.append((replica_id, message)),
                    lambda client_id, reply: to_clients.append((client_id, reply)))
        assert len(to_replicas) == len(merged.to_replicas) and len(to_clients) == len(merged.to_clients)
        pruned = 0
        log_reads = []
        for durable in batch:
            if durable.prune_signed_below_seq is not None:
                pruned += self._store.prune_signed_below(durable.prune_signed_below_seq)
            if durable.prune_views_below is not None:
                pruned += self._store.prune_views_below(durable.prune_views_below)
            if durable.ready.dead_votes:
                pruned += self._store.prune_votes(durable.ready.dead_votes)
            for read in durable.ready.log_reads:
                log_reads.append((read, self._store.read_log(read.first_position, read.last_position)))
        finalized = tuple(entry for durable in batch for entry in durable.ready.finalized)
        return Released(tuple(to_replicas), tuple(to_clients), finalized, tuple(log_reads)), pruned
