"""The deterministic verdict rule every correct replica applies to an agreed vote set.

A rule per risk class says how many distinct ALLOW votes are needed
(``min_allow_votes``) and how many DENY votes are tolerated (``max_deny_votes``).
``min_allow_votes`` can never be configured below 2f+1: after discounting f
liars, at least f+1 correct replicas then approved every ALLOW.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._messages import Decision, Risk, Vote


@dataclass(frozen=True, slots=True)
class VerdictRule:
    min_allow_votes: int
    max_deny_votes: int


def default_rules(replica_count: int, faulty_max: int, quorum: int) -> dict[Risk, VerdictRule]:
    """Fail-closed defaults: stricter as risk grows; critical needs every replica's ALLOW.

    Even low risk needs a quorum q of ALLOW votes, not just 2f+1: with f liars
    at most f + ceil((n-f)/2) - 1 < q ALLOW votes exist whenever the correct
    majority denies, for every n (2f+1 alone fails this at n = 6, f = 1).
    """
    n, f = replica_count, faulty_max
    return {
        Risk.LOW: VerdictRule(min_allow_votes=quorum, max_deny_votes=n),
        Risk.MEDIUM: VerdictRule(min_allow_votes=quorum, max_deny_votes=f),
        Risk.HIGH: VerdictRule(min_allow_votes=n - f, max_deny_votes=0),
        Risk.CRITICAL: VerdictRule(min_allow_votes=n, max_deny_votes=0),
    }


def rule_problem(rule: VerdictRule, replica_count: int, faulty_max: int) -> str | None:
    """Why a configured rule is unsafe or unsatisfiable, or None."""
    if rule.min_allow_votes < 2 * faulty_max + 1:
        return f"min_allow_votes {rule.min_allow_votes} is below the fail-closed floor 2f+1 = {2 * faulty_max + 1}"
    if rule.min_allow_votes > replica_count:
        return f"min_allow_votes {rule.min_allow_votes} exceeds the replica count {replica_count}"
    if rule.max_deny_votes < 0:
        return "max_deny_votes must not be negative"
    return None


def count_votes(votes: tuple[Vote, ...]) -> tuple[int, int]:
    """(allow, deny) over votes that the caller has already checked are from distinct replicas."""
    allow = sum(1 for vote in votes if vote.decision is Decision.ALLOW)
    assert len({vote.replica_id for vote in votes}) == len(votes), "votes must come from distinct replicas"
    return allow, len(votes) - allow


def decide(rule: VerdictRule, votes: tuple[Vote, ...], timestamp_ms: int, deadline_ms: int) -> tuple[Decision, str]:
    """The verdict and its reason.  Expiry is checked first: an expired request is never ALLOW."""
    if timestamp_ms > deadline_ms:
        return Decision.DENY, f"expired: ordered at {timestamp_ms} ms, after the deadline {deadline_ms} ms"
    allow, deny = count_votes(votes)
    if deny > rule.max_deny_votes:
        return Decision.DENY, f"vetoed: {deny} deny votes, at most {rule.max_deny_votes} tolerated"
    if allow < rule.min_allow_votes:
        return Decision.DENY, f"insufficient approvals: {allow} allow votes, {rule.min_allow_votes} needed"
    assert allow >= rule.min_allow_votes and deny <= rule.max_deny_votes
    return Decision.ALLOW, f"approved: {allow} allow, {deny} deny"


def is_settled(rule: VerdictRule, votes: tuple[Vote, ...], replica_count: int) -> bool:
    """True when no further votes could change the verdict, so a primary need not wait for them."""
    allow, deny = count_votes(votes)
    missing = replica_count - len(votes)
    assert missing >= 0
    denied_for_sure = deny > rule.max_deny_votes or allow + missing < rule.min_allow_votes
    allowed_for_sure = allow >= rule.min_allow_votes and deny + missing <= rule.max_deny_votes
    return denied_for_sure or allowed_for_sure


# Reasons with which execution itself turns a request into DENY, whatever its votes say: the
# request matched the shared blocklist, or a command was well formed but its effect was refused.
# A certificate may state such a DENY without the votes implying it: f+1 matching signed replies
# include a correct replica's, and a DENY can never make anything unsafe.
BLOCKLISTED_PREFIX = "blocklisted: "
COMMAND_REJECTED_PREFIX = "command rejected: "


def effective_rule(rule: VerdictRule, replica_count: int, faulty_max: int, uncounted_count: int) -> VerdictRule:
    """The rule applied while ``uncounted_count`` replicas are quarantined (their votes do not count).

    ``min_allow_votes`` is capped at the number of replicas still counted (a
    rule asking for every replica then asks for every counted one), and never
    drops below the fail-closed floor 2f+1 of the *configured* f: among 2f+1
    ALLOW votes at most f come from liars, whoever was quarantined.  With more
    than ``n - (2f+1)`` replicas quarantined nothing can be allowed at all.
    ``max_deny_votes`` is unchanged (it now applies to counted votes only).
    """
    assert 0 <= uncounted_count <= replica_count, (uncounted_count, replica_count)
    counted = replica_count - uncounted_count
    floor = 2 * faulty_max + 1
    minimum = max(floor, min(rule.min_allow_votes, counted))
    assert floor <= minimum <= max(rule.min_allow_votes, floor)
    return VerdictRule(min_allow_votes=minimum, max_deny_votes=rule.max_deny_votes)


def counted_votes(votes: tuple[Vote, ...], uncounted: frozenset[int]) -> tuple[Vote, ...]:
    """The votes that count: those of replicas not quarantined."""
    return tuple(vote for vote in votes if vote.replica_id not in uncounted)
