"""CPU per verdict of the sans-IO core, measured in the deterministic simulator.

The simulator drives the real core and the real codec (every message is
encoded on send and decoded on delivery) in one thread, from one seed, so the
CPU time it spends per certified verdict is a fair, repeatable measure of what
the core and codec cost, even on a machine busy with other work: rerun it a
few minutes apart and compare medians.  Policies are ``AllowAll`` so policy
work is not counted; everything else a verdict needs (signing, verifying,
digests, coding, the protocol itself, the client's certificate check) is.
The simulator's full invariant check after every input is off, as in
production (``--full-checks`` turns it on, as the tests run).

    python -m bench._core_cost                      # n = 4 and n = 7, 3 repeats each, medians
    python -m bench._core_cost --profile            # also the top functions by self and inclusive time
    python -m bench._core_cost --fingerprint        # a hash of every message sent and every log head,
                                                    # clean and under faults: must not change with a speed-up
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import statistics
import time
from dataclasses import dataclass

from bft.core import encode
from bft.testing import NetworkFaults, SimCluster

from ._workload import action_for, risk_for

CLIENTS = 8
RUN_LIMIT_MS = 600_000  # Simulated time; a run that needs more has stalled.


@dataclass(frozen=True, slots=True)
class Workload:
    replica_count: int
    request_count: int
    clients: int = CLIENTS
    seed: int = 1
    faulty: bool = False  # Drops, duplicates, and a crashed and restarted primary (a view change).
    full_checks: bool = False  # Each replica's full ``check_invariants`` after every input, as tests run.


class _RecordingCluster(SimCluster):
    """A simulator that hashes every message it puts on the wire, in order."""

    def __init__(self, *arguments, **options) -> None:
        self.sent_hash = hashlib.sha256()
        self.sent_count = 0
        super().__init__(*arguments, **options)

    def _send_one(self, source, destination, message) -> None:
        self.sent_hash.update(repr((self.now_ms, source, destination)).encode() + encode(message))
        self.sent_count += 1
        super()._send_one(source, destination, message)


def build_cluster(workload: Workload, recording: bool = False) -> SimCluster:
    faults = NetworkFaults(drop_probability=0.05, duplicate_probability=0.05) if workload.faulty else None
    cluster_type = _RecordingCluster if recording else SimCluster
    return cluster_type(workload.replica_count, seed=workload.seed, faults=faults,
                        client_ids=tuple(f"client-{i}" for i in range(workload.clients)),
                        full_invariant_checks=workload.full_checks)


def drive(cluster: SimCluster, workload: Workload) -> int:
    """Closed loop: each client keeps one request outstanding until ``request_count`` were submitted.
    Returns the number of certified verdicts."""
    submitted, outstanding = 0, {}
    crash_at, restart_at = workload.request_count // 3, workload.request_count // 2
    end_ms = cluster.now_ms + RUN_LIMIT_MS
    while cluster.now_ms < end_ms:
        for client_id in sorted(cluster.clients):
            request = outstanding.get(client_id)
            if request is not None and not (cluster.operations[request.key].certificate
                                            or cluster.operations[request.key].refused):
                continue
            if submitted == workload.request_count:
                outstanding.pop(client_id, None)
                continue
            risk = risk_for(submitted)
            outstanding[client_id] = cluster.submit(client_id, action_for(risk, submitted), risk)
            submitted += 1
        if workload.faulty and submitted == crash_at and not cluster.crashed:
            cluster.crash(cluster.replicas[0].primary_id)
        if workload.faulty and submitted == restart_at and cluster.crashed:
            cluster.restart(min(cluster.crashed))
        if not outstanding:
            break
        cluster.run(cluster.tick_ms)
    return sum(1 for record in cluster.operations.values() if record.certificate is not None)


def measure(workload: Workload) -> tuple[float, int]:
    """(CPU seconds, certified verdicts) of one run, cluster set-up excluded."""
    cluster = build_cluster(workload)
    started = time.process_time()
    verdicts = drive(cluster, workload)
    return time.process_time() - started, verdicts


def fingerprint(workload: Workload) -> str:
    """Hash of the messages sent (time, endpoints, bytes) and of each replica's verdict-log head."""
    cluster = build_cluster(workload, recording=True)
    verdicts = drive(cluster, workload)
    heads = b"".join(replica.execution.head_hash for replica in cluster.replicas)
    outcome = hashlib.sha256(cluster.sent_hash.digest() + heads + str(verdicts).encode()).hexdigest()[:16]
    return f"{outcome} ({cluster.sent_count} messages, {verdicts} verdicts)"


def profile(workload: Workload, top: int) -> None:
    cluster = build_cluster(workload)
    profiler = cProfile.Profile()
    profiler.enable()
    drive(cluster, workload)
    profiler.disable()
    for order in ("tottime", "cumulative"):
        print(f"--- n={workload.replica_count}, top {top} by {order}")
        pstats.Stats(profiler).sort_stats(order).print_stats(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._core_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[4, 7])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--fingerprint", action="store_true")
    parser.add_argument("--full-checks", action="store_true")
    arguments = parser.parse_args(argv)
    for replica_count in arguments.replicas:
        workload = Workload(replica_count, arguments.requests, full_checks=arguments.full_checks)
        if arguments.fingerprint:
            for seed in (1, 2):
                for faulty in (False, True):
                    shape = Workload(replica_count, arguments.requests, seed=seed, faulty=faulty, full_checks=True)
                    print(f"n={replica_count} seed={seed} faulty={faulty}: {fingerprint(shape)}")
            continue
        runs = [measure(workload) for _ in range(arguments.repeats)]
        per_verdict_ms = [1000 * cpu / verdicts for cpu, verdicts in runs]
        print(f"n={replica_count}: {runs[0][1]} verdicts, CPU per verdict ms: median "
              f"{statistics.median(per_verdict_ms):.2f}, min {min(per_verdict_ms):.2f} "
              f"(runs {', '.join(f'{v:.2f}' for v in per_verdict_ms)})")
        if arguments.profile:
            profile(workload, arguments.top)


if __name__ == "__main__":
    main()
