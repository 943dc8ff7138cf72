"""Prometheus metrics of one replica, in a registry of its own, and the HTTP endpoint that serves them.

Each ``ReplicaMetrics`` owns a ``CollectorRegistry`` rather than using the
process-wide default, so several replicas in one process (tests, the demo)
never mix their numbers.  Label values come from fixed sets: a reason token
nobody listed is counted as ``other``, so a hostile peer cannot grow a label
set (and the scrape) by inventing reasons.  The accountability gauges are
labelled by replica id (at most n values) and by active blocklist pattern (at
most ``blocklist_patterns_max`` values, each endorsed by f+1 replicas, so no
single replica can add one).

The node updates the metrics from its main task only; prometheus-client's own
locks make the scrape thread's reads safe.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..core import CATCH_UP_STATES, REFUSAL_REASONS, AccountabilityState, Decision, LogEntry, Risk

logger = logging.getLogger("bft.runtime.metrics")

OTHER_REASON = "other"

# Every reason token the core and the transport give a rejected message or connection.  A token added
# later without being listed here is still counted, as "other"; tests/test_metrics.py shows it.
REJECTION_REASONS = frozenset({
    # decoding (bft.core._codec, _schema)
    "malformed", "oversized", "unknown-type", "schema", "non-canonical",
    # the protocol core
    "bad-batch", "bad-checkpoint", "bad-signature", "bad-timestamp", "bad-view-change", "bad-votes",
    "conflicting-request", "equivocation", "expired", "not-primary", "outside-window", "overloaded", "rate-limited",
    "stale-request", "unexpected-type", "unknown-signer", "wrong-view",
    # framing, connections and the handshake (bft.runtime)
    "bad-frame-auth", "bad-handshake", "bad-key", "evicted", "flood", "idle", "idle-session", "oversized-frame",
    "refused", "replayed-frame", "slow-frame", "timeout", "too-many-connections",
    "truncated-frame", "unexpected-frame", "unexpected-message", "unknown-identity", "wrong-cluster",
    "wrong-identity",
})

# Upper bounds in seconds: from a fast loopback round to a request that waited out a view change.
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def bounded_reason(reason: str, known: frozenset[str] | tuple[str, ...]) -> str:
    """``reason`` if it is one of ``known``, else ``other``: label values stay a fixed set."""
    return reason if reason in known else OTHER_REASON


class ReplicaMetrics:
    """The metrics of one replica.  Create one per ``ReplicaNode``; serve it with ``serve_metrics``.

    ``max_tracked_requests`` bounds the arrival times kept for the latency
    histogram; past it the oldest are forgotten (those requests are then not
    measured, which is better than unbounded memory).
    """

    def __init__(self, max_tracked_requests: int = 16_384) -> None:
        assert max_tracked_requests >= 1
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("bft_requests", "Client requests received by this replica (retries included).",
                                registry=registry)
        self.verdicts = Counter("bft_verdicts", "Verdicts this replica finalized and made durable.",
                                ["decision", "risk"], registry=registry)
        self.consensus_latency = Histogram(
            "bft_consensus_latency_seconds", "From a request's arrival at this replica to its durable finalization.",
            buckets=LATENCY_BUCKETS_S, registry=registry)
        self.view = Gauge("bft_view", "The view this replica is in.", registry=registry)
        self.epoch = Gauge("bft_epoch", "The configuration epoch this replica works in.", registry=registry)
        self.retired = Gauge("bft_retired", "1 once this replica is not a member of the current epoch, else 0.",
                             registry=registry)
        self.view_changes = Counter("bft_view_changes", "New views this replica installed.", registry=registry)
        self.last_executed_seq = Gauge("bft_last_executed_seq", "Highest sequence number executed.",
                                       registry=registry)
        self.stable_checkpoint_seq = Gauge("bft_stable_checkpoint_seq", "Sequence number of the stable checkpoint.",
                                           registry=registry)
        self.checkpoints = Counter("bft_checkpoints", "Checkpoints that became stable here.", registry=registry)
        self.peers_connected = Gauge("bft_peers_connected", "Other replicas this replica's links reach.",
                                     registry=registry)
        self.quorum_reachable = Gauge("bft_quorum_reachable", "1 while this replica can reach a quorum, else 0.",
                                      registry=registry)
        self.messages_rejected = Counter("bft_messages_rejected", "Messages and connections rejected, by reason.",
                                         ["reason"], registry=registry)
        self.refusals = Counter("bft_refusals", "Requests refused instead of ordered, by reason.", ["reason"],
                                registry=registry)
        self._init_progress_gauges()
        self._init_accountability_gauges()
        self._prime_labels()
        self._arrivals_s: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._max_tracked_requests = max_tracked_requests
        # Baselines from the first observation, so a replica restarted in view 3 does not count
        # three view changes it did not make in this run.
        self._installed_view: int | None = None
        self._stable_seq: int | None = None
        # The last values given to the core's gauges: the node reports them after every round of inputs
        # and tick, and a gauge's set takes a lock, so only changes are passed on.
        self._replica_position: tuple[int, int, int] | None = None
        self._connectivity: tuple[int, bool] | None = None
        self._verdict_counters = {(decision, risk): self.verdicts.labels(decision=decision.value, risk=risk.value)
                                  for decision in Decision for risk in Risk}

    def _init_progress_gauges(self) -> None:
        """Whether this replica keeps up: an alert can fire on ``bft_lag_seq > 0`` or ``bft_replica_state{state="ok"}
        == 0`` held for a while (both come from the core's proofs, never from one peer's say)."""
        registry = self.registry
        self.highest_seq_known = Gauge("bft_highest_seq_known", "Highest sequence number known committed by the "
                                       "cluster (commit quorums, certified checkpoints).", registry=registry)
        self.lag_seq = Gauge("bft_lag_seq", "Sequence numbers this replica is behind the highest known committed.",
                             registry=registry)
        self.replica_state = Gauge("bft_replica_state", "1 for this replica's state (ok, catching-up, view-change).",
                                   ["state"], registry=registry)
        self._state_series = {state: self.replica_state.labels(state=state) for state in CATCH_UP_STATES}
        self._progress: tuple[int, int, str] | None = None

    def observe_progress(self, summary: dict) -> None:
        """Record the core's ``progress_summary()``; only changes take the gauges' locks."""
        progress = (summary["highest_seq_known"], summary["lag"], summary["state"])
        if progress == self._progress:
            return
        self._progress = progress
        self.highest_seq_known.set(summary["highest_seq_known"])
        self.lag_seq.set(summary["lag"])
        for state, series in self._state_series.items():
            series.set(1 if state == summary["state"] else 0)

    def _init_accountability_gauges(self) -> None:
        registry = self.registry
        self.quarantined_replicas = Gauge("bft_quarantined_replicas", "Replicas whose votes do not count.",
                                          registry=registry)
        self.suspected_replicas = Gauge("bft_suspected_replicas", "Replicas whose votes drift from their peers'.",
                                        registry=registry)
        self.evidence_records = Gauge("bft_evidence_records", "Proofs of equivocation in the replicated state.",
                                      registry=registry)
        self.blocklist_patterns = Gauge("bft_blocklist_patterns", "Shared blocklist patterns with any endorsement.",
                                        registry=registry)
        self.blocklist_patterns_active = Gauge("bft_blocklist_patterns_active",
                                               "Shared blocklist patterns endorsed by at least f+1 replicas.",
                                               registry=registry)
        self.replica_quarantined = Gauge("bft_replica_quarantined", "1 if that replica is quarantined, else 0.",
                                         ["replica"], registry=registry)
        self.replica_suspected = Gauge("bft_replica_suspected", "1 if that replica is suspected, else 0.",
                                       ["replica"], registry=registry)
        self.replica_evidence_records = Gauge("bft_replica_evidence_records",
                                              "Proofs of equivocation held against that replica.", ["replica"],
                                              registry=registry)
        self.blocklist_pattern_endorsers = Gauge("bft_blocklist_pattern_endorsers",
                                                 "Endorsing replicas of each active shared blocklist pattern.",
                                                 ["pattern"], registry=registry)
        self._active_patterns: frozenset[str] = frozenset()
        self._replica_series_cache: list[tuple] | None = None

    def _prime_labels(self) -> None:
        """Create every labelled series at zero, so a scrape shows them before the first event."""
        for decision in Decision:
            for risk in Risk:
                self.verdicts.labels(decision=decision.value, risk=risk.value)
        for reason in (*REJECTION_REASONS, OTHER_REASON):
            self.messages_rejected.labels(reason=reason)
        for reason in (*REFUSAL_REASONS, OTHER_REASON):
            self.refusals.labels(reason=reason)

    # ----------------------------------------------------------------- events

    def request_received(self) -> None:
        """A client's request reached this replica (taken or refused)."""
        self.requests.inc()

    def request_accepted(self, key: tuple[str, int], now_s: float) -> None:
        """A client's request went to the core; its first arrival starts its latency clock."""
        if key in self._arrivals_s:
            return
        self._arrivals_s[key] = now_s
        if len(self._arrivals_s) > self._max_tracked_requests:
            self._arrivals_s.popitem(last=False)
        assert len(self._arrivals_s) <= self._max_tracked_requests

    def verdict_finalized(self, entry: LogEntry, now_s: float) -> None:
        self._verdict_counters[entry.decision, entry.risk].inc()
        arrived_s = self._arrivals_s.pop(entry.key, None)
        if arrived_s is not None:  # Requests ordered on another replica's word were never seen arriving here.
            self.consensus_latency.observe(max(0.0, now_s - arrived_s))

    def rejected(self, reason: str) -> None:
        self.messages_rejected.labels(reason=bounded_reason(reason, REJECTION_REASONS)).inc()

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason=bounded_reason(reason, REFUSAL_REASONS)).inc()

    def observe_replica(self, view: int, view_active: bool, last_executed: int, stable_seq: int) -> None:
        """Record the core's position; counts a view change each time a higher view becomes active,
        and a checkpoint each time the stable checkpoint moves."""
        position = (view, last_executed, stable_seq)
        if position != self._replica_position:
            self._replica_position = position
            self.view.set(view)
            self.last_executed_seq.set(last_executed)
            self.stable_checkpoint_seq.set(stable_seq)
        if self._installed_view is None or self._stable_seq is None:
            self._installed_view, self._stable_seq = view, stable_seq
        if view_active and view > self._installed_view:
            self.view_changes.inc()
            self._installed_view = view
        if stable_seq > self._stable_seq:
            self.checkpoints.inc()
            self._stable_seq = stable_seq

    def observe_epoch(self, epoch: int, retired: bool) -> None:
        """Record the configuration epoch; call at start and whenever the core enters a new one."""
        self.epoch.set(epoch)
        self.retired.set(1 if retired else 0)

    def observe_connectivity(self, peers_connected: int, quorum_reachable: bool) -> None:
        if (peers_connected, quorum_reachable) == self._connectivity:
            return
        self._connectivity = (peers_connected, quorum_reachable)
        self.peers_connected.set(peers_connected)
        self.quorum_reachable.set(1 if quorum_reachable else 0)

    def observe_accountability(self, state: AccountabilityState, replica_count: int) -> None:
        """Record the replicated accountability state; call at start and whenever the core executes.

        Like ``bft_last_executed_seq`` it shows what the core executed, which may be a
        moment ahead of what is durable.  Every replica id gets a series (n at most),
        and only active patterns get one (``blocklist_patterns_max`` at most).
        """
        summary = state.summary()
        self.quarantined_replicas.set(summary["quarantined"])
        self.suspected_replicas.set(summary["suspects"])
        self.evidence_records.set(summary["evidence"])
        self.blocklist_patterns.set(summary["blocklist_patterns"])
        self.blocklist_patterns_active.set(summary["blocklist_active"])
        evidence_by_replica = [0] * replica_count
        for record in state.evidence:
            if record.accused < replica_count:  # Evidence against a replica an epoch just removed is not shown.
                evidence_by_replica[record.accused] += 1
        for replica_id, (quarantined, suspected, evidence) in enumerate(self._replica_series(replica_count)):
            quarantined.set(1 if replica_id in state.quarantined else 0)
            suspected.set(1 if replica_id in state.suspects else 0)
            evidence.set(evidence_by_replica[replica_id])
        active = state.active_patterns()
        for pattern in self._active_patterns - active.keys():
            self.blocklist_pattern_endorsers.remove(pattern)
        for pattern, endorsers in active.items():
            self.blocklist_pattern_endorsers.labels(pattern=pattern).set(len(endorsers))
        self._active_patterns = frozenset(active)
        assert len(self._active_patterns) == summary["blocklist_active"]

    def _replica_series(self, replica_count: int) -> list[tuple]:
        """The per-replica accountability series, looked up once (a label lookup costs more than a set)."""
        gauges = (self.replica_quarantined, self.replica_suspected, self.replica_evidence_records)
        if self._replica_series_cache is not None and len(self._replica_series_cache) != replica_count:
            # A configuration epoch changed n: the series of replicas beyond the new n go (``_epochs``).
            for replica_id in range(replica_count, len(self._replica_series_cache)):
                for gauge in gauges:
                    gauge.remove(str(replica_id))
            self._replica_series_cache = None
        if self._replica_series_cache is None:
            self._replica_series_cache = [tuple(gauge.labels(replica=str(replica_id)) for gauge in gauges)
                                          for replica_id in range(replica_count)]
        assert len(self._replica_series_cache) == replica_count
        return self._replica_series_cache

    def exposition(self) -> bytes:
        """The text a scrape returns (what the endpoint serves)."""
        return prometheus_client.generate_latest(self.registry)


@dataclass(eq=False)
class MetricsServer:
    """A running metrics endpoint; ``close`` stops it.  ``port`` is the bound port (useful with port 0)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exception_info) -> None:
        self.close()


def serve_metrics(metrics: ReplicaMetrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` at ``http://host:port/metrics`` from a daemon thread (prometheus-client's own
    server); port 0 picks a free port.  Raises ``OSError`` if the address cannot be bound."""
    server, thread = prometheus_client.start_http_server(port, addr=host, registry=metrics.registry)
    bound_port = server.server_port
    logger.info("metrics served on %s:%d", host, bound_port, extra={"host": host, "port": bound_port})
    return MetricsServer(host, bound_port, server, thread)
