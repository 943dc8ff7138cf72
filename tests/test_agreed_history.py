"""Proves policies see the client's agreed history: the verdicts finalized in the evaluating replica's own log,
matching every correct replica's log, never a verdict not yet finalized; and that the rate policy's
agreed-history rule turns a client the cluster keeps denying away on high-risk requests, in simulation."""

from __future__ import annotations

from bft.core import AgreedVerdict, Decision, Risk
from bft.policies import RatePolicy
from bft.policy import PolicyContext, PolicyDecision
from bft.testing import SimCluster
from specs.invariants import check_sim

DANGEROUS = {"tool": "shell", "command": "rm -rf /"}


class DenyShellRecording:
    """Denies shell commands and records the agreed history each evaluation was given."""

    name = "deny-shell-recording"

    def __init__(self) -> None:
        self.seen: list[tuple[int, tuple[AgreedVerdict, ...]]] = []

    def evaluate(self, action, context: PolicyContext) -> PolicyDecision:
        self.seen.append((context.request_number, context.agreed_history))
        return PolicyDecision.deny("shell") if action.get("tool") == "shell" else PolicyDecision.allow()


def run_sequentially(sim: SimCluster, actions: list[tuple[dict, Risk]]) -> None:
    for action, risk in actions:
        sim.submit("client-0", action, risk)
        assert sim.run_until(sim.all_done, 20_000), "the cluster must answer"


def test_every_evaluation_sees_only_finalized_verdicts_that_match_the_log() -> None:
    policies = {replica_id: DenyShellRecording() for replica_id in range(4)}
    sim = SimCluster(4, seed=7, policies=policies)
    run_sequentially(sim, [(DANGEROUS if number % 3 == 0 else {"tool": "read_file"}, Risk.LOW)
                           for number in range(1, 13)])
    assert check_sim(sim, set(range(4))) == []
    logged = {entry.request_number: (entry.seq, entry.decision) for entry in sim.finalized[0]
              if entry.client_id == "client-0"}
    assert len(logged) == 12
    for replica_id, policy in policies.items():
        assert {r.request_number: (r.seq, r.decision) for r in sim.finalized[replica_id]
                if r.client_id == "client-0"} == logged
        for number, history in policy.seen:
            numbers = [verdict.request_number for verdict in history]
            assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) < number, \
                "only earlier requests, oldest first, with no gaps"
            assert all(logged[v.request_number] == (v.seq, v.decision) for v in history)
    assert max(len(history) for _, history in policies[0].seen) >= 10, "later evaluations see most of the record"


def test_the_rate_policy_turns_away_high_risk_requests_of_a_client_the_cluster_keeps_denying() -> None:
    class ProbeAwareRate(RatePolicy):
        def __init__(self, **options) -> None:
            super().__init__(**options)
            self.reasons: dict[int, str] = {}

        def evaluate(self, action, context):
            decision = PolicyDecision.deny("shell") if action.get("tool") == "shell" else \
                super().evaluate(action, context)
            self.reasons[context.request_number] = decision.reason
            return decision

    policies = {replica_id: ProbeAwareRate(max_recent_denials=2) for replica_id in range(4)}
    sim = SimCluster(4, seed=11, policies=policies)
    safe_payment = {"tool": "payments.transfer", "amount": 10, "currency": "EUR", "to_account": "DE89-0001"}
    run_sequentially(sim, [(safe_payment, Risk.HIGH)] + [(DANGEROUS, Risk.LOW)] * 3 + [(safe_payment, Risk.HIGH),
                                                                                      ({"tool": "ls"}, Risk.LOW)])
    decisions = [entry.decision for entry in sim.finalized[0]]
    assert decisions == [Decision.ALLOW, Decision.DENY, Decision.DENY, Decision.DENY, Decision.DENY, Decision.ALLOW]
    assert all("the cluster denied 3 of this client's requests" in policy.reasons[5] for policy in policies.values())
    assert all(policy.reasons[1].startswith("rate:") and "denied" not in policy.reasons[1]
               for policy in policies.values())
