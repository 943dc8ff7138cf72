"""Proves up to f Byzantine replicas cannot turn a DENY into an ALLOW (lying policies, lying votes and
replies, forged, mangled and replayed messages, equivocating or vote-selecting primaries), that an honest
majority still reaches ALLOW past a deny-everything replica, and every statement of SPEC.md's section
"What a Byzantine primary can and cannot do by choosing votes", by feeding a correct replica pre-prepares
crafted and signed directly."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from bft.core import (BatchEntry, ClusterConfig, ConfigError, Decision, LogEntry, PreparedProof, Ready,
                      RemoteProtocolError, Risk, VerdictRule, Verifier, ViewChange)
from bft.policy import PolicyDecision
from bft.testing import (STRATEGIES, ApproveEverything, DenyEverything, SimCluster, compose, equivocating_primary,
                         forged_signatures, hiding_view_changes, honest, lying_checkpoints, lying_votes,
                         mangled_messages, replaying, silent, veto_dropping_primary)
from specs.invariants import SimMonitor

pytestmark = pytest.mark.slow  # simulated runs with Byzantine replicas: make test runs it, make test-fast does not

CLIENTS = ("client-0", "client-1", "client-2")


def run_requests(cluster: SimCluster, monitor: SimMonitor, count: int, wave: int = 20,
                 must_finish: bool = True) -> list:
    """Submit ``count`` requests in waves over every risk and client, checking every invariant after each wave."""
    requests = []
    for start in range(0, count, wave):
        for number in range(start, min(count, start + wave)):
            risk = list(Risk)[number % len(Risk)]
            requests.append(cluster.submit(CLIENTS[number % len(CLIENTS)], {"tool": "rm", "n": number}, risk))
        finished = cluster.run_until(cluster.all_done, 20_000)
        assert finished or not must_finish, f"wave at {start} did not finish"
        monitor.assert_ok(f"after the wave starting at request {start}")
    return requests


def correct_decisions(cluster: SimCluster, correct: set[int]) -> set[Decision]:
    return {entry.decision for replica_id in correct for entry in cluster.stores[replica_id].log}


# ----------------------------------------------------------------------------- the strategies are really Byzantine


def verifies(kit, message) -> bool:
    try:
        Verifier(kit.cluster_id, kit.config.replica_keys, dict(kit.config.client_keys)).verify(message)
    except RemoteProtocolError:
        return False
    return True


def test_each_strategy_changes_what_it_claims_to(kit, batch_digest) -> None:
    """A strategy that silently passed messages through would make every safety test above vacuous."""
    signer = kit.replica_signers[0]
    request = kit.request("alice", 1, Risk.LOW)
    deny = kit.vote(0, request, Decision.DENY, "no")
    entries = (kit.entry(request, range(4), deny=(3,)), kit.entry(kit.request("alice", 2, Risk.LOW), range(4)))
    preprepare = kit.preprepare(1, entries)
    checkpoint = kit.checkpoint(0, 2, bytes(32))

    lied = lying_votes()(1, deny, signer)[0]
    assert lied.decision is Decision.ALLOW and verifies(kit, lied)
    assert silent()(1, deny, signer) == [] and honest()(1, deny, signer) == [deny]
    forged = forged_signatures(seed=1)(1, deny, signer)[0]
    assert forged.signature != deny.signature and not verifies(kit, forged)
    for message in (deny, preprepare, checkpoint, kit.prepare(0, 1, batch_digest(preprepare))):
        mangled = mangled_messages(seed=2)(1, message, signer)[0]
        assert mangled != message and mangled.signature == message.signature and not verifies(kit, mangled)
    other = lying_checkpoints(seed=3)(1, checkpoint, signer)[0]
    assert other.state_digest != checkpoint.state_digest and verifies(kit, other)

    equivocate = equivocating_primary(targets={2})
    assert equivocate(1, preprepare, signer) == [preprepare]
    forked = equivocate(2, preprepare, signer)[0]
    assert (forked.view, forked.seq) == (preprepare.view, preprepare.seq) and verifies(kit, forked)
    assert batch_digest(forked) != batch_digest(preprepare)

    stripped = veto_dropping_primary(quorum=kit.config.quorum)(1, preprepare, signer)[0]
    assert [len(e.votes) for e in stripped.batch.entries] == [kit.config.quorum, 4] and verifies(kit, stripped)
    assert all(v.decision is Decision.ALLOW for e in stripped.batch.entries for v in e.votes)

    replay = replaying(seed=4, probability=1.0)
    assert replay(1, deny, signer) == [deny]
    assert replay(1, checkpoint, signer) == [checkpoint, deny], "the second message also re-sends the first"
    assert compose(lying_votes(), silent())(1, deny, signer) == []
    assert compose(lying_votes(), replaying(seed=5, probability=1.0))(1, deny, signer) == [lied]


def test_hiding_view_changes_drops_the_prepared_proofs(kit, batch_digest) -> None:
    preprepare = kit.preprepare(1, (kit.entry(kit.request("alice", 1, Risk.LOW), range(4)),))
    proof = PreparedProof(preprepare, tuple(kit.prepare(i, 1, batch_digest(preprepare)) for i in range(3)))
    view_change = kit.replica_signers[1].sign(ViewChange(1, 0, (), (proof,), 1, bytes(64)))
    hidden = hiding_view_changes()(2, view_change, kit.replica_signers[1])[0]
    assert hidden.prepared == () and hidden.new_view == 1 and verifies(kit, hidden)


# ----------------------------------------------------------------------------- (a) DENY stays DENY


@pytest.mark.parametrize("byzantine", [0, 4])
def test_an_approve_everything_replica_never_flips_a_verdict(byzantine: int) -> None:
    correct = set(range(5)) - {byzantine}
    cluster = SimCluster(5, seed=byzantine, client_ids=CLIENTS,
                         policies={i: ApproveEverything() if i == byzantine else DenyEverything() for i in range(5)})
    monitor = SimMonitor(cluster, correct)
    requests = run_requests(cluster, monitor, 200 if byzantine == 0 else 40)
    assert [cluster.verdict(request) for request in requests] == [Decision.DENY] * len(requests)
    assert correct_decisions(cluster, correct) == {Decision.DENY}
    assert all(len(cluster.stores[i].log) == len(requests) for i in correct)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("byzantine", [0, 2])
def test_a_byzantine_replica_cannot_produce_allow(strategy: str, byzantine: int) -> None:
    """The Byzantine replica approves everything and also lies on the wire; the others deny everything."""
    seed = int.from_bytes(hashlib.sha256(strategy.encode()).digest()[:4], "big") + byzantine
    correct = set(range(5)) - {byzantine}
    cluster = SimCluster(5, seed=seed, client_ids=CLIENTS,
                         interceptors={byzantine: STRATEGIES[strategy](seed, 5)},
                         policies={i: ApproveEverything() if i == byzantine else DenyEverything() for i in range(5)})
    monitor = SimMonitor(cluster, correct)
    # A Byzantine primary is replaced by a view change, but liveness is not what this test is about.
    requests = run_requests(cluster, monitor, 12, wave=12, must_finish=byzantine != 0)
    verdicts = [cluster.verdict(request) for request in requests]
    assert Decision.ALLOW not in verdicts
    assert correct_decisions(cluster, correct) <= {Decision.DENY}
    if byzantine != 0:
        assert verdicts == [Decision.DENY] * len(requests), "with an honest primary every request completes"


class Coin:
    """An honest but opinionated policy: a fixed pseudo-random opinion per (replica, action)."""

    name = "coin"

    def __init__(self, replica_id: int) -> None:
        self.replica_id = replica_id

    def opinion(self, action_text: str) -> bool:
        return hashlib.sha256(f"{self.replica_id}/{action_text}".encode()).digest()[0] % 2 == 0

    def evaluate(self, action, context) -> PolicyDecision:
        text = str(sorted(action.items()))
        return PolicyDecision.allow("heads") if self.opinion(text) else PolicyDecision.deny("tails")


@pytest.mark.parametrize("seed", range(2))
def test_every_allow_is_backed_by_f_plus_1_correct_approvals(seed: int) -> None:
    """Ground truth: we know each correct replica's opinion, so count who really approved each ALLOW.

    Replica 0 is primary and Byzantine three ways at once: it approves everything,
    re-signs its votes as ALLOW, and strips DENY votes from batches down to a
    quorum.  Still every ALLOW has at least min_allow_votes - f >= f + 1 correct
    approvers and at most max_deny_votes + (n - q) correct deniers.
    """
    n, byzantine = 4, 0
    cluster = SimCluster(n, seed=seed, client_ids=CLIENTS, policies={
        **{i: Coin(i) for i in range(n)}, byzantine: ApproveEverything()},
        interceptors={byzantine: compose(lying_votes(), veto_dropping_primary(quorum=3))})
    monitor = SimMonitor(cluster, set(range(1, n)))
    requests = run_requests(cluster, monitor, 60)
    config, allowed = cluster.config, 0
    for request in requests:
        certificate = cluster.operations[request.key].certificate
        text = str(sorted(json.loads(request.action).items()))
        approvers = sum(1 for i in range(1, n) if Coin(i).opinion(text))
        rule = config.rules[request.risk]
        if certificate.decision is Decision.ALLOW:
            allowed += 1
            assert approvers >= max(rule.min_allow_votes - config.faulty_max, config.faulty_max + 1)
            assert (n - 1) - approvers <= rule.max_deny_votes + (n - config.quorum)
    assert allowed > 0, "the schedule must exercise ALLOW for the check to mean anything"


# ----------------------------------------------------------------------------- (b) honest ALLOW survives


@pytest.mark.parametrize("denier", [0, 3])
def test_an_honest_majority_still_allows_past_a_deny_everything_replica(denier: int) -> None:
    cluster = SimCluster(4, seed=denier, client_ids=CLIENTS, policies={denier: DenyEverything()})
    monitor = SimMonitor(cluster, set(range(4)) - {denier})
    requests = run_requests(cluster, monitor, 24)
    expected = {Risk.LOW: Decision.ALLOW, Risk.MEDIUM: Decision.ALLOW,  # 3 ALLOW >= 2f+1 = q; 1 DENY <= f.
                Risk.HIGH: Decision.DENY, Risk.CRITICAL: Decision.DENY}  # HIGH and CRITICAL tolerate no DENY.
    assert [cluster.verdict(r) for r in requests] == [expected[r.risk] for r in requests]


# ----------------------------------------------------------------------------- (c) a Byzantine primary's choices


class Bench:
    """A correct backup (replica 1) of a conftest ``Kit`` facing a Byzantine primary (replica 0) whose
    messages we craft and sign ourselves."""

    def __init__(self, kit, batch_digest) -> None:
        self.kit = kit
        self.batch_digest = batch_digest
        self.replica = kit.replica(1)
        self.now_ms = self.replica.now_ms
        self.seq = 1
        self.request_number = 0

    def request(self, risk: Risk, deadline_ms: int | None = None):
        self.request_number += 1
        deadline = self.now_ms + 60_000 if deadline_ms is None else deadline_ms
        return self.kit.request("alice", self.request_number, risk, deadline_ms=deadline)

    def offer(self, entries, timestamp_ms: int | None = None) -> Ready:
        """Step the pre-prepare into the backup; a rejected one leaves the seq free for the next try."""
        timestamp = self.now_ms if timestamp_ms is None else timestamp_ms
        return self.replica.step(self.kit.preprepare(self.seq, tuple(entries), timestamp_ms=timestamp))

    def finalize(self, entries, timestamp_ms: int | None = None) -> tuple[LogEntry, ...]:
        """Offer a batch, then deliver a quorum of prepares and commits; return what the backup finalized."""
        timestamp = self.now_ms if timestamp_ms is None else timestamp_ms
        preprepare = self.kit.preprepare(self.seq, tuple(entries), timestamp_ms=timestamp)
        ready = self.replica.step(preprepare)
        assert not ready.rejected, ready.rejected
        digest = self.batch_digest(preprepare)
        others = [i for i in range(self.kit.n) if i != 1][:self.kit.config.quorum - 1]
        finalized: list[LogEntry] = []
        for make in (self.kit.prepare, self.kit.commit):
            for replica_id in others:
                finalized += self.replica.step(make(replica_id, self.seq, digest)).finalized
        assert len(finalized) == len(entries), "a valid batch must execute once prepared and committed"
        self.seq += 1
        return tuple(finalized)


def rejection_reasons(ready: Ready) -> list[str]:
    return [rejection.reason for rejection in ready.rejected]


@pytest.fixture
def bench(kit, batch_digest) -> Bench:
    return Bench(kit, batch_digest)


def test_a_batch_needs_a_quorum_of_votes(bench: Bench) -> None:
    request = bench.request(Risk.LOW)
    short = bench.kit.entry(request, replica_ids=range(bench.kit.config.quorum - 1))
    ready = bench.offer([short])
    assert rejection_reasons(ready) == ["bad-votes"] and not ready.messages_to_replicas


def test_votes_must_be_validly_signed_by_the_replica_they_name(bench: Bench) -> None:
    request = bench.request(Risk.LOW)
    votes = list(bench.kit.votes(request, replica_ids=range(3)))
    # The primary signs replica 2's ALLOW with its own key: the signature cannot verify as replica 2's.
    votes[2] = bench.kit.replica_signers[0].sign(votes[2])
    ready = bench.offer([BatchEntry(request, tuple(votes))])
    assert rejection_reasons(ready) == ["bad-signature"] and not ready.messages_to_replicas


def test_votes_cannot_be_moved_from_another_request(bench: Bench) -> None:
    approved, target = bench.request(Risk.HIGH), bench.request(Risk.HIGH)
    ready = bench.offer([BatchEntry(target, bench.kit.votes(approved, replica_ids=range(4)))])
    assert rejection_reasons(ready) == ["bad-votes"] and not ready.messages_to_replicas


def test_a_voter_cannot_count_twice(bench: Bench) -> None:
    request = bench.request(Risk.LOW)
    votes = bench.kit.votes(request, replica_ids=range(3))
    ready = bench.offer([BatchEntry(request, (votes[0], votes[1], votes[1], votes[2]))])
    assert rejection_reasons(ready) == ["bad-votes"] and not ready.messages_to_replicas


@pytest.mark.parametrize("replica_count", [4, 5, 7])
def test_2f_allow_votes_never_make_an_allow(replica_count: int, make_kit, batch_digest) -> None:
    """The primary offers every risk with exactly 2f ALLOW votes padded to a full set with DENY votes."""
    kit = make_kit(replica_count)
    bench, f = Bench(kit, batch_digest), kit.f
    risks = list(Risk)
    for ordered in (list(range(kit.n)), list(reversed(range(kit.n)))):  # which replicas say ALLOW varies
        entries = [bench.kit.entry(bench.request(risk), replica_ids=range(kit.n), deny=tuple(ordered[2 * f:]))
                   for risk in risks]
        finalized = bench.finalize(entries)
        assert [entry.decision for entry in finalized] == [Decision.DENY] * len(risks)
        assert all("insufficient approvals" in entry.reason or "vetoed" in entry.reason for entry in finalized)


def every_selection(replica_count: int, quorum: int):
    """Every vote set a primary may legally propose: >= q distinct voters, each ALLOW or DENY."""
    for size in range(quorum, replica_count + 1):
        for voters in itertools.combinations(range(replica_count), size):
            for decisions in itertools.product((Decision.ALLOW, Decision.DENY), repeat=size):
                yield voters, tuple(voter for voter, decision in zip(voters, decisions) if decision is Decision.DENY)


@pytest.mark.parametrize("replica_count", [4, 5])
def test_no_legal_vote_selection_makes_allow_without_the_rule(replica_count: int, make_kit, batch_digest) -> None:
    """Exhaustive, end to end: every legal selection of signed votes, for every risk, through a real replica.

    ALLOW comes out exactly when the selection holds >= min_allow_votes ALLOW
    votes (never fewer than 2f+1) and at most max_deny_votes DENY votes.
    """
    kit = make_kit(replica_count)
    bench, config = Bench(kit, batch_digest), kit.config
    cases = [(risk, voters, deny) for voters, deny in every_selection(kit.n, config.quorum) for risk in Risk]
    batch_size = config.limits.max_batch_requests
    allowed = 0
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        entries = [kit.entry(bench.request(risk), replica_ids=voters, deny=deny) for risk, voters, deny in chunk]
        for (risk, voters, deny), logged in zip(chunk, bench.finalize(entries)):
            rule, allow_votes = config.rules[risk], len(voters) - len(deny)
            expected = allow_votes >= rule.min_allow_votes and len(deny) <= rule.max_deny_votes
            assert (logged.decision is Decision.ALLOW) == expected, (risk, voters, deny, logged.reason)
            if logged.decision is Decision.ALLOW:
                allowed += 1
                assert allow_votes >= 2 * kit.f + 1
    assert allowed > 0


def test_the_rule_floor_2f_plus_1_cannot_be_configured_away(kit) -> None:
    weak = {risk: VerdictRule(min_allow_votes=2 * kit.f, max_deny_votes=kit.n) for risk in Risk}
    with pytest.raises(ConfigError, match="fail-closed floor"):
        ClusterConfig.create("weak", kit.config.replica_keys, kit.config.client_keys, rules=weak)


def best_selection_for_allow(replica_count: int, quorum: int, deniers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The primary's best shot at ALLOW: keep every ALLOW voter, drop DENY voters down to a quorum.

    Voters 0..n-d-1 say ALLOW (the Byzantine ones among them), the last ``deniers`` say DENY.
    """
    allow_voters = list(range(replica_count - deniers))
    deny_voters = list(range(replica_count - deniers, replica_count))
    kept_deny = deny_voters[:max(0, quorum - len(allow_voters))] if len(allow_voters) < quorum else []
    return tuple(allow_voters + kept_deny), tuple(kept_deny)


@pytest.mark.parametrize("replica_count", [4, 5, 7])
def test_the_veto_bound_is_exact(replica_count: int, make_kit, batch_digest) -> None:
    """A veto holds against a Byzantine primary iff correct DENY voters > max_deny_votes + (n - q).

    Pure part, exhaustive: over every legal selection, the fewest DENY votes a
    primary can include is max(0, d - (n - q)).  End-to-end part, at the
    boundary: with d = bound the best selection avoids the veto (so the verdict
    is decided by the ALLOW count alone); with d = bound + 1 a real replica
    logs "vetoed" whatever the primary picks.
    """
    kit = make_kit(replica_count)
    n, f, q = kit.n, kit.f, kit.config.quorum
    for deniers in range(n - f + 1):
        fewest = min(sum(1 for voter in voters if voter >= n - deniers)
                     for size in range(q, n + 1) for voters in itertools.combinations(range(n), size))
        assert fewest == max(0, deniers - (n - q))
    bench = Bench(kit, batch_digest)
    for risk in Risk:
        rule = kit.config.rules[risk]
        bound = rule.max_deny_votes + (n - q)
        if bound + 1 > n - f:
            continue  # Not enough correct replicas exist to out-vote the primary's omissions.
        at_bound = best_selection_for_allow(n, q, bound)
        over_bound = best_selection_for_allow(n, q, bound + 1)
        first, second = bench.finalize([kit.entry(bench.request(risk), *at_bound),
                                        kit.entry(bench.request(risk), *over_bound)])
        assert "vetoed" not in first.reason
        assert first.decision is (Decision.ALLOW if len(at_bound[0]) - len(at_bound[1]) >= rule.min_allow_votes
                                  else Decision.DENY)
        assert second.decision is Decision.DENY and "vetoed" in second.reason


def test_one_correct_veto_of_a_high_risk_request_does_not_survive_a_byzantine_primary(make_kit, batch_digest) -> None:
    """The headline case of the bound at n=5, f=1, q=4: replica 4 alone says DENY to a HIGH request."""
    kit = make_kit(5)
    bench = Bench(kit, batch_digest)
    everyone = bench.finalize([kit.entry(bench.request(Risk.HIGH), range(5), deny=(4,))])[0]
    omitted = bench.finalize([kit.entry(bench.request(Risk.HIGH), range(4))])[0]
    assert everyone.decision is Decision.DENY and "vetoed" in everyone.reason, "an honest primary keeps the veto"
    assert omitted.decision is Decision.ALLOW, "q = 4 votes without replica 4's DENY are a legal selection"


def test_a_byzantine_primary_can_turn_allow_into_deny(bench: Bench) -> None:
    """Including its own DENY (or dropping an ALLOW) is legal, and it always errs toward DENY."""
    kit = bench.kit
    all_allow = bench.finalize([kit.entry(bench.request(Risk.HIGH), range(4))])[0]
    with_own_deny = bench.finalize([kit.entry(bench.request(Risk.HIGH), range(4), deny=(0,))])[0]
    dropped_allow = bench.finalize([kit.entry(bench.request(Risk.CRITICAL), range(1, 4))])[0]
    assert all_allow.decision is Decision.ALLOW
    assert with_own_deny.decision is Decision.DENY and "vetoed" in with_own_deny.reason
    assert dropped_allow.decision is Decision.DENY and "insufficient approvals" in dropped_allow.reason


def test_stalling_past_the_deadline_turns_allow_into_deny(bench: Bench) -> None:
    kit = bench.kit
    request = bench.request(Risk.LOW, deadline_ms=bench.now_ms - 1)
    expired = bench.finalize([kit.entry(request, range(4))], timestamp_ms=bench.now_ms)[0]
    assert expired.decision is Decision.DENY and expired.reason.startswith("expired")


def test_a_primary_cannot_backdate_a_batch_beyond_the_clock_skew(bench: Bench) -> None:
    """A backdated batch gets no PREPARE from a correct backup, so without f+1 correct prepares it never
    commits; the backup keeps it only to learn the outcome if a quorum did commit it (issue 17)."""
    kit = bench.kit
    request = bench.request(Risk.LOW, deadline_ms=bench.now_ms - 5_000)
    skew = kit.config.limits.max_clock_skew_ms
    ready = bench.offer([kit.entry(request, range(4))], timestamp_ms=bench.now_ms - skew - 1)
    assert not ready.messages_to_replicas and not ready.finalized, "no PREPARE for a backdated batch"
    assert bench.replica.rejected_counts["bad-timestamp"] == 1
