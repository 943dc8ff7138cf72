"""A replica node: one sans-IO core driven by trio, its links, its listener, its policy and its clock.

The core is entered in rounds, each synchronous, so it is never entered twice at
once: a connection's reader feeds it the messages of one socket read, the ticker
task ticks it every ``tick_ms`` (``idle_tick_ms`` while it is quiescent), and a
policy's decision is fed to it as it arrives.  No queue or task switch stands
between a socket read and the core.  A round hands everything it produced to the
``Persister`` as one item, which makes it durable (``bft.core.persist_then_send``)
in a worker thread and only then sends it; every producer waits for room in the
persister's bounded queue before it starts a round (a reader before it reads, so
TCP pushes back on the sender when the disk falls behind).  A send writes
straight to the socket when the peer's writer is idle (one write per peer per
batch) and otherwise waits in the bounded link queue, so nothing waits on the
network, and fsync never blocks the event loop.  Policies run in worker threads
under a deadline, and a policy that overruns votes DENY ("policy deadline
exceeded"); a policy that declares itself pure computation is evaluated in the
round instead (``bft.policy.runs_inline``).

CP mode: a node whose links reach fewer than a quorum, for longer than
``quorum_loss_grace_ms``, answers new requests with a signed ``Refusal`` instead
of taking them (see ``_quorum_watch``), and takes them again once it reaches a
quorum.  Metrics go to ``self.metrics`` (a ``ReplicaMetrics``), including the
accountability gauges, refreshed whenever the core executes.  Each accountability
event a finalized entry records (a quarantine, a release, evidence, a suspicion,
a blocklist change) is logged once it is durable, as one line on the
``bft.runtime.accountability`` logger with its type, replica and log position.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any, Mapping

import trio

from ..core import (NO_QUORUM, AgreedVerdict, ClusterConfig, Decision, KeyPair, Message, Ready, Refusal, Replica,
                    Request, Signer, encode, react, request_digest)
from ..policy import Policy, PolicyDecision, evaluate_fail_safe, runs_inline
from ..storage import MemoryStore, Store
from ._admission import Admission
from ._durability import Durable, Persister, Released
from ._epochs import EpochFollower, starting_addresses
from ._framing import encode_frame
from ._handshake import Identity
from ._logging import log_accountability_events
from ._metrics import ReplicaMetrics
from ._options import NodeOptions, RuntimeClock
from ._quorum_watch import LOST, REFUSING, RESTORED, QuorumWatch
from ._reactions import NodeReactions
from ._sessions import Sessions
from ._transport import Address, Link, accept_loop

logger = logging.getLogger("bft.runtime")
accountability_logger = logging.getLogger("bft.runtime.accountability")

# Log reads answered by the store and waiting for the core to sign them; more are dropped (the
# asking peer asks again), so a flood of requests for old entries costs bounded memory.
LOG_READ_ANSWERS_MAX = 64


class ReplicaNode:
    def __init__(self, config: ClusterConfig, replica_id: int, seed: bytes, policy: Policy,
                 addresses: Mapping[int, Address], *, store: Store | None = None,
                 options: NodeOptions | None = None, clock: RuntimeClock | None = None,
                 metrics: ReplicaMetrics | None = None,
                 later_epochs: tuple[tuple[int, ClusterConfig], ...] = ()) -> None:
        """``config`` is the genesis configuration; a replica joining a later epoch also gets the epochs after
        it (``bft.core.Replica``).  The node works in the configuration of its core's current epoch."""
        self.options = (options or NodeOptions()).check()
        self.store = store if store is not None else MemoryStore()
        self.replica = self._start_replica(config, replica_id, seed, later_epochs)
        self.config = config = self.replica.config  # The working epoch's: it changes with the epoch (``_epochs``).
        self.addresses = starting_addresses(self.replica, addresses)
        assert set(self.addresses) == set(range(config.replica_count)), "every replica needs an address"
        self.replica_id = replica_id
        self.identity = Identity("replica", replica_id)
        self.policy = policy
        self.clock = clock or RuntimeClock()
        self.counters: Counter[str] = Counter()
        self.metrics = metrics if metrics is not None else ReplicaMetrics()
        self.metrics.observe_accountability(self.replica.accountability, config.replica_count)
        self._accountability_observed_seq = self.replica.last_executed
        self.finalized_count = 0
        self.port: int | None = None
        self._seed = seed
        self._signer = Signer(config.cluster_id, seed)
        self._limits = self.options.transport
        self.links = {peer: Link(config, self.identity, seed, peer, self.addresses[peer], self._limits, self.counters,
                                 on_rejected=self.metrics.rejected)
                      for peer in range(config.replica_count) if peer != replica_id}
        self.sessions = Sessions(self, seed, Admission(self._limits, self.counters, self.metrics.rejected))
        self._policy_limiter = trio.CapacityLimiter(self.options.policy_threads)
        self._evaluations_in_flight = 0
        self._nursery: trio.Nursery | None = None
        self._pruned_below_seq = self.replica.low_water
        self._pruned_below_view = self.replica.view
        self._persister = Persister(self.store, self.options.persist_queue_capacity, self.options.persist_batch_max,
                                    self.counters, self._send_released)
        self._quorum_watch: QuorumWatch | None = None
        self._log_read_answers: deque[tuple] = deque()
        # What the core produced in the current round, and decisions of policies evaluated inline.
        self._round_readies: list[Ready] = []
        self._reactions = NodeReactions(self)
        self._last_tick_s = float("-inf")  # When the core last ticked, on trio's clock.
        self._ticker_sleep: trio.CancelScope | None = None  # The ticker's wait for the next tick, if it waits.
        self._peers_connected_seen = 0
        self._inline_decisions: deque[tuple[bytes, PolicyDecision]] = deque()
        self.epoch_follower = EpochFollower(self)

    def _start_replica(self, genesis: ClusterConfig, replica_id: int, seed: bytes,
                       later_epochs: tuple[tuple[int, ClusterConfig], ...]) -> Replica:
        """A fresh replica, or, if the store holds anything, the replica it remembers (so a restarted
        node never signs anything that contradicts what it signed before)."""
        recovered = self.store.load()
        if not (recovered.signed or recovered.log):
            return Replica(genesis, replica_id, seed, later_epochs=later_epochs)
        logger.info("replica %d recovers %d signed messages and %d verdicts from its store", replica_id,
                    len(recovered.signed), len(recovered.log), extra={"replica_id": replica_id})
        # A genesis member recovers its epochs from its log; one that joined later needs the chain it joined with.
        genesis_member = replica_id < genesis.replica_count and \
            genesis.replica_keys[replica_id] == KeyPair.from_seed(seed).public_key
        return Replica.recover(genesis, replica_id, seed, recovered.signed, recovered.log,
                               () if genesis_member else later_epochs)

    @property
    def seed(self) -> bytes:
        return self._seed

    def start_task(self, function, *arguments) -> None:
        """Run ``function(*arguments)`` in the node's nursery (the switch to a new epoch's links)."""
        assert self._nursery is not None, "the node is running"
        self._nursery.start_soon(function, *arguments)

    def quorum_changed(self) -> None:
        """The epoch changed n and the quorum: the CP-mode watch counts against the new quorum."""
        if self._quorum_watch is not None:
            self._quorum_watch.quorum = self.config.quorum

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
            self._quorum_watch = QuorumWatch(self.config.quorum, self.options.quorum_loss_grace_ms / 1000,
                                             trio.current_time())
            for link in self.links.values():
                nursery.start_soon(link.run)
            nursery.start_soon(self._persister.run)
            nursery.start_soon(accept_loop, listener, self.sessions.serve_connection, self._limits, self.counters,
                               nursery, self.metrics.rejected)
            nursery.start_soon(self._ticker)
            logger.info("replica %d listening on port %d", self.replica_id, self.port,
                        extra={"replica_id": self.replica_id, "port": self.port})
            task_status.started(self.port)

    @property
    def peers_connected(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    @property
    def accepting_requests(self) -> bool:
        """False while this node refuses new requests because it cannot reach a quorum (CP mode)."""
        return self._quorum_watch is None or self._quorum_watch.accepting(self.peers_connected + 1)

    async def wait_durable(self) -> None:
        """Wait until everything the core produced so far is persisted, pruned and sent."""
        await self._persister.wait_released()

    def status(self) -> dict[str, Any]:
        replica = self.replica
        clients_connected = self.sessions.clients_connected
        return {"replica_id": self.replica_id, "view": replica.view, "last_executed": replica.last_executed,
                "low_water": replica.low_water, "finalized": self.finalized_count,
                "peers_connected": self.peers_connected, "clients_connected": clients_connected,
                "accepting_requests": self.accepting_requests, "epoch": replica.epochs.number,
                "retired": replica.epochs.retired, "counters": dict(self.counters)}

    # ----------------------------------------------------------------- the core's one task

    async def _ticker(self) -> None:
        """Tick every ``tick_ms`` while the core has work a timer may act on, every ``idle_tick_ms``
        while it is quiescent.  A round that gives a quiescent core work brings the tick forward
        (``_hurry_ticker``); a round that finds a tick overdue ticks first (``_begin_round``), and the
        ticker, waking, finds the next tick not yet due and sleeps again."""
        while True:
            await self._persister.wait_for_room()
            due_s = self._tick_due_s()
            if trio.current_time() >= due_s:
                self._tick(trio.current_time())
                continue
            with trio.move_on_at(due_s) as self._ticker_sleep:
                await trio.sleep_forever()
            self._ticker_sleep = None

    def _tick_due_s(self) -> float:
        """When the next tick is due: ``tick_ms`` after the last one, or ``idle_tick_ms`` after it while
        the core is quiescent (``Replica.is_quiescent``: no timer of the core is running).  Ticks are
        counted from when they ran, so after a stall the missed ones are skipped, not fired in a burst."""
        # Log reads answered by the store wait for the core to sign them: a peer catching up waits too.
        idle = self.replica.is_quiescent and not self._log_read_answers
        return self._last_tick_s + (self.options.idle_tick_ms if idle else self.options.tick_ms) / 1000

    def _hurry_ticker(self) -> None:
        """Bring the ticker's wake-up forward if the next tick became due sooner (the core left
        quiescence, or log reads wait to be signed)."""
        if self._ticker_sleep is not None:
            due_s = self._tick_due_s()
            if due_s < self._ticker_sleep.deadline:
                self._ticker_sleep.deadline = due_s

    async def wait_for_round_room(self) -> None:
        """Wait until a round may start: its output will have room in the persister's queue."""
        await self._persister.wait_for_room()

    def take_inputs(self, kind: str, messages: list[Message]) -> None:
        """One round: feed the core the messages of one read, in order, and hand on what they produced.
        The caller waited for the persister's room (see ``read_batches``)."""
        self._begin_round()
        for message in messages:
            self._apply(self._input(kind, message))
            self._record_inline_decisions()
        self._finish_round()

    def _take_decision(self, digest: bytes, outcome: PolicyDecision) -> None:
        """One round: feed the core a policy's decision, evaluated in a worker thread."""
        self._begin_round()
        self._apply(self.replica.record_decision(digest, outcome.decision, outcome.reason))
        self._record_inline_decisions()
        self._finish_round()

    def _begin_round(self) -> None:
        assert not self._round_readies, "a round starts with nothing pending"
        now_s = trio.current_time()
        if now_s >= self._last_tick_s + self.options.tick_ms / 1000:
            # After a quiescent stretch the core's clock is behind: a primary stamps batches with it and
            # deadlines are judged by it, so it is brought up to date before the input.
            self._tick_core(now_s)

    def _finish_round(self) -> None:
        self._answer_log_reads()
        self._end_round()
        self._hurry_ticker()

    def _tick(self, now_s: float) -> None:
        self._tick_core(now_s)
        self._answer_log_reads()
        self._end_round()

    def _tick_core(self, now_s: float) -> None:
        self._last_tick_s = now_s
        self._watch_quorum(now_s)
        self._notice_reconnected_peers()
        self._apply(self.replica.tick(self.clock.now_ms()))
        self._record_inline_decisions()

    def _record_inline_decisions(self) -> None:
        """Feed the core the decisions of policies evaluated inline while handling the last input."""
        # The core asks for each pending request's evaluation once, so this holds at most the pending pool.
        assert len(self._inline_decisions) <= self.config.limits.max_pending_requests
        while self._inline_decisions:
            digest, outcome = self._inline_decisions.popleft()
            self._apply(self.replica.record_decision(digest, outcome.decision, outcome.reason))

    def _answer_log_reads(self) -> None:
        """Let the core sign what the persister read from the store for peers catching up (those
        waiting now: answers arriving meanwhile wait for the next round)."""
        for _ in range(len(self._log_read_answers)):
            read, entries = self._log_read_answers.popleft()
            self.counters["log-reads-answered"] += 1
            self._apply(self.replica.answer_log_read(read, entries))

    def _end_round(self) -> None:
        """Refresh the core's gauges and hand the round's output to the persister (which persists,
        then sends); the round's caller waited for room for it."""
        replica = self.replica
        self.metrics.observe_replica(replica.view, replica.view_active, replica.last_executed, replica.low_water)
        self.metrics.observe_progress(replica.progress_summary())
        if replica.epochs.number != self.epoch_follower.number:
            self.epoch_follower.follow()  # First: the gauges below and this round's output are the new epoch's.
        if replica.last_executed != self._accountability_observed_seq:
            # Only execution changes the accountability state; the gauges then match bft_last_executed_seq.
            self._accountability_observed_seq = replica.last_executed
            self.metrics.observe_accountability(replica.accountability, self.config.replica_count)
        prune_signed_below_seq, prune_views_below = self._prune_marks()
        if self._persister.is_idle:
            self._send_ahead_of_the_disk()
        if self._round_readies or prune_signed_below_seq is not None or prune_views_below is not None:
            self._persister.put(Durable(tuple(self._round_readies), prune_signed_below_seq,
                                               prune_views_below))
            self._round_readies.clear()

    def _send_ahead_of_the_disk(self) -> None:
        """Send the round's forwards and replies now, one fsync sooner (the driving contract's step 1):
        they stand on nothing this round persists, and every earlier round is durable."""
        readies = self._round_readies
        if not any(ready.forwards or ready.to_clients for ready in readies):
            return
        self._send_released(Released(tuple(entry for ready in readies for entry in ready.forwards),
                                     tuple(entry for ready in readies for entry in ready.to_clients), ()))
        self._round_readies = [rest for ready in readies if not (rest := ready.without_unguarded_sends()).is_empty()]

    def _input(self, kind: str, message: Message) -> Ready:
        assert kind in ("client", "replica"), kind
        if kind == "client":
            return self._client_request(message)
        return self.replica.step(message)  # A Request from a peer is one it forwarded.

    def _client_request(self, request: Request) -> Ready:
        """A new request goes to the core only while a quorum is reachable; a request the core already
        answered always does, so a retry still gets its cached verdict."""
        self.metrics.request_received()
        if not self.accepting_requests and self.replica.execution.cached_reply(*request.key) is None:
            self._refuse(request, NO_QUORUM)
            return Ready()
        self.metrics.request_accepted(request.key, trio.current_time())
        return self.replica.submit(request)

    def _refuse(self, request: Request, reason: str) -> None:
        digest = request_digest(self.config.cluster_id, request)
        refusal = self._signer.sign(Refusal(request.client_id, request.request_number, digest, reason,
                                            self.replica_id, bytes(64)))
        self._send_reply(request.client_id, encode_frame(encode(refusal), self._limits.max_frame_bytes))
        self.counters[f"refused:{reason}"] += 1
        self.metrics.refused(reason)
        logger.debug("replica %d refused request %d of %s: %s", self.replica_id, request.request_number,
                     request.client_id, reason, extra={"replica_id": self.replica_id, "client_id": request.client_id,
                                                       "request_number": request.request_number, "reason": reason})

    def _notice_reconnected_peers(self) -> None:
        """A link came back since the last tick: the core asks a peer what it missed at its next tick."""
        peers_connected = self.peers_connected
        if peers_connected > self._peers_connected_seen:
            self._apply(self.replica.peer_reconnected())
        self._peers_connected_seen = peers_connected

    def _watch_quorum(self, now_s: float) -> None:
        peers_connected = self.peers_connected
        change = self._quorum_watch.update(peers_connected + 1, now_s)
        self.metrics.observe_connectivity(peers_connected, self._quorum_watch.reachable(peers_connected + 1))
        if change is None:
            return
        fields = {"replica_id": self.replica_id, "peers_connected": peers_connected, "quorum": self.config.quorum}
        if change == LOST:
            logger.warning("replica %d reaches %d of %d replicas, fewer than a quorum of %d", self.replica_id,
                           peers_connected + 1, self.config.replica_count, self.config.quorum, extra=fields)
        elif change == REFUSING:
            logger.warning("replica %d refuses new requests: no quorum reachable", self.replica_id, extra=fields)
        else:
            assert change == RESTORED, change
            logger.info("replica %d reaches a quorum and accepts requests", self.replica_id, extra=fields)

    def _apply(self, ready: Ready) -> None:
        """Add ``ready`` to the round's output (the persister persists it, then sends it, when the round
        ends), then act on what needs no disk (``bft.core.react``)."""
        if not ready.is_empty():
            self._round_readies.append(ready)
        react(ready, self.replica, self._reactions)

    def _prune_marks(self) -> tuple[int | None, int | None]:
        """Keep the store bounded like the core: what a stable checkpoint or an installed view made
        obsolete may go, once the Ready that moved the mark is durable (the persister's order)."""
        replica = self.replica
        signed_below_seq = views_below = None
        if replica.low_water > self._pruned_below_seq:
            signed_below_seq = self._pruned_below_seq = replica.low_water
        if replica.view_active and replica.view > self._pruned_below_view:
            views_below = self._pruned_below_view = replica.view
        return signed_below_seq, views_below

    def _send_released(self, released: Released) -> None:
        """Send what the persister made durable; count and time the verdicts it finalized."""
        frames: dict[int, bytes] = {}

        def frame_of(message: Message) -> bytes:
            # A broadcast is one message object sent n-1 times: encode it once.
            frame = frames.get(id(message))
            if frame is None:
                frame = frames[id(message)] = encode_frame(encode(message), self._limits.max_frame_bytes)
            return frame

        held: dict[int, Link] = {}
        try:
            for peer, message in released.to_replicas:
                link = held.get(peer)
                if link is None:
                    link = self.links.get(peer)
                    if link is None:  # It left the configuration since the core produced this (``_epochs``).
                        self.counters["send-to-non-member"] += 1
                        continue
                    held[peer] = link
                    link.hold()  # All of this batch for one peer leaves in one write.
                link.send(frame_of(message))
        finally:
            for link in held.values():
                link.flush()
        for client_id, reply in released.to_clients:
            self._send_reply(client_id, frame_of(reply))
        now_s = trio.current_time()
        for entry in released.finalized:
            self.metrics.verdict_finalized(entry, now_s)
            log_accountability_events(accountability_logger, self.replica_id, entry)
        self.finalized_count += len(released.finalized)
        for read, entries in released.log_reads:
            if not entries:
                self.counters["log-read-empty"] += 1  # Nothing at those positions: nothing to sign.
            elif len(self._log_read_answers) >= LOG_READ_ANSWERS_MAX:
                self.counters["log-read-dropped"] += 1
            else:
                self._log_read_answers.append((read, entries))
                self._hurry_ticker()

    def _send_reply(self, client_id: str, frame: bytes) -> None:
        if not self.sessions.send_to_client(client_id, frame):
            self.counters["reply-undeliverable"] += 1  # The client retries; the core replays its cached reply.

    # ----------------------------------------------------------------- policies

    def _start_evaluation(self, request: Request) -> None:
        digest = request_digest(self.config.cluster_id, request)
        inline = runs_inline(self.policy, request)
        if not inline and self._evaluations_in_flight >= self.options.max_evaluations_in_flight:
            self.counters["policy-overloaded"] += 1
            self._apply(self.replica.record_decision(digest, Decision.DENY, "policy overloaded"))
            return
        # Read on this task: the core's state is not for worker threads.
        history = self.replica.execution.agreed_history(request.client_id)
        if inline:
            self._inline_decisions.append((digest, self._evaluate_inline(request, history)))
            return
        self._evaluations_in_flight += 1
        self._nursery.start_soon(self._evaluate, request, digest, history)

    def _evaluate_inline(self, request: Request, history: tuple[AgreedVerdict, ...]) -> PolicyDecision:
        """Evaluate on this task (see ``bft.policy.runs_inline``): no thread to abandon, so an overrun
        is found afterwards, and still votes DENY, as it would from a thread."""
        started_s = trio.current_time()
        outcome = evaluate_fail_safe(self.policy, request, self.replica_id, history)
        if (trio.current_time() - started_s) * 1000 > self.options.policy_deadline_ms:
            self.counters["policy-deadline-exceeded"] += 1
            return PolicyDecision.deny("policy deadline exceeded")
        return outcome

    async def _evaluate(self, request: Request, digest: bytes, history: tuple[AgreedVerdict, ...]) -> None:
        outcome: PolicyDecision | None = None
        try:
            with trio.move_on_after(self.options.policy_deadline_ms / 1000):
                outcome = await trio.to_thread.run_sync(evaluate_fail_safe, self.policy, request, self.replica_id,
                                                        history, abandon_on_cancel=True, limiter=self._policy_limiter)
        finally:
            self._evaluations_in_flight -= 1
        if outcome is None:
            self.counters["policy-deadline-exceeded"] += 1
            outcome = PolicyDecision.deny("policy deadline exceeded")
        await self._persister.wait_for_room()
        self._take_decision(digest, outcome)
