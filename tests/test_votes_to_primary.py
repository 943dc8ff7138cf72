"""Votes go to the primary alone, and liveness survives it: a backup times a primary that withholds a request it voted on, and a new primary receives the votes the old one took with it (SPEC.md section 11a)."""

from __future__ import annotations

import pytest

from bft.core import PrePrepare, Vote
from bft.testing import SimCluster
from specs.invariants import SimMonitor


def drop_preprepares_keep_the_rest():
    """A primary that takes votes and takes part in everything, but never proposes."""
    def intercept(destination, message, signer):
        return [] if isinstance(message, PrePrepare) else [message]
    return intercept


def recording(source: int, votes: list[tuple[int, object]]):
    """Passes everything on unchanged and notes who each vote went to."""
    def intercept(destination, message, signer):
        if isinstance(message, Vote):
            votes.append((source, destination))
        return [message]
    return intercept


@pytest.mark.parametrize("seed", range(3))
def test_a_primary_that_withholds_every_proposal_is_replaced_by_backups_timing_their_own_votes(seed: int) -> None:
    cluster = SimCluster(4, seed=seed, interceptors={0: drop_preprepares_keep_the_rest()})
    monitor = SimMonitor(cluster, correct={1, 2, 3})
    requests = [cluster.submit("client-0", {"tool": "read", "n": i}) for i in range(4)]
    assert cluster.run_until(lambda: all(cluster.operations[r.key].certificate for r in requests), 30_000), \
        f"not finalized: views={[r.view for r in cluster.replicas]}"
    assert all(replica.view >= 1 for replica in cluster.replicas[1:])
    monitor.assert_ok()


@pytest.mark.parametrize("seed", range(3))
def test_votes_reach_the_new_primary_when_the_old_one_crashes_holding_them(seed: int) -> None:
    cluster = SimCluster(4, seed=seed)
    monitor = SimMonitor(cluster, correct={1, 2, 3})
    # The primary crashes before anything is proposed: every backup's vote went to it alone.
    cluster.crash(0)
    requests = [cluster.submit("client-0", {"tool": "read", "n": i}) for i in range(3)]
    assert cluster.run_until(lambda: all(cluster.operations[r.key].certificate for r in requests), 30_000), \
        f"not finalized: views={[r.view for r in cluster.replicas]}"
    assert {replica.view for replica in cluster.replicas[1:]} == {1}, "one view change was enough"
    monitor.assert_ok()


def test_in_the_normal_case_every_vote_goes_to_the_primary_and_nowhere_else() -> None:
    sent: list[tuple[int, object]] = []
    cluster = SimCluster(4, seed=0, interceptors={i: recording(i, sent) for i in range(4)})
    request = cluster.submit("client-0", {"tool": "read", "n": 1})
    assert cluster.run_until(lambda: cluster.operations[request.key].certificate is not None, 10_000)
    assert sent and all(destination == 0 for _, destination in sent)
    assert sorted(source for source, _ in sent) == [1, 2, 3]
