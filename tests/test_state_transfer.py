"""Proves a replica that fell behind a stable checkpoint (partitioned while its peers discarded the slots it
missed) catches up by state transfer, adopting only a state that a quorum of signed checkpoints certifies and
log entries that chain to the certified head: a Byzantine peer answering with a forged state, proof or log is
rejected with a reason and named, and the replica gets the state from an honest peer; fetches are bounded and
retried; the adopted state survives a restart; and every invariant (S1-S9) holds throughout."""

from __future__ import annotations

import dataclasses

import pytest

from bft.core import Limits, Risk, StateReply, StateRequest
from bft.core._codec import digest
from bft.testing import SimCluster, lying_state_transfer, silent
from specs.invariants import SimMonitor, check_log_prefixes, check_state_transfers

# Tiny windows so a short partition leaves the lagging replica many checkpoints behind, and tiny chunks so
# its gap takes several fetches (and so reaches every peer).
LIMITS = Limits(max_batch_requests=2, max_in_flight_batches=3, log_window=4, checkpoint_interval=2,
                state_transfer_chunk_entries=3, state_transfer_wait_ticks=3, state_transfer_retry_ticks=10)
LAGGARD = 3


def submit_many(cluster: SimCluster, count: int, start: int = 0) -> list:
    return [cluster.submit("client-0", {"tool": "read", "n": start + i}, Risk.LOW) for i in range(count)]


def finalized_all(cluster: SimCluster, requests: list) -> bool:
    return all(cluster.operations[r.key].certificate for r in requests)


def leave_behind(cluster: SimCluster, count: int = 24) -> None:
    """Partition the laggard away while the others finalize ``count`` requests and move their windows on."""
    cluster.partition({LAGGARD}, set(range(len(cluster.replicas))) - {LAGGARD})
    requests = submit_many(cluster, count)
    assert cluster.run_until(lambda: finalized_all(cluster, requests), 20_000)
    laggard = cluster.replicas[LAGGARD]
    peers_low_water = min(r.low_water for i, r in enumerate(cluster.replicas) if i != LAGGARD)
    assert laggard.last_executed == 0 and peers_low_water > laggard.high_water, \
        "the peers discarded every slot the laggard missed, so ordinary execution cannot catch it up"


def catch_up(cluster: SimCluster, extra: int = 4, start: int = 1000) -> None:
    cluster.heal()
    requests = submit_many(cluster, extra, start=start)
    assert cluster.run_until(lambda: finalized_all(cluster, requests), 20_000)
    laggard = cluster.replicas[LAGGARD]
    assert cluster.run_until(lambda: laggard.transfer_counts["adopted"] >= 1, 10_000), laggard.transfer_counts


def settle(cluster: SimCluster, reference: int) -> None:
    """Requests one at a time until the laggard executed as far as ``reference``.  Slots proposed while it
    was still below them reach it only through the next stable checkpoint (ordinary execution or one more
    transfer), and with these tiny windows continuous load would keep producing new such slots."""
    laggard, other = cluster.replicas[LAGGARD], cluster.replicas[reference]
    for number in range(3 * LIMITS.checkpoint_interval):
        request = submit_many(cluster, 1, start=3000 + number)
        assert cluster.run_until(lambda: finalized_all(cluster, request), 20_000)
        if cluster.run_until(lambda: laggard.last_executed == other.last_executed, 1_000):
            return
    raise AssertionError(f"the laggard stays at {laggard.last_executed}, replica {reference} at {other.last_executed}")


def test_a_partitioned_replica_catches_up_by_state_transfer_after_its_peers_discarded_its_slots() -> None:
    cluster = SimCluster(4, seed=1, limits=LIMITS, prune_stores=True)
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    leave_behind(cluster)
    monitor.assert_ok("while partitioned")
    catch_up(cluster)
    laggard = cluster.replicas[LAGGARD]
    adoption = laggard.state_adoptions[-1]
    assert adoption.entries_fetched >= 24, "the whole missed suffix of the verdict log was fetched"
    assert laggard.low_water == adoption.seq and laggard.stable_proof == adoption.proof
    reference = cluster.replicas[0]
    assert laggard.execution.head_hash != bytes(32) and laggard.execution.log_length >= adoption.log_length
    settle(cluster, reference=0)
    assert laggard.execution.state_digest() == reference.execution.state_digest()
    assert cluster.stores[LAGGARD].load().log == cluster.stores[0].load().log, "the audit chain is complete"
    monitor.assert_ok("after the transfer")


# The laggard asks replica 0 for the snapshot and the others for log chunks, so the liar's position
# decides which lie it tells; the seeds pick a forged state and a forged proof for the snapshot liar.
LIES = [(0, 7, 0, "bad-state-proof"), (0, 17, 1, "bad-state"), (1, 8, 1, "bad-log-chunk"), (2, 9, 2, "bad-log-chunk")]


@pytest.mark.parametrize("liar, seed, lie_seed, reason", LIES)
def test_a_byzantine_peer_with_a_forged_state_or_log_is_rejected_and_an_honest_peer_supplies_it(
        liar: int, seed: int, lie_seed: int, reason: str) -> None:
    cluster = SimCluster(4, seed=seed, limits=LIMITS, prune_stores=True,
                         interceptors={liar: lying_state_transfer(seed=lie_seed)})
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3} - {liar})
    leave_behind(cluster)
    catch_up(cluster)
    laggard = cluster.replicas[LAGGARD]
    refused = {rejection: count for rejection, count in laggard.rejected_counts.items() if rejection.startswith("bad")}
    assert refused == {reason: 1}, f"replica {liar}'s lie was not refused as {reason}: {laggard.rejected_counts}"
    assert laggard.transfer_counts["rejected"] == 1 and laggard.transfer_counts["adopted"] >= 1
    honest = next(r for r in range(3) if r != liar)
    settle(cluster, reference=honest)
    assert laggard.execution.state_digest() == cluster.replicas[honest].execution.state_digest()
    assert cluster.stores[LAGGARD].load().log == cluster.stores[honest].load().log
    monitor.assert_ok()


def test_a_silent_peer_costs_one_retry_and_every_fetch_is_bounded() -> None:
    cluster = SimCluster(4, seed=3, limits=LIMITS, prune_stores=True)
    laggard = cluster.replicas[LAGGARD]
    asked_first = (LAGGARD + 0) % 3
    leave_behind(cluster)
    cluster.interceptors[asked_first] = silent()  # It stops answering anyone, state requests included.
    outstanding_max, buffered_max = 0, 0

    def observe() -> bool:
        nonlocal outstanding_max, buffered_max
        session = laggard.transfer
        if session is not None:
            outstanding_max = max(outstanding_max, 1 if session.outstanding else 0)
            buffered_max = max(buffered_max, session.buffered)
            for chunk in session.chunks:
                assert len(chunk) <= LIMITS.state_transfer_chunk_entries
        return laggard.transfer_counts["adopted"] >= 1

    cluster.heal()
    submit_many(cluster, 4, start=500)
    assert cluster.run_until(observe, 20_000)
    assert laggard.transfer_counts["retried"] >= 1, "the silent peer was asked first, so one retry was needed"
    assert outstanding_max == 1 and 0 < buffered_max <= LIMITS.state_transfer_entries_max


def test_a_gap_larger_than_the_configured_bound_is_not_fetched() -> None:
    limits = dataclasses.replace(LIMITS, state_transfer_entries_max=8, state_transfer_chunk_entries=3)
    cluster = SimCluster(4, seed=4, limits=limits)
    leave_behind(cluster)
    cluster.heal()
    submit_many(cluster, 4, start=500)
    laggard = cluster.replicas[LAGGARD]
    assert cluster.run_until(lambda: laggard.transfer_counts["gap-too-large"] >= 1, 10_000)
    assert laggard.transfer_counts["adopted"] == 0 and laggard.execution.log_length == 0
    assert laggard.transfer is None or laggard.transfer.buffered == 0


def test_the_adopted_state_survives_a_restart() -> None:
    cluster = SimCluster(4, seed=5, limits=LIMITS)
    monitor = SimMonitor(cluster, correct={0, 1, 2, 3})
    leave_behind(cluster)
    catch_up(cluster)
    laggard = cluster.replicas[LAGGARD]
    adoption = laggard.state_adoptions[-1]
    cluster.crash(LAGGARD)
    cluster.restart(LAGGARD)
    restarted = cluster.replicas[LAGGARD]
    assert restarted.low_water >= adoption.seq and restarted.last_executed >= adoption.seq
    assert restarted.stable_proof and restarted.stable_proof[0].seq == restarted.low_water
    assert restarted.execution.log_length >= adoption.log_length
    requests = submit_many(cluster, 6, start=2000)
    assert cluster.run_until(lambda: finalized_all(cluster, requests), 20_000)
    monitor.assert_ok()


def test_a_replica_answers_only_bounded_well_formed_state_requests(kit) -> None:
    replica = kit.replica(1)
    chunk = kit.config.limits.state_transfer_chunk_entries
    too_many = kit.replica_signers[2].sign(StateRequest(0, 1, chunk + 1, 0, 2, bytes(64)))
    assert [r.reason for r in replica.step(too_many).rejected] == ["bad-state-request"]
    backwards = kit.replica_signers[2].sign(StateRequest(0, 5, 4, 0, 2, bytes(64)))
    assert [r.reason for r in replica.step(backwards).rejected] == ["bad-state-request"]
    nothing_stable = kit.replica_signers[2].sign(StateRequest(0, 0, 0, 0, 2, bytes(64)))
    assert replica.step(nothing_stable).is_empty(), "no stable checkpoint yet: nothing to serve, nothing refused"
    beyond_log = kit.replica_signers[2].sign(StateRequest(0, 1, 3, 0, 2, bytes(64)))
    assert replica.step(beyond_log).is_empty(), "an empty log has nothing to read"
    flood = [replica.step(kit.replica_signers[3].sign(StateRequest(0, 1, 2, 0, 3, bytes(64)))) for _ in range(10)]
    assert sum(1 for ready in flood if any(r.reason == "rate-limited" for r in ready.rejected)) >= 5


def test_an_unsolicited_state_reply_changes_nothing(kit, snapshot) -> None:
    replica = kit.replica(1)
    before = snapshot(replica)
    state = replica.execution.export_state()
    forged = kit.replica_signers[2].sign(StateReply(2, (), state, 0, b"", 2, bytes(64)))
    assert replica.step(forged).is_empty()
    assert snapshot(replica) == before


def test_the_state_transfer_predicates_catch_uncertified_adoptions_and_forked_logs() -> None:
    cluster = SimCluster(4, seed=1, limits=LIMITS)
    leave_behind(cluster)
    catch_up(cluster)
    laggard = cluster.replicas[LAGGARD]
    adoption = laggard.state_adoptions[-1]
    logs = {r: cluster.stores[r].load().log for r in range(4)}
    signed = {r: cluster.stores[r].load().signed for r in range(4)}
    assert check_state_transfers({LAGGARD: [adoption]}, logs, signed, cluster.config) == []
    forged_digest = digest(b"a state nobody computed")
    uncertified = dataclasses.replace(adoption, state_digest=forged_digest)
    assert [v.invariant for v in check_state_transfers({LAGGARD: [uncertified]}, logs, signed, cluster.config)] == ["S9"]
    thin_proof = dataclasses.replace(adoption, proof=adoption.proof[:1])
    assert check_state_transfers({LAGGARD: [thin_proof]}, logs, signed, cluster.config)
    wrong_head = dataclasses.replace(adoption, head_hash=bytes(32))
    assert check_state_transfers({LAGGARD: [wrong_head]}, logs, signed, cluster.config)
    assert check_log_prefixes(logs) == []
    with_gap = dict(logs)
    with_gap[LAGGARD] = logs[0][:3] + logs[0][4:6]
    assert [v.invariant for v in check_log_prefixes(with_gap)] == ["S9"]
