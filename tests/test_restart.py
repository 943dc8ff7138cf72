"""Proves a replica restarted from its durable store never contradicts what it signed (S7) and loses
no finalized verdict, that the rest of the cluster keeps serving meanwhile, and that when every
replica restarts every verdict survives and a retried request is not executed twice."""

from __future__ import annotations

import pytest

from bft.core import Limits, Replica, Risk
from bft.testing import NetworkFaults, SimCluster
from specs.invariants import SimMonitor


def submit_many(cluster: SimCluster, count: int, start: int = 0) -> list:
    return [cluster.submit("client-0", {"tool": "read", "n": start + i}, Risk.LOW) for i in range(count)]


def finalized_all(cluster: SimCluster, requests: list) -> bool:
    return all(cluster.operations[r.key].certificate for r in requests)


@pytest.mark.parametrize("seed", range(12))
def test_backup_killed_at_any_point_restarts_without_contradicting_itself(seed: int) -> None:
    cluster = SimCluster(4, seed=seed, limits=Limits(checkpoint_interval=4, log_window=16),
                         faults=NetworkFaults(delay_ms_min=1, delay_ms_max=25))
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    victim = 1 + seed % 3
    requests = submit_many(cluster, 10)
    cluster.run(cluster.random.randint(1, 80))  # The kill lands between persist, send and execute.
    cluster.crash(victim)
    before = list(cluster.stores[victim].log)
    requests += submit_many(cluster, 5, start=100)
    cluster.run(500)
    cluster.restart(victim)
    assert cluster.finalized[victim][:len(before)] == before, "a finalized verdict was lost in the restart"
    requests += submit_many(cluster, 5, start=200)
    assert cluster.run_until(lambda: finalized_all(cluster, requests), 30_000)
    monitor.assert_ok()


def test_every_replica_restarts_with_verdicts_intact_and_no_double_execution() -> None:
    cluster = SimCluster(4, seed=3)
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    first = submit_many(cluster, 8)
    assert cluster.run_until(lambda: finalized_all(cluster, first), 10_000)
    cluster.run(200)
    logs_before = [list(store.log) for store in cluster.stores]
    for replica_id in range(4):
        cluster.crash(replica_id)
    for replica_id in range(4):
        cluster.restart(replica_id)
    assert [list(store.log) for store in cluster.stores] == logs_before
    assert all(replica.execution.head_hash == logs_before[0][-1].entry_hash for replica in cluster.replicas)
    assert all(replica.recovering for replica in cluster.replicas), "no stable checkpoint covers their slots yet"
    cluster.resend(first[0])  # A retry after the restart must not execute a second time.
    cluster.run(2_000)
    assert all(sum(1 for e in store.log if e.key == first[0].key) == 1 for store in cluster.stores)
    monitor.assert_ok()


def test_recovered_replica_refuses_to_sign_a_different_digest_for_a_slot_it_signed() -> None:
    cluster = SimCluster(4, seed=1)
    submit_many(cluster, 3)
    cluster.run(15)
    store = cluster.stores[2]
    recovered = Replica.recover(cluster.config, 2, cluster.replica_seeds[2], store.signed, store.log)
    signed_slots = {key for key in recovered.signed_digests}
    assert signed_slots, "the replica had signed prepares before the crash"
    phase, view, seq = next(iter(signed_slots))
    recovered.view = view
    assert recovered._may_sign(phase, seq, recovered.signed_digests[(phase, view, seq)])
    assert not recovered._may_sign(phase, seq, b"\x01" * 32)


def test_a_restarted_replica_resends_its_stored_vote_even_if_its_policy_changed_its_mind() -> None:
    from bft.core import Decision, Vote, request_digest
    from bft.testing import DenyEverything
    cluster = SimCluster(4, seed=2)
    request = cluster.submit("client-0", {"tool": "read", "n": 1}, Risk.LOW)
    cluster.crash(0)  # The primary is gone, so the request stays pending at replica 3.
    cluster.run(30)
    digest = request_digest(cluster.config.cluster_id, request)
    stored = [m for m in cluster.stores[3].signed if isinstance(m, Vote) and m.request_digest == digest]
    assert stored and stored[0].decision is Decision.ALLOW
    cluster.crash(3)
    cluster.restart(3)
    cluster.policies[3] = DenyEverything()
    cluster.resend(request)
    cluster.run(30)
    votes = [m for m in cluster.stores[3].signed if isinstance(m, Vote) and m.request_digest == digest]
    assert votes == stored, "a restarted replica signed a second, different vote on the same request"
