"""The mission scenario's plan: its constants, the arrival of requests, what any correct protocol can do
under each fault combination (``assess``), and the episodes a seed draws.

Shared by the simulated mission (``_mission``), the real-process one (``_mission_real``) and the isolation
check (``_mission_isolation``); it imports none of them.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

from bft.core import Risk, max_faulty, quorum_size

REPLICA_COUNTS = (5, 7)
SLOW_LINK_MS = 500
JITTER_MS_MAX = 20  # Every link's ordinary delay is 1..20 ms.
LATENCY_BOUNDS_MS = {Risk.LOW: 200, Risk.HIGH: 1000}
DEADLINES_MS = {Risk.LOW: 1_000, Risk.MEDIUM: 2_000, Risk.HIGH: 3_000, Risk.CRITICAL: 5_000}
WARM_UP_MS = 300
WINDOW_MS = 2_500
NO_QUORUM_WINDOW_MS = 1_500
HEALED_MS = 1_000
DEFAULT_RATE_PER_S = 12.5  # Requests a second offered by the three agents together.
RATE_PER_S_MIN, RATE_PER_S_MAX = 1.0, 50.0  # Above 50 a second the 10 ms steps would distort the mean.
ARRIVAL_STEP_MS = 10
CLIENT_RETRY_MS = 1_000
DOWN_KINDS = ("crash", "isolate")
SHOWN_MAX = 20


@dataclass(frozen=True, slots=True)
class ArrivalGaps:
    """Time between two submissions: uniform over [min_ms, max_ms] in steps of ``ARRIVAL_STEP_MS``,
    from half to one and a half times the mean gap of the offered rate (12.5 a second: 40-120 ms)."""

    rate_per_s: float
    min_ms: int
    max_ms: int

    @classmethod
    def for_rate(cls, rate_per_s: float) -> ArrivalGaps:
        if not RATE_PER_S_MIN <= rate_per_s <= RATE_PER_S_MAX:
            raise ValueError(f"the offered rate must be in [{RATE_PER_S_MIN:g}, {RATE_PER_S_MAX:g}] requests a "
                             f"second, not {rate_per_s:g}")
        mean_ms = 1000 / rate_per_s
        min_ms = max(ARRIVAL_STEP_MS, round(mean_ms / 2 / ARRIVAL_STEP_MS) * ARRIVAL_STEP_MS)
        max_ms = max(min_ms, round(mean_ms * 3 / 2 / ARRIVAL_STEP_MS) * ARRIVAL_STEP_MS)
        return cls(rate_per_s, min_ms, max_ms)

    def draw(self, rng: random.Random) -> int:
        return rng.randrange(self.min_ms, self.max_ms + 1, ARRIVAL_STEP_MS)


DEFAULT_ARRIVALS = ArrivalGaps.for_rate(DEFAULT_RATE_PER_S)


# ----------------------------------------------------------------- what any correct protocol can do


class Reach(enum.Enum):
    FAST = "fast quorum"
    SLOW = "slow quorum only"
    NONE = "no quorum"


@dataclass(frozen=True, slots=True)
class Feasibility:
    """What a fault combination leaves: ``down`` replicas down, ``slow`` more behind slow links."""

    replica_count: int
    down: int
    slow: int
    quorum: int
    reach: Reach
    latency_floor_ms: int | None  # No verdict can be faster; None: no verdict at all.
    slow_link_ms: int

    def bound_achievable(self, risk: Risk) -> bool | None:
        """Whether the latency bound for ``risk`` can be met at all; None if ``risk`` has no bound."""
        bound = LATENCY_BOUNDS_MS.get(risk)
        if bound is None:
            return None
        return self.reach is not Reach.NONE and self.latency_floor_ms < bound

    def explain(self) -> str:
        n, q, up = self.replica_count, self.quorum, self.replica_count - self.down
        fast = up - self.slow
        if self.reach is Reach.NONE:
            return (f"{up} of {n} replicas are up and a quorum is {q}: no verdict can be certified, "
                    "so clients must be refused (fail closed)")
        if self.reach is Reach.SLOW:
            return (f"only {fast} replicas are up on fast links and a quorum is {q}: every quorum holds a replica "
                    f"behind {self.slow_link_ms} ms links, which must receive the request and then answer, so no "
                    f"correct protocol certifies a verdict in under {self.latency_floor_ms} ms")
        return f"{fast} replicas are up on fast links, at least a quorum of {q}: the latency bounds are achievable"


def assess(replica_count: int, down: int, slow: int, slow_link_ms: int = SLOW_LINK_MS) -> Feasibility:
    assert 0 <= down and 0 <= slow and down + slow <= replica_count
    quorum = quorum_size(replica_count, max_faulty(replica_count))
    up = replica_count - down
    if up < quorum:
        return Feasibility(replica_count, down, slow, quorum, Reach.NONE, None, slow_link_ms)
    if up - slow < quorum:
        return Feasibility(replica_count, down, slow, quorum, Reach.SLOW, 2 * slow_link_ms, slow_link_ms)
    return Feasibility(replica_count, down, slow, quorum, Reach.FAST, 0, slow_link_ms)


def feasibility_matrix(replica_counts: tuple[int, ...] = REPLICA_COUNTS) -> list[dict[str, Any]]:
    """Every combination of up to 3 replicas down and 2 slow, per cluster size, as rows for the report."""
    rows = []
    for count in replica_counts:
        for down in range(4):
            for slow in range(3):
                verdict = assess(count, down, slow)
                rows.append({"replicas": count, "down": down, "slow": slow, "quorum": verdict.quorum,
                             "reach": verdict.reach.value, "latency_floor_ms": verdict.latency_floor_ms,
                             "low_bound_achievable": verdict.bound_achievable(Risk.LOW),
                             "high_bound_achievable": verdict.bound_achievable(Risk.HIGH),
                             "explanation": verdict.explain()})
    return rows


# ----------------------------------------------------------------- episodes


@dataclass(frozen=True, slots=True)
class EpisodeSpec:
    name: str
    summary: str
    replica_count: int
    down: tuple[tuple[int, str], ...]  # (replica, "crash" or "isolate")
    slow: tuple[int, ...]
    window_ms: int
    failover: bool = False

    @property
    def feasibility(self) -> Feasibility:
        return assess(self.replica_count, len(self.down), len(self.slow))

    def describe(self) -> str:
        parts = [f"replica {r} {'crashes' if kind == 'crash' else 'is isolated'}" for r, kind in self.down]
        parts += [f"replica {r} behind {SLOW_LINK_MS} ms links" for r in self.slow]
        return ", ".join(parts) or "no faults"


def plan_episodes(seed: int, replica_count: int, compromised: int) -> list[EpisodeSpec]:
    """The four episodes.  Fault kinds come from the seed alone, so n = 5 and n = 7 get the same kinds;
    victims are honest backups (the primary only in the failover episode)."""
    shape = random.Random(f"mission-shape/{seed}")
    tolerated_roles = [shape.choice(DOWN_KINDS + ("slow",)) for _ in range(2)]
    down_plus_slow_kind = shape.choice(DOWN_KINDS)
    no_quorum_kinds = [shape.choice(DOWN_KINDS) for _ in range(3)]
    failover_kind = shape.choice(DOWN_KINDS)
    victims = random.Random(f"mission-victims/{seed}/{replica_count}")
    backups = [r for r in range(1, replica_count) if r != compromised]
    spare = replica_count - quorum_size(replica_count, max_faulty(replica_count))
    assert len(backups) >= spare + 1, "enough honest backups to take down one more than the cluster can spare"
    chosen = list(zip(victims.sample(backups, spare), tolerated_roles))
    down, slow = victims.sample(backups, 2)
    lost = victims.sample(backups, spare + 1)
    n = replica_count
    return [
        EpisodeSpec("tolerated", f"{spare} honest backup(s) fail or slow down, which still leaves a fast quorum",
                    n, tuple((r, k) for r, k in chosen if k != "slow"), tuple(r for r, k in chosen if k == "slow"),
                    WINDOW_MS),
        EpisodeSpec("down-plus-slow", "one backup down and another behind slow links",
                    n, ((down, down_plus_slow_kind),), (slow,), WINDOW_MS),
        EpisodeSpec("no-quorum", f"{spare + 1} backups down at once, one more than a quorum can spare",
                    n, tuple(zip(lost, no_quorum_kinds)), (), NO_QUORUM_WINDOW_MS),
        EpisodeSpec("primary-failover", "the primary fails and a view change must replace it",
                    n, ((0, failover_kind),), (), WINDOW_MS, failover=True),
    ]


def compromised_replica(seed: int, replica_count: int) -> int:
    """Which backup approves everything (a backup, so that the failover episode crashes an honest primary)."""
    return random.Random(f"mission-compromised/{seed}/{replica_count}").randrange(1, replica_count)
