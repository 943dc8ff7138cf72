"""Proves memory stays bounded over a long deterministic run of the real core: after every wave of requests,
every per-replica structure (slots, pending pool, checkpoints and their states, signing guard, prepared
proofs, early pre-prepares, recovered votes, client tables, state-transfer buffers) and every replica's
store of signed messages is under a bound computed from the configured limits, while the verdict log (the
audit trail, on purpose) keeps growing; votes on requests that expired unordered are pruned.

The suite runs ``BFT_LONG_RUN_REQUESTS`` requests (default 600, a few seconds); set it to 100000 for the long
run (see ``run_long``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from bft.core import Limits, Replica, Risk, Vote
from bft.storage import MemoryStore
from bft.storage._pruning import DEAD_VOTES_BATCH
from bft.testing import NetworkFaults, SimCluster
from specs.invariants import check_agreement, check_integrity, check_log_prefixes

REQUESTS = int(os.environ.get("BFT_LONG_RUN_REQUESTS", "600"))
CLIENTS = ("client-0", "client-1", "client-2")
# Small bounds, so a short run still cycles the window hundreds of times.
LIMITS = Limits(max_batch_requests=4, max_in_flight_batches=2, log_window=8, checkpoint_interval=4,
                max_pending_requests=64, client_window=8, orphan_vote_ticks=20, max_clock_skew_ms=50)
WAVE = 12  # Requests per wave: one per client per round, plus one that reaches too few replicas to be ordered.


@dataclass(frozen=True)
class Bounds:
    """What each structure may hold at most, derived from the configured limits alone."""

    slots: int
    checkpoint_seqs: int
    signed_digests: int
    signed_messages: int

    @staticmethod
    def of(limits: Limits, replica_count: int, quorum: int) -> "Bounds":
        window_seqs = limits.log_window + limits.checkpoint_interval  # Stores prune at the stable checkpoint.
        per_seq = 3 + quorum  # Own pre-prepare, prepare, commit; the others' half of the prepared proof.
        checkpoints = (limits.log_window // limits.checkpoint_interval + 1) * replica_count
        votes = (2 * limits.max_pending_requests + DEAD_VOTES_BATCH  # Live, recovered, dead awaiting pruning.
                 + window_seqs * limits.max_batch_requests)  # Executed above the stable checkpoint.
        return Bounds(slots=limits.log_window, checkpoint_seqs=limits.log_window // limits.checkpoint_interval,
                      signed_digests=3 * limits.log_window,
                      signed_messages=window_seqs * per_seq + checkpoints + votes + 2 * replica_count)


def assert_bounded(replica: Replica, store: MemoryStore, bounds: Bounds, limits: Limits, client_count: int) -> dict:
    """Every bounded structure of one replica, checked; returns the sizes for the report."""
    sizes = {
        "slots": len(replica.slots), "pending": len(replica.pending), "checkpoint seqs": len(replica.checkpoints),
        "checkpoint states": len(replica.checkpoint_states), "signed digests": len(replica.signed_digests),
        "prepared proofs": len(replica.prepared_proofs), "early pre-prepares": len(replica.early_preprepares),
        "recovered votes": len(replica.recovered_votes), "clients": len(replica.execution.clients),
        "client replies": max((len(r.replies) for r in replica.execution.clients.values()), default=0),
        "stored signed": len(store.signed),
    }
    assert sizes["slots"] <= bounds.slots and sizes["prepared proofs"] <= bounds.slots
    assert sizes["early pre-prepares"] <= bounds.slots
    assert sizes["pending"] <= limits.max_pending_requests
    assert sizes["checkpoint seqs"] <= bounds.checkpoint_seqs and sizes["checkpoint states"] <= bounds.checkpoint_seqs
    assert all(len(by_replica) <= len(replica.config.replica_keys) for by_replica in replica.checkpoints.values())
    assert sizes["signed digests"] <= bounds.signed_digests
    assert sizes["recovered votes"] <= limits.max_pending_requests
    assert sizes["clients"] <= client_count and sizes["client replies"] <= limits.client_window
    assert len(replica.view_change_by_replica) <= replica.config.replica_count
    assert replica.transfer is None or replica.transfer.buffered <= limits.state_transfer_entries_max
    assert sizes["stored signed"] <= bounds.signed_messages, (sizes, bounds)
    return sizes


def run_long(request_count: int, seed: int = 0) -> dict:
    """Run ``request_count`` requests through a 4-replica cluster, checking every bound after each wave.

    The 100,000-request run: ``BFT_LONG_RUN_REQUESTS=100000 .venv/bin/python -m pytest
    tests/test_bounded_memory.py -q``.  Returns the largest size seen per structure, the number of
    requests finalized and the log length.
    """
    cluster = SimCluster(4, seed=seed, client_ids=CLIENTS, limits=LIMITS, prune_stores=True, record_history=False,
                         faults=NetworkFaults(delay_ms_min=1, delay_ms_max=3))
    bounds = Bounds.of(LIMITS, 4, cluster.config.quorum)
    largest: dict[str, int] = {}
    submitted = unordered = 0
    while submitted < request_count:
        for round_number in range(WAVE // (len(CLIENTS) + 1)):
            for client_id in CLIENTS:
                cluster.submit(client_id, {"tool": "read", "n": submitted}, Risk.LOW)
                submitted += 1
            # Reaches two replicas only: they vote, no quorum ever forms, and the request expires unordered.
            cluster.submit(CLIENTS[round_number % len(CLIENTS)], {"tool": "lost", "n": submitted}, Risk.LOW,
                           deadline_ms=cluster.now_ms + 30, to=(2, 3))
            unordered += 1
        for tick in range(500):  # Checked while the wave is in flight, not only once it settled.
            if not cluster.operations:
                break
            cluster.run(cluster.tick_ms)
            if tick % 3 == 0:
                for replica, store in zip(cluster.replicas, cluster.stores):
                    for name, size in assert_bounded(replica, store, bounds, LIMITS, len(CLIENTS)).items():
                        largest[name] = max(largest.get(name, 0), size)
        assert not cluster.operations, "a wave did not finish"
    cluster.run(500)  # Quiet: the last batches execute everywhere.
    logs = {replica_id: store.log for replica_id, store in enumerate(cluster.stores)}
    assert not check_agreement(logs) and not check_integrity(logs) and not check_log_prefixes(logs)
    votes_left = [sum(1 for m in store.signed if isinstance(m, Vote)) for store in cluster.stores]
    return {"largest": largest, "bounds": bounds, "log length": len(logs[0]), "unordered": unordered,
            "votes left": votes_left, "low water": min(replica.low_water for replica in cluster.replicas)}


@pytest.mark.slow
def test_every_structure_stays_bounded_over_a_long_run() -> None:
    report = run_long(REQUESTS)
    assert report["log length"] >= REQUESTS, "every ordinary request was finalized and logged"
    largest, bounds = report["largest"], report["bounds"]
    batches_min = REQUESTS // LIMITS.max_batch_requests
    assert largest["slots"] > 0 and report["low water"] >= batches_min - LIMITS.log_window, \
        "the run really moved the window forward, many times over"
    assert largest["stored signed"] <= bounds.signed_messages
    assert max(report["votes left"]) < report["unordered"], "votes on requests that expired unordered were pruned"


def test_a_vote_on_a_request_that_expires_unordered_is_pruned_from_the_store() -> None:
    cluster = SimCluster(4, seed=1, limits=LIMITS, prune_stores=True)
    requests = [cluster.submit("client-0", {"tool": "lost", "n": n}, Risk.LOW, deadline_ms=cluster.now_ms + 30,
                               to=(2, 3)) for n in range(DEAD_VOTES_BATCH)]  # One pruning batch; the pool holds them all.
    cluster.run(20)
    assert all(sum(isinstance(m, Vote) for m in cluster.stores[r].signed) == len(requests) for r in (2, 3))
    cluster.run(LIMITS.max_clock_skew_ms + 200)  # Past every deadline plus the skew: the pool drops them.
    assert all(cluster.operations[r.key].refused for r in requests)
    assert not any(isinstance(m, Vote) for r in (2, 3) for m in cluster.stores[r].signed)
