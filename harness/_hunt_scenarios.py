"""Targeted simulator schedules for the mutant hunt: deterministic runs that steer the cluster into one
protocol path the random swarm reaches rarely, then run the specification's invariant checker.

Each scenario is a plain function of nothing: it builds a ``SimCluster`` (so replicas are built inside an
active mutant), drives one schedule and returns the invariant violations (``specs.invariants``) as short
strings, plus a failure to make the progress the schedule needs (a stalled fetch is a finding too).  An
exception inside the run is reported as the finding ``run raised ...``.  Nothing in a scenario looks for a
particular mutant: the unmutated core passes every one of them (``tests/test_mutants.py`` checks).
"""

from __future__ import annotations

from typing import Callable

from bft.core import Limits, Risk
from bft.testing import SimCluster, lying_state_transfer
from specs.invariants import SimMonitor

# Tiny windows so a short partition leaves a replica several stable checkpoints behind.
_TRANSFER_LIMITS = Limits(max_batch_requests=2, max_in_flight_batches=3, log_window=4, checkpoint_interval=2,
                          state_transfer_chunk_entries=3, state_transfer_wait_ticks=3, state_transfer_retry_ticks=10)
_LAGGARD = 3
_RUN_MS_MAX = 20_000


def _submit(cluster: SimCluster, count: int, start: int) -> list:
    return [cluster.submit("client-0", {"tool": "read", "n": start + i}, Risk.LOW) for i in range(count)]


def _finalized(cluster: SimCluster, requests: list) -> bool:
    return all(cluster.operations[request.key].certificate for request in requests)


def lagging_replica_fetches_from_a_liar(liar: int, lie_seed: int) -> list[str]:
    """Replica 3 is partitioned away while the others move several checkpoints on; after healing it fetches
    the state from replica ``liar``, which answers with a snapshot or log chunk it altered (``lying_state_
    transfer``, whose ``lie_seed`` picks the lies).  The laggard must refuse the lie and adopt the certified
    state from an honest peer."""
    cluster = SimCluster(4, seed=liar, limits=_TRANSFER_LIMITS, prune_stores=True,
                         interceptors={liar: lying_state_transfer(seed=lie_seed)})
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3} - {liar})
    findings = []
    cluster.partition({_LAGGARD}, {0, 1, 2})
    away = _submit(cluster, 24, 0)
    if not cluster.run_until(lambda: _finalized(cluster, away), _RUN_MS_MAX):
        findings.append("progress: the majority did not finalize while the laggard was away")
    cluster.heal()
    laggard, back = cluster.replicas[_LAGGARD], _submit(cluster, 4, 1_000)
    if not cluster.run_until(lambda: _finalized(cluster, back) and laggard.transfer_counts["adopted"] >= 1,
                             _RUN_MS_MAX):
        findings.append(f"progress: the laggard adopted no state ({dict(laggard.transfer_counts)})")
    return findings + [str(violation) for violation in monitor.check()]


# Replica 0 is the first peer the laggard asks; lie seeds 0 and 1 start with a forged log chunk and with an
# altered snapshot under its honest proof.
SCENARIOS: dict[str, Callable[[], list[str]]] = {
    f"lagging-replica-fetches-from-liar-lies-{lie_seed}":
        (lambda lie_seed=lie_seed: lagging_replica_fetches_from_a_liar(0, lie_seed))
    for lie_seed in (0, 1)
}


def run_scenario(name: str) -> list[str]:
    """The findings of scenario ``name``: invariant violations, missing progress, or the exception it raised."""
    try:
        return SCENARIOS[name]()
    except Exception as error:  # A core assertion under a mutant is a finding, reported, never swallowed silently.
        cause = error.__context__  # A bounds check failing on the way out hides the assertion that fired first.
        return [f"run raised {type(error).__name__}: {error}"
                + (f" (while handling {type(cause).__name__}: {cause})" if cause is not None else "")]
