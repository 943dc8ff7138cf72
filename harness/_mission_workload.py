"""The mission's safety nodes and the stream of actions their agents ask about.

Policies: every replica runs a different real policy from ``bft.policies``;
one of them, chosen by the seed, runs ``ApproveEverything`` (the node that was
convinced to approve everything).  Each policy is wrapped in a recorder, so
the checks can ask afterwards what every replica really voted on every
request, whether or not that vote made it into a certificate.

Workload: three agents submit actions.  Two do ordinary work (reading,
writing notes, mailing colleagues, small payments, ticketed deploys) with an
occasional borderline request.  The third has been prompt-injected: now and
then it fires a burst of dangerous actions (wiping disks, exfiltrating keys,
hidden payloads) under whatever risk label it likes, as a real injected agent
would.  Now and then an ordinary agent gets stuck in a loop and fetches page
after page of documentation: harmless content, but a burst, which is what the
``rate`` policy is there to stop.  Everything is drawn from one ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

from bft.core import Decision, Risk
from bft.demo import BORDERLINE_ACTIONS, DANGEROUS_ACTIONS
from bft.policies import build_policy
from bft.policy import Policy, PolicyContext, PolicyDecision

AGENTS = ("agent-0", "agent-1", "agent-injected")
INJECTED_AGENT = "agent-injected"
AGENT_WEIGHTS = (4, 4, 3)
BURST_PROBABILITY = 0.25  # Per request of the injected agent while it is quiet.
BURST_LENGTH_MIN, BURST_LENGTH_MAX = 4, 9
BORDERLINE_PROBABILITY = 0.08
LOOP_PROBABILITY = 0.05  # Per request of an ordinary agent that is not looping already.
LOOP_LENGTH_MIN, LOOP_LENGTH_MAX = 6, 10
RECORDED_REQUESTS_MAX = 100_000  # Per replica; a mission submits a few hundred.


@dataclass(frozen=True, slots=True)
class MissionAction:
    agent: str
    kind: str
    risk: Risk
    dangerous: bool
    action: dict[str, Any]


# ----------------------------------------------------------------- policies


class RecordingPolicy:
    """A policy that remembers the decision it gave on each request (what the replica really voted)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.decisions: dict[tuple[str, int], Decision] = {}

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        key = (context.client_id, context.request_number)
        try:
            decision = self.policy.evaluate(action, context)
        except Exception:
            self._record(key, Decision.DENY)  # The driver's fail-safe turns this into a DENY vote.
            raise
        self._record(key, decision.decision if isinstance(decision, PolicyDecision) else Decision.DENY)
        return decision

    def _record(self, key: tuple[str, int], decision: Decision) -> None:
        if key not in self.decisions and len(self.decisions) >= RECORDED_REQUESTS_MAX:
            raise RuntimeError(f"a mission records at most {RECORDED_REQUESTS_MAX} requests per replica")
        self.decisions[key] = decision


# Six honest criteria, each different: the four built-in kinds, then stricter variants for n = 7.  Written as
# (name, options) so a cluster file (real-process mode) can carry exactly the same policies.
HONEST_POLICY_SPECS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("deny-list", {}),
    ("context-rules", {}),
    ("pattern-matcher", {}),
    # Tighter than the default: an agent fleet's rate policy watches short windows.
    ("rate", {"window_requests": 10, "max_per_capability": 4, "max_high_risk": 3}),
    ("context-rules", {"amount_limits": {"low": 50, "medium": 500, "high": 5_000, "critical": 20_000},
                       "max_recipients": 5}),
    ("pattern-matcher", {"base64_min_chars": 40, "extra_patterns": [r"\bevil\.example\b"]}),
)


def mission_policy_specs(replica_count: int, compromised: int) -> list[tuple[str, dict[str, Any]]]:
    """(policy name, options) per replica: honest specs in order, approve-everything on ``compromised``."""
    honest_needed = replica_count - 1
    assert 0 <= compromised < replica_count and honest_needed <= len(HONEST_POLICY_SPECS), (replica_count, compromised)
    honest = iter(HONEST_POLICY_SPECS[:honest_needed])
    return [("approve-everything", {}) if replica_id == compromised else next(honest)
            for replica_id in range(replica_count)]


def mission_policies(replica_count: int, compromised: int) -> dict[int, RecordingPolicy]:
    """Every replica's policy, built from ``mission_policy_specs`` and wrapped in a recorder."""
    specs = mission_policy_specs(replica_count, compromised)
    return {replica_id: RecordingPolicy(build_policy(name, **options))
            for replica_id, (name, options) in enumerate(specs)}


# ----------------------------------------------------------------- actions


def _benign(chooser: random.Random, number: int) -> tuple[str, Risk, dict[str, Any]]:
    amount = chooser.randint(20, 900)
    catalogue = (
        ("read-file", Risk.LOW, {"tool": "read_file", "path": f"/workspace/project/src/module_{number}.py"}),
        ("list-files", Risk.LOW, {"tool": "shell", "command": "ls -la src", "cwd": "/workspace/project"}),
        ("git-status", Risk.LOW, {"tool": "shell", "command": "git status --short", "cwd": "/workspace/project"}),
        ("read-docs", Risk.LOW, {"tool": "http_get", "url": f"https://docs.example.com/api/v2/page/{number}"}),
        ("write-notes", Risk.MEDIUM, {"tool": "write_file", "path": f"/workspace/notes/todo-{number}.md",
                                      "content": f"- review pull request {number}"}),
        ("status-mail", Risk.MEDIUM, {"tool": "send_email", "to": ["alice@corp.example"],
                                      "subject": "Weekly status", "body": f"Build {number} passed."}),
        ("small-payment", Risk.HIGH, {"tool": "payments.transfer", "amount": amount, "currency": "EUR",
                                      "to_account": f"DE89-{number:04d}"}),
        ("deploy", Risk.CRITICAL, {"tool": "deploy", "service": "web", "version": f"1.4.{number}",
                                   "approval_ticket": f"CHG-{1000 + number}"}),
    )
    weights = (5, 3, 3, 4, 3, 3, 2, 1)  # Mostly low risk, as agents mostly read.
    kind, risk, action = chooser.choices(catalogue, weights)[0]
    return kind, risk, action


class ActionStream:
    """The seeded sequence of (agent, action, risk) the mission submits."""

    def __init__(self, chooser: random.Random) -> None:
        self.chooser = chooser
        self.burst_left = 0
        self.loops_left = {agent: 0 for agent in AGENTS if agent != INJECTED_AGENT}
        self.count = 0

    def next(self) -> MissionAction:
        chooser = self.chooser
        self.count += 1
        agent = chooser.choices(AGENTS, AGENT_WEIGHTS)[0]
        if agent == INJECTED_AGENT and self.burst_left == 0 and chooser.random() < BURST_PROBABILITY:
            self.burst_left = chooser.randint(BURST_LENGTH_MIN, BURST_LENGTH_MAX)
        if agent == INJECTED_AGENT and self.burst_left > 0:
            self.burst_left -= 1
            kind, action, _ = chooser.choice(DANGEROUS_ACTIONS)
            return MissionAction(agent, kind, chooser.choice(list(Risk)), True, dict(action))
        if agent != INJECTED_AGENT and self.loops_left[agent] == 0 and chooser.random() < LOOP_PROBABILITY:
            self.loops_left[agent] = chooser.randint(LOOP_LENGTH_MIN, LOOP_LENGTH_MAX)
        if agent != INJECTED_AGENT and self.loops_left[agent] > 0:
            self.loops_left[agent] -= 1
            url = f"https://docs.example.com/api/v2/page/{self.count}"
            return MissionAction(agent, "looping-read-docs", Risk.LOW, False, {"tool": "http_get", "url": url})
        if chooser.random() < BORDERLINE_PROBABILITY:
            kind, risk, action, _ = chooser.choice(BORDERLINE_ACTIONS)
            return MissionAction(agent, kind, risk, False, dict(action))
        kind, risk, action = _benign(chooser, self.count)
        return MissionAction(agent, kind, risk, False, action)
