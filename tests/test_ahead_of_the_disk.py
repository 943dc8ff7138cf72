"""Proves the runtime sends replies and bundles ahead of the disk only as the driving contract allows: a client gets its certified verdict while every replica's store is still writing the log entries, and a replica whose store still holds an earlier round keeps the reply of a later round until that round is durable."""

from __future__ import annotations

import threading

import trio

from bft.core import Commit, LogEntry, Risk
from bft.policies import ApproveEverything
from bft.runtime import open_local_cluster
from bft.storage import MemoryStore

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}


class GatedStore(MemoryStore):
    """A store on a "disk" (written from the persister's thread) whose writes of chosen items wait for a gate."""

    waits_for_disk = True

    def __init__(self, holds) -> None:
        super().__init__()
        self.holds = holds
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def persist(self, items, **options) -> int:
        if any(self.holds(item) for item in items):
            self.waiting.set()
            assert self.gate.wait(timeout=20), "the test never opened the gate"
        return super().persist(items, **options)


def is_log_entry(item) -> bool:
    return isinstance(item, LogEntry)


async def test_a_verdict_is_certified_while_every_store_still_writes_its_log_entry():
    stores = [GatedStore(is_log_entry) for _ in range(4)]
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], stores=stores) as cluster:
            await cluster.wait_connected()
            async with cluster.open_client() as client:
                outcome = await client.submit(BENIGN, Risk.LOW)
                # Certified (f+1 replies) while no replica's store has finished writing the entry.
                assert outcome.certificate is not None
                assert all(store.waiting.is_set() and not store.log for store in stores)
                for store in stores:
                    store.gate.set()
                with trio.fail_after(5):
                    while not all(len(store.log) == 1 for store in stores):
                        await trio.sleep(0.01)


async def test_a_reply_waits_while_the_store_still_holds_an_earlier_round():
    lagging = 3

    def own_commit(item) -> bool:
        return isinstance(item, Commit) and item.replica_id == lagging

    stores = [MemoryStore() for _ in range(3)] + [GatedStore(own_commit)]
    with trio.fail_after(30):
        async with open_local_cluster([ApproveEverything() for _ in range(4)], stores=stores) as cluster:
            await cluster.wait_connected()
            node = cluster.nodes[lagging]
            replies_sent: list[str] = []
            send_reply = node._send_reply

            def recording_send_reply(client_id: str, frame: bytes) -> None:
                replies_sent.append(client_id)
                send_reply(client_id, frame)

            node._send_reply = recording_send_reply
            async with cluster.open_client() as client:
                outcome = await client.submit(BENIGN, Risk.LOW)  # The three others certify it.
                assert outcome.certificate is not None and stores[lagging].waiting.is_set()
                with trio.fail_after(5):  # The lagging replica executes once the others' commits reach it...
                    while node.replica.last_executed < 1:
                        await trio.sleep(0.01)
                await trio.sleep(0.2)
                assert replies_sent == [], "a reply left while an earlier round was not durable"
                stores[lagging].gate.set()
                with trio.fail_after(5):  # ...and replies once its COMMIT round is durable.
                    while replies_sent != ["client-0"]:
                        await trio.sleep(0.01)
