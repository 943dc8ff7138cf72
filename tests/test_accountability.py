"""Accountability commands execute deterministically: quarantine/release, evidence, blocklist, rules and certificates.

Each test runs the same signed batches through several independent
``ExecutionState``s (as correct replicas would) and checks the resulting log
entries, replies and certificates, so agreement on the effect and its log
position is checked every time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given, settings, strategies as st

from bft.core import (AccountabilityOptions, Batch, BatchEntry, CertificateError, ClusterConfig, Commit,
                      ConfigError, Decision, KeyPair, LocalProtocolError, PrePrepare, Prepare, Replica, Request, Risk,
                      Signer, VerdictCertificate, VerdictRule, Vote, canonical_action, decide, effective_rule,
                      max_faulty, request_digest)
from bft.core._accountability import (CommandError, EquivocationProof, command_vote, endorsement_document,
                                      operator_document, parse_command)
from bft.core._execution import ExecutionState
from bft.core._verdict import counted_votes
from bft.policy import PolicyDecision, evaluate_fail_safe

ALLOW, DENY = Decision.ALLOW, Decision.DENY
START_MS = 1_000_000
ZERO = bytes(64)


def seed_for(name: str) -> bytes:
    return hashlib.sha256(f"bft-accountability-test/{name}".encode()).digest()


class Ledger:
    """n correct replicas' execution states fed the same signed batches, plus every signer a test needs."""

    def __init__(self, replica_count: int = 4, **options) -> None:
        self.replica_seeds = [seed_for(f"replica-{i}") for i in range(replica_count)]
        self.seeds = {"client": seed_for("client"), "operator:alice": seed_for("alice")}
        self.seeds.update({f"replica:{i}": s for i, s in enumerate(self.replica_seeds)})
        self.config = ClusterConfig.create(
            "acct", tuple(KeyPair.from_seed(s).public_key for s in self.replica_seeds),
            {"client": KeyPair.from_seed(self.seeds["client"]).public_key},
            operator_keys={"alice": KeyPair.from_seed(self.seeds["operator:alice"]).public_key},
            accountability=AccountabilityOptions(**options))
        self.signers = {name: Signer("acct", s) for name, s in self.seeds.items()}
        self.states = [ExecutionState(self.config.rules, 64, self.config) for _ in range(replica_count)]
        self.logs: list[list] = [[] for _ in range(replica_count)]
        self.replies: list[list] = [[] for _ in range(replica_count)]
        self.numbers: dict[str, int] = {}
        self.now_ms = START_MS

    @property
    def n(self) -> int:
        return self.config.replica_count

    def request(self, signer: str, action, risk: Risk = Risk.LOW) -> Request:
        number = self.numbers[signer] = self.numbers.get(signer, 0) + 1
        text = action if isinstance(action, str) else canonical_action(action)
        return self.signers[signer].sign(Request(signer, number, risk, text, self.now_ms + 60_000, ZERO))

    def vote(self, replica_id: int, request: Request, decision: Decision) -> Vote:
        digest = request_digest("acct", request)
        return self.signers[f"replica:{replica_id}"].sign(Vote(digest, decision, "v", replica_id, ZERO))

    def execute(self, request: Request, deny: tuple[int, ...] = (), voters=None, advance_ms: int = 10):
        """Order ``request`` alone in the next batch on every replica; return replica 0's log entry."""
        self.now_ms += advance_ms
        votes = tuple(self.vote(i, request, DENY if i in deny else ALLOW)
                      for i in (range(self.n) if voters is None else voters))
        batch = Batch(self.now_ms, (BatchEntry(request, votes),))
        for replica_id, state in enumerate(self.states):
            signer = self.signers[f"replica:{replica_id}"]
            sign = lambda reply, r=replica_id, s=signer: s.sign(dataclasses.replace(reply, replica_id=r))
            results = state.execute(state.last_executed_seq + 1, batch, (request_digest("acct", request),), sign)
            assert len(results) == 1
            self.logs[replica_id].append(results[0][0])
            self.replies[replica_id].append(results[0][1])
        entries = {log[-1] for log in self.logs}
        assert len(entries) == 1, "correct replicas must log the same entry"
        return self.logs[0][-1]

    def certificate(self, request: Request, replicas=(0, 1)) -> VerdictCertificate:
        replies = tuple(next(r for r in self.replies[i] if r.request_number == request.request_number
                             and r.client_id == request.client_id) for i in replicas)
        return VerdictCertificate(request, replies)

    def events(self, entry) -> list[dict]:
        return json.loads(entry.events) if entry.events else []

    def status(self) -> dict:
        statuses = [state.accountability.status() for state in self.states]
        assert all(status == statuses[0] for status in statuses)
        return statuses[0]


def operator(ledger: Ledger, kind: str, replica_id: int):
    return ledger.execute(ledger.request("operator:alice", operator_document(kind, replica_id, "ticket 7")))


# ----------------------------------------------------------------------------- verdict rules under quarantine


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_effective_rule_never_drops_below_the_floor(data) -> None:
    n = data.draw(st.integers(1, 40), label="n")
    f = data.draw(st.integers(0, max_faulty(n)), label="f")
    rule = VerdictRule(data.draw(st.integers(2 * f + 1, n)), data.draw(st.integers(0, n)))
    uncounted = data.draw(st.sets(st.integers(0, n - 1)), label="uncounted")
    effective = effective_rule(rule, n, f, len(uncounted))
    assert 2 * f + 1 <= effective.min_allow_votes <= rule.min_allow_votes
    assert effective.max_deny_votes == rule.max_deny_votes
    decisions = data.draw(st.lists(st.sampled_from((ALLOW, DENY)), min_size=n, max_size=n), label="votes")
    votes = tuple(Vote(bytes(32), decisions[i], "", i, ZERO) for i in range(n))
    counted = counted_votes(votes, frozenset(uncounted))
    verdict, _ = decide(effective, counted, 0, 1)
    if verdict is ALLOW:  # Among 2f+1 counted ALLOW votes, at most f are lies: f+1 correct replicas approved.
        assert sum(v.decision is ALLOW for v in counted) >= 2 * f + 1
        assert not uncounted & {v.replica_id for v in counted}


def test_quarantine_caps_unanimity_at_the_counted_replicas_and_nothing_else() -> None:
    config = Ledger(5).config
    for risk, expected in ((Risk.LOW, 4), (Risk.MEDIUM, 4), (Risk.HIGH, 4), (Risk.CRITICAL, 4)):
        assert effective_rule(config.rules[risk], 5, 1, 1).min_allow_votes == expected
    assert effective_rule(config.rules[Risk.CRITICAL], 5, 1, 0) == config.rules[Risk.CRITICAL]
    assert effective_rule(config.rules[Risk.LOW], 5, 1, 3).min_allow_votes == 3  # 2 counted: nothing can pass


# ----------------------------------------------------------------------------- operator commands


def test_an_operator_quarantine_stops_the_votes_counting_at_that_position_and_release_restores_them() -> None:
    ledger = Ledger(4)
    high = lambda: ledger.request("client", {"tool": "deploy", "n": len(ledger.logs[0])}, Risk.HIGH)
    assert ledger.execute(high(), deny=(3,)).decision is DENY  # Replica 3's lone veto counts.
    entry = operator(ledger, "quarantine", 3)
    assert entry.decision is ALLOW and entry.uncounted_voters == ""
    assert [e["event"] for e in ledger.events(entry)] == ["quarantined"]
    assert ledger.status()["quarantined"] == [{"replica": 3, "cause": "operator", "by": "operator:alice",
                                               "since_position": entry.position, "detail": "ticket 7"}]
    after = ledger.execute(high(), deny=(3,))
    assert (after.decision, after.uncounted_voters) == (ALLOW, "3")
    assert ledger.replies[0][-1].uncounted_voters == (3,)
    released = operator(ledger, "release", 3)
    assert released.decision is ALLOW and [e["event"] for e in ledger.events(released)] == ["released"]
    assert ledger.execute(high(), deny=(3,)).decision is DENY
    assert ledger.status()["quarantined"] == []


def test_operator_commands_without_proof_are_capped_at_f_and_refused_with_a_reason() -> None:
    ledger = Ledger(4)
    assert operator(ledger, "quarantine", 2).decision is ALLOW
    second = operator(ledger, "quarantine", 1)
    assert second.decision is DENY and second.reason.startswith("command rejected: without proof at most f = 1")
    assert operator(ledger, "release", 1).reason == "command rejected: replica 1 is not quarantined"
    assert operator(ledger, "quarantine", 9).reason == "command rejected: there is no replica 9 in a cluster of 4"
    assert [r["replica"] for r in ledger.status()["quarantined"]] == [2]


def test_only_operators_quarantine_and_ordinary_clients_never_issue_commands() -> None:
    ledger = Ledger(4)
    by_replica = ledger.request("replica:1", operator_document("quarantine", 3))
    assert command_vote(by_replica) == (DENY, "malformed command: only an operator may quarantine a replica")
    assert ledger.execute(by_replica).reason == "command rejected: only an operator may quarantine a replica"
    # An ordinary client's action that looks like a command is just an action to judge.
    calls = []

    class Recording:
        name = "recording"

        def evaluate(self, action, context):
            calls.append(action)
            return PolicyDecision.deny("looks odd")

    look_alike = ledger.request("client", operator_document("quarantine", 3))
    assert evaluate_fail_safe(Recording(), look_alike, 0).decision is DENY and len(calls) == 1
    assert ledger.execute(look_alike).events == "" and ledger.status()["quarantined"] == []
    # A command never reaches the policy, not even a broken one.
    assert evaluate_fail_safe(None, ledger.request("operator:alice", operator_document("release", 1)), 0) == \
        PolicyDecision(ALLOW, "well-formed release command")


def test_an_unknown_or_badly_signed_operator_command_is_refused_at_admission_with_a_reason() -> None:
    ledger = Ledger(4)
    replica = Replica(ledger.config, 0, ledger.replica_seeds[0])
    replica.tick(START_MS)
    stranger = Signer("acct", seed_for("mallory")).sign(
        Request("operator:mallory", 1, Risk.LOW, canonical_action(operator_document("quarantine", 3)),
                START_MS + 60_000, ZERO))
    ready = replica.submit(stranger)
    assert [(r.reason, r.sender) for r in ready.rejected] == [("unknown-signer", "client operator:mallory")]
    genuine = ledger.request("operator:alice", operator_document("quarantine", 3))
    forged = dataclasses.replace(genuine, action=canonical_action(operator_document("quarantine", 2)))
    assert [r.reason for r in replica.submit(forged).rejected] == ["bad-signature"]
    assert not replica.submit(forged).evaluate and len(replica.pending) == 0


# ----------------------------------------------------------------------------- equivocation evidence


def conflicting_prepares(ledger: Ledger, accused: int = 3) -> tuple[Prepare, Prepare]:
    sign = ledger.signers[f"replica:{accused}"].sign
    return (sign(Prepare(0, 5, b"\x01" * 32, accused, ZERO)), sign(Prepare(0, 5, b"\x02" * 32, accused, ZERO)))


def test_evidence_quarantines_the_equivocator_once_and_is_kept_in_the_log() -> None:
    ledger = Ledger(4)
    proof = EquivocationProof.of(*conflicting_prepares(ledger))
    entry = ledger.execute(ledger.request("replica:0", proof.to_document()))
    assert entry.decision is ALLOW and json.loads(entry.command)["command"] == "evidence"
    assert [e["event"] for e in ledger.events(entry)] == ["evidence", "quarantined"]
    assert ledger.status()["evidence"] == [{"accused": 3, "phase": "prepare", "view": 0, "seq": 5,
                                            "by": "replica:0", "position": entry.position}]
    again = ledger.execute(ledger.request("replica:1", proof.to_document()))
    assert again.reason == "command rejected: replica 3 is already quarantined on evidence"


def test_evidence_must_be_two_validly_signed_conflicting_messages_of_one_slot() -> None:
    ledger = Ledger(4)
    first, second = conflicting_prepares(ledger)
    assert EquivocationProof.of(first, first) is None
    assert EquivocationProof.of(first, dataclasses.replace(second, seq=6)) is None
    assert EquivocationProof.of(first, Commit(0, 5, b"\x02" * 32, 3, ZERO)) is None
    forged = EquivocationProof.of(first, dataclasses.replace(second, signature=bytes(64)))
    entry = ledger.execute(ledger.request("replica:0", forged.to_document()))
    assert entry.reason == "command rejected: the evidence does not hold: a message does not verify (bad-signature)"
    swapped = {"command": "evidence", "first": forged.to_document()["second"], "second": forged.to_document()["first"]}
    with pytest.raises(CommandError, match="canonical order"):
        parse_command("replica:0", canonical_action(swapped), Risk.LOW)
    assert ledger.status()["quarantined"] == [] and ledger.status()["evidence"] == []


def test_a_conflicting_phase_message_is_rejected_with_its_proof_attached() -> None:
    ledger = Ledger(4)
    replica = Replica(ledger.config, 1, ledger.replica_seeds[1])
    replica.tick(START_MS)
    first, second = conflicting_prepares(ledger, accused=2)
    first, second = dataclasses.replace(first, seq=1), dataclasses.replace(second, seq=1)
    sign = ledger.signers["replica:2"].sign
    first, second = sign(first), sign(second)
    assert replica.step(first).rejected == ()
    [rejection] = replica.step(second).rejected
    assert rejection.reason == "equivocation" and rejection.evidence == EquivocationProof.of(first, second)
    ready = replica.report_equivocation(rejection.evidence)
    [command] = ready.evaluate
    assert command.client_id == "replica:1" and json.loads(command.action)["command"] == "evidence"
    assert {destination for destination, _ in ready.messages_to_replicas} == {0, 2, 3}
    assert replica.report_equivocation(rejection.evidence).is_empty(), "one report per proof"
    with pytest.raises(LocalProtocolError):
        replica.report_equivocation(dataclasses.replace(rejection.evidence, second=dataclasses.replace(
            rejection.evidence.second, signature=bytes(64))))


# ----------------------------------------------------------------------------- shared blocklist


def endorse(ledger: Ledger, replica_id: int, pattern: str, ttl_ms: int = 1000):
    return ledger.execute(ledger.request(f"replica:{replica_id}", endorsement_document(pattern, ttl_ms)))


@pytest.mark.parametrize("pattern", ["", "      ", ".*", "(?s).*", "a", "*****", "ab.cd", "x" * 200])
def test_over_broad_or_oversized_patterns_are_refused(pattern: str) -> None:
    ledger = Ledger(4)
    request = ledger.request("replica:0", endorsement_document(pattern, 1000))
    assert command_vote(request)[0] is DENY
    entry = ledger.execute(request)  # Even if a quorum voted for it, execution refuses it.
    assert entry.decision is DENY and entry.reason.startswith("command rejected: ")
    assert ledger.status()["blocklist"] == []


def test_one_replica_alone_changes_nothing_and_f_plus_1_endorsements_take_effect_until_they_expire() -> None:
    ledger = Ledger(4)
    action = {"tool": "http_get", "url": "http://169.254.169.254/latest/meta-data"}
    assert endorse(ledger, 0, "169.254.169.254", ttl_ms=1000).decision is ALLOW
    assert ledger.execute(ledger.request("client", action)).decision is ALLOW, "one endorsement is not enough"
    second = endorse(ledger, 1, "169.254.169.254", ttl_ms=500)
    assert [e["event"] for e in ledger.events(second)] == ["endorsed", "pattern-active"]
    blocked_request = ledger.request("client", action)
    blocked = ledger.execute(blocked_request)
    assert (blocked.decision, blocked.reason) == (DENY, "blocklisted: the action matches the shared pattern "
                                                        "'169.254.169.254'")
    ledger.certificate(blocked_request).verify(ledger.config)  # The votes said ALLOW; the replies' DENY holds.
    assert ledger.execute(ledger.request("client", {"tool": "http_get", "url": "https://docs"})).decision is ALLOW
    expired = ledger.execute(ledger.request("client", action), advance_ms=600)  # Replica 1's endorsement lapsed.
    assert expired.decision is ALLOW
    assert [e["event"] for e in ledger.events(expired)] == ["endorsement-expired", "pattern-inactive"]


def test_a_quarantined_replica_cannot_endorse_and_its_endorsements_stop_counting() -> None:
    ledger = Ledger(4)
    endorse(ledger, 0, "ignore previous instructions")
    assert [e["event"] for e in ledger.events(endorse(ledger, 3, "ignore previous instructions"))] == \
        ["endorsed", "pattern-active"]
    entry = operator(ledger, "quarantine", 3)
    assert [e["event"] for e in ledger.events(entry)] == ["quarantined", "pattern-inactive"]
    assert endorse(ledger, 3, "another bad phrase").reason == \
        "command rejected: replica 3 is quarantined and may not endorse patterns"


# ----------------------------------------------------------------------------- certificates and restart


def test_certificates_after_a_quarantine_verify_offline_and_forged_ones_do_not() -> None:
    ledger = Ledger(4)
    operator(ledger, "quarantine", 3)
    request = ledger.request("client", {"tool": "deploy"}, Risk.HIGH)
    assert ledger.execute(request, deny=(3,)).decision is ALLOW
    certificate = ledger.certificate(request)
    certificate.verify(ledger.config)
    assert certificate.uncounted_voters == (3,)
    # Dropping the uncounted set from the replies breaks their signatures.
    stripped = VerdictCertificate(request, tuple(dataclasses.replace(r, uncounted_voters=())
                                                 for r in certificate.replies))
    with pytest.raises(CertificateError, match="invalid signature"):
        stripped.verify(ledger.config)
    # Even validly signed replies claiming that almost everyone is quarantined cannot go below 2f+1.
    resign = lambda reply: ledger.signers[f"replica:{reply.replica_id}"].sign(reply)
    lowered = VerdictCertificate(request, tuple(resign(dataclasses.replace(r, uncounted_voters=(1, 2, 3)))
                                                for r in certificate.replies))
    with pytest.raises(CertificateError, match="the votes imply DENY"):
        lowered.verify(ledger.config)
    # A DENY decided at execution is accepted only with the matching kind of reason.
    command_style = VerdictCertificate(request, tuple(resign(dataclasses.replace(
        r, decision=DENY, reason="command rejected: no")) for r in certificate.replies))
    with pytest.raises(CertificateError):
        command_style.verify(ledger.config)


def test_replaying_the_log_rebuilds_the_same_accountability_state() -> None:
    ledger = Ledger(4, suspicion_min_votes=2)
    operator(ledger, "quarantine", 2)
    endorse(ledger, 0, "drop table users")
    endorse(ledger, 1, "drop table users")
    for number in range(4):
        ledger.execute(ledger.request("client", {"sql": f"select {number}"}), deny=(1,) if number % 2 else ())
    restored = ExecutionState(ledger.config.rules, 64, ledger.config)
    restored.restore(tuple(ledger.logs[0]), ledger.states[0].last_executed_seq)
    assert restored.state_digest() == ledger.states[0].state_digest()
    assert restored.accountability.status() == ledger.status()


def test_a_replica_proposes_an_endorsement_as_its_own_signed_command_and_refuses_a_malformed_one() -> None:
    ledger = Ledger(4)
    replica = Replica(ledger.config, 2, ledger.replica_seeds[2])
    replica.tick(START_MS)
    with pytest.raises(LocalProtocolError, match="over-broad"):
        replica.endorse_blocklist_pattern(".*", 1000)
    ready = replica.endorse_blocklist_pattern("exfiltrate the database", 1000)
    [request] = ready.evaluate
    assert (request.client_id, json.loads(request.action)["pattern"]) == ("replica:2", "exfiltrate the database")
    assert {destination for destination, _ in ready.messages_to_replicas} == {0, 1, 3}
    later = replica.endorse_blocklist_pattern("another phrase here", 1000).evaluate[0]
    assert later.request_number > request.request_number


def test_a_quarantined_replicas_fast_vote_does_not_start_the_primarys_wait_for_stragglers() -> None:
    """Otherwise a quarantined replica that votes first could make the primary give up on a late honest
    vote after ``vote_wait_ticks`` and order a fail-closed DENY for a request every honest replica approves."""
    from bft.core._accountability_state import QuarantineRecord

    ledger = Ledger(4)
    primary = Replica(ledger.config, 0, ledger.replica_seeds[0])
    primary.execution.accountability.quarantined[3] = QuarantineRecord(3, "evidence", "replica:1", 1, "equivocated")
    now_ms = START_MS
    primary.tick(now_ms)
    request = ledger.request("client", {"tool": "read_file"})
    digest = request_digest("acct", request)
    primary.submit(request)
    primary.record_decision(digest, ALLOW, "v")
    sent = [primary.step(ledger.vote(replica_id, request, ALLOW)) for replica_id in (3, 1)]
    for _ in range(3 * ledger.config.limits.vote_wait_ticks):
        now_ms += 10
        sent.append(primary.tick(now_ms))
    assert not [m for ready in sent for _, m in ready.messages_to_replicas if isinstance(m, PrePrepare)], \
        "two counted votes and a quarantined one are not a quorum: the primary keeps waiting"
    after = [primary.step(ledger.vote(2, request, ALLOW)), primary.tick(now_ms + 10)]
    [preprepare] = {m for ready in after for _, m in ready.messages_to_replicas if isinstance(m, PrePrepare)}
    [entry] = preprepare.batch.entries
    assert {vote.replica_id for vote in entry.votes if vote.decision is ALLOW} >= {0, 1, 2}


def test_the_events_of_one_entry_stay_within_the_log_field_limit() -> None:
    from bft.core._accountability_state import EVENTS_BYTES_MAX, events_text
    events = [{"event": "endorsement-expired", "pattern": f"pattern number {i:05d}", "replica": i % 128}
              for i in range(5000)]
    text = events_text(events)
    stored = json.loads(text)
    assert len(text.encode()) <= EVENTS_BYTES_MAX and stored[:-1] == events[:len(stored) - 1]
    assert stored[-1] == {"event": "omitted", "count": len(events) - (len(stored) - 1)}
    assert events_text(events[:3]) == json.dumps(events[:3], sort_keys=True, separators=(",", ":"))
    assert events_text([]) == ""


def test_command_signers_are_derived_from_the_configuration_and_reserved() -> None:
    ledger = Ledger(4)
    config = ledger.config
    assert config.client_keys["replica:2"] == config.replica_keys[2]
    assert config.client_keys["operator:alice"] == config.operator_keys["alice"]
    assert config.ordinary_client_ids == ("client",)
    again = ClusterConfig.create("acct", config.replica_keys, config.client_keys, operator_keys=config.operator_keys)
    assert again.client_keys == config.client_keys, "feeding a config's own signers back in is accepted"
    with pytest.raises(ConfigError, match="reserved"):
        ClusterConfig.create("acct", config.replica_keys, {"replica:1": bytes(32)})
    with pytest.raises(ConfigError, match="operator 'bob' needs a 32-byte"):
        ClusterConfig.create("acct", config.replica_keys, {}, operator_keys={"bob": b"short"})
    with pytest.raises(ConfigError, match="against_peers_permille"):
        ClusterConfig.create("acct", config.replica_keys, {},
                             accountability=AccountabilityOptions(against_peers_permille=500))
