"""Proves restarts from durable storage (real SQLite files where it matters) lose and change nothing: a
replica killed at any point, right after a persist and before the rest was sent, or once its forwards and
replies left ahead of the disk and before its store wrote anything, restarts without
contradicting what it signed (S7), keeps every finalized verdict and catches up; when every replica is
killed with work in flight, the prepared proofs they persisted let the restarted cluster re-propose the
in-flight batches by itself, no finalized verdict is lost or changed, every in-flight request finalizes,
and a retried request is answered again without executing twice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bft.core import Commit, Decision, Limits, LogEntry, Ready, Replica, Reply, Risk, Vote, request_digest
from bft.storage import SqliteStore
from bft.testing import DenyEverything, NetworkFaults, SimCluster
from specs.invariants import SimMonitor

pytestmark = pytest.mark.slow  # crash-restart scenarios over SQLite files: make test runs it, make test-fast does not

SMALL = Limits(checkpoint_interval=4, log_window=16, state_transfer_wait_ticks=3)


def submit_many(cluster: SimCluster, count: int, start: int = 0) -> list:
    return [cluster.submit("client-0", {"tool": "read", "n": start + i}, Risk.LOW) for i in range(count)]


def finalized_all(cluster: SimCluster, requests: list) -> bool:
    return all(cluster.operations[r.key].certificate for r in requests)


def sqlite_cluster(tmp_path: Path, seed: int, **options) -> SimCluster:
    return SimCluster(4, seed=seed, store_factory=lambda replica_id: SqliteStore(tmp_path / f"replica-{replica_id}.db"),
                      **options)


def durable_logs(cluster: SimCluster) -> list[tuple]:
    return [store.load().log for store in cluster.stores]


def assert_prefix(before: tuple, after: tuple, replica_id: int) -> None:
    assert after[:len(before)] == before, f"replica {replica_id} lost or changed a finalized verdict in a restart"


@pytest.mark.parametrize("seed", range(8))
def test_backup_killed_at_any_point_restarts_without_contradicting_itself(seed: int) -> None:
    cluster = SimCluster(4, seed=seed, limits=SMALL, faults=NetworkFaults(delay_ms_min=1, delay_ms_max=25))
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    victim = 1 + seed % 3
    requests = submit_many(cluster, 10)
    cluster.run(cluster.random.randint(1, 80))  # The kill lands between persist, send and execute.
    cluster.crash(victim)
    before = cluster.stores[victim].load().log
    requests += submit_many(cluster, 5, start=100)
    cluster.run(500)
    cluster.restart(victim)
    assert cluster.finalized[victim][:len(before)] == list(before), "a finalized verdict was lost in the restart"
    requests += submit_many(cluster, 5, start=200)
    assert cluster.run_until(lambda: finalized_all(cluster, requests), 30_000)
    monitor.assert_ok()


# Where an armed crash strikes inside an output: after its store write (before the guarded sends), or
# before it (once the forwards and replies left ahead of the disk).
CRASH_POINTS = ("arm_crash_after_persist", "arm_crash_before_persist")


@pytest.mark.parametrize("crash_point", CRASH_POINTS)
@pytest.mark.parametrize("seed", range(4))
def test_a_replica_killed_around_its_store_write_recovers_from_its_sqlite_file(
        tmp_path: Path, seed: int, crash_point: str) -> None:
    cluster = sqlite_cluster(tmp_path, seed, limits=SMALL, prune_stores=True)
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    victim = seed % 4  # The primary too.
    getattr(cluster, crash_point)(victim, outputs_to_skip=cluster.random.randint(0, 15))
    requests = submit_many(cluster, 8)
    assert cluster.run_until(lambda: victim in cluster.crashed, 5_000), "the victim never persisted anything"
    before = cluster.stores[victim].load().log
    cluster.run(300)
    cluster.restart(victim)
    assert_prefix(before, cluster.stores[victim].load().log, victim)
    for round_number in range(4):  # Enough checkpoints for the victim to catch up by execution or transfer.
        more = submit_many(cluster, SMALL.checkpoint_interval, start=100 * (round_number + 1))
        assert cluster.run_until(lambda: finalized_all(cluster, more), 30_000)
        requests += more
    assert finalized_all(cluster, requests)
    restarted = cluster.replicas[victim]
    others = [r.last_executed for i, r in enumerate(cluster.replicas) if i != victim]
    assert cluster.run_until(lambda: restarted.last_executed >= min(others) - SMALL.checkpoint_interval, 5_000), \
        "the restarted replica did not catch up with the cluster"
    monitor.assert_ok()
    for store in cluster.stores:
        store.close()


def hold_commits(cluster: SimCluster) -> None:
    """Every replica prepares but no COMMIT is delivered: every slot stays prepared, nothing commits."""
    for replica_id in range(len(cluster.replicas)):
        cluster.interceptors[replica_id] = \
            lambda destination, message, signer: [] if isinstance(message, Commit) else [message]


def test_a_whole_cluster_restart_finalizes_batches_that_were_prepared_but_not_committed(tmp_path: Path) -> None:
    # One request per batch, so all three are proposed at once and all three slots prepare: a request still
    # waiting in the primary's pool at the crash lives in no store, and only its client's retry brings it back.
    cluster = sqlite_cluster(tmp_path, seed=11, limits=dataclasses.replace(SMALL, max_batch_requests=1))
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    hold_commits(cluster)
    requests = submit_many(cluster, 3)
    assert cluster.run_until(lambda: all(any(s.prepared for s in r.slots.values()) for r in cluster.replicas), 5_000)
    cluster.run(50)
    assert not any(cluster.operations[r.key].certificate for r in requests)
    proofs_before = [dict(replica.prepared_proofs) for replica in cluster.replicas]
    assert all(proofs_before), "every replica holds prepared proofs that nobody committed"
    for replica_id in range(4):
        cluster.crash(replica_id)
    cluster.interceptors.clear()
    for replica_id in range(4):
        cluster.restart(replica_id)
    assert [dict(replica.prepared_proofs) for replica in cluster.replicas] == proofs_before, \
        "the prepared proofs were rebuilt exactly from the SQLite files"
    # No client retries: the restarted replicas see unexecuted prepared proofs and change view by themselves.
    assert cluster.run_until(lambda: finalized_all(cluster, requests), 30_000)
    assert all(replica.view >= 1 for replica in cluster.replicas)
    monitor.assert_ok()
    for store in cluster.stores:
        store.close()


@pytest.mark.parametrize("crash_point", CRASH_POINTS)
@pytest.mark.parametrize("seed", range(4))
def test_killing_every_replica_mid_flight_loses_no_verdict_and_in_flight_requests_finalize(
        tmp_path: Path, seed: int, crash_point: str) -> None:
    """With ``arm_crash_before_persist`` clients may hold certificates for verdicts no store wrote yet: the
    restarted cluster must finalize exactly those verdicts again (S3, S4 against the certificates)."""
    cluster = sqlite_cluster(tmp_path, seed, limits=SMALL, faults=NetworkFaults(delay_ms_min=1, delay_ms_max=15))
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    requests: list = []
    kill_wave = cluster.random.randint(2, 8)
    for wave in range(10):  # A steady trickle of requests, so the kill finds every phase under way.
        if wave == kill_wave:
            for replica_id in range(4):  # Each dies inside one of its next persisting outputs.
                getattr(cluster, crash_point)(replica_id, outputs_to_skip=cluster.random.randint(0, 4))
        requests += submit_many(cluster, 2, start=10 * wave)
        cluster.run(15)
    cluster.run_until(lambda: len(cluster.crashed) == 4, 2_000)
    for replica_id in set(range(4)) - cluster.crashed:
        cluster.crash(replica_id)  # Idle by now: killed outright.
    before = durable_logs(cluster)
    in_flight = [r for r in requests if not cluster.operations[r.key].certificate]
    for replica_id in range(4):
        cluster.restart(replica_id)
    for replica_id, log in enumerate(durable_logs(cluster)):
        assert_prefix(before[replica_id], log, replica_id)
    for request in in_flight:
        cluster.resend(request)  # Clients retry what they have no certificate for.
    assert cluster.run_until(lambda: finalized_all(cluster, requests), 30_000), \
        f"in flight and never finalized: {[r.key for r in in_flight if not cluster.operations[r.key].certificate]}"
    certificates = {r.key: cluster.operations[r.key].certificate for r in requests}
    assert cluster.run_until(lambda: all(set(certificates) <= {entry.key for entry in log}
                                         for log in durable_logs(cluster)), 30_000), "a certified verdict is in no log"
    for replica_id, log in enumerate(durable_logs(cluster)):
        assert_prefix(before[replica_id], log, replica_id)
        assert sorted(entry.key for entry in log) == sorted({entry.key for entry in log}), "executed twice"
        for entry in log:  # A verdict a client certified before the kill is the one every log holds after it.
            certificate = certificates.get(entry.key)
            assert certificate is None or (entry.seq, entry.decision) == (certificate.seq, certificate.decision)
    monitor.assert_ok()
    for store in cluster.stores:
        store.close()


@pytest.mark.parametrize("seed", range(3))
def test_a_verdict_certified_before_any_store_wrote_it_is_the_verdict_every_log_holds_after_a_whole_restart(
        tmp_path: Path, seed: int) -> None:
    """Replies leave ahead of the disk: every replica dies once its reply left and before its store wrote
    the log entry, so the client holds a certificate no store backs.  The prepared proofs and COMMITs the
    replicas persisted earlier make the restarted cluster execute that batch again, to the same verdict."""
    cluster = sqlite_cluster(tmp_path, seed, limits=SMALL)
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})

    def executes(ready: Ready) -> bool:
        return any(isinstance(item, LogEntry) for item in ready.persist)
    for replica_id in range(4):
        cluster.arm_crash_before_persist(replica_id, when=executes)
    [request] = submit_many(cluster, 1)
    assert cluster.run_until(lambda: len(cluster.crashed) == 4, 5_000)
    certificate = cluster.operations[request.key].certificate
    assert certificate is not None and durable_logs(cluster) == [(), (), (), ()], "not the case under test"
    for replica_id in range(4):
        cluster.restart(replica_id)
    assert cluster.run_until(lambda: all(len(log) == 1 for log in durable_logs(cluster)), 30_000)
    for log in durable_logs(cluster):
        assert (log[0].key, log[0].seq, log[0].decision) == (request.key, certificate.seq, certificate.decision)
    monitor.assert_ok()
    for store in cluster.stores:
        store.close()


def test_every_replica_restarts_with_verdicts_intact_and_answers_a_retry_in_full() -> None:
    cluster = SimCluster(4, seed=3)
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    first = submit_many(cluster, 8)
    assert cluster.run_until(lambda: finalized_all(cluster, first), 10_000)
    cluster.run(200)
    logs_before = durable_logs(cluster)
    for replica_id in range(4):
        cluster.crash(replica_id)
    for replica_id in range(4):
        cluster.restart(replica_id)
    assert durable_logs(cluster) == logs_before
    assert all(replica.execution.head_hash == logs_before[0][-1].entry_hash for replica in cluster.replicas)
    for replica in cluster.replicas:  # Replies re-signed from the stored batches: a lost reply can be re-sent.
        assert all(isinstance(replica.execution.cached_reply(*r.key), Reply) for r in first)
    cluster.resend(first[0])  # A retry after the restart must not execute a second time.
    cluster.run(2_000)
    assert all(sum(1 for e in store.load().log if e.key == first[0].key) == 1 for store in cluster.stores)
    monitor.assert_ok()


def test_recovered_replica_refuses_to_sign_a_different_digest_for_a_slot_it_signed() -> None:
    cluster = SimCluster(4, seed=1)
    submit_many(cluster, 3)
    cluster.run(15)
    stored = cluster.stores[2].load()
    recovered = Replica.recover(cluster.config, 2, cluster.replica_seeds[2], stored.signed, stored.log)
    signed_slots = {key for key in recovered.signed_digests}
    assert signed_slots, "the replica had signed prepares before the crash"
    phase, view, seq = next(iter(signed_slots))
    assert recovered.view == view, "a restarted replica resumes in the view of what it signed last"
    assert recovered.normal.may_sign(phase, seq, recovered.signed_digests[(phase, view, seq)])
    assert not recovered.normal.may_sign(phase, seq, b"\x01" * 32)


def test_a_restarted_replica_resends_its_stored_vote_even_if_its_policy_changed_its_mind() -> None:
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
