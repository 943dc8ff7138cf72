"""The safety-policy plug-in interface and its fail-safe evaluation.

A policy is any object with ``evaluate(action, context) -> PolicyDecision``.
Replicas may run different policies; that diversity is the point.  Policies
run outside the consensus core (the driver calls them and feeds the decision
back with ``Replica.record_decision``), so a driver can enforce a deadline.
``evaluate_fail_safe`` turns every failure (an exception, a wrong return type)
into DENY with a reason: a broken policy can never produce an ALLOW.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from .core import AgreedVerdict, Decision, Request, Risk, command_vote, is_command_request


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a policy knows besides the action: who asks, at what risk, by when, and the client's
    ``agreed_history`` (its latest finalized verdicts from this replica's log; see
    ``ExecutionState.agreed_history``)."""

    replica_id: int
    client_id: str
    request_number: int
    risk: Risk
    deadline_ms: int
    agreed_history: tuple[AgreedVerdict, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    decision: Decision
    reason: str

    @staticmethod
    def allow(reason: str = "allowed") -> "PolicyDecision":
        return PolicyDecision(Decision.ALLOW, reason)

    @staticmethod
    def deny(reason: str) -> "PolicyDecision":
        return PolicyDecision(Decision.DENY, reason)


class Policy(Protocol):
    name: str

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        """Decide whether ``action`` may run.  Must not mutate shared state outside the policy."""


# Inline evaluation is for small actions only: a policy's cost grows with the text it inspects.
INLINE_ACTION_CHARS_MAX = 16 * 1024


def runs_inline(policy: Policy, request: Request) -> bool:
    """Whether a driver may evaluate ``request`` on its own task instead of in a worker thread.

    A thread hop costs more than a typical evaluation, but only a thread can be
    abandoned when it overruns its deadline.  So inline evaluation is for what
    cannot hang: commands to the accountability state (never shown to the
    policy), and small actions for a policy that declares ``evaluates_inline =
    True``: its ``evaluate`` is pure computation, bounded by the size of the
    action, and never waits (no I/O, no lock another thread may hold long).
    An inline evaluation still fails safe (``evaluate_fail_safe``), and one
    that overruns the deadline still votes DENY once it returns.
    """
    if is_command_request(request.client_id):
        return True
    return getattr(policy, "evaluates_inline", False) is True and len(request.action) <= INLINE_ACTION_CHARS_MAX


def context_for(request: Request, replica_id: int, agreed_history: tuple[AgreedVerdict, ...] = ()) -> PolicyContext:
    return PolicyContext(replica_id, request.client_id, request.request_number, request.risk, request.deadline_ms,
                         agreed_history)


def evaluate_fail_safe(policy: Policy, request: Request, replica_id: int,
                       agreed_history: tuple[AgreedVerdict, ...] = ()) -> PolicyDecision:
    """Run ``policy`` on ``request``; any failure becomes DENY with the reason named.

    A command to the accountability state (a request from a reserved
    "replica:" or "operator:" signer) never reaches the policy: the vote only
    says whether it is well formed, and its effect is decided when it executes.
    """
    if is_command_request(request.client_id):
        decision, reason = command_vote(request)
        return PolicyDecision(decision, reason)
    try:
        decision = policy.evaluate(json.loads(request.action), context_for(request, replica_id, agreed_history))
    except Exception as error:  # A policy is foreign code: every failure must fail closed.
        return PolicyDecision.deny(f"policy error: {type(error).__name__}: {error}")
    if not isinstance(decision, PolicyDecision) or not isinstance(decision.decision, Decision):
        return PolicyDecision.deny(f"policy returned {type(decision).__name__}, not a PolicyDecision")
    if not isinstance(decision.reason, str):
        return PolicyDecision.deny(f"policy returned a {type(decision.reason).__name__} reason, not text")
    return decision
