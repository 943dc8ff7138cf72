"""Proves a replica that fell behind comes back by itself (and that a replica alone never looks for peers), in the cluster's view and with no lag: after a pause
(its queued, old messages arrive at once and its clock jumps), after a restart in a busy cluster, and after an
isolation during which it timed out alone; that a stale batch timestamp stops it voting but not learning what a
quorum committed; that it never signs in a view below one it asked to leave; and that the issue's stranded-replica
sequence leaves a cluster that still serves with 3 of 4 replicas.  Every invariant holds throughout."""

from __future__ import annotations

import pytest

from bft.core import Bundle, Commit, Limits, PrePrepare, Risk, Signer, StateRequest, Verifier
from bft.testing import NetworkFaults, SimCluster
from harness._rejoin import LoadDriver, PausableCluster, caught_up, majority_view, rejoin_limits, rejoined
from specs.invariants import SimMonitor

pytestmark = pytest.mark.slow  # rejoin episodes in simulation and with real processes: make test runs it, make test-fast does not

BOUND_LOADED_MS = 5_000
BOUND_IDLE_MS = 2_000


def loaded_cluster(seed: int, limits: Limits | None = None) -> tuple[PausableCluster, LoadDriver, SimMonitor]:
    """Small windows by default (a few seconds away leave a replica checkpoints behind); the default ones
    where a replica must catch up above the last stable checkpoint, which state transfer alone cannot."""
    cluster = PausableCluster(4, seed=seed, limits=limits or rejoin_limits(),
                              faults=NetworkFaults(delay_ms_min=1, delay_ms_max=8))
    load = LoadDriver(cluster)
    load.run(1_000, True)
    return cluster, load, SimMonitor(cluster, {0, 1, 2, 3})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_paused_primary_rejoins_the_new_view_with_no_lag(seed: int) -> None:
    """The issue's case: on main it refused the new primary's batches as bad-timestamp and timed out alone."""
    cluster, load, monitor = loaded_cluster(seed, Limits())
    cluster.pause(0)
    load.run(3_000, True)
    assert majority_view(cluster, 0) >= 1, "the others replaced the paused primary"
    cluster.resume(0)
    took = load.run(BOUND_LOADED_MS, True, until=lambda: rejoined(cluster, 0))
    assert took is not None, (cluster.replicas[0].view, cluster.replicas[0].view_active,
                              [r.last_executed for r in cluster.replicas], cluster.replicas[0].rejected_counts)
    monitor.assert_ok("after the paused primary resumed")


@pytest.mark.parametrize("seed", [0, 1])
def test_a_paused_backup_learns_batches_whose_timestamps_are_now_stale(seed: int) -> None:
    cluster, load, monitor = loaded_cluster(seed, Limits())
    cluster.pause(2)
    load.run(3_000, True)
    view = majority_view(cluster, 2)
    cluster.resume(2)
    assert load.run(BOUND_LOADED_MS, True, until=lambda: rejoined(cluster, 2)) is not None
    assert majority_view(cluster, 2) == view, "a resumed backup does not drag the cluster into a view change"
    monitor.assert_ok()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_restarted_backup_in_a_busy_cluster_catches_up_without_a_view_change(seed: int) -> None:
    cluster, load, monitor = loaded_cluster(seed)
    cluster.crash(3)
    load.run(2_500, True)
    cluster.restart(3)
    assert load.run(BOUND_LOADED_MS, True, until=lambda: rejoined(cluster, 3)) is not None
    load.run(2_000, True)
    assert [r.view for r in cluster.replicas] == [0, 0, 0, 0], "nobody changed view"
    monitor.assert_ok()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_backup_cut_off_from_the_primary_never_changes_view_alone_and_catches_up(seed: int) -> None:
    cluster, load, monitor = loaded_cluster(seed)
    cluster.blocked_links = {(0, 3)}  # No pre-prepares reach it: work it cannot get ordered.
    load.run(3_000, True)
    # Votes go to the primary alone; its overdue votes, shared with everyone, never meet a quorum of
    # others in the same position, so it sees no quorum of votes and suspects no one (SPEC.md 11b).
    assert cluster.replicas[3].vote_floor_view == 0 and [r.view for r in cluster.replicas] == [0, 0, 0, 0]
    cluster.heal()
    assert load.run(BOUND_LOADED_MS, True, until=lambda: rejoined(cluster, 3)) is not None
    monitor.assert_ok()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_isolated_backup_that_timed_out_alone_falls_back_to_the_cluster_view(seed: int) -> None:
    cluster, load, monitor = loaded_cluster(seed)
    cluster.blocked_links = {(0, 3)}
    load.run(1_000, True)
    lonely = cluster.replicas[3]
    # A backup no longer times out alone on its own (the test above), so its lonely VIEW-CHANGE, as
    # an older replica or a wrong timer would send it, is made here directly.
    cluster._handle_ready(3, lonely._run(lonely.views.start_view_change, 1))
    load.run(2_000, True)
    assert lonely.vote_floor_view >= 1, "it sent a VIEW-CHANGE alone"
    assert [r.view for r in cluster.replicas[:3]] == [0, 0, 0], "nobody followed it"
    cluster.heal()
    assert load.run(BOUND_LOADED_MS, True, until=lambda: caught_up(cluster, 3)) is not None
    assert lonely.view == 0, "it follows the cluster's view, executing what commits there"
    cluster.crash(0)  # The cluster's next view change makes it a voter again.
    assert load.run(BOUND_LOADED_MS, True, until=lambda: rejoined(cluster, 3)) is not None
    monitor.assert_ok()


def test_an_isolated_backup_rejoins_an_idle_cluster() -> None:
    cluster, load, monitor = loaded_cluster(3)
    cluster.partition({3}, {0, 1, 2})
    load.run(2_000, True)
    load.run(1_000, False)
    cluster.heal()
    assert load.run(BOUND_IDLE_MS, False, until=lambda: rejoined(cluster, 3)) is not None
    monitor.assert_ok()


def test_a_backup_restarted_into_an_idle_cluster_fetches_the_committed_suffix() -> None:
    cluster, load, monitor = loaded_cluster(4)
    cluster.crash(1)
    load.run(1_300, True)  # Stop between checkpoints: the last slots are above every stable checkpoint.
    load.run(700, False)
    cluster.restart(1)
    assert load.run(BOUND_IDLE_MS, False, until=lambda: rejoined(cluster, 1)) is not None
    monitor.assert_ok()


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_a_primary_cut_off_while_the_cluster_changed_view_learns_the_view_when_it_is_idle(seed: int) -> None:
    """Its peers changed view while it was away and then went quiet, with nothing committed above their last
    stable checkpoint: only the NEW-VIEW, added to a catch-up answer for a requester in an earlier view, tells
    it (without it, it waited for the next request)."""
    cluster, load, monitor = loaded_cluster(seed)
    cluster.partition({0}, {1, 2, 3, "client-0"})
    load.run(2_000, True)
    load.run(1_000, False)
    assert majority_view(cluster, 0) >= 1 and cluster.replicas[0].view == 0
    cluster.heal()
    assert load.run(BOUND_IDLE_MS, False, until=lambda: rejoined(cluster, 0)) is not None
    monitor.assert_ok()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_stranded_replica_sequence_ends_with_a_cluster_serving_on_three_replicas(seed: int) -> None:
    cluster, load, monitor = loaded_cluster(seed, Limits())
    cluster.pause(0)
    load.run(3_000, True)
    cluster.resume(0)
    assert load.run(BOUND_LOADED_MS, True, until=lambda: rejoined(cluster, 0)) is not None
    cluster.crash(2)
    before = load.number
    load.run(8_000, True)
    served = [r for r in cluster.operations.values() if r.request.request_number >= before and r.certificate]
    assert len(served) >= 50, f"only {len(served)} verdicts with replicas 0, 1, 3 running"
    monitor.assert_ok()


def test_a_stale_timestamp_stops_the_prepare_but_a_commit_certificate_still_executes() -> None:
    """Unit level: a backup whose clock is far from the batch's learns the batch from a quorum of commits."""
    limits = Limits(max_clock_skew_ms=1000)
    cluster = SimCluster(4, seed=5, limits=limits)
    late = cluster.replicas[3]
    cluster.crashed.add(3)
    request = cluster.submit("client-0", {"tool": "read"}, Risk.LOW)
    cluster.run(300)
    cluster.crashed.discard(3)
    late.tick(cluster.now_ms + 5_000)  # Its clock jumped, as after a pause: the batch now looks stale to it.
    peers = cluster.replicas[:3]
    slot_seq = max(r.last_executed for r in peers)
    assert slot_seq >= 1 and late.last_executed == 0
    primary = cluster.replicas[0]
    for replica_id in range(3):
        source = cluster.replicas[replica_id]
        slot = source.slots.get(slot_seq)
        if slot is None:
            continue
        if replica_id == primary.replica_id:
            late.step(slot.preprepare)
        for commit in slot.commits.values():
            late.step(commit)
    assert late.last_executed == slot_seq, "the commit certificate made it execute"
    assert late.signed_digests.get(("prepare", 0, slot_seq)) is None, "it did not prepare a stale batch"
    assert cluster.verdict(request) is not None


def test_a_catch_up_answer_is_bounded_rate_limited_and_made_of_messages_signed_by_their_authors() -> None:
    cluster = SimCluster(4, seed=6)
    requests = [cluster.submit("client-0", {"tool": "read", "n": n}, Risk.LOW) for n in range(3)]
    assert cluster.run_until(lambda: all(cluster.verdict(r) for r in requests), 5_000)
    peer = cluster.replicas[1]
    asker = Signer(cluster.config.cluster_id, cluster.replica_seeds[3])
    too_wide = asker.sign(StateRequest(0, 0, 33, 0, 3, bytes(64)))
    assert [r.reason for r in peer.step(too_wide).rejected] == ["bad-state-request"]
    ready = peer.step(asker.sign(StateRequest(0, 0, 32, 0, 3, bytes(64))))
    answer = [message for destination, message in ready.messages_to_replicas if destination == 3]
    # A slot's commits travel as one bundle of the originals, each signed by its author.
    sent = [part for message in answer for part in
            ((*message.prepares, *message.commits) if isinstance(message, Bundle) else (message,))]
    committed = [seq for seq, slot in peer.slots.items() if slot.committed]
    assert committed and sorted(m.seq for m in sent if isinstance(m, PrePrepare)) == committed
    for seq in committed:
        commits = [m for m in sent if isinstance(m, Commit) and m.seq == seq]
        assert len({c.replica_id for c in commits}) == cluster.config.quorum, "a commit certificate per slot"
    verifier = Verifier(cluster.config.cluster_id, cluster.config.replica_keys, dict(cluster.config.client_keys))
    for message in sent:
        verifier.verify(message)  # Raises if anything was not signed by the replica it names.
    assert {m.replica_id for m in sent} - {1}, "others' messages are relayed as they signed them"
    again = peer.step(asker.sign(StateRequest(0, 0, 32, 0, 3, bytes(64))))
    assert [r.reason for r in again.rejected] == ["rate-limited"]


def test_a_replica_alone_never_asks_a_peer_for_slots_and_keeps_deciding() -> None:
    cluster = SimCluster(1, seed=0)
    assert not cluster.run_until(lambda: False, max_ms=3_000)  # Several quiet-probe periods, nobody to probe.
    request = cluster.submit("client-0", {"tool": "read_file", "path": "/workspace/README.md"})
    assert cluster.run_until(lambda: cluster.verdict(request) is not None, max_ms=2_000)
    assert sum(cluster.replicas[0].catch_up_counts.values()) == 0
