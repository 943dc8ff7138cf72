"""``RatePolicy`` ("rate"): per-client bursts and repeated denials, over a bounded window, without a clock."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Mapping

from ..core import Decision, Risk
from ..policy import PolicyContext, PolicyDecision
from ._inspect import RISK_ORDER, capability_of



class RatePolicy:
    """Deny bursts per client, measured over the last ``window_requests`` request numbers.

    Request numbers are the client's own logical clock, so the policy needs no
    wall clock and gives the same answers for the same sequence of requests.
    Memory is bounded: at most ``window_requests`` entries per client and
    ``max_clients`` clients (least recently seen forgotten first).  A retried
    request number replaces its earlier entry instead of counting twice.

    With ``max_recent_denials`` set it also judges the client by its agreed
    history (``PolicyContext.agreed_history``, the verdicts the cluster
    finalized): a client with more than that many DENY verdicts among its last
    ``window_requests`` request numbers is probing, and its high-risk requests
    are denied until its record clears.
    """

    name = "rate"
    evaluates_inline = True  # Pure computation, bounded by the action's size: see bft.policy.runs_inline.

    def __init__(self, *, window_requests: int = 20, max_per_capability: int = 8, max_high_risk: int = 6,
                 max_clients: int = 1024, max_recent_denials: int | None = None) -> None:
        if min(window_requests, max_per_capability, max_high_risk, max_clients) < 1:
            raise ValueError("window_requests, max_per_capability, max_high_risk and max_clients must be positive")
        if max_recent_denials is not None and (isinstance(max_recent_denials, bool)
                                               or not isinstance(max_recent_denials, int) or max_recent_denials < 0):
            raise ValueError("max_recent_denials must be a non-negative integer")
        self.window_requests = window_requests
        self.max_per_capability = max_per_capability
        self.max_high_risk = max_high_risk
        self.max_clients = max_clients
        self.max_recent_denials = max_recent_denials
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, dict[int, tuple[Risk, str]]] = OrderedDict()

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        capability = capability_of(action) or "<none>"
        with self._lock:
            window = self._record(context.client_id, context.request_number, context.risk, capability)
        same = sum(1 for _, cap in window if cap == capability)
        high = sum(1 for risk, _ in window if RISK_ORDER[risk] >= RISK_ORDER[Risk.HIGH])
        span = f"the last {self.window_requests} requests"
        is_high_risk = RISK_ORDER[context.risk] >= RISK_ORDER[Risk.HIGH]
        if same > self.max_per_capability:
            return PolicyDecision.deny(f"rate: burst of {same} {capability!r} requests in {span}")
        if is_high_risk and high > self.max_high_risk:
            return PolicyDecision.deny(f"rate: burst of {high} high-risk requests in {span}")
        denied = self._recent_denials(context)
        if is_high_risk and self.max_recent_denials is not None and denied > self.max_recent_denials:
            return PolicyDecision.deny(f"rate: the cluster denied {denied} of this client's requests in {span}")
        return PolicyDecision.allow(f"rate: {same} {capability!r} and {high} high-risk in {span}")

    def _recent_denials(self, context: PolicyContext) -> int:
        oldest = context.request_number - self.window_requests
        return sum(1 for verdict in context.agreed_history
                   if oldest < verdict.request_number < context.request_number and verdict.decision is Decision.DENY)

    def _record(self, client_id: str, number: int, risk: Risk, capability: str) -> list[tuple[Risk, str]]:
        history = self._clients.get(client_id)
        if history is None:
            history = self._clients[client_id] = {}
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client_id)
        newest = max(number, max(history, default=number))
        if number > newest - self.window_requests:
            history[number] = (risk, capability)
        for old in [n for n in history if n <= newest - self.window_requests]:
            del history[old]
        assert len(history) <= self.window_requests and len(self._clients) <= self.max_clients
        return list(history.values()) if number in history else [*history.values(), (risk, capability)]
