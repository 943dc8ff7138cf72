"""Messages and signature verifications per verdict, counted on the real core in the deterministic simulator.

The simulator (``bft.testing.SimCluster``) runs the real replicas and clients
on a clean network (no drops, no duplicates, no view change) and a closed loop
of several clients, as ``_core_cost`` drives it.  Every message put on the
wire is counted by type (client requests to each replica and replies included);
verifications are the signatures the replicas' and clients' ``Verifier``
really checked (cache hits are not verifications); persisting rounds are the
store writes the replicas made (one input's output each here; the runtime's
group commit can only merge some under load, never add any).  Counts depend only on the
seed, never on the machine, so they are comparable between any two runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bft.storage import MemoryStore
from bft.testing import SimCluster

from ._core_cost import Workload, drive


@dataclass(frozen=True, slots=True)
class MessageCountSettings:
    replica_counts: tuple[int, ...]
    clients: int
    requests: int  # In all, over every client.

    def __post_init__(self) -> None:
        assert self.replica_counts and min(self.replica_counts) >= 4
        assert 1 <= self.clients <= self.requests


class _CountingStore(MemoryStore):
    """A store in memory that counts its writes: each is one transaction (one fsync) in SQLite."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def persist(self, items, **options) -> int:
        self.writes += 1
        return super().persist(items, **options)


class _CountingCluster(SimCluster):
    """A simulator that counts every message it puts on the wire, by message type."""

    def __init__(self, *arguments, **options) -> None:
        self.sent_by_type: Counter[str] = Counter()
        super().__init__(*arguments, **options)

    def _send_one(self, source, destination, message) -> None:
        self.sent_by_type[type(message).__name__] += 1
        super()._send_one(source, destination, message)


def count_per_verdict(replica_count: int, settings: MessageCountSettings, seed: int = 1) -> dict:
    """Drive ``settings.requests`` requests through a clean simulated cluster; counts per certified verdict."""
    workload = Workload(replica_count, settings.requests, clients=settings.clients, seed=seed)
    client_ids = tuple(f"client-{i}" for i in range(settings.clients))
    cluster = _CountingCluster(replica_count, seed=seed, client_ids=client_ids, full_invariant_checks=False,
                               store_factory=lambda replica_id: _CountingStore())
    verdicts = drive(cluster, workload)
    assert verdicts > 0, f"no verdict certified at n = {replica_count} on a clean simulated network"
    replica_checks = sum(replica._verifier.checks for replica in cluster.replicas)
    client_checks = sum(client._verifier.checks for client in cluster.clients.values())
    messages = sum(cluster.sent_by_type.values())
    return {
        "replica_count": replica_count, "clients": settings.clients, "requests": settings.requests,
        "verdicts": verdicts, "seed": seed,
        "messages_per_verdict": round(messages / verdicts, 2),
        "messages_per_verdict_by_type": {kind: round(count / verdicts, 2)
                                         for kind, count in sorted(cluster.sent_by_type.items())},
        "verifications_per_verdict": round((replica_checks + client_checks) / verdicts, 2),
        "persisting_rounds_per_verdict": round(sum(store.writes for store in cluster.stores) / verdicts, 2),
        "verifications_per_verdict_by_party": {"replicas": round(replica_checks / verdicts, 2),
                                               "clients": round(client_checks / verdicts, 2)},
    }


def count_messages(settings: MessageCountSettings) -> list[dict]:
    return [count_per_verdict(replica_count, settings) for replica_count in settings.replica_counts]
