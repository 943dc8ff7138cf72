"""Proves the verdict rule: fail-closed defaults, ALLOW only with enough distinct approvals, expiry always DENY, is_settled never premature, and f lying voters cannot flip an honest DENY."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bft.core import Decision, Risk, VerdictRule, Vote, decide, default_rules, is_settled, max_faulty, quorum_size
from bft.core._verdict import rule_problem

ALLOW, DENY = Decision.ALLOW, Decision.DENY
DIGEST = bytes(32)
NOW_MS = 10_000
LATER_MS = 20_000


def votes_of(decisions: dict[int, Decision] | list[Decision]) -> tuple[Vote, ...]:
    items = decisions.items() if isinstance(decisions, dict) else enumerate(decisions)
    return tuple(Vote(DIGEST, decision, "r", replica_id, bytes(64)) for replica_id, decision in sorted(items))


def rules_for(n: int) -> dict[Risk, VerdictRule]:
    f = max_faulty(n)
    return default_rules(n, f, quorum_size(n, f))


@pytest.mark.parametrize("n, expected", [
    (4, {Risk.LOW: (3, 4), Risk.MEDIUM: (3, 1), Risk.HIGH: (3, 0), Risk.CRITICAL: (4, 0)}),
    (5, {Risk.LOW: (4, 5), Risk.MEDIUM: (4, 1), Risk.HIGH: (4, 0), Risk.CRITICAL: (5, 0)}),
    (7, {Risk.LOW: (5, 7), Risk.MEDIUM: (5, 2), Risk.HIGH: (5, 0), Risk.CRITICAL: (7, 0)}),
    (10, {Risk.LOW: (7, 10), Risk.MEDIUM: (7, 3), Risk.HIGH: (7, 0), Risk.CRITICAL: (10, 0)}),
])
def test_default_rules(n: int, expected: dict) -> None:
    rules = rules_for(n)
    assert {risk: (rule.min_allow_votes, rule.max_deny_votes) for risk, rule in rules.items()} == expected
    for rule in rules.values():
        assert rule_problem(rule, n, max_faulty(n)) is None
    # Stricter as risk grows: never fewer approvals needed, never more vetoes tolerated.
    ordered = [rules[risk] for risk in (Risk.LOW, Risk.MEDIUM, Risk.HIGH, Risk.CRITICAL)]
    for lower, higher in zip(ordered, ordered[1:]):
        assert higher.min_allow_votes >= lower.min_allow_votes
        assert higher.max_deny_votes <= lower.max_deny_votes


def test_decide_table_for_four_replicas() -> None:
    rules = rules_for(4)
    cases = [
        (Risk.LOW, [ALLOW, ALLOW, ALLOW], ALLOW),
        (Risk.LOW, [ALLOW, ALLOW, DENY], DENY),
        (Risk.LOW, [ALLOW, ALLOW, ALLOW, DENY], ALLOW),
        (Risk.MEDIUM, [ALLOW, ALLOW, ALLOW, DENY], ALLOW),
        (Risk.HIGH, [ALLOW, ALLOW, ALLOW, DENY], DENY),
        (Risk.HIGH, [ALLOW, ALLOW, ALLOW], ALLOW),
        (Risk.CRITICAL, [ALLOW, ALLOW, ALLOW], DENY),
        (Risk.CRITICAL, [ALLOW, ALLOW, ALLOW, ALLOW], ALLOW),
        (Risk.LOW, [], DENY),
    ]
    for risk, decisions, expected in cases:
        decision, reason = decide(rules[risk], votes_of(decisions), NOW_MS, LATER_MS)
        assert decision is expected, (risk, decisions, reason)
        assert reason


def test_decide_counts_distinct_replicas_only() -> None:
    # Three votes from one replica must not count as three approvals: count_votes refuses them loudly.
    duplicated = tuple(Vote(DIGEST, ALLOW, "r", 0, bytes(64)) for _ in range(3))
    with pytest.raises(AssertionError):
        decide(rules_for(4)[Risk.LOW], duplicated, NOW_MS, LATER_MS)


rule_and_votes = st.integers(min_value=1, max_value=16).flatmap(lambda n: st.tuples(
    st.just(n),
    st.integers(min_value=0, max_value=n + 1),
    st.integers(min_value=0, max_value=n + 1),
    st.dictionaries(st.integers(min_value=0, max_value=n - 1), st.sampled_from([ALLOW, DENY]), max_size=n),
))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(rule_and_votes, st.integers(min_value=0, max_value=30_000))
def test_decide_is_allow_exactly_when_the_rule_is_met(shape, timestamp_ms: int) -> None:
    n, min_allow, max_deny, decisions = shape
    rule = VerdictRule(min_allow, max_deny)
    allow = sum(1 for d in decisions.values() if d is ALLOW)
    deny = len(decisions) - allow
    decision, _ = decide(rule, votes_of(decisions), timestamp_ms, LATER_MS)
    expected_allow = timestamp_ms <= LATER_MS and allow >= min_allow and deny <= max_deny
    assert (decision is ALLOW) == expected_allow


@settings(max_examples=100, deadline=None)
@given(rule_and_votes)
def test_expired_is_always_deny(shape) -> None:
    n, min_allow, max_deny, decisions = shape
    votes = votes_of({i: ALLOW for i in range(n)})  # Even unanimous approval.
    decision, reason = decide(VerdictRule(min_allow, max_deny), votes, LATER_MS + 1, LATER_MS)
    assert decision is DENY and reason.startswith("expired")


def completions(n: int, decided: dict[int, Decision]):
    """Every way the replicas that have not voted could still vote (or stay silent)."""
    missing = [i for i in range(n) if i not in decided]
    choices = (None, ALLOW, DENY)
    total = 3 ** len(missing)
    for code in range(total):
        completed = dict(decided)
        for replica_id in missing:
            code, pick = divmod(code, 3)
            if choices[pick] is not None:
                completed[replica_id] = choices[pick]
        yield completed


small_rule_and_votes = st.integers(min_value=1, max_value=7).flatmap(lambda n: st.tuples(
    st.just(n),
    st.integers(min_value=0, max_value=n + 1),
    st.integers(min_value=0, max_value=n + 1),
    st.dictionaries(st.integers(min_value=0, max_value=n - 1), st.sampled_from([ALLOW, DENY]), max_size=n),
))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(small_rule_and_votes)
def test_is_settled_means_no_further_vote_changes_the_decision(shape) -> None:
    n, min_allow, max_deny, decisions = shape
    rule = VerdictRule(min_allow, max_deny)
    settled = is_settled(rule, votes_of(decisions), n)
    now_decision, _ = decide(rule, votes_of(decisions), NOW_MS, LATER_MS)
    outcomes = {decide(rule, votes_of(completed), NOW_MS, LATER_MS)[0]
                for completed in completions(n, decisions) if len(completed) == n}
    if settled:
        assert outcomes == {now_decision}
    # The converse keeps primaries from waiting needlessly: unsettled means some full completion disagrees.
    else:
        assert outcomes == {ALLOW, DENY}


def test_is_settled_examples() -> None:
    rules = rules_for(4)
    assert is_settled(rules[Risk.MEDIUM], votes_of({0: DENY, 1: DENY}), 4)  # Two vetoes exceed the one tolerated.
    # Three approvals settle MEDIUM (one more DENY is tolerated) but not HIGH (it tolerates none).
    assert is_settled(rules[Risk.MEDIUM], votes_of({0: ALLOW, 1: ALLOW, 2: ALLOW}), 4)
    assert not is_settled(rules[Risk.HIGH], votes_of({0: ALLOW, 1: ALLOW, 2: ALLOW}), 4)
    assert is_settled(rules[Risk.HIGH], votes_of({0: ALLOW, 1: ALLOW, 2: ALLOW, 3: ALLOW}), 4)
    assert not is_settled(rules[Risk.CRITICAL], votes_of({}), 4)
    assert is_settled(rules[Risk.CRITICAL], votes_of({3: DENY}), 4)


def test_rule_problem_refuses_unsafe_rules() -> None:
    assert rule_problem(VerdictRule(2, 0), 4, 1) is not None  # Below 2f+1 = 3.
    assert rule_problem(VerdictRule(3, 0), 4, 1) is None
    assert rule_problem(VerdictRule(5, 0), 4, 1) is not None  # More approvals than replicas.
    assert rule_problem(VerdictRule(3, -1), 4, 1) is not None
    for n in range(1, 40):
        f = max_faulty(n)
        for min_allow in range(0, n + 2):
            problem = rule_problem(VerdictRule(min_allow, 0), n, f)
            assert (problem is None) == (2 * f + 1 <= min_allow <= n)


@st.composite
def byzantine_scenario(draw):
    """A cluster, a safe rule, up to f liars voting ALLOW, and honest votes; the vote set is any >= q subset."""
    n = draw(st.integers(min_value=1, max_value=13))
    f = max_faulty(n)
    q = quorum_size(n, f)
    min_allow = draw(st.integers(min_value=2 * f + 1, max_value=n))
    max_deny = draw(st.integers(min_value=0, max_value=n))
    liars = draw(st.sets(st.integers(min_value=0, max_value=n - 1), max_size=f))
    honest = {i: draw(st.sampled_from([ALLOW, DENY])) for i in range(n) if i not in liars}
    # A Byzantine primary picks which votes to include: any subset of size >= q.
    included = draw(st.sets(st.sampled_from(range(n)), min_size=q, max_size=n))
    return n, f, VerdictRule(min_allow, max_deny), liars, honest, included


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(byzantine_scenario())
def test_f_approve_everything_voters_cannot_make_allow_without_f_plus_one_honest_approvals(scenario) -> None:
    n, f, rule, liars, honest, included = scenario
    votes = {i: ALLOW if i in liars else honest[i] for i in included}
    decision, _ = decide(rule, votes_of(votes), NOW_MS, LATER_MS)
    honest_approvals = sum(1 for i in included if i not in liars and honest[i] is ALLOW)
    if decision is ALLOW:
        assert honest_approvals >= f + 1


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.sampled_from([4, 5, 7, 10]), st.data())
def test_liars_cannot_turn_an_honest_majority_deny_into_allow_with_default_rules(n: int, data) -> None:
    f = max_faulty(n)
    q = quorum_size(n, f)
    risk = data.draw(st.sampled_from(list(Risk)))
    liars = data.draw(st.sets(st.integers(min_value=0, max_value=n - 1), max_size=f))
    honest = {i: data.draw(st.sampled_from([ALLOW, DENY])) for i in range(n) if i not in liars}
    honest_deny = sum(1 for d in honest.values() if d is DENY)
    assume(2 * honest_deny > len(honest))  # A strict majority of the honest replicas says DENY.
    included = data.draw(st.sets(st.sampled_from(range(n)), min_size=q, max_size=n))
    votes = {i: ALLOW if i in liars else honest[i] for i in included}
    decision, _ = decide(rules_for(n)[risk], votes_of(votes), NOW_MS, LATER_MS)
    assert decision is DENY
