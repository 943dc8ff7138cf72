"""Proves the pending pool's deadline index and the split of the replica's invariant check: expiry returns
the entries whose deadline passed (and the orphans that waited too long) in arrival order and never one that
left the pool; the per-input bound check notices a lost index entry; the full check, which the simulator
runs after every input, notices an index that disagrees with the entries."""

from __future__ import annotations

import pytest

from bft.core._pending import PendingPool
from bft.testing import SimCluster

SKEW_MS = 50
ORPHAN_TICKS = 10


def pool_with_requests(kit, deadlines_ms: list[int]) -> tuple[PendingPool, list]:
    pool = PendingPool(capacity=16, orphans_per_replica_max=4)
    entries = []
    for number, deadline_ms in enumerate(deadlines_ms, start=1):
        request = kit.request(number=number, deadline_ms=deadline_ms)
        entry = pool.get_or_create(kit.digest(request), tick=0)
        pool.attach_request(entry, request)
        entries.append(entry)
    pool.check_invariants()
    return pool, entries


def test_expiry_takes_passed_deadlines_in_arrival_order_and_skips_entries_that_left(kit) -> None:
    pool, entries = pool_with_requests(kit, [5_000, 1_000, 3_000, 1_000, 9_000])
    pool.discard(entries[2].digest)  # Executed: it must not come back as expired.
    expired = pool.expire(now_ms=3_000 + SKEW_MS + 1, skew_ms=SKEW_MS, tick=1, orphan_ticks=ORPHAN_TICKS)
    assert expired == [entries[1], entries[3]]
    assert [entry.digest for entry in pool] == [entries[0].digest, entries[4].digest]
    pool.check_invariants()
    assert pool.expire(now_ms=1_000 + SKEW_MS, skew_ms=SKEW_MS, tick=2, orphan_ticks=ORPHAN_TICKS) == []


def test_orphans_and_passed_deadlines_expire_together_in_arrival_order(kit) -> None:
    pool, entries = pool_with_requests(kit, [2_000])
    orphan = pool.get_or_create_orphan(bytes(32), tick=1, voter=3)  # A vote whose request never came.
    pool.check_invariants()
    expired = pool.expire(now_ms=2_000 + SKEW_MS + 1, skew_ms=SKEW_MS, tick=1 + ORPHAN_TICKS + 1,
                          orphan_ticks=ORPHAN_TICKS)
    assert expired == [entries[0], orphan]
    assert len(pool) == 0
    pool.check_invariants()


def test_the_bound_check_notices_a_lost_index_entry(kit) -> None:
    pool, entries = pool_with_requests(kit, [5_000, 6_000])
    del pool._deadlines[(5_000, entries[0].serial)]
    with pytest.raises(AssertionError):
        pool.check_bounds()


def test_the_full_check_notices_an_index_that_disagrees_with_the_entries(kit) -> None:
    pool, entries = pool_with_requests(kit, [5_000, 6_000])
    pool._deadlines[(5_000, entries[0].serial)] = entries[1]  # Sizes still agree; contents do not.
    pool.check_bounds()
    with pytest.raises(AssertionError):
        pool.check_invariants()


def corrupted_cluster(full_invariant_checks: bool) -> SimCluster:
    """A cluster whose replica 2 holds two requests no one else saw, with its deadline index swapped."""
    cluster = SimCluster(4, seed=1, full_invariant_checks=full_invariant_checks)
    for number in range(2):
        cluster.submit("client-0", {"tool": "read_file", "n": number}, to={2})
    cluster.run(10)
    pool = cluster.replicas[2].pending
    assert len(pool) == 2
    (first_key, first), (second_key, second) = pool._deadlines.items()
    pool._deadlines[first_key], pool._deadlines[second_key] = second, first
    cluster.replicas[2]._check_bounds()  # The sizes still agree: the per-input check cannot see it.
    return cluster


def test_the_simulator_runs_the_full_check_after_every_input() -> None:
    with pytest.raises(AssertionError):
        corrupted_cluster(full_invariant_checks=True).run(10)
    corrupted_cluster(full_invariant_checks=False).run(10)  # What the core alone checks lets it pass.
