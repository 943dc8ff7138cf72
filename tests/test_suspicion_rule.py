"""Proves the suspicion rule flags one-sided voters (approve-everything, deny-everything) and not honest replicas
whose policies merely differ, a content-blind one that approves most requests included; that the automatic rule
quarantines the one-sided voter; and that a suspicion clears only once the replica votes well inside the rule."""

from __future__ import annotations

import random
from typing import Callable

import pytest

from bft.core import AccountabilityOptions, ClusterConfig, Decision, KeyPair, Request, Risk, Vote
from bft.core._accountability_state import AccountabilityState

ALLOW, DENY = Decision.ALLOW, Decision.DENY
START_MS = 1_000_000
ZERO_SIGNATURE = bytes(64)
ENTRIES = 600

# A policy sees whether the action is dangerous and a random draw, and answers ALLOW or DENY.
Policy = Callable[[bool, random.Random], Decision]


def content_aware(noise_permille: int) -> Policy:
    """Denies dangerous actions, and now and then something else (honest policies differ)."""
    return lambda dangerous, chooser: DENY if dangerous or chooser.randrange(1000) < noise_permille else ALLOW


def content_blind(approval_permille: int) -> Policy:
    """Ignores the action: approves at a fixed rate (like a burst-limiting policy)."""
    return lambda dangerous, chooser: ALLOW if chooser.randrange(1000) < approval_permille else DENY


def approve_everything(dangerous: bool, chooser: random.Random) -> Decision:
    return ALLOW


def deny_everything(dangerous: bool, chooser: random.Random) -> Decision:
    return DENY


def new_state(replica_count: int, **options) -> AccountabilityState:
    keys = tuple(KeyPair.from_seed(bytes([index + 1]) * 32).public_key for index in range(replica_count))
    config = ClusterConfig.create("suspicion", keys, {"agent": keys[0]},
                                  accountability=AccountabilityOptions(**options))
    return AccountabilityState(config)


def run(policies: list[Policy], seed: int, entries: int = ENTRIES, dangerous_permille: int = 300,
        **options) -> tuple[AccountabilityState, list[tuple[int, dict]]]:
    """Execute ``entries`` requests voted on by ``policies``; (final state, every (position, event))."""
    state = new_state(len(policies), **options)
    chooser = random.Random(seed)
    events = []
    for position in range(1, entries + 1):
        dangerous = chooser.randrange(1000) < dangerous_permille
        request = Request("agent", position, Risk.LOW, "{}", START_MS + 10**9, ZERO_SIGNATURE)
        votes = tuple(Vote(bytes(32), policy(dangerous, chooser), "v", replica_id, ZERO_SIGNATURE)
                      for replica_id, policy in enumerate(policies))
        outcome = state.execute(request, votes, START_MS + position, position, seq=position)
        events += [(position, event) for event in outcome.events]
    return state, events


def suspected(events: list[tuple[int, dict]]) -> set[int]:
    return {event["replica"] for _, event in events if event["event"] == "suspected"}


HONEST = [content_aware(20), content_aware(60), content_aware(100), content_blind(880)]


@pytest.mark.parametrize("seed", range(20))
def test_honest_but_different_policies_are_never_suspected_and_the_approver_always_is(seed: int) -> None:
    state, events = run(HONEST + [approve_everything], seed)
    assert suspected(events) == {4}
    [(_, event)] = [(p, e) for p, e in events if e["event"] == "suspected"]
    assert "requests most others denied" in event["reason"]
    assert not state.quarantined, "the automatic rule is off by default"


def test_a_content_blind_approver_is_not_one_sided_even_at_a_high_approval_rate() -> None:
    _, events = run(HONEST[:3] + [content_blind(880), content_blind(850)], seed=11)
    assert suspected(events) == set()


def test_a_deny_everything_replica_is_suspected_for_denying_what_the_others_approved() -> None:
    _, events = run(HONEST + [deny_everything], seed=5)
    assert suspected(events) == {4}
    assert any("requests most others approved" in event["reason"] for _, event in events
               if event["event"] == "suspected")


def test_the_automatic_rule_quarantines_the_suspect_at_the_position_it_was_suspected() -> None:
    state, events = run(HONEST + [approve_everything], seed=2, auto_quarantine_suspects=True)
    [suspected_at] = [position for position, event in events if event["event"] == "suspected"]
    [(quarantined_at, quarantine)] = [(p, e) for p, e in events if e["event"] == "quarantined"]
    assert (quarantined_at, quarantine["replica"], quarantine["by"]) == (suspected_at, 4, "auto")
    assert list(state.quarantined) == [4]


def test_too_few_contested_verdicts_are_not_judged() -> None:
    _, events = run(HONEST + [approve_everything], seed=3, dangerous_permille=5)
    assert suspected(events) == set()


def test_a_suspicion_clears_only_once_the_replica_votes_like_its_peers_again() -> None:
    reformed = {"calls": 0}

    def approver_then_honest(dangerous: bool, chooser: random.Random) -> Decision:
        reformed["calls"] += 1
        return ALLOW if reformed["calls"] <= 200 else content_aware(40)(dangerous, chooser)

    _, events = run(HONEST + [approver_then_honest], seed=4, entries=700)
    kinds = [(event["event"], event["replica"]) for _, event in events]
    assert kinds == [("suspected", 4), ("suspicion-cleared", 4)]
    [(suspected_at, _), (cleared_at, _)] = events
    assert suspected_at <= 200 < cleared_at, "cleared only after the replica changed"
