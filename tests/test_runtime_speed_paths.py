"""The runtime's fast paths keep its guarantees: direct socket writes never break a sealed frame (a partial write's rest goes first, is never dropped, and dies with its connection), a reset peer is a broken resource, the persister's queue stays bounded (a racing item merges into the newest), its store thread runs jobs in order and a storage error stops it, and inline policy evaluation still fails closed (errors and overruns vote DENY) while undeclared policies and large actions keep their worker thread."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import trio

from bft.core import Decision, Ready, Request, Risk
from bft.policies import ApproveEverything, POLICIES
from bft.policy import INLINE_ACTION_CHARS_MAX, PolicyDecision, runs_inline
from bft.runtime import (FrameDecoder, FramedConnection, NodeOptions, SendQueue, TransportLimits, encode_frame,
                         open_local_cluster)
from bft.runtime._durability import Durable, Persister, StoreThread
from bft.runtime._link_cipher import SEAL_OVERHEAD_BYTES, FrameOpener, FrameSealer
from bft.runtime._transport import write_loop, write_queued
from bft.storage import MemoryStore

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
LIMITS = TransportLimits()


SENDING_KEY = bytes(range(32))  # What a handshake would agree; fixed here, as no handshake runs.


async def connected_pair(secured: bool = False) -> tuple[FramedConnection, trio.SocketStream]:
    """A framed connection on a real loopback TCP socket, and the raw stream of the peer at its other end;
    ``secured`` seals what the connection sends under ``SENDING_KEY``."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        ours = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
        peer = await listener.accept()
    connection = FramedConnection(ours, LIMITS, "test peer")
    if secured:
        connection.secure(FrameSealer(SENDING_KEY), FrameOpener(bytes(32)))
    return connection, peer


async def read_frames(stream: trio.SocketStream, count: int) -> list[bytes]:
    """The payloads of the next ``count`` frames ``stream`` receives, opened with ``SENDING_KEY``."""
    decoder = FrameDecoder(LIMITS.max_frame_bytes + SEAL_OVERHEAD_BYTES)
    opener = FrameOpener(SENDING_KEY)
    frames: list[bytes] = []
    with trio.fail_after(10):
        while len(frames) < count:
            decoder.receive_data(await stream.receive_some(1 << 20))
            while (payload := decoder.next_frame()) is not None:
                frames.append(opener.open(payload))
    return frames


# ---------------------------------------------------------------------------- the send queue's unsent rest

def test_the_rest_of_a_partly_written_frame_leaves_first_and_is_never_dropped():
    queue = SendQueue(frames_max=2, bytes_max=100, policy="drop-oldest")
    queue.put(b"aaaa", wake=False)
    [taken] = queue.take_nowait(100)
    queue.put_rest(taken[1:])  # The socket took one byte of it.
    for frame in (b"b", b"c", b"d"):  # Overflow: whole frames are dropped, the rest is not.
        queue.put(frame, wake=False)
    assert queue.dropped == 1 and not queue.is_empty
    assert queue.take_nowait(100) == [b"aaa", b"c", b"d"]
    assert queue.is_empty


def test_a_rest_is_discarded_with_its_connection_and_counts_against_the_batch_budget():
    queue = SendQueue(frames_max=10, bytes_max=100)
    queue.put(b"12345678", wake=False)
    queue.put_rest(b"xyz")
    assert queue.take_nowait(5) == [b"xyz"]  # The next frame would exceed the budget of this batch.
    queue.put_rest(b"tail")
    queue.discard_rest()
    assert queue.take_nowait(100) == [b"12345678"] and queue.is_empty
    with pytest.raises(AssertionError):  # At most one frame is ever partly written.
        queue.put_rest(b"one")
        queue.put_rest(b"two")


# ---------------------------------------------------------------------------- direct writes

async def test_direct_writes_to_a_peer_that_stops_reading_keep_every_frame_whole_and_in_order():
    connection, peer = await connected_pair(secured=True)
    queue = SendQueue(LIMITS.send_queue_frames, LIMITS.send_queue_bytes)
    frames = [encode_frame(bytes([index % 251]) * 50_000, LIMITS.max_frame_bytes) for index in range(200)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_loop, connection, queue)
        await trio.sleep(0)
        partial_seen = False
        for frame in frames:  # 10 MB: far more than the socket buffers take while nobody reads.
            queue.put(frame, wake=False)
            write_queued(connection, queue)
            partial_seen = partial_seen or connection.sending or not queue.is_empty
        assert partial_seen, "the socket took everything at once: this test did not reach a partial write"
        received = await read_frames(peer, len(frames))
        nursery.cancel_scope.cancel()
    assert received == [frame[4:] for frame in frames]
    await connection.aclose()
    await peer.aclose()


async def test_a_write_on_a_closed_connection_writes_nothing_and_leaves_the_error_to_the_writer():
    connection, peer = await connected_pair()
    await connection.aclose()
    assert connection.write_nowait(b"\x00\x00\x00\x01x") == 0
    with pytest.raises(trio.ClosedResourceError):
        await connection.send_frame(b"\x00\x00\x00\x01x")
    await peer.aclose()


async def test_a_reset_peer_is_a_broken_resource_as_with_trio_streams():
    connection, peer = await connected_pair()
    await peer.send_all(b"\x00\x00\x00\x05")  # Half a frame, then the peer goes away.
    peer.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await peer.aclose()  # SO_LINGER 0: a reset, not a clean close.
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(5):
            await connection.read_batches(lambda messages: None)
    await connection.aclose()


# ---------------------------------------------------------------------------- the persister

async def test_the_persister_queue_is_bounded_and_merges_an_item_that_finds_it_full():
    released = []
    counters = Counter()
    persister = Persister(MemoryStore(), queue_capacity=1, batch_max=4, counters=counters,
                          on_released=released.append)
    first, second = Ready(finalized=()), Ready(to_clients=())
    persister.put(Durable((first,), prune_signed_below_seq=5))
    assert not persister.has_room
    persister.put(Durable((second,), prune_signed_below_seq=9))  # Two producers raced for the last slot.
    assert not persister.has_room and counters["persist-merged"] == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(persister.run)
        with trio.fail_after(5):
            await persister.wait_for_room()
            await persister.wait_released()
        nursery.cancel_scope.cancel()
    assert len(released) == 1  # The merged item was persisted and released as one.


def test_merged_items_keep_their_order_and_the_later_pruning_marks():
    earlier = Durable((Ready(finalized=()),), prune_signed_below_seq=5, prune_views_below=None)
    later = Durable((Ready(to_clients=()),), prune_signed_below_seq=None, prune_views_below=2)
    merged = earlier.followed_by(later)
    assert merged.readies == earlier.readies + later.readies
    assert (merged.prune_signed_below_seq, merged.prune_views_below) == (5, 2)
    assert earlier.followed_by(Durable((), prune_signed_below_seq=7)).prune_signed_below_seq == 7


async def test_the_store_thread_runs_jobs_in_order_and_hands_back_results_and_errors():
    thread = StoreThread()
    thread.start(trio.lowlevel.current_trio_token())
    results: list = []
    all_done = trio.Event()

    def collect(result) -> None:
        results.append(result)
        if len(results) == 3:
            all_done.set()

    def slow_job(value: str) -> str:
        time.sleep(0.1)
        return value

    thread.submit(slow_job, "first", collect)
    thread.submit(lambda divisor: 1 / divisor, 0, collect)
    thread.submit(lambda value: value + 1, 2, collect)
    with trio.fail_after(5):
        await all_done.wait()
    thread.stop()
    assert results[0].unwrap() == "first" and results[2].unwrap() == 3  # In the order submitted.
    with pytest.raises(ZeroDivisionError):
        results[1].unwrap()


class BrokenDisk(MemoryStore):
    def persist(self, items, *, metadata=None) -> int:
        raise OSError("fsync failed")


async def test_a_storage_error_stops_the_persister_and_nothing_is_released():
    released = []
    persister = Persister(BrokenDisk(), queue_capacity=4, batch_max=4, counters=Counter(),
                          on_released=released.append)
    persister.put(Durable((Ready(persist=("any item: the disk fails first",)),)))
    with trio.fail_after(5), pytest.raises(OSError, match="fsync failed"):
        await persister.run()
    assert released == []


# ---------------------------------------------------------------------------- inline policies

def request(action: str, client_id: str = "client-0") -> Request:
    return Request(client_id=client_id, request_number=1, risk=Risk.LOW, action=action, deadline_ms=10**15,
                   signature=bytes(64))


def test_only_declared_policies_and_small_actions_run_inline():
    class Undeclared:
        name = "undeclared"

        def evaluate(self, action, context):
            return PolicyDecision.allow()

    small, large = json.dumps(BENIGN), json.dumps({"text": "x" * INLINE_ACTION_CHARS_MAX})
    assert all(getattr(factory, "evaluates_inline", False) for factory in POLICIES.values())
    assert runs_inline(ApproveEverything(), request(small))
    assert not runs_inline(ApproveEverything(), request(large))
    assert not runs_inline(Undeclared(), request(small))


class _Recording:
    """An inline policy that records the thread it ran on, and can fail or dawdle on request."""

    name = "recording"
    evaluates_inline = True

    def __init__(self, behaviour: str = "allow") -> None:
        self.behaviour = behaviour
        self.threads: list[int] = []

    def evaluate(self, action, context):
        self.threads.append(threading.get_ident())
        if self.behaviour == "raise":
            raise RuntimeError("broken policy")
        if self.behaviour == "slow":
            time.sleep(0.25)  # Blocks the event loop: exactly what the declaration promises not to do.
        return PolicyDecision.allow("fine")


@pytest.mark.parametrize("behaviour, reason", [("raise", "policy error: RuntimeError: broken policy"),
                                               ("slow", "policy deadline exceeded")])
async def test_an_inline_policy_that_fails_or_overruns_still_votes_deny(behaviour, reason):
    failing = _Recording(behaviour)
    policies = [ApproveEverything(), ApproveEverything(), ApproveEverything(), failing]
    with trio.fail_after(30):
        async with open_local_cluster(policies, options=NodeOptions(policy_deadline_ms=100)) as cluster:
            async with cluster.open_client() as client:
                outcome = await client.submit(BENIGN, Risk.CRITICAL)  # Critical: every vote counts.
    assert outcome.status == "DENY"
    assert [(vote.decision, vote.reason) for vote in outcome.certificate.votes if vote.replica_id == 3] == \
        [(Decision.DENY, reason)]
    assert failing.threads == [threading.get_ident()]  # Evaluated on the event loop's thread.


async def test_an_undeclared_policy_still_runs_in_a_worker_thread():
    class Threaded(_Recording):
        evaluates_inline = False

    threaded = Threaded()
    policies = [ApproveEverything(), ApproveEverything(), ApproveEverything(), threaded]
    with trio.fail_after(30):
        async with open_local_cluster(policies) as cluster:
            async with cluster.open_client() as client:
                outcome = await client.submit(BENIGN, Risk.CRITICAL)
    assert outcome.status == "ALLOW"
    assert len(threaded.threads) == 1 and threaded.threads[0] != threading.get_ident()
