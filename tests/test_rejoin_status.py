"""Proves status tells the truth about a replica that fell behind: the core's progress summary, the Prometheus
gauges (bft_lag_seq, bft_replica_state) and ``bft status``'s health show each state (ok, catching-up,
view-change, isolated, down), a replica is never ok while behind or in another view than the cluster's, and the
status command's exit code is non-zero whenever any replica is not ok."""

from __future__ import annotations

import prometheus_client

from bft.cluster import Address
from bft.cluster._status import ReplicaStatus, _from_gauges, compare_replicas, parse_metrics
from bft.runtime._metrics import ReplicaMetrics
from harness._rejoin import LoadDriver, PausableCluster, caught_up, rejoin_limits, rejoined
from bft.testing import NetworkFaults

ADDRESS: Address = ("127.0.0.1", 1)


def health_from(summary: dict, peers_connected: int = 3, peers_needed: int = 2) -> ReplicaStatus:
    """What ``bft status`` concludes from a replica's exposition of this summary."""
    metrics = ReplicaMetrics()
    metrics.observe_replica(summary["view"], summary["view_active"], summary["last_executed"], 0)
    metrics.observe_connectivity(peers_connected, peers_connected >= peers_needed)
    metrics.observe_progress(summary)
    gauges, _ = parse_metrics(prometheus_client.generate_latest(metrics.registry).decode())
    return _from_gauges(ReplicaStatus(0, ADDRESS, ADDRESS, "down"), gauges, peers_needed)


def summary(state: str, view: int = 0, last_executed: int = 10, lag: int = 0) -> dict:
    return {"view": view, "view_active": state != "view-change", "last_executed": last_executed,
            "highest_seq_known": last_executed + lag, "lag": lag, "state": state}


def test_the_core_summary_follows_a_replica_through_catching_up_back_to_ok() -> None:
    cluster = PausableCluster(4, seed=7, limits=rejoin_limits(), faults=NetworkFaults(delay_ms_min=1, delay_ms_max=8))
    load = LoadDriver(cluster)
    load.run(1_000, True)
    replica = cluster.replicas[2]
    assert replica.progress_summary()["state"] == "ok"
    cluster.crash(2)
    load.run(2_000, True)
    cluster.restart(2)
    replica, seen = cluster.replicas[2], set()
    load.run(3_000, True, until=lambda: seen.add(replica.progress_summary()["state"]) or (
        "catching-up" in seen and rejoined(cluster, 2)))
    assert "catching-up" in seen, seen
    assert replica.progress_summary()["state"] == "ok" and rejoined(cluster, 2)


def test_a_replica_that_timed_out_alone_says_view_change_until_the_cluster_reaches_its_view() -> None:
    """While it follows the cluster's view without voting there, the cluster has one voter fewer: not ok."""
    cluster = PausableCluster(4, seed=8, limits=rejoin_limits(), faults=NetworkFaults(delay_ms_min=1, delay_ms_max=8))
    load = LoadDriver(cluster)
    load.run(500, True)
    cluster.blocked_links = {(0, 3)}  # Pre-prepares do not reach it.
    replica = cluster.replicas[3]
    # Votes go to the primary alone, so a cut-off backup no longer times out alone by itself
    # (tests/test_rejoin.py); its lonely VIEW-CHANGE is made here directly.
    cluster._handle_ready(3, replica._run(replica.views.start_view_change, 1))
    assert load.run(3_000, True, until=lambda: replica.vote_floor_view >= 1) is not None
    assert replica.progress_summary()["state"] == "view-change"
    cluster.heal()
    assert load.run(3_000, True, until=lambda: caught_up(cluster, 3)) is not None
    summary_following = replica.progress_summary()
    assert (summary_following["state"], summary_following["view"], summary_following["asked_view"]) == \
        ("view-change", 0, 1), "it executes with the cluster but does not vote in view 0"
    cluster.crash(0)  # The cluster's next view change brings it back as a voter.
    assert load.run(5_000, True, until=lambda: replica.progress_summary()["state"] == "ok") is not None
    assert replica.view >= 1 and replica.view == cluster.replicas[1].view


def test_each_state_reaches_the_status_health_and_the_lag_gauge() -> None:
    assert health_from(summary("ok")).health == "ok"
    behind = health_from(summary("catching-up", lag=7))
    assert behind.health == "catching-up" and behind.lag_seq == 7 and "7 behind" in behind.detail
    assert health_from(summary("view-change", view=3)).health == "view-change"
    assert health_from(summary("ok"), peers_connected=1).health == "isolated"


def test_a_replica_that_says_ok_is_judged_against_the_others() -> None:
    ok = [health_from(summary("ok", view=2, last_executed=50)) for _ in range(3)]
    ok = [ReplicaStatus(i, ADDRESS, ADDRESS, s.health, s.detail, s.view, s.last_executed_seq, 0, 3, s.lag_seq,
                        s.highest_seq_known, s.core_state) for i, s in enumerate(ok)]
    stale_view = ReplicaStatus(3, ADDRESS, ADDRESS, "ok", "", 1, 50, 0, 3, 0, 50, "ok")
    far_behind = ReplicaStatus(3, ADDRESS, ADDRESS, "ok", "", 2, 20, 0, 3, 0, 20, "ok")
    down = ReplicaStatus(3, ADDRESS, ADDRESS, "down", "metrics unreachable")
    judged = compare_replicas([*ok, stale_view], in_flight_max=4)
    assert [s.health for s in judged] == ["ok", "ok", "ok", "view-change"]
    judged = compare_replicas([*ok, far_behind], in_flight_max=4)
    assert judged[3].health == "catching-up" and judged[3].lag_seq == 30
    judged = compare_replicas([*ok, down], in_flight_max=4)
    assert judged[3].health == "down" and all(s.health == "ok" for s in judged[:3])
    assert compare_replicas(ok, in_flight_max=4) == ok, "a healthy cluster stays ok"
