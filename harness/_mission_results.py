"""The mission scenario's results, their checks and how they are reported.

An episode's history becomes an ``EpisodeResult``; the mission's own checks
judge it (honest majority, dangerous actions, fail closed, no corners cut,
liveness after the heal, latency bounds, detection); ``describe_mission`` and
``report_and_exit_status`` print and write the outcome.  Shared by the
simulated and the real-process mission; it imports neither.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from bft.core import Decision, Risk, max_faulty, quorum_size
from bft.demo import percentile

from ._history import EventType, History, Operation
from ._host_cpu import SATURATED_SHARE_REPORTED, HostCpu
from ._linearizability import Validity, combine
from ._mission_plan import (DEADLINES_MS, DEFAULT_ARRIVALS, LATENCY_BOUNDS_MS, SHOWN_MAX, SLOW_LINK_MS, ArrivalGaps, EpisodeSpec,
                            Reach, feasibility_matrix)
from ._mission_workload import MissionAction
from ._nemesis import FaultEvent
from ._run_checks import CheckOutcome

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
