"""Runtime settings (every bound the transport and the node enforce) and the runtime's clock.

Settings are checked once, at start-up, the way ``ClusterConfig`` is: a
``problem()`` method names the first inconsistent setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from ..core import MAX_WIRE_BYTES, ConfigError

SEND_QUEUE_POLICIES = ("drop-oldest", "drop-newest")


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Bounds on one connection.  Times are in seconds of trio's clock."""

    max_frame_bytes: int = 4 * 1024 * 1024
    handshake_frame_bytes: int = 1024
    # A connection must finish its handshake within this time (silent connections hold a slot no longer).
    handshake_timeout_s: float = 1.0
    connect_timeout_s: float = 5.0
    # A frame that has started must finish within this time: a slowloris sender is cut off.
    frame_timeout_s: float = 10.0
    # A connection silent for this long is dropped; writers send keep-alives at a third of it.
    idle_timeout_s: float = 60.0
    send_timeout_s: float = 10.0
    send_queue_frames: int = 4096
    send_queue_bytes: int = 64 * 1024 * 1024
    send_queue_policy: str = "drop-oldest"
    receive_chunk_bytes: int = 64 * 1024
    receive_frames_per_s: float = 50_000.0
    receive_bytes_per_s: float = 64 * 1024 * 1024
    max_connections: int = 256
    # Connections still in their handshake that have not yet named a configured identity, in all and per
    # source address; past either, a new connection displaces the oldest (see ``_admission``).
    max_handshakes_in_progress: int = 64
    max_handshakes_per_address: int = 16
    # Connections in their handshake that claim one configured identity (reserved: strangers cannot fill them).
    max_handshakes_per_identity: int = 2
    # An authenticated client connection that sends no request for this long is closed (keep-alives do not count).
    client_idle_timeout_s: float = 600.0
    reconnect_delay_s_min: float = 0.02
    reconnect_delay_s_max: float = 2.0

    def problem(self) -> str | None:
        if not 0 < self.max_frame_bytes <= MAX_WIRE_BYTES:
            return f"max_frame_bytes must be in [1, {MAX_WIRE_BYTES}]"
        if not 64 <= self.handshake_frame_bytes <= self.max_frame_bytes:
            return "handshake_frame_bytes must be in [64, max_frame_bytes]"
        timeouts = (self.handshake_timeout_s, self.connect_timeout_s, self.frame_timeout_s,
                    self.idle_timeout_s, self.send_timeout_s, self.client_idle_timeout_s)
        if min(timeouts) <= 0:
            return "every timeout must be positive"
        if min(self.send_queue_frames, self.receive_chunk_bytes, self.max_connections) < 1:
            return "send_queue_frames, receive_chunk_bytes and max_connections must be positive"
        if not 1 <= self.max_handshakes_in_progress <= self.max_connections:
            return "max_handshakes_in_progress must be in [1, max_connections]"
        if self.max_handshakes_per_address < 1:
            return "max_handshakes_per_address must be positive"
        if not 1 <= self.max_handshakes_per_identity <= 16:
            return "max_handshakes_per_identity must be in [1, 16]"
        if self.send_queue_bytes < self.max_frame_bytes:
            return "send_queue_bytes must hold at least one maximum-sized frame"
        if self.send_queue_policy not in SEND_QUEUE_POLICIES:
            return f"send_queue_policy must be one of {', '.join(SEND_QUEUE_POLICIES)}"
        if self.receive_frames_per_s <= 0 or self.receive_bytes_per_s < self.max_frame_bytes:
            return "receive rates must be positive and admit at least one maximum-sized frame per second"
        if not 0 < self.reconnect_delay_s_min <= self.reconnect_delay_s_max:
            return "reconnect delays must satisfy 0 < min <= max"
        return None


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """How a replica node drives its core."""

    tick_ms: int = 10
    # While the core has nothing a tick could act on (``Replica.is_quiescent``), the node ticks this
    # rarely instead (for the quorum watch and the gauges), and ticks at once when an input arrives.
    idle_tick_ms: int = 500
    policy_deadline_ms: int = 2000
    policy_threads: int = 2
    # Evaluations running at once; past this, requests are denied at once rather than queued.
    max_evaluations_in_flight: int = 1024
    # Rounds of the core's output (each the Readies of one socket read, tick or decision) waiting to be
    # made durable; when full, readers stop reading (back-pressure, not memory).
    persist_queue_capacity: int = 256
    # Rounds made durable in one storage transaction (one fsync) when they pile up.
    persist_batch_max: int = 64
    # How long a replica must be unable to reach a quorum before it refuses new requests: a start-up
    # or a reconnecting link should not turn into refusals.
    quorum_loss_grace_ms: int = 1000
    transport: TransportLimits = field(default_factory=TransportLimits)

    def problem(self) -> str | None:
        if not 1 <= self.tick_ms <= 10_000:
            return "tick_ms must be in [1, 10000]"
        if not self.tick_ms <= self.idle_tick_ms <= 10_000:
            return "idle_tick_ms must be in [tick_ms, 10000]"
        if self.policy_deadline_ms < 1:
            return "policy_deadline_ms must be positive"
        if min(self.policy_threads, self.max_evaluations_in_flight) < 1:
            return "policy_threads and max_evaluations_in_flight must be positive"
        if min(self.persist_queue_capacity, self.persist_batch_max) < 1:
            return "persist_queue_capacity and persist_batch_max must be positive"
        if self.quorum_loss_grace_ms < 0:
            return "quorum_loss_grace_ms must not be negative"
        return self.transport.problem()

    def check(self) -> "NodeOptions":
        problem = self.problem()
        if problem:
            raise ConfigError(problem)
        return self


class RuntimeClock:
    """Milliseconds since the Unix epoch, advanced by trio's monotonic clock.

    The wall clock is read once, to anchor the reading; from then on time only
    moves forward with ``trio.current_time()``, which the core requires (its
    ``tick`` refuses a clock that goes backwards).  Anchoring to the epoch keeps
    readings of separate processes comparable, up to their clocks' offset, so
    that batch timestamps and request deadlines mean the same thing on every
    replica.  Nodes and clients in one process share one instance.
    """

    def __init__(self, anchor_wall_ms: int | None = None) -> None:
        assert anchor_wall_ms is None or anchor_wall_ms >= 0
        self._anchor_wall_ms = anchor_wall_ms
        self._anchor_trio_s: float | None = None
        self._last_ms = 0

    def now_ms(self) -> int:
        """The current reading; must be called inside ``trio.run``."""
        if self._anchor_trio_s is None:
            self._anchor_trio_s = trio.current_time()
            if self._anchor_wall_ms is None:
                self._anchor_wall_ms = time.time_ns() // 1_000_000
        elapsed_ms = int((trio.current_time() - self._anchor_trio_s) * 1000)
        reading = self._anchor_wall_ms + elapsed_ms
        assert reading >= self._last_ms, "trio's clock is monotonic"
        self._last_ms = reading
        return reading

    def trio_time_at(self, wall_ms: int) -> float:
        """A ``trio.current_time()`` value by which this clock reads at least ``wall_ms``.

        ``now_ms`` truncates, so the true reading may be up to 1 ms ahead of it; one
        extra millisecond absorbs that and any floating-point rounding."""
        now_ms = self.now_ms()
        return trio.current_time() + (wall_ms - now_ms + 1) / 1000
