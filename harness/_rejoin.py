"""The rejoin scenario, simulated: every replica in turn (primary included) is paused, killed or cut off under
load, then resumed, restarted or healed, and must come back into the cluster's view with no lag.

A *pause* is SIGSTOP's simulation: the replica receives nothing and does not tick; the messages sent to it
wait (as in a socket buffer) and reach it all at once when it resumes, with its clock jumping forward.  A
*kill* loses the replica's memory; it restarts from its store.  An *isolation* drops every message to and
from it; the heal lets traffic through again.

Each episode measures the time from the end of the fault until the replica is *rejoined*: in the same view
as the majority of the others, active in it, and with no lag (it executed as far as any other replica).  It
also records the longest gap between two consecutive verdicts and how many view changes the cluster made.
``python -m harness scenario rejoin`` prints the figures; ``tests/test_rejoin_scenario.py`` asserts them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from bft.core import Limits, Risk
from bft.testing import NetworkFaults, SimCluster
from specs.invariants import SimMonitor

FAULT_KINDS = ("pause", "kill", "isolate")
FAULT_MS = 2_500  # Longer than a view change, so pausing the primary costs one.
REJOIN_BOUND_IDLE_MS = 2_000
REJOIN_BOUND_LOADED_MS = 5_000
LOAD_GAP_MS = 80  # About 12 requests a second, the mission's rate.
# "Verdicts never stop for more than one view change": the initial timeout (50 ticks of 10 ms), doubled once
# after a failed view, plus the new view's first round.
VERDICT_GAP_BOUND_MS = 1_500


class PausableCluster(SimCluster):
    """``SimCluster`` plus ``pause``/``resume``: a paused replica's inbound messages are held, not lost."""

    def __init__(self, *arguments, **options) -> None:
        self.paused: set[int] = set()
        self.held: dict[int, list[tuple]] = {}
        super().__init__(*arguments, **options)

    def pause(self, replica_id: int) -> None:
        assert replica_id not in self.crashed, "a crashed replica cannot be paused"
        self.paused.add(replica_id)
        self.held[replica_id] = []
        self.crashed.add(replica_id)  # No ticks, no output; ``_deliver`` holds its inbound traffic.

    def resume(self, replica_id: int) -> None:
        assert replica_id in self.paused, "only a paused replica resumes"
        self.paused.discard(replica_id)
        self.crashed.discard(replica_id)
        for source, destination, data in self.held.pop(replica_id):
            self._deliver(source, destination, data)  # All at once, before its first (late) tick.

    def _deliver(self, source, destination, data: bytes) -> None:
        if destination in self.paused:
            self.held[destination].append((source, destination, data))
            return
        super()._deliver(source, destination, data)


def rejoin_limits() -> Limits:
    """Small windows, so that a fault of a few seconds under load leaves a replica checkpoints behind."""
    return Limits(max_batch_requests=4, log_window=16, checkpoint_interval=8)


@dataclass
class Episode:
    kind: str
    replica_id: int
    loaded: bool
    rejoin_ms: int | None  # None: not rejoined within the bound.
    verdict_gap_ms_max: int
    view_changes: int

    def describe(self) -> str:
        rejoined = f"rejoined in {self.rejoin_ms} ms" if self.rejoin_ms is not None else "NOT rejoined"
        return (f"{self.kind:8} replica {self.replica_id} ({'load' if self.loaded else 'idle'}): {rejoined}, "
                f"longest verdict gap {self.verdict_gap_ms_max} ms, {self.view_changes} view change(s)")


@dataclass
class RejoinResult:
    seed: int
    replica_count: int
    episodes: list[Episode] = field(default_factory=list)
    stranded_ok: bool = False
    problems: list[str] = field(default_factory=list)

    def rejoin_figures(self) -> tuple[float, int] | None:
        times = [e.rejoin_ms for e in self.episodes if e.rejoin_ms is not None]
        return (statistics.median(times), max(times)) if times else None


def majority_view(cluster: SimCluster, excluded: int) -> int:
    views = Counter(r.view for i, r in enumerate(cluster.replicas) if i != excluded and i not in cluster.crashed)
    return views.most_common(1)[0][0]


def caught_up(cluster: SimCluster, replica_id: int) -> bool:
    """Same view as most others, active in it, and executed as far as any other replica."""
    replica = cluster.replicas[replica_id]
    others = [r for i, r in enumerate(cluster.replicas) if i != replica_id and i not in cluster.crashed]
    return (replica_id not in cluster.crashed and replica.view_active
            and replica.view == majority_view(cluster, replica_id)
            and replica.last_executed >= max(r.last_executed for r in others))


def rejoined(cluster: SimCluster, replica_id: int) -> bool:
    """Caught up, and voting: not a follower of a view below one it asked for (``specs/SPEC.md`` 11a)."""
    replica = cluster.replicas[replica_id]
    return caught_up(cluster, replica_id) and replica.view >= replica.vote_floor_view


class LoadDriver:
    """One client offering a request every ``LOAD_GAP_MS`` while the cluster runs; records verdict times."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.number = 0
        self.next_submit_ms = cluster.now_ms

    def run(self, duration_ms: int, loaded: bool, until=None) -> int | None:
        """Run ``duration_ms`` (stopping early once ``until()`` holds); return the ms it took, if it held."""
        start = self.cluster.now_ms
        while self.cluster.now_ms - start < duration_ms:
            if until is not None and until():
                return self.cluster.now_ms - start
            if loaded and self.cluster.now_ms >= self.next_submit_ms:
                self.cluster.submit("client-0", {"tool": "read", "n": self.number}, Risk.LOW,
                                    deadline_ms=self.cluster.now_ms + 10_000)
                self.number += 1
                self.next_submit_ms = self.cluster.now_ms + LOAD_GAP_MS
            self.cluster.run(self.cluster.tick_ms)
        return self.cluster.now_ms - start if until is not None and until() else None

    def verdict_gap_ms_max(self, since_ms: int) -> int:
        """The longest stretch since ``since_ms`` during which some request was outstanding and no verdict came:
        for each request, from when it was waiting (invoked, or the verdict before its own) to its verdict."""
        records = [r for r in self.cluster.operations.values()
                   if r.invoked_ms >= since_ms or (r.completed_ms or self.cluster.now_ms) >= since_ms]
        completions = sorted(r.completed_ms for r in records if r.completed_ms is not None and r.certificate)
        gap = 0
        for record in records:
            end = record.completed_ms if record.certificate else self.cluster.now_ms
            earlier = [c for c in completions if c < end]
            start = max(record.invoked_ms, since_ms, earlier[-1] if earlier else since_ms)
            gap = max(gap, end - start)
        return gap


def apply_fault(cluster: PausableCluster, kind: str, replica_id: int) -> None:
    others = set(range(len(cluster.replicas))) - {replica_id}
    if kind == "pause":
        cluster.pause(replica_id)
    elif kind == "kill":
        cluster.crash(replica_id)
    else:
        cluster.partition({replica_id}, others | {"client-0"})


def end_fault(cluster: PausableCluster, kind: str, replica_id: int) -> None:
    if kind == "pause":
        cluster.resume(replica_id)
    elif kind == "kill":
        cluster.restart(replica_id)
    else:
        cluster.heal()


def run_episode(cluster: PausableCluster, load: LoadDriver, kind: str, replica_id: int, loaded: bool) -> Episode:
    start_ms = cluster.now_ms
    view_before = majority_view(cluster, replica_id)
    apply_fault(cluster, kind, replica_id)
    load.run(FAULT_MS, True)  # The cluster works on without it; afterwards it is idle or still loaded.
    end_fault(cluster, kind, replica_id)
    bound = REJOIN_BOUND_LOADED_MS if loaded else REJOIN_BOUND_IDLE_MS
    took = load.run(bound, loaded, until=lambda: rejoined(cluster, replica_id))
    load.run(500, loaded)  # Let the episode's last requests finish before measuring the gaps.
    return Episode(kind, replica_id, loaded, took, load.verdict_gap_ms_max(start_ms),
                   majority_view(cluster, replica_id) - view_before)


def stranded_sequence(cluster: PausableCluster, load: LoadDriver) -> list[str]:
    """The issue's sequence: pause the primary, let the others change view, resume it, then kill another
    backup.  The three running replicas (the resumed one among them) must still finalize requests."""
    problems = []
    primary = cluster.replicas[0].primary_id
    cluster.pause(primary)
    load.run(FAULT_MS, True)
    cluster.resume(primary)
    if load.run(REJOIN_BOUND_LOADED_MS, True, until=lambda: rejoined(cluster, primary)) is None:
        problems.append(f"the resumed primary {primary} did not rejoin")
    new_primary = cluster.replicas[(primary + 1) % len(cluster.replicas)].primary_id
    victim = next(i for i in range(len(cluster.replicas)) if i not in (primary, new_primary))
    cluster.crash(victim)
    before = load.number
    load.run(8_000, True)
    finished = [r for r in cluster.operations.values() if r.request.request_number > before and r.certificate]
    if len(finished) < 10:
        problems.append(f"with replica {victim} down, only {len(finished)} requests finalized in 8 s")
    cluster.restart(victim)
    return problems


def run_rejoin_scenario(seed: int = 0, replica_count: int = 4, kinds: tuple[str, ...] = FAULT_KINDS,
                        loaded_runs: tuple[bool, ...] = (True, False)) -> RejoinResult:
    result = RejoinResult(seed, replica_count)
    cluster = PausableCluster(replica_count, seed=seed, limits=rejoin_limits(),
                              faults=NetworkFaults(delay_ms_min=1, delay_ms_max=8))
    monitor = SimMonitor(cluster, set(range(replica_count)))
    load = LoadDriver(cluster)
    load.run(1_000, True)
    for loaded in loaded_runs:
        for kind in kinds:
            for replica_id in range(replica_count):
                episode = run_episode(cluster, load, kind, replica_id, loaded)
                result.episodes.append(episode)
                if episode.rejoin_ms is None:
                    result.problems.append(f"{episode.describe()} (reproduce with seed={seed})")
                if episode.verdict_gap_ms_max > VERDICT_GAP_BOUND_MS:
                    result.problems.append(f"{episode.describe()}: verdicts stopped longer than one view change "
                                           f"({VERDICT_GAP_BOUND_MS} ms)")
        result.problems += [f"{violation}" for violation in monitor.check()]
    stranded_problems = stranded_sequence(cluster, load)
    result.stranded_ok = not stranded_problems
    result.problems += stranded_problems
    result.problems += [f"{violation}" for violation in monitor.check()]
    return result


def main_rejoin(arguments, out: TextIO) -> int:
    """``python -m harness scenario rejoin [--seed S] [--replicas N]``: 0 when every episode rejoined within its
    bound with at most one view change and the stranded-replica sequence served, else 1.  (With ``--real`` the
    command line runs ``_rejoin_real.main_rejoin_real`` instead, which builds on this module.)"""
    result = run_rejoin_scenario(arguments.seed, arguments.replicas or 4)
    print(f"rejoin scenario, simulated, seed {arguments.seed}: reproduce with python -m harness scenario rejoin "
          f"--seed {arguments.seed}", file=out)
    print_result(result, out)
    return 1 if result.problems else 0


def print_result(result: RejoinResult, out: TextIO) -> None:
    for episode in result.episodes:
        print(episode.describe(), file=out)
    figures = result.rejoin_figures()
    if figures is not None:
        print(f"time to rejoin over {len(result.episodes)} episodes: p50 {figures[0]:.0f} ms, "
              f"max {figures[1]} ms (simulated time)", file=out)
    serving = f"cluster serves with {result.replica_count - 1} of {result.replica_count}"
    print(f"stranded-replica sequence: {serving if result.stranded_ok else 'FAILED'}", file=out)
    for problem in result.problems:
        print(f"problem: {problem}", file=out)
