"""What the benchmark asks: one benign action per risk class, and the honest policies that judge it.

Every replica runs a real built-in policy (round robin over the deterministic
ones), so a verdict costs what it costs in production, policy included.  The
rate policy is left out on purpose: it denies bursts, and a benchmark is one
long burst from one client, so it would turn the workload into a test of the
rate limit.  Each action is allowed by every policy at its risk class, so
HIGH and CRITICAL wait for all n votes (their rules tolerate no DENY) while
LOW and MEDIUM settle at a quorum: the risk classes differ in what the primary
waits for, which is what the per-class latency shows.
"""

from __future__ import annotations

from typing import Any

from bft.core import Risk
from bft.policies import build_policy
from bft.policy import Policy

BENCH_POLICY_NAMES = ("deny-list", "context-rules", "pattern-matcher")
RISK_ORDER = (Risk.LOW, Risk.MEDIUM, Risk.HIGH, Risk.CRITICAL)


def bench_policies(replica_count: int) -> list[Policy]:
    """One real policy per replica, round robin over ``BENCH_POLICY_NAMES``."""
    assert replica_count >= 1
    return [build_policy(BENCH_POLICY_NAMES[i % len(BENCH_POLICY_NAMES)]) for i in range(replica_count)]


def action_for(risk: Risk, number: int) -> dict[str, Any]:
    """A typical benign action of ``risk``; ``number`` varies its content so no two are equal."""
    if risk is Risk.LOW:
        return {"tool": "read_file", "path": f"/workspace/project/src/module_{number}.py"}
    if risk is Risk.MEDIUM:
        return {"tool": "write_file", "path": f"/workspace/notes/todo-{number}.md",
                "content": f"- review pull request {number}\n- update the changelog"}
    if risk is Risk.HIGH:
        return {"tool": "payments.transfer", "amount": 20 + number % 900, "currency": "EUR",
                "to_account": f"DE89-{number % 10_000:04d}"}
    assert risk is Risk.CRITICAL
    return {"tool": "deploy", "service": "web", "version": f"1.4.{number}", "approval_ticket": f"CHG-{1000 + number}"}


def risk_for(number: int) -> Risk:
    """The risk classes in turn, so every class gets the same share of requests."""
    return RISK_ORDER[number % len(RISK_ORDER)]
