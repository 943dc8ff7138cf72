"""The async client: sign a request, send it to every replica, wait for a verified certificate.

The answer is ALLOW or DENY only with a ``VerdictCertificate`` that ``ClientCore``
built from f+1 matching signed replies and verified in full.  Anything else
(no quorum reachable, replicas down, a deadline that passes) is REFUSED with a
reason, which callers must treat as DENY.  The client stops waiting before the
deadline only when f+1 distinct replicas sent a valid signed ``Refusal`` (so at
least one correct replica cannot reach a quorum); then the reason is
``"no quorum"``.  One lying replica alone cannot make it give up.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

import trio

from ..core import (NO_QUORUM, ClientCore, ClusterConfig, ConfigError, Refusal, RemoteProtocolError, Reply, Request,
                    Risk, VerdictCertificate, decode, encode)
from ._framing import encode_frame
from ._handshake import Identity
from ._options import RuntimeClock, TransportLimits
from ._transport import Address, Link

logger = logging.getLogger("bft.runtime")

STATUSES = ("ALLOW", "DENY", "REFUSED")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one submission came to.  ``certificate`` is present exactly when status is ALLOW or DENY."""

    status: str
    reason: str
    certificate: VerdictCertificate | None
    latency_ms: float
    request: Request

    def __post_init__(self) -> None:
        assert self.status in STATUSES, self.status
        assert (self.certificate is None) == (self.status == "REFUSED"), "a verdict needs its certificate"
        assert self.certificate is None or (self.certificate.decision.value == self.status
                                            and self.certificate.request == self.request)

    @property
    def request_number(self) -> int:
        return self.request.request_number

    @property
    def allowed(self) -> bool:
        return self.status == "ALLOW"


@dataclass(eq=False)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    certificate: VerdictCertificate | None = None
    refused: bool = False


class AsyncClient:
    """A trio client of one cluster.  Use ``open_client``; ``submit`` may be called from many tasks.

    Run one instance per client id at a time: a replica keeps one connection per
    identity, so two instances with one id would keep replacing each other's.
    """

    def __init__(self, config: ClusterConfig, client_id: str, seed: bytes, addresses: Mapping[int, Address], *,
                 clock: RuntimeClock | None = None, limits: TransportLimits | None = None,
                 timeout_ms: int = 5000, max_outstanding: int = 16, reply_grace_ms: int = 200,
                 first_request_number: int = 1, later_epochs: tuple[tuple[int, ClusterConfig], ...] = ()) -> None:
        """``config`` is the genesis configuration; ``later_epochs`` the epochs after it, as (seq after which it
        governs, configuration), and ``addresses`` where the newest epoch's replicas are reached."""
        self.limits = limits or TransportLimits()
        problem = self.limits.problem()
        if problem:
            raise ConfigError(problem)
        if not 1 <= max_outstanding <= max(1, config.limits.client_window // 2):
            raise ConfigError("max_outstanding must be in [1, client_window / 2] "
                              "so that replies stay in the replicas' reply window")
        if timeout_ms < 1 or reply_grace_ms < 0:
            raise ConfigError("timeout_ms must be positive and reply_grace_ms non-negative")
        self.client_id = client_id
        self.clock = clock or RuntimeClock()
        self.timeout_ms = timeout_ms
        self.reply_grace_ms = reply_grace_ms
        self.counters: Counter[str] = Counter()
        # A client that restarts must continue past the numbers it used before: the replicas
        # remember them (exactly-once) and refuse a different action under an old number.
        self._core = ClientCore(config, client_id, seed, first_request_number)
        for starts_after, later in later_epochs:
            self._core.learn_epoch(starts_after, later)
        self.config = config = later_epochs[-1][1] if later_epochs else config  # The newest epoch's.
        assert set(addresses) == set(range(config.replica_count)), "every replica needs an address"
        self._own = Identity("client", client_id)
        self._seed = seed
        self.links = {replica_id: self._new_link(config, replica_id, addresses[replica_id])
                      for replica_id in range(config.replica_count)}
        self._nursery: trio.Nursery | None = None
        self._waiters: dict[int, _Waiter] = {}
        self.max_outstanding = max_outstanding
        self._slots = trio.Semaphore(max_outstanding)
        self._running = False

    def _new_link(self, config: ClusterConfig, replica_id: int, address: Address) -> Link:
        return Link(config, self._own, self._seed, replica_id, address, self.limits, self.counters,
                    on_payloads=self._payload_handler(replica_id), on_connect=self._resend_outstanding)

    @property
    def replicas_connected(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                nursery.start_soon(link.run)
            self._nursery = nursery
            self._running = True
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._running = False
                self._nursery = None

    def learn_epoch(self, starts_after: int, config: ClusterConfig,
                    addresses: Mapping[int, Address] | None) -> None:
        """A later epoch of the chain (seq after which it governs, its configuration, where its replicas are):
        replies for later seqs are judged by it, and the links follow its members.  A replica that stays
        with the same key and address keeps its link; the others' links are closed, new members' opened.
        ``addresses`` None: an epoch the chain passed through, learned for judging replies only (a later
        one follows).  Raises ``LocalProtocolError`` for an epoch out of order or of another cluster."""
        if addresses is not None and set(addresses) != set(range(config.replica_count)):
            raise ConfigError("every replica of the new epoch needs an address")
        self._core.learn_epoch(starts_after, config)
        self.config = config
        if addresses is None:
            return
        for replica_id in sorted(self.links):
            link = self.links[replica_id]
            if link.reaches(config, addresses.get(replica_id)):
                link.config = config
            else:
                self.links.pop(replica_id).close()
        for replica_id in range(config.replica_count):
            if replica_id not in self.links:
                link = self.links[replica_id] = self._new_link(config, replica_id, addresses[replica_id])
                if self._nursery is not None:
                    self._nursery.start_soon(link.run)

    async def wait_connected(self, replica_count: int | None = None, timeout_s: float = 10.0) -> bool:
        """Wait until ``replica_count`` replicas (default: all) are connected; False on timeout."""
        wanted = self.config.replica_count if replica_count is None else replica_count
        with trio.move_on_after(timeout_s):
            while self.replicas_connected < wanted:
                await trio.sleep(0.005)
            return True
        return False

    async def submit(self, action: Mapping[str, Any] | str, risk: Risk = Risk.LOW, *,
                     timeout_ms: int | None = None) -> Outcome:
        """Ask the cluster for a verdict on ``action``; REFUSED if none is certified before the deadline.

        The deadline runs from this call, whatever happens after it: waiting for one of the
        ``max_outstanding`` slots, connects and handshakes that hang, replicas that never answer.
        The call returns by the deadline plus ``reply_grace_ms`` (a reply already on its way may
        still land), never later.  An action that is not a JSON object within the cluster's shape
        limits is the caller's mistake and raises ``ActionShapeError`` before anything is sent.
        """
        assert self._running, "submit needs a running client (use open_client)"
        chosen_timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        if chosen_timeout_ms < 1:
            raise ValueError("timeout_ms must be positive")
        started_s = trio.current_time()
        deadline_ms = self.clock.now_ms() + chosen_timeout_ms
        with trio.move_on_at(self.clock.trio_time_at(deadline_ms)) as waiting_for_slot:
            await self._slots.acquire()
        if waiting_for_slot.cancelled_caught:  # Cancelled before the slot was ours: nothing to release.
            return self._refused_without_slot(action, risk, deadline_ms, started_s)
        try:
            return await self._submit(action, risk, deadline_ms, started_s, chosen_timeout_ms)
        finally:
            self._slots.release()

    def _refused_without_slot(self, action: Mapping[str, Any] | str, risk: Risk, deadline_ms: int,
                              started_s: float) -> Outcome:
        """REFUSED: every slot stayed busy until the deadline, so nothing was sent."""
        request = self._core.new_request(action, risk, deadline_ms)
        self._core.forget(request)
        self.counters["refused"] += 1
        self.counters["refused:no-free-slot"] += 1
        reason = f"no free submission slot before the deadline ({self.max_outstanding} in flight)"
        return Outcome("REFUSED", reason, None, (trio.current_time() - started_s) * 1000, request)

    async def _submit(self, action: Mapping[str, Any] | str, risk: Risk, deadline_ms: int, started_s: float,
                      timeout_ms: int) -> Outcome:
        now_ms = self.clock.now_ms()
        # Forget requests abandoned by cancelled callers once their deadline (and grace) passed.
        self._core.expire(now_ms - self.reply_grace_ms)
        request = self._core.new_request(action, risk, deadline_ms)
        waiter = self._waiters[request.request_number] = _Waiter()
        frame = encode_frame(encode(request), self.limits.max_frame_bytes)
        for link in self.links.values():
            link.send(frame)
        try:
            with trio.move_on_at(self.clock.trio_time_at(deadline_ms + self.reply_grace_ms + 1)):
                await waiter.event.wait()
        finally:
            del self._waiters[request.request_number]
        latency_ms = (trio.current_time() - started_s) * 1000
        certificate = waiter.certificate
        if certificate is not None:
            return Outcome(certificate.decision.value, certificate.reason, certificate, latency_ms, request)
        self.counters["refused"] += 1
        if waiter.refused:  # ClientCore already forgot the request: f+1 replicas refused it.
            assert request not in self._core.outstanding
            return Outcome("REFUSED", NO_QUORUM, None, latency_ms, request)
        self._core.expire(self.clock.now_ms() - self.reply_grace_ms)  # includes this request
        assert request not in self._core.outstanding
        reason = (f"no verdict certificate within {timeout_ms} ms "
                  f"({self.replicas_connected} of {self.config.replica_count} replicas connected)")
        return Outcome("REFUSED", reason, None, latency_ms, request)

    def _payload_handler(self, replica_id: int):
        def on_payloads(payloads: list[bytes]) -> None:
            for payload in payloads:
                self._on_reply(replica_id, payload)
        return on_payloads

    def _on_reply(self, replica_id: int, payload: bytes) -> None:
        peer = f"replica {replica_id}"
        try:
            message = decode(payload, min(self.limits.max_frame_bytes, self.config.limits.max_message_bytes))
        except RemoteProtocolError as error:
            raise error.from_sender(peer) from None
        if not isinstance(message, (Reply, Refusal)) or message.replica_id != replica_id:
            raise RemoteProtocolError("unexpected-message", "a replica may only send its own replies", peer)
        if isinstance(message, Refusal):
            self._on_refusal(message)
            return
        certificate = self._core.on_reply(message)
        if certificate is None:
            return
        waiter = self._waiters.get(certificate.request.request_number)
        if waiter is not None:
            waiter.certificate = certificate
            waiter.event.set()

    def _on_refusal(self, refusal: Refusal) -> None:
        self.counters["refusals-received"] += 1
        if not self._core.on_refusal(refusal):
            return
        waiter = self._waiters.get(refusal.request_number)
        if waiter is not None and not waiter.event.is_set():
            waiter.refused = True
            waiter.event.set()

    def _resend_outstanding(self, link: Link) -> None:
        """On every (re)connection, send the requests still waiting: the connection that carried
        them may have died with them.  Replicas answer a repeat from their reply cache."""
        link.queue.clear()
        for request in self._core.outstanding:
            link.send(encode_frame(encode(request), self.limits.max_frame_bytes))


@asynccontextmanager
async def open_client(config: ClusterConfig, client_id: str, seed: bytes, addresses: Mapping[int, Address],
                      **options: Any) -> AsyncIterator[AsyncClient]:
    """A running ``AsyncClient``, stopped when the block exits (``config`` the genesis, see ``AsyncClient``)."""
    client = AsyncClient(config, client_id, seed, addresses, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
