"""A replica's incoming connections: admission, the handshake, one session per identity, and delivery.

Every connection a replica accepts goes through ``Admission`` (bounded pending
handshakes, per host and in all) and the handshake; then it is the session of
the identity it proved.  A peer replica's session carries that peer's messages
to this replica; a client's carries its requests in and its replies out.  Each
socket read of a session is decoded and checked whole, then handed to the
node's core as one round (``ReplicaNode.take_inputs``): one bad message drops
the connection and the whole read with it.  Before each read the session waits
for room in the node's persister, so a disk that falls behind pushes back on
the sender through TCP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..core import Message, Refusal, RemoteProtocolError, Reply, Request, decode
from . import _handshake
from ._admission import Admission
from ._connection import FramedConnection, SendQueue
from ._handshake import Identity
from ._transport import CONNECTION_ERRORS, PayloadHandler, peer_name, run_duplex, source_address, write_queued

if TYPE_CHECKING:  # The node imports this module; the name is only an annotation here.
    from ._node import ReplicaNode

logger = logging.getLogger("bft.runtime")


@dataclass(eq=False)
class _Session:
    """The replica's end of one authenticated connection; a client's replies go out on its queue."""

    identity: Identity
    queue: SendQueue
    cancel_scope: trio.CancelScope
    connection: FramedConnection


class Sessions:
    """The authenticated incoming connections of one node, at most one per identity."""

    def __init__(self, node: ReplicaNode, seed: bytes, admission: Admission) -> None:
        self._node = node
        self._seed = seed  # The node's own key seed, for the handshake.
        self._admission = admission
        self._limits = node.options.transport
        self._max_message_bytes = min(self._limits.max_frame_bytes, node.config.limits.max_message_bytes)
        self._by_identity: dict[Identity, _Session] = {}

    @property
    def clients_connected(self) -> int:
        return sum(1 for identity in self._by_identity if identity.role == "client")

    def send_to_client(self, client_id: str, frame: bytes) -> bool:
        """Queue ``frame`` on the client's session and write what the socket takes; False if it has none."""
        session = self._by_identity.get(Identity("client", client_id))
        if session is None:
            return False
        if not session.queue.put(frame, wake=False):
            self._node.counters["send-dropped"] += 1
        write_queued(session.connection, session.queue)
        return True

    def close_replicas_outside(self, staying: set[int]) -> None:
        """End the sessions of replicas that are not in ``staying`` (they left the configuration, or their key
        changed): the epoch changed (``_epochs``)."""
        for identity, session in list(self._by_identity.items()):
            if identity.role == "replica" and identity.name not in staying:
                self._node.counters["connection-closed:left-epoch"] += 1
                session.cancel_scope.cancel()

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        """Admit, authenticate and serve one accepted connection until it ends."""
        node = self._node
        connection = FramedConnection(stream, self._limits, peer_name(stream))
        pending = self._admission.admit(source_address(stream), trio.current_time() + self._limits.handshake_timeout_s)
        identity = None
        try:
            with pending.cancel_scope:
                identity = await _handshake.accept(connection, node.config, node.identity, self._seed,
                                                   on_hello=lambda claimed: self._admission.identify(pending, claimed))
        except CONNECTION_ERRORS as error:
            self._count_failure("connection-refused", error, connection.peer)
        finally:
            self._admission.release(pending)
        if identity is None:
            if pending.cancel_scope.cancelled_caught and not pending.evicted:
                self._count_failure("connection-refused", trio.TooSlowError("the handshake took too long"),
                                    connection.peer)
            await connection.aclose()  # Evictions were counted by the admission.
            return
        connection.peer = f"{identity} at {connection.peer}"
        try:
            await self._serve_session(connection, identity)
        except CONNECTION_ERRORS as error:
            self._count_failure("connection-dropped", error, connection.peer)
        finally:
            await connection.aclose()

    def _count_failure(self, what: str, error: BaseException, peer: str) -> None:
        node = self._node
        reason = error.reason if isinstance(error, RemoteProtocolError) else type(error).__name__
        if isinstance(error, trio.TooSlowError):
            reason = "timeout"
        node.counters[f"{what}:{reason}"] += 1
        # What the other side sent (or failed to send in time) is a rejection; a broken network is not.
        if isinstance(error, (RemoteProtocolError, trio.TooSlowError)):
            node.metrics.rejected(reason)
        logger.warning("replica %d: %s %s: %s", node.replica_id, what.replace("-", " "), peer, str(error) or reason,
                       extra={"replica_id": node.replica_id, "event": what, "peer": peer, "reason": reason})

    async def _serve_session(self, connection: FramedConnection, identity: Identity) -> None:
        """Serve one authenticated connection.  Each identity holds at most one: a newer connection
        replaces the older, so a reconnecting peer is not locked out by its own stale connection
        and one identity cannot take many connection slots."""
        node = self._node
        if identity.role == "replica":
            # The peer sends on this connection; we only answer with keep-alives so it knows we are here.
            queue, on_payloads = SendQueue(1, 1), self._replica_payload_handler(connection)
        else:
            queue = SendQueue(2 * node.config.limits.client_window, self._limits.max_frame_bytes,
                              self._limits.send_queue_policy)
            on_payloads = self._client_payload_handler(connection, identity.name)
            connection.close_when_quiet(self._limits.client_idle_timeout_s)  # A client that asks nothing leaves.
        session = _Session(identity, queue, trio.CancelScope(), connection)
        previous = self._by_identity.get(identity)
        if previous is not None:
            node.counters["connection-replaced"] += 1
            previous.cancel_scope.cancel()
        self._by_identity[identity] = session
        try:
            with session.cancel_scope:
                await run_duplex(connection, session.queue, on_payloads, node.wait_for_round_room)
        finally:
            if self._by_identity.get(identity) is session:
                del self._by_identity[identity]

    def _replica_payload_handler(self, connection: FramedConnection) -> PayloadHandler:
        def on_payloads(payloads: list[bytes]) -> None:
            """One read's messages are one round of the core.  One bad message drops the connection and
            the whole batch with it: an honest replica never sends one."""
            messages = [self._decode(payload, connection.peer) for payload in payloads]
            for message in messages:
                if isinstance(message, (Reply, Refusal)):
                    raise RemoteProtocolError("unexpected-message", "replicas do not send replies to replicas",
                                              connection.peer)
            self._node.take_inputs("replica", messages)
        return on_payloads

    def _client_payload_handler(self, connection: FramedConnection, client_id: str) -> PayloadHandler:
        def on_payloads(payloads: list[bytes]) -> None:
            requests = [self._decode(payload, connection.peer) for payload in payloads]
            for request in requests:
                if not isinstance(request, Request) or request.client_id != client_id:
                    raise RemoteProtocolError("unexpected-message", "a client may only send its own requests",
                                              connection.peer)
            self._node.take_inputs("client", requests)
        return on_payloads

    def _decode(self, payload: bytes, peer: str) -> Message:
        try:
            return decode(payload, self._max_message_bytes)
        except RemoteProtocolError as error:
            raise error.from_sender(peer) from None
