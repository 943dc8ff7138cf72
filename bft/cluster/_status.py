"""What each replica of a cluster reports about itself, read from its Prometheus endpoint.

``cluster_status`` scrapes every replica's metrics address at once (one thread
each, every request bounded by a timeout) and parses the text with
``prometheus_client.parser``.  A replica whose endpoint cannot be reached is
reported as such, never raised: the point of a status command is to keep
working when parts of the cluster do not.

The accountability state (who is quarantined or suspected, how many proofs of
equivocation, which shared blocklist patterns are active) comes from the same
scrape.  ``verdict_log_events`` reads the full history of accountability events
offline, from a replica's verdict log, where every one is recorded.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from prometheus_client.parser import text_string_to_metric_families

from ._file import Address, ClusterFile, format_address
from ._processes import accepts_connections
from ..audit import read_only_uri

SCRAPE_TIMEOUT_S = 2.0
MAX_SCRAPE_BYTES = 4 * 1024 * 1024
# The gauges a replica exposes (bft.runtime metrics) and the status fields they fill.
GAUGES = {"bft_view": "view", "bft_last_executed_seq": "last_executed_seq",
          "bft_stable_checkpoint_seq": "stable_checkpoint_seq", "bft_peers_connected": "peers_connected"}
# The core's own account of keeping up (optional: a replica of an older version does not expose them).
PROGRESS_GAUGES = {"bft_lag_seq": "lag_seq", "bft_highest_seq_known": "highest_seq_known", "bft_epoch": "epoch"}
REPLICA_STATE = "bft_replica_state"
HEALTH_STATES = ("ok", "catching-up", "view-change", "isolated", "listening", "down", "unknown")
# The accountability gauges (bft.runtime metrics): counts, and per-replica or per-pattern series.
ACCOUNTABILITY_COUNTS = {"bft_evidence_records": "evidence_records", "bft_blocklist_patterns": "blocklist_patterns"}
PER_REPLICA = {"bft_replica_quarantined": "quarantined", "bft_replica_suspected": "suspects",
               "bft_replica_evidence_records": "evidence_by_replica"}
PATTERN_ENDORSERS = "bft_blocklist_pattern_endorsers"


@dataclass(frozen=True, slots=True)
class AccountabilityView:
    """The replicated accountability state as one replica's metrics show it."""

    quarantined: tuple[int, ...] = ()
    suspects: tuple[int, ...] = ()
    evidence_records: int = 0
    evidence_by_replica: tuple[tuple[int, int], ...] = ()  # (accused replica, proofs), only those with any
    blocklist_patterns: int = 0  # Patterns with any endorsement, active or not.
    active_patterns: tuple[tuple[str, int], ...] = ()  # (pattern, endorsing replicas), sorted by pattern

    def as_dict(self) -> dict[str, Any]:
        return {"quarantined": list(self.quarantined), "suspects": list(self.suspects),
                "evidence_records": self.evidence_records,
                "evidence_by_replica": {str(replica): count for replica, count in self.evidence_by_replica},
                "blocklist_patterns": self.blocklist_patterns,
                "active_patterns": [{"pattern": pattern, "endorsers": endorsers}
                                    for pattern, endorsers in self.active_patterns]}


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica's self-report.  ``health``:

    - ``ok``: metrics reachable, connected to enough peers to form a quorum with them, in the cluster's view
      and not behind;
    - ``catching-up``: behind what the cluster committed (by its own proofs, or further behind the most
      advanced replica than the batches a healthy replica can have in flight);
    - ``view-change``: changing view, or in another view than the cluster's (the view most replicas report);
    - ``isolated``: metrics reachable, but too few peers connected for a quorum;
    - ``listening``: metrics not reachable, but the replica port accepts connections;
    - ``down``: neither answers;
    - ``unknown``: no metrics address is configured and the replica port does not answer.
    """

    replica_id: int
    address: Address
    metrics_address: Address | None
    health: str
    detail: str = ""
    view: int | None = None
    last_executed_seq: int | None = None
    stable_checkpoint_seq: int | None = None
    peers_connected: int | None = None
    lag_seq: int | None = None
    highest_seq_known: int | None = None
    core_state: str | None = None  # What the replica says of itself: ok, catching-up or view-change.
    epoch: int | None = None  # The configuration epoch it works in (specs/RECONFIGURATION.md).
    accountability: AccountabilityView | None = field(default=None)

    def __post_init__(self) -> None:
        assert self.health in HEALTH_STATES, self.health

    def as_dict(self) -> dict:
        return {"replica": self.replica_id, "address": format_address(self.address),
                "metrics": format_address(self.metrics_address) if self.metrics_address else None,
                "health": self.health, "detail": self.detail, "view": self.view,
                "last_executed_seq": self.last_executed_seq, "stable_checkpoint_seq": self.stable_checkpoint_seq,
                "peers_connected": self.peers_connected, "lag_seq": self.lag_seq,
                "highest_seq_known": self.highest_seq_known, "epoch": self.epoch, "accountability": self.accountability.as_dict() if self.accountability else None}


def parse_gauges(text: str) -> dict[str, int]:
    """The status gauges present in a Prometheus exposition text (first sample of each); ValueError if unparsable."""
    return parse_metrics(text)[0]


def parse_metrics(text: str) -> tuple[dict[str, int], AccountabilityView | None]:
    """The status gauges and the accountability view (None if the replica exposes none); ValueError if unparsable."""
    values: dict[str, int] = {}
    counts: dict[str, int] = {}
    per_replica: dict[str, list[tuple[int, int]]] = {name: [] for name in PER_REPLICA.values()}
    patterns: list[tuple[str, int]] = []
    for family in text_string_to_metric_families(text):
        name = family.name
        if name in GAUGES and family.samples and GAUGES[name] not in values:
            values[GAUGES[name]] = int(family.samples[0].value)
        elif name in PROGRESS_GAUGES and family.samples:
            values[PROGRESS_GAUGES[name]] = int(family.samples[0].value)
        elif name == REPLICA_STATE:
            values.update({"core_state": sample.labels["state"] for sample in family.samples if sample.value == 1})
        elif name in ACCOUNTABILITY_COUNTS and family.samples:
            counts[ACCOUNTABILITY_COUNTS[name]] = int(family.samples[0].value)
        elif name in PER_REPLICA:
            per_replica[PER_REPLICA[name]] += [(int(sample.labels["replica"]), int(sample.value))
                                              for sample in family.samples if sample.value > 0]
        elif name == PATTERN_ENDORSERS:
            patterns += [(sample.labels["pattern"], int(sample.value)) for sample in family.samples]
    if not counts:
        return values, None
    view = AccountabilityView(tuple(sorted(r for r, _ in per_replica["quarantined"])),
                              tuple(sorted(r for r, _ in per_replica["suspects"])),
                              counts.get("evidence_records", 0), tuple(sorted(per_replica["evidence_by_replica"])),
                              counts.get("blocklist_patterns", 0), tuple(sorted(patterns)))
    return values, view


def scrape(address: Address, timeout_s: float = SCRAPE_TIMEOUT_S) -> str:
    """GET /metrics from ``address``; OSError (including URLError and timeouts) if that fails."""
    host, port = address
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http to a configured host)
        return response.read(MAX_SCRAPE_BYTES).decode("utf-8", errors="replace")


def replica_status(cluster: ClusterFile, replica_id: int, timeout_s: float = SCRAPE_TIMEOUT_S) -> ReplicaStatus:
    entry = cluster.replica(replica_id)
    base = ReplicaStatus(replica_id, entry.address, entry.metrics_address, "down")
    if entry.metrics_address is not None:
        try:
            gauges, accountability = parse_metrics(scrape(entry.metrics_address, timeout_s))
        except (OSError, ValueError, KeyError, urllib.error.HTTPError) as error:
            problem = f"metrics unreachable ({_short(error)})"
        else:
            return _from_gauges(replace(base, accountability=accountability), gauges, cluster.config.quorum - 1)
    else:
        problem = "no metrics address configured"
    if accepts_connections(entry.address, timeout_s):
        return replace(base, health="listening", detail=problem)
    return replace(base, health="down" if entry.metrics_address else "unknown",
                    detail=f"{problem}; replica port {format_address(entry.address)} not accepting connections")


def cluster_status(cluster: ClusterFile, timeout_s: float = SCRAPE_TIMEOUT_S) -> list[ReplicaStatus]:
    """Every replica's status, scraped in parallel; takes at most about twice ``timeout_s``."""
    replica_ids = range(cluster.config.replica_count)
    with ThreadPoolExecutor(max_workers=min(16, len(replica_ids))) as pool:
        statuses = list(pool.map(lambda replica_id: replica_status(cluster, replica_id, timeout_s), replica_ids))
    return compare_replicas(statuses, cluster.config.limits.max_in_flight_batches)


def compare_replicas(statuses: list[ReplicaStatus], in_flight_max: int) -> list[ReplicaStatus]:
    """Judge each reachable replica against the others: one in another view than most of them, or further
    behind the most advanced one than a healthy replica's batches in flight, is not ok, whatever it says."""
    reporting = [s for s in statuses if s.health in ("ok", "catching-up", "view-change") and s.view is not None]
    if not reporting:
        return statuses
    views = Counter(s.view for s in reporting)
    cluster_view = max(views, key=lambda view: (views[view], view))
    top = max(s.last_executed_seq for s in reporting)
    return [_compared(s, cluster_view, top, in_flight_max) if s in reporting else s for s in statuses]


def _compared(status: ReplicaStatus, cluster_view: int, top: int, in_flight_max: int) -> ReplicaStatus:
    behind_top = top - status.last_executed_seq
    lag = max(status.lag_seq or 0, behind_top)
    if status.health != "ok":
        return replace(status, lag_seq=lag)
    if status.view != cluster_view:
        return replace(status, health="view-change", lag_seq=lag,
                       detail=f"in view {status.view}, the cluster is in view {cluster_view}")
    if behind_top > in_flight_max:
        return replace(status, health="catching-up", lag_seq=lag,
                       detail=f"{behind_top} behind replica with the highest executed seq {top}")
    return replace(status, lag_seq=lag)


def most_advanced_view(statuses: list[ReplicaStatus]) -> ReplicaStatus | None:
    """The replica whose accountability view is the newest (highest executed seq), or None if none shows one.

    Every correct replica has the same state at the same log position, so the one
    that executed most shows the latest; the others show an earlier point of it.
    """
    with_view = [status for status in statuses if status.accountability is not None]
    return max(with_view, key=lambda status: (status.last_executed_seq or 0, -status.replica_id), default=None)


def _from_gauges(base: ReplicaStatus, gauges: dict[str, int], peers_needed: int) -> ReplicaStatus:
    missing = [name for name in GAUGES.values() if name not in gauges]
    peers = gauges.get("peers_connected")
    if missing:
        # Up, but it does not say enough to vouch for it.
        return replace(base, health="listening", detail=f"metrics lack {', '.join(missing)}", **gauges)
    detail = f"{peers} peers connected, {peers_needed} needed for a quorum"
    core_state = gauges.get("core_state", "ok")
    if peers < peers_needed:
        health = "isolated"
    elif core_state in ("catching-up", "view-change"):
        health = core_state
        detail = f"{core_state}: {gauges.get('lag_seq', 0)} behind the highest seq known committed " \
                 f"({gauges.get('highest_seq_known', '?')})" if core_state == "catching-up" else \
                 "changing view, or following the cluster's view without voting until its next view change"
    else:
        health = "ok"
    return replace(base, health=health, detail=detail, **gauges)


def _short(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason if reason is not None else error) or type(error).__name__


# ---------------------------------------------------------------------------- offline: the verdict log

class VerdictLogError(Exception):
    """A file that cannot be read as a replica's verdict log; ``str()`` is one sentence."""


def verdict_log_events(database: str | Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Every accountability event in a replica's verdict log, as (position, event), in log order.

    Opens the file read-only and streams it.  An entry whose events are not a JSON
    list of objects yields (position, None): the log may have been tampered with
    (``bft audit verify`` says how).  Raises ``VerdictLogError`` if the file is
    not a readable verdict log.
    """
    if not Path(database).is_file():
        raise VerdictLogError(f"{database} is not a file")
    try:
        connection = sqlite3.connect(read_only_uri(database), uri=True)
    except sqlite3.Error as error:
        raise VerdictLogError(f"{database}: cannot open read-only ({error})") from None
    try:
        connection.execute("BEGIN")  # One read transaction: a replica writing meanwhile cannot show half a write.
        rows = connection.execute("SELECT position, events FROM verdict_log WHERE events != '' ORDER BY position")
        for position, text in rows:
            yield from ((position, event) for event in _events_of(text))
    except sqlite3.Error as error:
        raise VerdictLogError(f"{database}: not a readable verdict log ({error})") from None
    finally:
        connection.close()


def _events_of(text: Any) -> list[dict[str, Any] | None]:
    try:
        events = json.loads(text)
    except (TypeError, ValueError):
        return [None]
    if not isinstance(events, list) or not all(isinstance(event, dict) and "event" in event for event in events):
        return [None]
    return events


def describe_event(event: dict[str, Any] | None) -> str:
    """One line for an accountability event: its type, the replica it is about, then its other fields."""
    if event is None:
        return "(unreadable events: run bft audit verify on this log)"
    subject = next((key for key in ("replica", "accused") if type(event.get(key)) is int), None)
    words = [str(event["event"])] + ([f"replica {event[subject]}"] if subject else [])
    fields = [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in event.items()
              if key not in ("event", subject)]
    return " ".join(words) + (f" ({', '.join(fields)})" if fields else "")
