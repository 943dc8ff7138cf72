"""Connection admission: who may hold one of a replica's handshake slots, and for how long.

A connection that has not finished its handshake costs the replica a socket
and a task while proving nothing, so such connections are bounded three ways:

- every handshake must finish within ``handshake_timeout_s`` (the caller's
  cancel scope carries that deadline);
- connections that have not yet said who they are (*anonymous*: no valid hello
  yet) are at most ``max_handshakes_in_progress`` in all and at most
  ``max_handshakes_per_address`` per source address.  A new connection over
  either limit displaces the *oldest* anonymous one (of its address, or of
  all), which is closed and counted as ``evicted``.  Refusing the newest
  instead would let a few hundred silent connections, renewed every handshake
  timeout, shut out every client and peer; displacing the oldest means a
  silent connection holds its slot only until the next stranger arrives,
  while an honest peer leaves the anonymous pool one round trip after it
  connects, when its hello arrives;
- a connection whose hello names a configured identity (a replica or a
  client) leaves the anonymous pool for a small per-identity pool of
  ``max_handshakes_per_identity`` (oldest displaced again).  These slots are
  reserved in the sense that no stranger can fill them: only connections
  claiming that very identity compete for them, so a configured replica
  always gets in however many anonymous connections arrive.

The hello's identity is only a claim until the signature checks; a liar
claiming a replica's name can displace that replica's pending handshake only
by reconnecting faster than the replica completes a round trip, and it never
gets further than the signature check.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import trio

from ._handshake import Identity
from ._options import TransportLimits

EVICTED = "evicted"


@dataclass(eq=False)
class PendingHandshake:
    """One connection still in its handshake; cancelling its scope ends the handshake at once."""

    address: str
    cancel_scope: trio.CancelScope
    identity: Identity | None = None
    evicted: bool = False
    released: bool = field(default=False, repr=False)


class Admission:
    """The bounded pools of pending handshakes of one listener (see the module docstring)."""

    def __init__(self, limits: TransportLimits, counters: Counter,
                 on_rejected: Callable[[str], None] | None = None) -> None:
        self._limits = limits
        self._counters = counters
        self._on_rejected = on_rejected
        # Insertion order is age order: the first entry is the oldest.
        self._anonymous: OrderedDict[PendingHandshake, None] = OrderedDict()
        self._anonymous_by_address: dict[str, OrderedDict[PendingHandshake, None]] = {}
        self._identified: dict[Identity, OrderedDict[PendingHandshake, None]] = {}

    @property
    def anonymous_count(self) -> int:
        return len(self._anonymous)

    @property
    def identified_count(self) -> int:
        return sum(len(pool) for pool in self._identified.values())

    def admit(self, address: str, deadline_s: float) -> PendingHandshake:
        """A pending handshake for a new connection from ``address``, making room by displacing the oldest."""
        same_address = self._anonymous_by_address.setdefault(address, OrderedDict())
        if len(same_address) >= self._limits.max_handshakes_per_address:
            self._evict(next(iter(same_address)))
        if len(self._anonymous) >= self._limits.max_handshakes_in_progress:
            self._evict(next(iter(self._anonymous)))
        pending = PendingHandshake(address, trio.CancelScope(deadline=deadline_s))
        self._anonymous[pending] = None
        # Looked up again: displacing the last of an address's connections removed its pool.
        same_address = self._anonymous_by_address.setdefault(address, OrderedDict())
        same_address[pending] = None
        assert len(self._anonymous) <= self._limits.max_handshakes_in_progress
        assert len(same_address) <= self._limits.max_handshakes_per_address
        return pending

    def identify(self, pending: PendingHandshake, identity: Identity) -> None:
        """The connection's hello names ``identity`` (a configured one): move it to that identity's pool."""
        assert pending.identity is None and not pending.released
        self._forget_anonymous(pending)
        pool = self._identified.setdefault(identity, OrderedDict())
        if len(pool) >= self._limits.max_handshakes_per_identity:
            self._evict(next(iter(pool)))
        pending.identity = identity
        pool = self._identified.setdefault(identity, OrderedDict())
        pool[pending] = None
        assert len(pool) <= self._limits.max_handshakes_per_identity

    def release(self, pending: PendingHandshake) -> None:
        """The handshake ended (done, failed or evicted): free its slot.  Safe to call twice."""
        if pending.released:
            return
        pending.released = True
        if pending.identity is None:
            self._forget_anonymous(pending)
            return
        pool = self._identified[pending.identity]
        pool.pop(pending, None)
        if not pool:
            del self._identified[pending.identity]

    def _evict(self, pending: PendingHandshake) -> None:
        pending.evicted = True
        pending.cancel_scope.cancel()
        self.release(pending)
        self._counters[f"connection-refused:{EVICTED}"] += 1
        if self._on_rejected is not None:
            self._on_rejected(EVICTED)

    def _forget_anonymous(self, pending: PendingHandshake) -> None:
        self._anonymous.pop(pending, None)
        same_address = self._anonymous_by_address.get(pending.address)
        if same_address is not None:
            same_address.pop(pending, None)
            if not same_address:
                del self._anonymous_by_address[pending.address]
