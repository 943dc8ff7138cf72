"""``python -m harness scenario mission``: safety nodes under failures, slow links and a compromised node.

The scenario, in deterministic simulation from one seed, for n = 5 and n = 7
(this module runs it; ``_mission_plan`` holds what it plans, ``_mission_results``
what it measures and checks, ``_mission_real`` the same with real processes):

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
``_run_checks.check_run`` (the spec's invariants S1-S8, linearizability, real-time
order, durability, certificates); no ALLOW for an action the honest majority
denied (from what each replica really voted) nor for any dangerous action;
without a quorum nothing invoked completes before the heal (fail closed); with
only a slow quorum no verdict beats the floor above (no corners cut); every
request after the heal finalizes within the liveness bound; LOW p99 < 200 ms and
HIGH p99 < 1000 ms over every request made while a fast quorum existed; and the
per-replica vote statistics flag exactly the approve-everything replica.
"""

from __future__ import annotations

import random
import time
from typing import TextIO

from bft.testing import NetworkFaults

from ._history import history_from_cluster
from ._mission_plan import (CLIENT_RETRY_MS, DEADLINES_MS, DEFAULT_ARRIVALS, HEALED_MS, JITTER_MS_MAX, REPLICA_COUNTS,
                            SLOW_LINK_MS, WARM_UP_MS, ArrivalGaps, EpisodeSpec, compromised_replica, plan_episodes)
from ._mission_results import (ConfigurationResult, EpisodeResult, MissionResult, check_detection, check_latency_bounds,
                               describe_mission, mission_checks, report_and_exit_status)
from ._mission_workload import AGENTS, ActionStream, MissionAction, mission_policies
from ._nemesis import FaultEvent
from ._report import vote_statistics
from ._run_checks import InvariantMonitor, check_run
from ._swarm import HarnessCluster, _quiesce, default_liveness_bound_ms

# ----------------------------------------------------------------- running one episode


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
        monitor = InvariantMonitor(cluster)
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


# ----------------------------------------------------------------- a cluster size, and the whole mission


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


def run_mission(seed: int, replica_counts: tuple[int, ...] = REPLICA_COUNTS,
                gaps: ArrivalGaps = DEFAULT_ARRIVALS) -> MissionResult:
    started = time.perf_counter()
    configurations = [run_configuration(seed, count, gaps) for count in replica_counts]
    return MissionResult(seed, configurations, time.perf_counter() - started, gaps=gaps)


# ----------------------------------------------------------------- the command line


def main_scenario(arguments, out: TextIO) -> int:
    """``python -m harness scenario mission``; returns the exit status."""
    counts = (arguments.replicas,) if arguments.replicas else REPLICA_COUNTS
    if arguments.real:
        from ._mission_real import main_real
        return main_real(arguments, out)
    result = run_mission(arguments.seed, counts, arguments.gaps)
    describe_mission(result, out)
    return report_and_exit_status(result, arguments.out, out)
