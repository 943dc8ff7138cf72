"""A replica node: one sans-IO core driven by trio, its links, its listener, its policy and its clock.

Every core input happens in one task, ``_main_loop``, which takes items from one
bounded inbox and ticks the core every ``tick_ms``; the core is never entered
twice at once.  Connection tasks only decode and enqueue.  Policies run in
worker threads under a deadline; a policy that overruns votes DENY ("policy
deadline exceeded").  Every ``Ready`` goes through ``apply_ready``: persist,
then send (sends only enqueue on bounded link queues, so the main loop never
waits on the network).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import trio

from ..core import (ClusterConfig, Decision, Message, Ready, RemoteProtocolError, Replica, Reply, Request,
                    apply_ready, decode, encode, request_digest)
from ..policy import Policy, PolicyDecision, evaluate_fail_safe
from ..storage import MemoryStore, Store
from . import _handshake
from ._connection import FramedConnection, SendQueue
from ._framing import encode_frame
from ._handshake import Identity
from ._options import NodeOptions, RuntimeClock
from ._transport import CONNECTION_ERRORS, Address, Link, accept_loop, peer_name, run_duplex

logger = logging.getLogger("bft.runtime")

INBOX_DRAIN_MAX = 64


@dataclass(eq=False)
class _Session:
    """The replica's end of one authenticated connection; a client's replies go out on its queue."""

    identity: Identity
    queue: SendQueue
    cancel_scope: trio.CancelScope


class ReplicaNode:
    def __init__(self, config: ClusterConfig, replica_id: int, seed: bytes, policy: Policy,
                 addresses: Mapping[int, Address], *, store: Store | None = None,
                 options: NodeOptions | None = None, clock: RuntimeClock | None = None) -> None:
        self.options = (options or NodeOptions()).check()
        assert set(addresses) == set(range(config.replica_count)), "every replica needs an address"
        self.config = config
        self.store = store if store is not None else MemoryStore()
        self.replica = self._start_replica(replica_id, seed)
        self.replica_id = replica_id
        self.identity = Identity("replica", replica_id)
        self.policy = policy
        self.addresses = dict(addresses)
        self.clock = clock or RuntimeClock()
        self.counters: Counter[str] = Counter()
        self.finalized_count = 0
        self.port: int | None = None
        self._seed = seed
        self._limits = self.options.transport
        self._max_message_bytes = min(self._limits.max_frame_bytes, config.limits.max_message_bytes)
        self.links = {peer: Link(config, self.identity, seed, peer, self.addresses[peer], self._limits, self.counters)
                      for peer in range(config.replica_count) if peer != replica_id}
        self._sessions: dict[Identity, _Session] = {}
        self._handshakes_in_progress = 0
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[tuple](self.options.inbox_capacity)
        self._policy_limiter = trio.CapacityLimiter(self.options.policy_threads)
        self._evaluations_in_flight = 0
        self._nursery: trio.Nursery | None = None
        self._pruned_below_seq = self.replica.low_water
        self._pruned_below_view = self.replica.view

    def _start_replica(self, replica_id: int, seed: bytes) -> Replica:
        """A fresh replica, or, if the store holds anything, the replica it remembers (so a restarted
        node never signs anything that contradicts what it signed before)."""
        recovered = self.store.load()
        if not (recovered.signed or recovered.log):
            return Replica(self.config, replica_id, seed)
        logger.info("replica %d recovers %d signed messages and %d verdicts from its store", replica_id,
                    len(recovered.signed), len(recovered.log))
        return Replica.recover(self.config, replica_id, seed, recovered.signed, recovered.log)

    # ----------------------------------------------------------------- lifecycle

    async def run(self, listener: trio.SocketListener | None = None, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled.  ``listener`` may be pre-bound (tests bind port 0 first)."""
        if listener is None:
            host, port = self.addresses[self.replica_id]
            listener = (await trio.open_tcp_listeners(port, host=host))[0]
        self.port = listener.socket.getsockname()[1]
        async with listener, trio.open_nursery() as nursery:
            self._nursery = nursery
            for link in self.links.values():
                nursery.start_soon(link.run)
            nursery.start_soon(accept_loop, listener, self._serve_connection, self._limits, self.counters, nursery)
            nursery.start_soon(self._main_loop)
            logger.info("replica %d listening on port %d", self.replica_id, self.port)
            task_status.started(self.port)

    @property
    def peers_connected(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    def status(self) -> dict[str, Any]:
        replica = self.replica
        clients_connected = sum(1 for identity in self._sessions if identity.role == "client")
        return {"replica_id": self.replica_id, "view": replica.view, "last_executed": replica.last_executed,
                "low_water": replica.low_water, "finalized": self.finalized_count,
                "peers_connected": self.peers_connected, "clients_connected": clients_connected,
                "counters": dict(self.counters)}

    # ----------------------------------------------------------------- the core's one task

    async def _main_loop(self) -> None:
        tick_s = self.options.tick_ms / 1000
        next_tick_s = trio.current_time()
        while True:
            now_s = trio.current_time()
            if now_s >= next_tick_s:
                self._apply(self.replica.tick(self.clock.now_ms()))
                # After a stall, skip the missed ticks instead of firing them back to back.
                next_tick_s = max(next_tick_s + tick_s, now_s + tick_s / 2)
                continue
            item = None
            with trio.move_on_at(next_tick_s):
                item = await self._inbox_receive.receive()
            if item is not None:
                self._apply(self._input(item))
                self._drain_inbox()

    def _drain_inbox(self) -> None:
        """Handle what else is already queued without a trip through the scheduler, up to a bound
        so that a busy inbox cannot hold back the next tick."""
        for _ in range(INBOX_DRAIN_MAX):
            try:
                item = self._inbox_receive.receive_nowait()
            except trio.WouldBlock:
                return
            self._apply(self._input(item))

    def _input(self, item: tuple) -> Ready:
        kind = item[0]
        if kind == "decision":
            _, digest, decision, reason = item
            return self.replica.record_decision(digest, decision, reason)
        message = item[1]
        assert kind in ("client", "replica"), kind
        return self.replica.submit(message) if isinstance(message, Request) else self.replica.step(message)

    def _apply(self, ready: Ready) -> None:
        frames: dict[int, bytes] = {}

        def frame_of(message: Message) -> bytes:
            # A broadcast is one message object sent n-1 times: encode it once.
            frame = frames.get(id(message))
            if frame is None:
                frame = frames[id(message)] = encode_frame(encode(message), self._limits.max_frame_bytes)
            return frame

        apply_ready(ready, self.store, lambda peer, message: self.links[peer].send(frame_of(message)),
                    lambda client_id, reply: self._send_reply(client_id, frame_of(reply)))
        self.finalized_count += len(ready.finalized)
        self._prune_store()
        for rejection in ready.rejected:
            self.counters[f"rejected:{rejection.reason}"] += 1
            logger.debug("replica %d rejected input from %s: %s %s", self.replica_id, rejection.sender,
                         rejection.reason, rejection.detail)
        for request in ready.evaluate:
            self._start_evaluation(request)

    def _prune_store(self) -> None:
        """Keep the store bounded like the core: drop what a stable checkpoint or an installed view
        made obsolete.  Runs after the Ready that moved the water mark was persisted and sent."""
        replica = self.replica
        if replica.low_water > self._pruned_below_seq:
            self.counters["store-pruned"] += self.store.prune_signed_below(replica.low_water)
            self._pruned_below_seq = replica.low_water
        if replica.view_active and replica.view > self._pruned_below_view:
            self.counters["store-pruned"] += self.store.prune_views_below(replica.view)
            self._pruned_below_view = replica.view

    def _send_reply(self, client_id: str, frame: bytes) -> None:
        session = self._sessions.get(Identity("client", client_id))
        if session is None:
            self.counters["reply-undeliverable"] += 1  # The client retries; the core replays its cached reply.
        elif not session.queue.put(frame):
            self.counters["send-dropped"] += 1

    # ----------------------------------------------------------------- policies

    def _start_evaluation(self, request: Request) -> None:
        digest = request_digest(self.config.cluster_id, request)
        if self._evaluations_in_flight >= self.options.max_evaluations_in_flight:
            self.counters["policy-overloaded"] += 1
            self._apply(self.replica.record_decision(digest, Decision.DENY, "policy overloaded"))
            return
        self._evaluations_in_flight += 1
        self._nursery.start_soon(self._evaluate, request, digest)

    async def _evaluate(self, request: Request, digest: bytes) -> None:
        outcome: PolicyDecision | None = None
        try:
            with trio.move_on_after(self.options.policy_deadline_ms / 1000):
                outcome = await trio.to_thread.run_sync(evaluate_fail_safe, self.policy, request, self.replica_id,
                                                        abandon_on_cancel=True, limiter=self._policy_limiter)
        finally:
            self._evaluations_in_flight -= 1
        if outcome is None:
            self.counters["policy-deadline-exceeded"] += 1
            outcome = PolicyDecision.deny("policy deadline exceeded")
        await self._enqueue(("decision", digest, outcome.decision, outcome.reason))

    # ----------------------------------------------------------------- incoming connections

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        connection = FramedConnection(stream, self._limits, peer_name(stream))
        if self._handshakes_in_progress >= self._limits.max_handshakes_in_progress:
            # Strangers may not take every connection slot: authenticated peers keep the rest.
            self.counters["connection-refused:too-many-handshakes"] += 1
            await connection.aclose()
            return
        self._handshakes_in_progress += 1
        try:
            with trio.fail_after(self._limits.handshake_timeout_s):
                identity = await _handshake.accept(connection, self.config, self.identity, self._seed)
        except CONNECTION_ERRORS as error:
            self._count_failure("connection-refused", error, connection.peer)
            await connection.aclose()
            return
        finally:
            self._handshakes_in_progress -= 1
        connection.peer = f"{identity} at {connection.peer}"
        try:
            await self._serve_session(connection, identity)
        except CONNECTION_ERRORS as error:
            self._count_failure("connection-dropped", error, connection.peer)
        finally:
            await connection.aclose()

    def _count_failure(self, what: str, error: BaseException, peer: str) -> None:
        reason = error.reason if isinstance(error, RemoteProtocolError) else type(error).__name__
        if isinstance(error, trio.TooSlowError):
            reason = "timeout"
        self.counters[f"{what}:{reason}"] += 1
        logger.warning("replica %d: %s %s: %s", self.replica_id, what.replace("-", " "), peer, str(error) or reason)

    async def _serve_session(self, connection: FramedConnection, identity: Identity) -> None:
        """Serve one authenticated connection.  Each identity holds at most one: a newer connection
        replaces the older, so a reconnecting peer is not locked out by its own stale connection
        and one identity cannot take many connection slots."""
        if identity.role == "replica":
            # The peer sends on this connection; we only answer with keep-alives so it knows we are here.
            queue, on_payload = SendQueue(1, 1), self._replica_payload_handler(connection)
        else:
            queue = SendQueue(2 * self.config.limits.client_window, self._limits.max_frame_bytes,
                              self._limits.send_queue_policy)
            on_payload = self._client_payload_handler(connection, identity.name)
        session = _Session(identity, queue, trio.CancelScope())
        previous = self._sessions.get(identity)
        if previous is not None:
            self.counters["connection-replaced"] += 1
            previous.cancel_scope.cancel()
        self._sessions[identity] = session
        try:
            with session.cancel_scope:
                await run_duplex(connection, session.queue, on_payload)
        finally:
            if self._sessions.get(identity) is session:
                del self._sessions[identity]

    def _replica_payload_handler(self, connection: FramedConnection):
        async def on_payload(payload: bytes) -> None:
            message = self._decode(payload, connection.peer)
            if isinstance(message, Reply):
                raise RemoteProtocolError("unexpected-message", "replicas do not send replies to replicas",
                                          connection.peer)
            await self._enqueue(("replica", message))
        return on_payload

    def _client_payload_handler(self, connection: FramedConnection, client_id: str):
        async def on_payload(payload: bytes) -> None:
            message = self._decode(payload, connection.peer)
            if not isinstance(message, Request) or message.client_id != client_id:
                raise RemoteProtocolError("unexpected-message", "a client may only send its own requests",
                                          connection.peer)
            await self._enqueue(("client", message))
        return on_payload

    async def _enqueue(self, item: tuple) -> None:
        """Put ``item`` in the inbox; when it is full, wait (which stops reading that connection,
        so TCP pushes back on the sender instead of us buffering)."""
        try:
            self._inbox_send.send_nowait(item)
        except trio.WouldBlock:
            self.counters["inbox-full"] += 1
            await self._inbox_send.send(item)

    def _decode(self, payload: bytes, peer: str) -> Message:
        try:
            return decode(payload, self._max_message_bytes)
        except RemoteProtocolError as error:
            raise error.from_sender(peer) from None
