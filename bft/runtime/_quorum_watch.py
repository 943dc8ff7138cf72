"""CP mode: when a replica may not accept new requests because it cannot reach a quorum.

A replica that reaches fewer than q replicas (itself included) cannot get any
request ordered, so letting clients wait for their deadline helps nobody.
After ``grace_s`` without a quorum it refuses new requests at once (with a
signed ``Refusal``), and it accepts them again as soon as enough links are up.
The grace keeps a start-up, or one link reconnecting, from causing refusals.
Refusing is always safe: it is a REFUSED, never a verdict.
"""

from __future__ import annotations

LOST = "lost"
REFUSING = "refusing"
RESTORED = "restored"


class QuorumWatch:
    """Tracks reachability over time; ``update`` reports each change of mode once."""

    def __init__(self, quorum: int, grace_s: float, now_s: float) -> None:
        assert quorum >= 1 and grace_s >= 0
        self.quorum = quorum
        self.grace_s = grace_s
        # A node starts with no links up; its grace runs from start-up, silently.
        self._lost_since_s: float | None = now_s
        self.refusing = False

    def reachable(self, replicas_reachable: int) -> bool:
        assert replicas_reachable >= 1, "a replica always reaches itself"
        return replicas_reachable >= self.quorum

    def accepting(self, replicas_reachable: int) -> bool:
        """Whether a new request may go to the core now (a quorum that just came back counts at once)."""
        return not self.refusing or self.reachable(replicas_reachable)

    def update(self, replicas_reachable: int, now_s: float) -> str | None:
        """Move to the mode ``replicas_reachable`` implies; return LOST, REFUSING or RESTORED on a change."""
        if self.reachable(replicas_reachable):
            was_down = self.refusing or self._lost_since_s is not None
            self._lost_since_s = None
            self.refusing = False
            return RESTORED if was_down else None
        if self._lost_since_s is None:
            self._lost_since_s = now_s
            return LOST
        if not self.refusing and now_s - self._lost_since_s >= self.grace_s:
            self.refusing = True
            return REFUSING
        return None
