"""Targeted simulator schedules for the mutant hunt: deterministic runs that steer the cluster into one
protocol path the random swarm reaches rarely, then run the specification's invariant checker.

Each scenario is a plain function of nothing: it builds a cluster (a ``SimCluster``, or the golden scripts'
interaction driver; either way its replicas are built inside an active mutant), drives one schedule and
returns the invariant violations (``specs.invariants``) as short strings, plus a failure to make the
progress the schedule needs.  An exception inside the run is reported as the finding ``run raised ...``.
The ``golden:*`` scenarios replay a golden script and report any change of its output.  Nothing in a
scenario looks for a particular mutant: the unmutated core passes every one (``tests/test_mutants.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from bft.core import Bundle, Limits, PrePrepare, Risk
from bft.core._codec import record_digest
from bft.testing import SimCluster, forging_collector, lying_state_transfer
from bft.testing._interactions import Interactions, replay
from specs.invariants import SimMonitor, check_all

from ._reconfiguration import run_reconfiguration

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


# Interaction-driver commands (the golden scripts' language, tests/interactions/README.md), the story of
# tests/interactions/view_change_conflicting_certificates.txt.  n=7.  View 0: the primary r0 prepares batch A
# at seq 1 and forwards the PREPARE quorum to r6 alone; r0 and r6 are cut off.  View 1 (primary r1) forms
# without any certificate, and its new batch B for the same request prepares at r1-r5 but commits and
# executes at r1 alone, which then crashes.  View 2 (primary r2) forms from VIEW-CHANGEs holding A (view 0)
# and B (view 1): it must re-propose B, the batch that may have committed (it did, at r1).
CONFLICTING_CERTIFICATES = (
    "cluster n=7 view_change_timeout_ticks=4", "propose client=client-0 risk=low action=pay", "deliver type=REQUEST",
    "deliver type=VOTE", "drop type=PRE-PREPARE to=r1", "deliver type=PRE-PREPARE", "deliver type=PREPARE",
    "deliver type=BUNDLE to=r6", "drop type=BUNDLE", "drop type=COMMIT", "partition 0,6 | 1,2,3,4,5", "tick 5",
    "deliver type=VIEW-CHANGE", "deliver type=NEW-VIEW", "deliver type=VOTE to=r1", "deliver type=PRE-PREPARE",
    "deliver type=PREPARE", "deliver type=BUNDLE", "deliver type=COMMIT to=r1", "drop type=BUNDLE",
    "drop type=COMMIT", "drop type=STATE-REQUEST", "crash r=1", "heal", "tick 9", "deliver type=VIEW-CHANGE from=r0",
    "deliver type=VIEW-CHANGE from=r6", "stabilize",
)


def conflicting_certificates_from_two_views() -> list[str]:
    """The schedule above, then S1-S9 over every replica's store (the crashed r1 is correct, only down)."""
    driver = Interactions()
    for command in CONFLICTING_CERTIFICATES:
        driver.run(command)
    cluster = driver.cluster
    durable = {replica_id: cluster.stores[replica_id].load() for replica_id in range(cluster.replica_count)}
    violations = check_all({r: state.log for r, state in durable.items()}, cluster.config,
                           signed={r: state.signed for r, state in durable.items()})
    executed = [cluster.replicas[replica_id].last_executed for replica_id in (0, 2, 3, 4, 5, 6)]  # r1 is down.
    progress = [] if min(executed) >= 1 else [f"progress: the request did not execute everywhere ({executed})"]
    return progress + [str(violation) for violation in violations]


GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "interactions"


def golden_script(name: str) -> list[str]:
    """A golden interaction script replayed: any difference from its recorded output is a finding (the
    behaviour-diff checker of ``tests/test_interactions.py``; it sees any change, wanted or not)."""
    text = (GOLDEN_DIR / f"{name}.txt").read_text()
    return [] if replay(text) == text else [f"golden-script diff: {name}.txt differs from its recorded output"]


def _tie_winning_equivocator(victim: int):
    """As primary, sends ``victim`` another batch for each seq, one chosen to rank above the real one in the
    new view's tie-break (equal views: the larger digest), with its own PREPARE for it in place of the PREPARE
    bundle, and no COMMIT bundle: the victim holds a PREPARE from the primary and its own for a batch nobody
    else saw."""
    other_digest: dict[int, bytes] = {}

    def intercept(destination, message, signer):
        if destination != victim:
            return [message]
        if isinstance(message, PrePrepare):
            real = record_digest(message.batch)
            others = (dataclasses.replace(message.batch, timestamp_ms=message.batch.timestamp_ms + offset)
                      for offset in range(1, 64))
            batch = next(other for other in others if record_digest(other) > real)
            other_digest[message.seq] = record_digest(batch)
            return [signer.sign(dataclasses.replace(message, batch=batch))]
        if isinstance(message, Bundle) and message.prepares and message.prepares[0].seq in other_digest:
            own = next(part for part in message.prepares if part.replica_id == message.replica_id)
            lie = signer.sign(dataclasses.replace(own, batch_digest=other_digest[own.seq]))
            return [dataclasses.replace(message, prepares=(lie,))]
        return [] if isinstance(message, Bundle) and message.commits else [message]

    return intercept


def equivocating_primary_then_crash() -> list[str]:
    """Replica 0, primary of view 0, equivocates its PRE-PREPARE and PREPARE towards replica 3 for the first
    request, which the others commit and execute; then it crashes, and a second request forces view 1.  Replica
    3 holds one PREPARE too few for the other batch, so it has no prepared certificate for it, and view 1 must
    re-propose the executed batch at seq 1."""
    cluster = SimCluster(4, seed=7, interceptors={0: _tie_winning_equivocator(3)})
    monitor = SimMonitor(cluster, correct={1, 2, 3})
    first = _submit(cluster, 1, 0)
    findings = [] if cluster.run_until(lambda: _finalized(cluster, first), _RUN_MS_MAX) else \
        ["progress: the first request did not finalize"]
    cluster.crash(0)
    second = _submit(cluster, 1, 1)
    if not cluster.run_until(lambda: _finalized(cluster, second) and cluster.replicas[3].view >= 1, _RUN_MS_MAX):
        findings.append("progress: the second request did not finalize in a later view")
    cluster.run(2_000)
    return findings + [str(violation) for violation in monitor.check()]


def forging_primary(seed: int) -> list[str]:
    """Replica 0, the first primary, sends replica 3 another batch for each seq with a bundle of PREPAREs and
    COMMITs for it forged in every other replica's name (``forging_collector``); a few requests run."""
    cluster = SimCluster(4, seed=seed, interceptors={0: forging_collector([3], 4)})
    monitor = SimMonitor(cluster, correct={1, 2, 3})
    requests = _submit(cluster, 4, 0)
    findings = [] if cluster.run_until(lambda: _finalized(cluster, requests), _RUN_MS_MAX) else \
        ["progress: the requests did not finalize"]
    return findings + [str(violation) for violation in monitor.check()]


# Replica 0 is the first peer the laggard asks; the lie seed picks which lie it tells first.
SCENARIOS: dict[str, Callable[[], list[str]]] = {
    "reconfiguration": run_reconfiguration,
    "conflicting-certificates-from-two-views": conflicting_certificates_from_two_views,
    "equivocating-primary-then-crash": equivocating_primary_then_crash,
    "forging-primary": lambda: forging_primary(0),
} | {
    f"lagging-replica-fetches-from-liar-lies-{lie_seed}":
        (lambda lie_seed=lie_seed: lagging_replica_fetches_from_a_liar(0, lie_seed))
    for lie_seed in (0, 1)
} | {
    f"golden:{path.stem}": (lambda name=path.stem: golden_script(name)) for path in sorted(GOLDEN_DIR.glob("*.txt"))
}
VIEW_CHANGE_SCENARIOS = ("conflicting-certificates-from-two-views",)
PREPARE_QUORUM_SCENARIOS = ("equivocating-primary-then-crash",)
BUNDLE_SCENARIOS = ("forging-primary",)
STATE_TRANSFER_SCENARIOS = tuple(name for name in SCENARIOS if name.startswith("lagging-replica"))
GOLDEN_NORMAL_CASE = ("golden:normal_low",)
GOLDEN_VIEW_CHANGE = ("golden:view_change_conflicting_certificates",)
RECONFIGURATION_SCENARIOS = ("reconfiguration",)


def run_scenario(name: str) -> list[str]:
    """The findings of scenario ``name``: invariant violations, missing progress, or the exception it raised."""
    try:
        return SCENARIOS[name]()
    except Exception as error:  # A core assertion under a mutant is a finding, reported, never swallowed silently.
        cause = error.__context__  # A bounds check failing on the way out hides the assertion that fired first.
        return [f"run raised {type(error).__name__}: {error}"
                + (f" (while handling {type(cause).__name__}: {cause})" if cause is not None else "")]
