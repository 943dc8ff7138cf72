"""``python -m harness scenario mission``: safety nodes under failures, slow links and a compromised node.

The scenario, in deterministic simulation from one seed, for n = 5 and n = 7:

- every replica runs a different real policy from ``bft.policies``; one,
  chosen by the seed, approves everything (``_mission_workload``);
- three agents submit a stream of benign and dangerous actions across the
  four risk classes;
- faults come in *episodes*, each on a fresh cluster: ``tolerated`` (as many
  honest backups failing or slow as still leaves a fast quorum: one at n = 5,
  two at n = 7), ``down-plus-slow`` (one backup down and another behind
  500 ms links), ``no-quorum`` (one more down than a quorum can spare) and
  ``primary-failover`` (the primary crashes or is cut off).  "Down" is a crash
  with restart or an isolating partition, drawn at random; the victims too.

Why episodes run on fresh clusters: each fault combination is then measured
alone.  A replica that failed in one episode is still catching up (by state
transfer, where the core has it) when the next begins, so the next episode's
fault budget would silently include it.

What no correct protocol can do (``assess``): a verdict needs a quorum of
q = ceil((n+f+1)/2) replicas, so that any two verdict quorums share a correct
replica.  When fewer than q replicas are up, nothing can be certified and
clients must be refused.  When q are up but fewer than q are up *and* on fast
links, every quorum contains a replica behind slow links; that replica must
receive the request (one slow hop) and its answer must leave it (another), so
no verdict can be certified in under two slow delays: 1000 ms with 500 ms
links, above both the 200 ms LOW bound and the 1000 ms HIGH bound.  At n = 5
(q = 4) one replica down plus one behind slow links is exactly that case; at
n = 7 (q = 5) the same faults leave a fast quorum.

Checks (any failure makes the exit status non-zero): the harness checkers of
``_swarm.check_run`` (the spec's invariants S1-S8, linearizability, real-time
order, durability, certificates); no ALLOW for an action the honest majority
denied (from what each replica really voted) nor for any dangerous action;
without a quorum nothing invoked completes before the heal (fail closed); with
only a slow quorum no verdict beats the floor above (no corners cut); every
request after the heal finalizes within the liveness bound; LOW p99 < 200 ms and
HIGH p99 < 1000 ms over every request made while a fast quorum existed; and the
per-replica vote statistics flag exactly the approve-everything replica.
"""

from __future__ import annotations

import enum
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from bft.core import Decision, Risk, max_faulty, quorum_size
from bft.demo import percentile
from bft.testing import NetworkFaults

from ._history import EventType, History, Operation, history_from_cluster
from ._host_cpu import SATURATED_SHARE_REPORTED, HostCpu
from ._linearizability import Validity, combine
from ._mission_workload import AGENTS, ActionStream, MissionAction, mission_policies
from ._nemesis import FaultEvent
from ._report import vote_statistics
from ._swarm import CheckOutcome, HarnessCluster, _InvariantMonitor, _quiesce, check_run, default_liveness_bound_ms

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


# ----------------------------------------------------------------- running one episode

BOUNDED, FAILOVER, SLOW_QUORUM, NO_QUORUM, RECOVERY = "bounded", "failover", "slow-quorum", "no-quorum", "recovery"
# Requests made before the faults begin: real processes answer their first ones cold (first writes to a
# fresh database, first use of every code path), which says nothing about latency under faults.
WARM_UP = "warm-up"
REGIMES = (WARM_UP, BOUNDED, FAILOVER, SLOW_QUORUM, NO_QUORUM, RECOVERY)
REGIME_OF_REACH = {Reach.FAST: BOUNDED, Reach.SLOW: SLOW_QUORUM, Reach.NONE: NO_QUORUM}


@dataclass
class EpisodeResult:
    """One episode's history and checks; ``start_ms``/``liveness_start_ms``/``end_ms`` as the report expects."""

    spec: EpisodeSpec
    compromised: int
    history: History
    faults: list[FaultEvent]
    checks: dict[str, CheckOutcome]
    actions: dict[tuple[str, int], MissionAction]
    start_ms: int
    window_start_ms: int
    liveness_start_ms: int  # When every fault was healed.
    end_ms: int
    recovered_ms: int | None  # Failover only: when a quorum had installed the new view.
    wall_seconds: float
    # Real processes only: how busy the host's CPUs were from the faults to the end (None if unknown).
    host_cpu: HostCpu | None = None

    @property
    def validity(self) -> Validity:
        return combine(check.validity for check in self.checks.values())

    def regime(self, invoked_ms: int) -> str:
        """Which latency promise applies to an operation invoked at ``invoked_ms``."""
        reach = self.spec.feasibility.reach
        if invoked_ms < self.window_start_ms:
            return WARM_UP
        if self.spec.failover:
            recovered = self.recovered_ms is not None and invoked_ms >= self.recovered_ms
            return BOUNDED if recovered else FAILOVER
        if invoked_ms >= self.liveness_start_ms:
            return BOUNDED if reach is Reach.FAST else RECOVERY
        return REGIME_OF_REACH[reach]

    def samples(self) -> dict[str, dict[Risk, list[Sample]]]:
        """Latency samples per regime and risk.  An unanswered operation counts with the time it waited
        (to its deadline, or to the end of the run): a lower bound on what it would have taken."""
        samples: dict[str, dict[Risk, list[Sample]]] = {regime: {risk: [] for risk in Risk} for regime in REGIMES}
        for operation in self.history.operations():
            sample = Sample(_latency_ms(operation), operation.outcome is EventType.OK)
            samples[self.regime(operation.invoke.time_ms)][Risk(operation.invoke.risk)].append(sample)
        return samples


@dataclass(frozen=True, slots=True)
class Sample:
    latency_ms: int
    answered: bool


def _latency_ms(operation: Operation) -> int:
    assert operation.completion is not None, "histories from the simulator close every operation"
    return operation.completion.time_ms - operation.invoke.time_ms


class _EpisodeRun:
    """Drives one episode: warm up, faults with a workload, heal, fresh requests that must finalize, checks."""

    def __init__(self, spec: EpisodeSpec, seed: int, compromised: int, gaps: ArrivalGaps) -> None:
        self.spec = spec
        self.gaps = gaps
        self.compromised = compromised
        self.policies = mission_policies(spec.replica_count, compromised)
        simulator_seed = random.Random(f"mission-sim/{seed}/{spec.replica_count}/{spec.name}").randrange(2**32)
        self.cluster = HarnessCluster(spec.replica_count, seed=simulator_seed, policies=self.policies,
                                      client_ids=AGENTS, faults=NetworkFaults(delay_ms_max=JITTER_MS_MAX))
        # The same actions at the same times for every cluster size, so n = 5 and n = 7 compare directly.
        self.stream = ActionStream(random.Random(f"mission-actions/{seed}/{spec.name}"))
        self.arrivals = random.Random(f"mission-arrivals/{seed}/{spec.name}")
        self.actions: dict[tuple[str, int], MissionAction] = {}
        self.events: list[FaultEvent] = []
        self.recovered_ms: int | None = None
        self._last_resend_ms = self.cluster.now_ms

    def run(self) -> EpisodeResult:
        started = time.perf_counter()
        cluster, spec, byzantine = self.cluster, self.spec, {self.compromised}
        start_ms = cluster.now_ms
        self.events.append(FaultEvent("byzantine", 0, None, (self.compromised,), {"strategy": "approve-everything"},
                                      applied_start_ms=0))
        monitor = _InvariantMonitor(cluster)
        cluster.run(WARM_UP_MS)
        window_start_ms = cluster.now_ms
        self._start_faults(window_start_ms - start_ms)
        self._drive(window_start_ms + spec.window_ms, lambda risk: cluster.now_ms + DEADLINES_MS[risk])
        heal_ms = cluster.now_ms
        self._heal(heal_ms - start_ms)
        monitor.check(byzantine)
        bound_ms = default_liveness_bound_ms(cluster)
        healed = self._drive(heal_ms + HEALED_MS, lambda risk: cluster.now_ms + bound_ms + CLIENT_RETRY_MS)
        records = [cluster.operations[key] for key in healed]
        cluster.run_until(lambda: all(record.certificate for record in records) or self._resend_unanswered(),
                          max_ms=bound_ms)
        _quiesce(cluster)
        monitor.check(byzantine)
        history = history_from_cluster(cluster)
        result = EpisodeResult(spec, self.compromised, history, self.events, {}, dict(self.actions), start_ms,
                               window_start_ms, heal_ms, cluster.now_ms, self.recovered_ms, 0.0)
        result.checks = check_run(history, cluster, byzantine, monitor)
        result.checks.update(mission_checks(result, self.policies, bound_ms))
        result.wall_seconds = time.perf_counter() - started
        return result

    def _drive(self, end_ms: int, deadline_for) -> list[tuple[str, int]]:
        """Submit the workload until ``end_ms``; returns the keys submitted."""
        cluster, submitted = self.cluster, []
        next_submission_ms = cluster.now_ms
        while cluster.now_ms < end_ms:
            if cluster.now_ms >= next_submission_ms:
                action = self.stream.next()
                request = cluster.submit(action.agent, action.action, action.risk, deadline_for(action.risk))
                self.actions[request.key] = action
                submitted.append(request.key)
                next_submission_ms += self.gaps.draw(self.arrivals)
            self._resend_unanswered()
            self._watch_failover()
            cluster.run(cluster.tick_ms)
        return submitted

    def _resend_unanswered(self) -> bool:
        """Clients re-send what is unanswered and not yet expired, once per ``CLIENT_RETRY_MS``.  Returns False
        (so it can sit in a ``run_until`` condition)."""
        cluster = self.cluster
        if cluster.now_ms - self._last_resend_ms >= CLIENT_RETRY_MS:
            self._last_resend_ms = cluster.now_ms
            for record in cluster.operations.values():
                if record.certificate is None and not record.refused:
                    cluster.resend(record.request)
        return False

    def _watch_failover(self) -> None:
        if not self.spec.failover or self.recovered_ms is not None:
            return
        failed = {replica_id for replica_id, _ in self.spec.down}
        moved_on = sum(1 for replica in self.cluster.replicas if replica.replica_id not in failed
                       and replica.view >= 1 and replica.view_active)
        if moved_on >= self.spec.feasibility.quorum:
            self.recovered_ms = self.cluster.now_ms

    def _start_faults(self, elapsed_ms: int) -> None:
        cluster, replica_ids = self.cluster, range(self.spec.replica_count)
        blocked = set()
        for victim, kind in self.spec.down:
            if kind == "crash":
                cluster.crash(victim)
            else:
                blocked |= {(victim, other) for other in replica_ids if other != victim}
                blocked |= {(other, victim) for other in replica_ids if other != victim}
            self.events.append(FaultEvent("crash" if kind == "crash" else "partition-isolated-node", elapsed_ms,
                                          None, (victim,), applied_start_ms=elapsed_ms))
        cluster.blocked_links = blocked
        endpoints = list(replica_ids) + list(AGENTS)
        for victim in self.spec.slow:
            for other in (endpoint for endpoint in endpoints if endpoint != victim):
                cluster.slow_links_ms[(victim, other)] = cluster.slow_links_ms[(other, victim)] = SLOW_LINK_MS
            self.events.append(FaultEvent("network-slow-links", elapsed_ms, None, (victim,),
                                          {"delay_ms": SLOW_LINK_MS}, applied_start_ms=elapsed_ms))

    def _heal(self, elapsed_ms: int) -> None:
        cluster = self.cluster
        for victim, kind in self.spec.down:
            if kind == "crash":
                cluster.restart(victim)
        cluster.blocked_links = set()
        cluster.slow_links_ms.clear()
        for event in self.events:
            if event.kind != "byzantine":
                event.end_ms = event.applied_end_ms = elapsed_ms


# ----------------------------------------------------------------- the mission's own checks


def mission_checks(result: EpisodeResult, policies, liveness_bound_ms: int) -> dict[str, CheckOutcome]:
    checks = {"honest_majority": check_honest_majority(result.history, policies, result.compromised),
              "dangerous_actions": check_dangerous_actions(result.history, result.actions),
              "liveness_after_heal": check_liveness_after_heal(result, liveness_bound_ms)}
    reach = result.spec.feasibility.reach
    if reach is Reach.NONE:
        checks["fails_closed"] = check_fails_closed(result)
    if reach is Reach.SLOW:
        checks["no_corner_cutting"] = check_no_corner_cutting(result)
    return checks


def _certified(history: History) -> dict[tuple[str, int], Operation]:
    """One certified operation per key (retries carry the same verdict; linearizability checks that)."""
    return {op.key: op for op in history.operations() if op.outcome is EventType.OK}


def check_honest_majority(history: History, policies, compromised: int) -> CheckOutcome:
    """No ALLOW for a request that more than half of the honest replicas really voted DENY on."""
    honest = [replica_id for replica_id in sorted(policies) if replica_id != compromised]
    problems, denied_by_majority = [], 0
    for key, operation in sorted(_certified(history).items()):
        deniers = [r for r in honest if policies[r].decisions.get(key) is Decision.DENY]
        if 2 * len(deniers) <= len(honest):
            continue
        denied_by_majority += 1
        if operation.verdict == Decision.ALLOW.value:
            problems.append(f"{key[0]}#{key[1]} is ALLOW although honest replicas {deniers} voted DENY")
    if problems:
        return CheckOutcome(Validity.INVALID, f"{len(problems)} ALLOW verdicts overrule the honest majority",
                            problems[:SHOWN_MAX])
    return CheckOutcome(Validity.VALID, f"none of the {denied_by_majority} certified requests that the honest "
                                        "majority denied became ALLOW")


def check_dangerous_actions(history: History, actions: dict[tuple[str, int], MissionAction]) -> CheckOutcome:
    certified = _certified(history)
    dangerous = [key for key, action in actions.items() if action.dangerous]
    allowed = [key for key in dangerous if key in certified and certified[key].verdict == Decision.ALLOW.value]
    if allowed:
        return CheckOutcome(Validity.INVALID, f"{len(allowed)} dangerous actions were allowed",
                            [f"{key[0]}#{key[1]} {actions[key].kind} ({actions[key].risk.value})"
                             for key in allowed[:SHOWN_MAX]])
    denied = sum(1 for key in dangerous if key in certified)
    return CheckOutcome(Validity.VALID, f"{len(dangerous)} dangerous actions: {denied} certified DENY, "
                                        f"{len(dangerous) - denied} never certified, none ALLOW")


def _window_operations(result: EpisodeResult) -> list[Operation]:
    return [op for op in result.history.operations()
            if result.window_start_ms <= op.invoke.time_ms < result.liveness_start_ms]


def check_fails_closed(result: EpisodeResult) -> CheckOutcome:
    """Without a quorum, nothing invoked may be certified before the quorum is back."""
    window = _window_operations(result)
    early = [op for op in window if op.outcome is EventType.OK and op.completion.time_ms < result.liveness_start_ms]
    refused = sum(1 for op in window if op.outcome is not EventType.OK)
    if early:
        return CheckOutcome(Validity.INVALID, f"{len(early)} verdicts were certified without a quorum",
                            [op.describe() for op in early[:SHOWN_MAX]])
    if not window:
        return CheckOutcome(Validity.UNKNOWN, "no request was made while the quorum was lost")
    return CheckOutcome(Validity.VALID, f"{len(window)} requests made without a quorum: none certified before the "
                                        f"heal; {refused} refused at their deadline, the rest certified after it")


def check_no_corner_cutting(result: EpisodeResult) -> CheckOutcome:
    """With only a slow quorum, no verdict may arrive faster than the floor any correct protocol has."""
    floor_ms = result.spec.feasibility.latency_floor_ms
    window = _window_operations(result)
    in_window = [op for op in window if op.outcome is EventType.OK and op.completion.time_ms < result.liveness_start_ms]
    too_fast = [op for op in in_window if _latency_ms(op) < floor_ms]
    if too_fast:
        return CheckOutcome(Validity.INVALID, f"{len(too_fast)} verdicts beat the {floor_ms} ms floor: a quorum "
                                              "without the slow replica was used", [op.describe() for op in too_fast])
    fastest = min((_latency_ms(op) for op in in_window), default=None)
    refused = sum(1 for op in window if op.outcome is not EventType.OK)
    return CheckOutcome(Validity.VALID, f"{len(in_window)} verdicts certified during the window, the fastest in "
                                        f"{fastest} ms (floor {floor_ms} ms); {refused} of {len(window)} refused")


def check_liveness_after_heal(result: EpisodeResult, bound_ms: int) -> CheckOutcome:
    healed = [op for op in result.history.operations() if op.invoke.time_ms >= result.liveness_start_ms]
    late = [op for op in healed if op.outcome is not EventType.OK or _latency_ms(op) > bound_ms]
    if late:
        return CheckOutcome(Validity.INVALID, f"{len(late)} of {len(healed)} requests after the heal did not "
                                              f"finalize within {bound_ms} ms",
                            [op.describe() for op in late[:SHOWN_MAX]])
    if not healed:
        return CheckOutcome(Validity.UNKNOWN, "no request was made after the heal")
    slowest = max(_latency_ms(op) for op in healed)
    return CheckOutcome(Validity.VALID, f"all {len(healed)} requests after the heal finalized, the slowest in "
                                        f"{slowest} ms (bound {bound_ms} ms)")


# ----------------------------------------------------------------- a cluster size, and the whole mission


def latency_summary(samples: list[Sample]) -> dict[str, Any]:
    if not samples:
        return {"count": 0}
    values = [sample.latency_ms for sample in samples]
    answered = sum(sample.answered for sample in samples)
    return {"count": len(values), "certified": answered, "unanswered": len(values) - answered,
            "p50_ms": percentile(values, 0.50), "p99_ms": percentile(values, 0.99), "max_ms": max(values)}


def _merge_samples(episodes: list[EpisodeResult]) -> dict[str, dict[Risk, list[Sample]]]:
    merged: dict[str, dict[Risk, list[Sample]]] = {regime: {risk: [] for risk in Risk} for regime in REGIMES}
    for episode in episodes:
        for regime, by_risk in episode.samples().items():
            for risk, samples in by_risk.items():
                merged[regime][risk] += samples
    return merged


def check_latency_bounds(episodes: list[EpisodeResult]) -> CheckOutcome:
    """LOW and HIGH p99 under their bounds over every request made while a fast quorum existed."""
    bounded = _merge_samples(episodes)[BOUNDED]
    problems, parts, missing = [], [], []
    for risk, bound_ms in LATENCY_BOUNDS_MS.items():
        values = [sample.latency_ms for sample in bounded[risk]]
        if not values:
            missing.append(risk.value)
            continue
        p99 = percentile(values, 0.99)
        parts.append(f"{risk.value.upper()} p99 {p99:.0f} ms (bound {bound_ms} ms, {len(values)} requests)")
        if p99 >= bound_ms:
            problems.append(f"{risk.value.upper()} p99 is {p99:.0f} ms, the bound is {bound_ms} ms")
    if problems:
        return CheckOutcome(Validity.INVALID, "; ".join(problems), parts + _saturated_hosts(episodes))
    if missing:
        return CheckOutcome(Validity.UNKNOWN, f"no {', '.join(missing)} requests while a fast quorum existed", parts)
    return CheckOutcome(Validity.VALID, "; ".join(parts))


def _saturated_hosts(episodes: list[EpisodeResult]) -> list[str]:
    """For a missed bound: the real-process episodes with bounded latencies whose host often had no CPU
    to spare (those latencies then include waiting for a core), so a reader can tell the machine from the
    cluster."""
    return [f"{episode.spec.name}: {episode.host_cpu.describe()} ({os.cpu_count()} cores), so its latencies "
            "include waiting for a CPU" for episode in episodes
            if episode.host_cpu is not None and episode.host_cpu.saturated_share >= SATURATED_SHARE_REPORTED
            and any(episode.samples()[BOUNDED].values())]


def check_detection(votes: list[dict[str, Any]], compromised: int) -> CheckOutcome:
    flagged = sorted(row["replica"] for row in votes if row["flagged"])
    if flagged != [compromised]:
        return CheckOutcome(Validity.INVALID, f"the vote statistics flag replicas {flagged}; the approve-everything "
                                              f"replica is {compromised}")
    reason = next(row["flag_reason"] for row in votes if row["replica"] == compromised)
    return CheckOutcome(Validity.VALID, f"replica {compromised} flagged ({reason}); no honest replica flagged")


@dataclass
class ConfigurationResult:
    replica_count: int
    compromised: int
    policy_names: list[str]
    episodes: list[EpisodeResult]
    votes: list[dict[str, Any]]
    checks: dict[str, CheckOutcome]

    @property
    def validity(self) -> Validity:
        return combine([episode.validity for episode in self.episodes] +
                       [check.validity for check in self.checks.values()])

    def episode(self, name: str) -> EpisodeResult | None:
        return next((episode for episode in self.episodes if episode.spec.name == name), None)

    def to_json(self) -> dict[str, Any]:
        merged = _merge_samples(self.episodes)
        return {"replicas": self.replica_count, "faulty_max": max_faulty(self.replica_count),
                "quorum": quorum_size(self.replica_count, max_faulty(self.replica_count)),
                "compromised_replica": self.compromised, "policies": self.policy_names,
                "validity": self.validity.value, "checks": {name: c.to_json() for name, c in self.checks.items()},
                "vote_statistics": self.votes,
                "latency": {regime: {risk.value: latency_summary(samples) for risk, samples in by_risk.items()}
                            for regime, by_risk in merged.items()},
                "episodes": [episode_json(episode) for episode in self.episodes]}


def episode_json(episode: EpisodeResult) -> dict[str, Any]:
    feasibility = episode.spec.feasibility
    operations = episode.history.operations()
    return {"name": episode.spec.name, "summary": episode.spec.summary, "faults": episode.spec.describe(),
            "reach": feasibility.reach.value, "explanation": feasibility.explain(),
            "latency_floor_ms": feasibility.latency_floor_ms, "validity": episode.validity.value,
            "checks": {name: check.to_json() for name, check in episode.checks.items()},
            "latency": {regime: {risk.value: latency_summary(samples) for risk, samples in by_risk.items() if samples}
                        for regime, by_risk in episode.samples().items() if any(by_risk.values())},
            "operations": len(operations), "unanswered": sum(op.outcome is not EventType.OK for op in operations),
            "start_ms": episode.start_ms, "window_start_ms": episode.window_start_ms,
            "heal_ms": episode.liveness_start_ms, "end_ms": episode.end_ms, "recovered_ms": episode.recovered_ms,
            "fault_events": [event.to_json() for event in episode.faults],
            "wall_seconds": round(episode.wall_seconds, 3),
            "host_cpu": None if episode.host_cpu is None else episode.host_cpu.to_json()}


def compromised_replica(seed: int, replica_count: int) -> int:
    """Which backup approves everything (a backup, so that the failover episode crashes an honest primary)."""
    return random.Random(f"mission-compromised/{seed}/{replica_count}").randrange(1, replica_count)


def run_configuration(seed: int, replica_count: int, gaps: ArrivalGaps = DEFAULT_ARRIVALS) -> ConfigurationResult:
    assert replica_count in REPLICA_COUNTS, replica_count
    compromised = compromised_replica(seed, replica_count)
    episodes = [_EpisodeRun(spec, seed, compromised, gaps).run()
                for spec in plan_episodes(seed, replica_count, compromised)]
    votes = vote_statistics([episode.history for episode in episodes], replica_count)
    from ._mission_isolation import isolation_check  # That module builds on this one's checks.
    checks = {"latency_bounds": check_latency_bounds(episodes), "detection": check_detection(votes, compromised),
              "isolation": isolation_check(seed, replica_count, compromised)}
    names = [policy.name for _, policy in sorted(mission_policies(replica_count, compromised).items())]
    return ConfigurationResult(replica_count, compromised, names, episodes, votes, checks)


@dataclass
class MissionResult:
    seed: int
    configurations: list[ConfigurationResult]
    wall_seconds: float
    real: bool = False  # Replica processes behind fault proxies instead of the simulator.
    gaps: ArrivalGaps = DEFAULT_ARRIVALS

    @property
    def validity(self) -> Validity:
        return combine(configuration.validity for configuration in self.configurations)

    def comparison(self) -> list[str]:
        """The down-plus-slow episode at each size: what the analysis says and what was measured."""
        lines = []
        for configuration in self.configurations:
            episode = configuration.episode("down-plus-slow")
            if episode is None:
                continue
            feasibility = episode.spec.feasibility
            window = episode.samples()[REGIME_OF_REACH[feasibility.reach]]
            measured = "; ".join(describe_samples(risk, window[risk]) for risk in LATENCY_BOUNDS_MS)
            lines.append(f"n={configuration.replica_count} ({episode.spec.describe()}): {feasibility.reach.value}, "
                         f"{feasibility.explain()}. Measured while the faults lasted: {measured}.")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"scenario": "mission", "seed": self.seed, "validity": self.validity.value,
                "wall_seconds": round(self.wall_seconds, 3), "slow_link_ms": SLOW_LINK_MS,
                "latency_bounds_ms": {risk.value: bound for risk, bound in LATENCY_BOUNDS_MS.items()},
                "deadlines_ms": {risk.value: deadline for risk, deadline in DEADLINES_MS.items()},
                "feasibility": feasibility_matrix(), "comparison": self.comparison(),
                "configurations": [configuration.to_json() for configuration in self.configurations],
                "mode": "real processes" if self.real else "simulation", "rate_per_s": self.gaps.rate_per_s,
                "arrival_gap_ms": [self.gaps.min_ms, self.gaps.max_ms], "reproduce": self.reproduce_command()}

    def reproduce_command(self) -> str:
        sizes = "" if len(self.configurations) != 1 else f" --replicas {self.configurations[0].replica_count}"
        rate = "" if self.gaps == DEFAULT_ARRIVALS else f" --rate {self.gaps.rate_per_s:g}"
        return f"python -m harness scenario mission --seed {self.seed}{sizes}{rate}{' --real' if self.real else ''}"


def run_mission(seed: int, replica_counts: tuple[int, ...] = REPLICA_COUNTS,
                gaps: ArrivalGaps = DEFAULT_ARRIVALS) -> MissionResult:
    started = time.perf_counter()
    configurations = [run_configuration(seed, count, gaps) for count in replica_counts]
    return MissionResult(seed, configurations, time.perf_counter() - started, gaps=gaps)


def describe_samples(risk: Risk, samples: list[Sample]) -> str:
    summary = latency_summary(samples)
    if not summary["count"]:
        return f"{risk.value.upper()}: no requests"
    unanswered = f", {summary['unanswered']} unanswered (counted at their deadline)" if summary["unanswered"] else ""
    return f"{risk.value.upper()} p99 {summary['p99_ms']:.0f} ms over {summary['count']} requests{unanswered}"


# ----------------------------------------------------------------- the command line


EXIT_INVALID, EXIT_USAGE, EXIT_UNKNOWN = 1, 2, 3


def describe_mission(result: MissionResult, out: TextIO) -> None:
    operations = sum(len(e.history.operations()) for c in result.configurations for e in c.episodes)
    mode = "real processes" if result.real else "simulation"
    print(f"mission seed {result.seed} ({mode}): {result.validity.value.upper()} "
          f"({operations} requests at {result.gaps.rate_per_s:g} a second, {result.wall_seconds:.1f} s)", file=out)
    for configuration in result.configurations:
        n, f = configuration.replica_count, max_faulty(configuration.replica_count)
        policies = ", ".join(f"{i} {name}" for i, name in enumerate(configuration.policy_names))
        print(f"\nn={n} (f={f}, quorum {quorum_size(n, f)}), replica {configuration.compromised} approves "
              f"everything; policies: {policies}", file=out)
        for episode in configuration.episodes:
            host = "" if episode.host_cpu is None else f" ({episode.host_cpu.describe()})"
            print(f"  {episode.spec.name:17} {episode.validity.value:8} {episode.spec.feasibility.reach.value:17} "
                  f"{episode.spec.describe()}{host}", file=out)
            for regime, by_risk in episode.samples().items():
                if any(by_risk.values()):
                    print(f"      {regime:12} {_compact_latencies(by_risk)}", file=out)
            _print_checks(episode.checks, out, indent="      ", failing_only=True)
        _print_checks(configuration.checks, out, indent="  ", failing_only=False)
    print("\nthe same faults at n=5 and n=7 (one replica down, another behind "
          f"{SLOW_LINK_MS} ms links):", file=out)
    for line in result.comparison():
        print(f"  {line}", file=out)
    if result.validity is not Validity.VALID:
        print(f"reproduce with: {result.reproduce_command()}", file=out)


def _compact_latencies(by_risk: dict[Risk, list[Sample]]) -> str:
    """``low 94 ms/18`` per risk: p99 over that many requests; ``>=`` when unanswered ones set the p99."""
    parts = []
    for risk, samples in by_risk.items():
        if samples:
            summary = latency_summary(samples)
            unanswered = f" ({summary['unanswered']} unanswered)" if summary["unanswered"] else ""
            parts.append(f"{risk.value} {summary['p99_ms']:.0f} ms/{summary['count']}{unanswered}")
    return "p99 per risk: " + ", ".join(parts)


def _print_checks(checks: dict[str, CheckOutcome], out: TextIO, indent: str, failing_only: bool) -> None:
    for name, check in checks.items():
        if failing_only and check.validity is Validity.VALID:
            continue
        print(f"{indent}{check.validity.value:8} {name}: {check.summary}", file=out)
        for line in check.details if check.validity is not Validity.VALID else []:
            print(f"{indent}         {line}", file=out)


def main_scenario(arguments, out: TextIO) -> int:
    """``python -m harness scenario mission``; returns the exit status."""
    counts = (arguments.replicas,) if arguments.replicas else REPLICA_COUNTS
    if arguments.real:
        from ._mission_real import main_real
        return main_real(arguments, out)
    result = run_mission(arguments.seed, counts, arguments.gaps)
    describe_mission(result, out)
    return report_and_exit_status(result, arguments.out, out)


def report_and_exit_status(result: MissionResult, directory, out: TextIO) -> int:
    from ._report import write_mission_report
    try:
        print(f"report: {write_mission_report(result, directory)}", file=out)
    except OSError as error:
        print(f"error: cannot write the report into {directory}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    if result.validity is Validity.INVALID:
        return EXIT_INVALID
    return EXIT_UNKNOWN if result.validity is Validity.UNKNOWN else 0
