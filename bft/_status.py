"""What each replica of a cluster reports about itself, read from its Prometheus endpoint.

``cluster_status`` scrapes every replica's metrics address at once (one thread
each, every request bounded by a timeout) and parses the text with
``prometheus_client.parser``.  A replica whose endpoint cannot be reached is
reported as such, never raised: the point of a status command is to keep
working when parts of the cluster do not.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from prometheus_client.parser import text_string_to_metric_families

from ._cluster_file import Address, ClusterFile, format_address
from ._processes import accepts_connections

SCRAPE_TIMEOUT_S = 2.0
MAX_SCRAPE_BYTES = 4 * 1024 * 1024
# The gauges a replica exposes (bft.runtime metrics) and the status fields they fill.
GAUGES = {"bft_view": "view", "bft_last_executed_seq": "last_executed_seq",
          "bft_stable_checkpoint_seq": "stable_checkpoint_seq", "bft_peers_connected": "peers_connected"}
HEALTH_STATES = ("ok", "isolated", "listening", "down", "unknown")


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica's self-report.  ``health``:

    - ``ok``: metrics reachable and connected to enough peers to form a quorum with them;
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

    def __post_init__(self) -> None:
        assert self.health in HEALTH_STATES, self.health

    def as_dict(self) -> dict:
        return {"replica": self.replica_id, "address": format_address(self.address),
                "metrics": format_address(self.metrics_address) if self.metrics_address else None,
                "health": self.health, "detail": self.detail, "view": self.view,
                "last_executed_seq": self.last_executed_seq, "stable_checkpoint_seq": self.stable_checkpoint_seq,
                "peers_connected": self.peers_connected}


def parse_gauges(text: str) -> dict[str, int]:
    """The status gauges present in a Prometheus exposition text (first sample of each); ValueError if unparsable."""
    values: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        field_name = GAUGES.get(family.name)
        if field_name is not None and family.samples and field_name not in values:
            values[field_name] = int(family.samples[0].value)
    return values


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
            gauges = parse_gauges(scrape(entry.metrics_address, timeout_s))
        except (OSError, ValueError, urllib.error.HTTPError) as error:
            problem = f"metrics unreachable ({_short(error)})"
        else:
            return _from_gauges(base, gauges, cluster.config.quorum - 1)
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
        return list(pool.map(lambda replica_id: replica_status(cluster, replica_id, timeout_s), replica_ids))


def _from_gauges(base: ReplicaStatus, gauges: dict[str, int], peers_needed: int) -> ReplicaStatus:
    missing = [name for name in GAUGES.values() if name not in gauges]
    peers = gauges.get("peers_connected")
    if missing:
        # Up, but it does not say enough to vouch for it.
        return replace(base, health="listening", detail=f"metrics lack {', '.join(missing)}", **gauges)
    health = "ok" if peers >= peers_needed else "isolated"
    detail = f"{peers} peers connected, {peers_needed} needed for a quorum"
    return replace(base, health=health, detail=detail, **gauges)


def _short(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason if reason is not None else error) or type(error).__name__
