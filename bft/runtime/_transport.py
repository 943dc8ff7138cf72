"""TCP transport: outgoing self-healing links, the accept loop, and the two pumps of a connection.

An outgoing ``Link`` is owned by its sender: it connects to one replica,
authenticates both ways, then sends what it is given: straight to the socket
when it can (``write_queued``), else through its bounded send queue, which a
writer task drains.
When the connection fails it reconnects after a jittered, capped exponential
delay; whatever is queued meanwhile waits in the bounded queue (oldest dropped
first by default), so a dead peer costs bounded memory and never blocks the
sender.  Errors caused by the other side are logged and end the connection;
they never escape into the caller's nursery.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Awaitable, Callable

import trio

from ..core import ClusterConfig, RemoteProtocolError
from . import _handshake
from ._connection import KEEPALIVE, Backoff, FramedConnection, SendQueue
from ._framing import encode_frame
from ._handshake import Identity
from ._options import TransportLimits

logger = logging.getLogger("bft.runtime")

# Everything the other side of a connection (or the network) can cause.  Any
# other exception is a bug on our side and is allowed to crash loudly.
CONNECTION_ERRORS = (RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                     trio.TooSlowError, OSError)

Address = tuple[str, int]
# Receives the messages of one socket read, in order, as one list (never empty, keep-alives left out),
# synchronously: it may raise ``RemoteProtocolError`` to end the connection, but never waits.
PayloadHandler = Callable[[list[bytes]], None]
# Awaited before each read of a connection: the receiver's back-pressure (see ``read_batches``).
ReadinessWait = Callable[[], Awaitable[None]]


def peer_name(stream: trio.abc.Stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (AttributeError, OSError):
        return "unknown peer"
    return f"{host}:{port}"


def source_address(stream: trio.abc.Stream) -> str:
    """The host a connection comes from (admission limits count per host, not per port)."""
    try:
        return str(stream.socket.getpeername()[0])
    except (AttributeError, OSError):
        return "unknown"


def new_send_queue(limits: TransportLimits) -> SendQueue:
    return SendQueue(limits.send_queue_frames, limits.send_queue_bytes, limits.send_queue_policy)


def write_queued(connection: FramedConnection | None, queue: SendQueue) -> None:
    """Write what ``queue`` holds straight to the socket if its writer is idle; else wake the writer.

    Most frames go out this way, from the task that produced them, with one system call
    per peer and no task switch; only what the socket does not take at once (a slow or
    dead peer) waits for the writer, which then also enforces the send timeout.  The
    writer is always woken when anything is left, so a frame never waits for a keep-alive.
    """
    if queue.is_empty:
        return
    if connection is None or connection.sending or not connection.writes_directly:
        queue.wake()
        return
    data = queue.take_wire(connection.limits.receive_chunk_bytes, connection.seal_frames)
    written = connection.write_nowait(data)
    assert 0 <= written <= len(data)
    if written < len(data):
        queue.put_rest(data[written:])  # Wakes the writer, which finishes the frame first.
    elif not queue.is_empty:
        queue.wake()


async def write_loop(connection: FramedConnection, queue: SendQueue) -> None:
    """Send queued frames; when there is nothing to send for a while, send a keep-alive."""
    keepalive_s = connection.limits.idle_timeout_s / 3
    keepalive = encode_frame(KEEPALIVE, connection.limits.max_frame_bytes)
    while True:
        data = await queue.get_wire(keepalive_s, connection.limits.receive_chunk_bytes, connection.seal_frames)
        # Sealed only now, just before it goes out: frames are numbered in the order they leave.
        await connection.send_frame(data or connection.seal_frames([keepalive]))


async def read_loop(connection: FramedConnection, on_payloads: PayloadHandler | None,
                    wait_until_ready: ReadinessWait | None = None) -> None:
    """Hand the messages of each read to ``on_payloads`` as one batch; return when the peer closes cleanly."""
    await connection.read_batches(on_payloads if on_payloads is not None else _refuse_payloads(connection),
                                  wait_until_ready)


def _refuse_payloads(connection: FramedConnection) -> PayloadHandler:
    def refuse(payloads: list[bytes]) -> None:
        raise RemoteProtocolError("unexpected-frame", "this side of the link does not accept messages",
                                  connection.peer)
    return refuse


async def run_duplex(connection: FramedConnection, queue: SendQueue, on_payloads: PayloadHandler | None,
                     wait_until_ready: ReadinessWait | None = None) -> None:
    """Pump both directions until either ends; re-raise the first connection error, unwrapped."""
    assert connection.secured, "messages only travel on sealed connections"
    failures: list[BaseException] = []

    async def guarded(pump, *arguments) -> None:
        try:
            await pump(*arguments)
        except CONNECTION_ERRORS as error:
            failures.append(error)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded, write_loop, connection, queue)
        nursery.start_soon(guarded, read_loop, connection, on_payloads, wait_until_ready)
    if failures:
        raise failures[0]


class Link:
    """An outgoing, authenticated, reconnecting connection to one replica."""

    def __init__(self, config: ClusterConfig, own: Identity, seed: bytes, target_id: int, address: Address,
                 limits: TransportLimits, counters: Counter, *, on_payloads: PayloadHandler | None = None,
                 on_connect: Callable[["Link"], None] | None = None,
                 on_rejected: Callable[[str], None] | None = None) -> None:
        assert 0 <= target_id < config.replica_count
        self.config = config
        self.own = own
        self.target = Identity("replica", target_id)
        self.address = address
        self.limits = limits
        self.counters = counters
        self.queue = new_send_queue(limits)
        self.connected = False
        self._connection: FramedConnection | None = None  # While authenticated.
        self._holding = False
        self.connections = 0
        self._authenticated = False
        self._seed = seed
        self._on_payloads = on_payloads
        self._on_connect = on_connect
        self._on_rejected = on_rejected
        self._cancel_scope = trio.CancelScope()  # ``close`` ends ``run`` (the peer left the configuration).

    def reaches(self, config: ClusterConfig, address: Address | None) -> bool:
        """Whether this link still reaches its replica as ``config`` lists it at ``address``: the same id, key
        and address (a later epoch may remove the replica, re-key it or move it)."""
        peer = self.target.name
        return (peer < config.replica_count and config.replica_keys[peer] == self.config.replica_keys[peer]
                and address == self.address)

    def send(self, frame: bytes) -> None:
        """Send ``frame`` now if the connection takes it, else queue it (bounded: see ``SendQueue``).
        Between ``hold`` and ``flush`` frames only queue, so that they leave together."""
        if not self.queue.put(frame, wake=False):
            self.counters["send-dropped"] += 1
        if not self._holding:
            write_queued(self._connection, self.queue)

    def hold(self) -> None:
        """Queue what ``send`` gets until ``flush``: the caller has several frames for this peer."""
        self._holding = True

    def flush(self) -> None:
        """End a ``hold``: write the queued frames at once, or leave them to the writer."""
        self._holding = False
        write_queued(self._connection, self.queue)

    async def run(self) -> None:
        """Stay connected until cancelled or closed; the delay between attempts is capped, so the loop never
        spins."""
        backoff = Backoff(self.limits.reconnect_delay_s_min, self.limits.reconnect_delay_s_max)
        with self._cancel_scope:
            while True:
                try:
                    await self._connect_and_serve(backoff)
                except CONNECTION_ERRORS as error:
                    self._log_failure(error)
                await trio.sleep(backoff.next_delay_s())

    def close(self) -> None:
        """Stop for good: ``run`` returns, whether it started yet or not, and nothing queued is sent."""
        self._cancel_scope.cancel()
        self.queue.clear()

    async def _connect_and_serve(self, backoff: Backoff) -> None:
        self._authenticated = False
        with trio.fail_after(self.limits.connect_timeout_s):
            stream = await trio.open_tcp_stream(*self.address)
        connection = FramedConnection(stream, self.limits, str(self.target))
        try:
            with trio.fail_after(self.limits.handshake_timeout_s):
                await _handshake.initiate(connection, self.config, self.own, self._seed, self.target)
            self._authenticated = self.connected = True
            self._connection = connection
            self.connections += 1
            started_s = trio.current_time()
            if self._on_connect is not None:
                self._on_connect(self)
            try:
                await run_duplex(connection, self.queue, self._on_payloads)
                logger.info("%s: %s closed the connection", self.own, self.target, extra={"peer": str(self.target)})
            finally:
                # Only a connection that lasted counts as recovery; a peer that accepts and at once
                # hangs up must not reset the backoff into a tight reconnect loop.
                if trio.current_time() - started_s >= self.limits.reconnect_delay_s_max:
                    backoff.reset()
        finally:
            self.connected = False
            self._connection = None
            self.queue.discard_rest()  # A frame this connection began cannot be finished on the next.
            await connection.aclose()

    def _log_failure(self, error: BaseException) -> None:
        fields = {"peer": str(self.target)}
        if isinstance(error, RemoteProtocolError):
            self.counters[f"link-error:{error.reason}"] += 1
            if self._on_rejected is not None:
                self._on_rejected(error.reason)
            logger.warning("%s: link to %s dropped: %s", self.own, self.target, error,
                           extra={**fields, "reason": error.reason})
        elif self._authenticated or isinstance(error, trio.TooSlowError):
            self.counters["link-error:network"] += 1
            logger.info("%s: link to %s failed: %s", self.own, self.target, str(error) or type(error).__name__,
                        extra={**fields, "reason": "network"})
        else:
            self.counters["link-error:connect"] += 1  # The peer is not up yet; expected at start-up.


async def accept_loop(listener: trio.SocketListener, handler: Callable[[trio.SocketStream], Awaitable[None]],
                      limits: TransportLimits, counters: Counter, nursery: trio.Nursery,
                      on_rejected: Callable[[str], None] | None = None) -> None:
    """Accept connections into ``nursery``, refusing those beyond ``max_connections``."""
    active = [0]

    async def tracked(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        finally:
            active[0] -= 1

    while True:
        try:
            stream = await listener.accept()
        except OSError as error:  # Out of file descriptors and the like: wait instead of spinning.
            logger.warning("accept failed: %s", error, extra={"reason": type(error).__name__})
            await trio.sleep(0.1)
            continue
        if active[0] >= limits.max_connections:
            counters["connection-refused:too-many"] += 1
            if on_rejected is not None:
                on_rejected("too-many-connections")
            logger.warning("refused a connection from %s: %d connections open", peer_name(stream), active[0],
                           extra={"peer": peer_name(stream), "reason": "too-many-connections"})
            await trio.aclose_forcefully(stream)
            continue
        active[0] += 1
        assert active[0] <= limits.max_connections
        nursery.start_soon(tracked, stream)
