"""A fault-injecting TCP proxy in trio, modeled on Toxiproxy's toxics, that also understands the project's frames.

A ``FaultProxy`` listens on 127.0.0.1 and forwards every connection to one
target.  Each direction (``upstream``: from whoever connected to the target;
``downstream``: back) has its own ``Toxics``, replaceable at any time with
``set_toxics``; a change applies to data read after it, on open connections too.

Byte-level toxics, as in Toxiproxy: ``latency_ms`` with ``jitter_ms`` (order
is kept, as TCP would), ``bandwidth_bytes_per_s``, ``slice_bytes`` (writes cut
into small pieces, ``slice_delay_ms`` apart) and ``blackhole`` (everything is
read and thrown away; the connection stays open, like a partition).  Connection
toxics: ``drop_connections()`` closes every open connection at once, and
``refuse_connections`` closes new ones as soon as they arrive.

Message-level toxics: the proxy reads the stream as the runtime's
length-prefixed frames (``bft.runtime`` framing) and can ``drop``,
``duplicate`` or ``reorder`` whole frames.  The first ``handshake_frames`` of
each direction always pass untouched: without a handshake there is no link
to fault.  After the handshake the runtime seals and numbers every frame
(``bft.runtime._link_cipher``), so on a link between runtime parties a
duplicated or reordered frame ends that connection (counted by the receiver
as ``replayed-frame``) and the link reconnects, while a dropped frame is a
gap the receiver accepts and counts: the protocol sees a lost message.  Byte-level toxics keep frames intact and behave as before.  A reordered frame is held back until the next frame has gone
(or ``reorder_hold_ms`` passed), so at most one frame per direction is held.

Everything is bounded: a direction holds at most ``queued_chunks_max`` chunks
in flight (each at most two copies of one read plus one maximum frame); when
that is full the proxy stops reading, and TCP pushes back on the sender.  A
stream that is not valid frames ends that connection, counted.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import trio

from bft.core import RemoteProtocolError
from bft.runtime import FrameDecoder, encode_frame
from bft.runtime._link_cipher import SEAL_OVERHEAD_BYTES

Address = tuple[str, int]
LOOPBACK = "127.0.0.1"
DIRECTIONS = ("upstream", "downstream")


@dataclass(frozen=True, slots=True)
class Toxics:
    """The faults on one direction of a proxied link; the defaults are a clean pipe."""

    latency_ms: int = 0
    jitter_ms: int = 0
    bandwidth_bytes_per_s: int = 0  # 0: unlimited.
    slice_bytes: int = 0  # 0: write what was read in one piece.
    slice_delay_ms: int = 0
    blackhole: bool = False
    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    reorder_probability: float = 0.0

    def problem(self) -> str | None:
        if min(self.latency_ms, self.jitter_ms, self.bandwidth_bytes_per_s, self.slice_bytes,
               self.slice_delay_ms) < 0:
            return "latency, jitter, bandwidth and slicing settings must not be negative"
        if self.jitter_ms > self.latency_ms:
            return "jitter_ms must not exceed latency_ms"
        probabilities = (self.drop_probability, self.duplicate_probability, self.reorder_probability)
        if not all(0.0 <= p <= 1.0 and math.isfinite(p) for p in probabilities):
            return "drop, duplicate and reorder probabilities must be in [0, 1]"
        return None

    @property
    def touches_frames(self) -> bool:
        return max(self.drop_probability, self.duplicate_probability, self.reorder_probability) > 0


CLEAN = Toxics()
BLACKHOLE = Toxics(blackhole=True)


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    chunk_bytes: int = 64 * 1024
    queued_chunks_max: int = 64
    max_frame_bytes: int = 4 * 1024 * 1024 + SEAL_OVERHEAD_BYTES  # The runtime's largest sealed frame.
    handshake_frames: int = 2  # The runtime's handshake: two frames each way.
    max_connections: int = 64
    reorder_hold_ms: int = 50
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        assert min(self.chunk_bytes, self.queued_chunks_max, self.max_frame_bytes, self.max_connections) >= 1
        assert self.handshake_frames >= 0 and self.reorder_hold_ms >= 1 and self.connect_timeout_s > 0


def _writes_whole(toxics: Toxics) -> bool:
    """True when ``toxics`` neither slices nor paces writes, so a chunk may go out in one write."""
    return not (toxics.slice_bytes or toxics.bandwidth_bytes_per_s)


def slices(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (whole if ``size`` is 0)."""
    if size <= 0:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start:start + size]


class FrameShaper:
    """Cuts a byte stream into frames and drops, duplicates or reorders them after the handshake."""

    def __init__(self, limits: ProxyLimits, rng: random.Random, counters: Counter) -> None:
        self.limits = limits
        self.rng = rng
        self.counters = counters
        self.decoder = FrameDecoder(limits.max_frame_bytes)
        self.frames_seen = 0
        self.held: bytes | None = None

    def feed(self, data: bytes, toxics: Toxics) -> list[bytes]:
        """Encoded frames to forward for ``data``; raises ``RemoteProtocolError`` on a broken stream."""
        self.decoder.receive_data(data)
        out: list[bytes] = []
        while (payload := self.decoder.next_frame()) is not None:
            out += self._shape(encode_frame(payload, self.limits.max_frame_bytes), toxics)
        return out

    def release(self) -> list[bytes]:
        """The held-back frame, if any: its successor did not come in time."""
        held, self.held = self.held, None
        return [held] if held is not None else []

    def _shape(self, frame: bytes, toxics: Toxics) -> list[bytes]:
        self.frames_seen += 1
        if self.frames_seen <= self.limits.handshake_frames or not toxics.touches_frames:
            return [frame] + self.release()
        if self.rng.random() < toxics.drop_probability:
            self.counters["frames-dropped"] += 1
            return []
        copies = [frame, frame] if self.rng.random() < toxics.duplicate_probability else [frame]
        self.counters["frames-duplicated"] += len(copies) - 1
        if self.held is None and self.rng.random() < toxics.reorder_probability:
            self.held = copies.pop(0)
            self.counters["frames-reordered"] += 1
            return copies
        return copies + self.release()


@dataclass
class _Direction:
    """One direction of one proxied connection: where its bytes stand in the delay line."""

    name: str
    last_due_s: float = 0.0
    queued_peak: int = 0
    chunks_in_write_side: int = 0  # Handed to the write side and not yet written.


class FaultProxy:
    """Forward connections to ``target`` through toxics that can be changed while it runs."""

    def __init__(self, target: Address, *, name: str = "proxy", seed: int = 0, framed: bool = True,
                 limits: ProxyLimits | None = None) -> None:
        self.target = target
        self.name = name
        self.framed = framed
        self.limits = limits or ProxyLimits()
        self.rng = random.Random(seed)
        self.counters: Counter[str] = Counter()
        self.refuse_connections = False
        self.address: Address | None = None
        self._toxics = {direction: CLEAN for direction in DIRECTIONS}
        self._connections: set[trio.CancelScope] = set()

    # ------------------------------------------------------------- control

    def toxics(self, direction: str) -> Toxics:
        return self._toxics[direction]

    def set_toxics(self, upstream: Toxics | None = None, downstream: Toxics | None = None, *,
                   both: Toxics | None = None) -> None:
        """Replace the toxics of one or both directions; raises ValueError naming a bad setting."""
        changes = {"upstream": both or upstream, "downstream": both or downstream}
        for toxics in (t for t in changes.values() if t is not None):
            problem = toxics.problem()
            if problem:
                raise ValueError(f"{self.name}: {problem}")
        self._toxics.update({direction: t for direction, t in changes.items() if t is not None})

    def heal(self) -> None:
        self._toxics = {direction: CLEAN for direction in DIRECTIONS}
        self.refuse_connections = False

    def drop_connections(self) -> int:
        """Close every open connection now (both ends); returns how many."""
        dropped = len(self._connections)
        for scope in list(self._connections):
            scope.cancel()
        self.counters["connections-dropped"] += dropped
        return dropped

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # ------------------------------------------------------------- serving

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port (``address`` once started) and proxy until cancelled."""
        listener = (await trio.open_tcp_listeners(0, host=LOOPBACK))[0]
        self.address = (LOOPBACK, listener.socket.getsockname()[1])
        async with listener, trio.open_nursery() as nursery:
            task_status.started(self.address)
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, client: trio.SocketStream) -> None:
        async with client:
            if self.refuse_connections or len(self._connections) >= self.limits.max_connections:
                self.counters["connections-refused"] += 1
                return
            try:
                with trio.fail_after(self.limits.connect_timeout_s):
                    server = await trio.open_tcp_stream(*self.target)
            except (OSError, trio.TooSlowError):
                self.counters["connections-failed"] += 1
                return
            self.counters["connections"] += 1
            async with server:
                with trio.CancelScope() as scope:
                    self._connections.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pipe, client, server, _Direction("upstream"), nursery)
                            nursery.start_soon(self._pipe, server, client, _Direction("downstream"), nursery)
                    finally:
                        self._connections.discard(scope)

    async def _pipe(self, source: trio.SocketStream, destination: trio.SocketStream, direction: _Direction,
                    connection: trio.Nursery) -> None:
        """One direction; when it ends (end of stream, error, broken frames) the whole connection ends."""
        sender, receiver = trio.open_memory_channel[tuple[float, bytes]](self.limits.queued_chunks_max)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_side, source, sender, destination, direction)
                nursery.start_soon(self._write_side, receiver, destination, direction)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.counters["connections-broken"] += 1
        except* RemoteProtocolError:
            self.counters["connections-unframed"] += 1
        connection.cancel_scope.cancel()

    async def _read_side(self, source: trio.SocketStream, sender: trio.MemorySendChannel,
                         destination: trio.SocketStream, direction: _Direction) -> None:
        shaper = FrameShaper(self.limits, self.rng, self.counters) if self.framed else None
        async with sender:
            while True:
                data = await self._receive(source, shaper)
                if data == b"":  # End of stream.
                    await self._forward(sender, destination, direction, shaper.release() if shaper else [])
                    return
                toxics = self._toxics[direction.name]
                if data is None:  # The hold timed out: the held frame goes on alone.
                    await self._forward(sender, destination, direction, shaper.release())
                elif shaper is not None:
                    frames = shaper.feed(data, toxics)
                    await self._forward(sender, destination, direction, [] if toxics.blackhole else frames, len(data))
                else:
                    await self._forward(sender, destination, direction, [] if toxics.blackhole else [data], len(data))

    async def _receive(self, source: trio.SocketStream, shaper: FrameShaper | None) -> bytes | None:
        """The next chunk (empty at the end of the stream), or None if a held frame's hold ran out first.
        Only a held frame sets a deadline: a cancel scope firing costs more than relaying a chunk."""
        if shaper is None or not shaper.held:
            return await source.receive_some(self.limits.chunk_bytes)
        with trio.move_on_after(self.limits.reorder_hold_ms / 1000):
            return await source.receive_some(self.limits.chunk_bytes)
        return None

    async def _forward(self, sender: trio.MemorySendChannel, destination: trio.SocketStream, direction: _Direction,
                       pieces: list[bytes], read_bytes: int = 0) -> None:
        toxics = self._toxics[direction.name]
        if toxics.blackhole:
            self.counters["bytes-blackholed"] += read_bytes
            return
        if not pieces:
            return
        jitter_ms = self.rng.uniform(-toxics.jitter_ms, toxics.jitter_ms) if toxics.jitter_ms else 0.0
        delay_ms = toxics.latency_ms + jitter_ms
        now_s = trio.current_time()
        # A byte stream stays in order: nothing leaves before what was read earlier.
        direction.last_due_s = max(direction.last_due_s, now_s + delay_ms / 1000)
        data = b"".join(pieces)
        if direction.last_due_s <= now_s and _writes_whole(toxics) and not direction.chunks_in_write_side:
            data = self._write_now(destination, data, direction)
            if not data:
                return
        direction.chunks_in_write_side += 1
        await sender.send((direction.last_due_s, data))
        queued = sender.statistics().current_buffer_used
        direction.queued_peak = max(direction.queued_peak, queued)
        self.counters["queued-chunks-peak"] = max(self.counters["queued-chunks-peak"], queued)
        assert queued <= self.limits.queued_chunks_max

    async def _write_side(self, receiver: trio.MemoryReceiveChannel, destination: trio.SocketStream,
                          direction: _Direction) -> None:
        async with receiver:
            async for due_s, data in receiver:
                if due_s > trio.current_time():  # Sleeping until a past time still fires a cancel scope.
                    await trio.sleep_until(due_s)
                toxics = self._toxics[direction.name]
                pieces = list(slices(data, toxics.slice_bytes))
                for index, piece in enumerate(pieces):
                    if toxics.bandwidth_bytes_per_s:
                        await trio.sleep(len(piece) / toxics.bandwidth_bytes_per_s)
                    await destination.send_all(piece)
                    self._count_write(direction, len(piece))
                    if toxics.slice_delay_ms and index + 1 < len(pieces):
                        await trio.sleep(toxics.slice_delay_ms / 1000)
                direction.chunks_in_write_side -= 1

    def _write_now(self, destination: trio.SocketStream, data: bytes, direction: _Direction) -> bytes:
        """Write ``data`` from the reading task, skipping the write side's task switch (most of what a
        clean link costs the harness); the write side is idle, so the order holds.  Returns what the
        socket did not take, for the write side to finish."""
        try:
            written = os.write(destination.socket.fileno(), data)
        except BlockingIOError:
            return data
        except OSError as error:
            raise trio.BrokenResourceError(f"{self.name}: write failed: {error}") from error
        self._count_write(direction, written)
        return data[written:]

    def _count_write(self, direction: _Direction, size: int) -> None:
        self.counters[f"writes-{direction.name}"] += 1
        self.counters[f"bytes-{direction.name}"] += size


class LinkProxies:
    """A proxy on every directed replica link, and one per replica for clients, so faults can be set per link.

    Replica ``source`` must be started with ``addresses_for(source)``: its
    connection to ``destination`` then goes through ``link(source, destination)``,
    whose upstream carries what ``source`` sends (replicas open one outgoing
    connection per peer).  Clients use ``client_addresses()``.
    """

    def __init__(self, replica_addresses: dict[int, Address], *, seed: int = 0,
                 limits: ProxyLimits | None = None) -> None:
        self.replica_addresses = dict(replica_addresses)
        ids = sorted(self.replica_addresses)
        self.links = {(source, destination): FaultProxy(self.replica_addresses[destination],
                                                        name=f"link {source}->{destination}",
                                                        seed=seed * 1_000 + source * 32 + destination, limits=limits)
                      for source in ids for destination in ids if source != destination}
        self.clients = {replica: FaultProxy(address, name=f"clients->{replica}", seed=seed * 1_000 + 999 - replica,
                                            limits=limits)
                        for replica, address in self.replica_addresses.items()}

    async def start(self, nursery: trio.Nursery) -> None:
        for proxy in [*self.links.values(), *self.clients.values()]:
            await nursery.start(proxy.serve)

    def addresses_for(self, source: int) -> dict[int, Address]:
        return {destination: self.replica_addresses[source] if destination == source
                else self.links[(source, destination)].address for destination in self.replica_addresses}

    def client_addresses(self) -> dict[int, Address]:
        return {replica: proxy.address for replica, proxy in self.clients.items()}

    def link(self, source: int, destination: int) -> FaultProxy:
        return self.links[(source, destination)]

    def set_link(self, source: int, destination: int, toxics: Toxics) -> None:
        """Set both directions of the connection ``source`` opens to ``destination``."""
        self.links[(source, destination)].set_toxics(both=toxics)

    def partition(self, *groups: set[int]) -> None:
        """Blackhole every replica link between different groups, both ways; other links are left alone."""
        for index, group in enumerate(groups):
            for other in groups[index + 1:]:
                assert not group & other, "partition groups must be disjoint"
                for a in group:
                    for b in other:
                        self.set_link(a, b, BLACKHOLE)
                        self.set_link(b, a, BLACKHOLE)

    def isolate(self, replica: int) -> None:
        self.partition({replica}, set(self.replica_addresses) - {replica})

    def heal(self) -> None:
        for proxy in [*self.links.values(), *self.clients.values()]:
            proxy.heal()
