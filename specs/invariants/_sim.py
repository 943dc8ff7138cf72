"""The simulator adapter: the invariants over a running ``SimCluster``, checked after every phase."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from bft.core import LogEntry, PrePrepare, VerdictCertificate

from ._common import Evidence, Violation
from ._epochs import check_all_epochs
from ._logs import check_stability
from ._together import check_all

if TYPE_CHECKING:
    from bft.testing import SimCluster


def sim_certificates(cluster: "SimCluster") -> list[VerdictCertificate]:
    return [record.certificate for record in cluster.operations.values() if record.certificate is not None]


def gather_sim_evidence(cluster: "SimCluster", correct: Iterable[int], evidence: Evidence) -> Evidence:
    """Add to ``evidence`` every signed request and vote set the simulation still holds.

    Sources: the clients' submitted requests, every replica's accepted and
    persisted pre-prepares, and correct replicas' cached replies.  Sources may be
    Byzantine: nothing gathered here is trusted, only re-verified.
    """
    cluster_id = cluster.config.cluster_id
    for record in cluster.operations.values():
        evidence.add_request(cluster_id, record.request)
    for replica, store in zip(cluster.replicas, cluster.stores):
        for slot in replica.slots.values():
            if slot.preprepare is not None:
                evidence.add_batch_entries(cluster_id, slot.preprepare)
        for message in store.load().signed:
            if isinstance(message, PrePrepare):
                evidence.add_batch_entries(cluster_id, message)
    for replica_id in correct:
        for client_record in cluster.replicas[replica_id].execution.clients.values():
            for reply in client_record.replies.values():
                evidence.add_votes(getattr(reply, "votes", ()))  # Restored outcomes are log entries, without votes.
    return evidence


def sim_epochs(cluster: "SimCluster", correct: Iterable[int]) -> list[tuple[int, object]]:
    """The longest epoch chain a correct replica executed, as (starts_after, config) pairs (the chains of
    correct replicas are prefixes of each other, by S1)."""
    chains = [cluster.replicas[r].execution.accountability.epochs.epochs for r in correct]
    longest = max(chains, key=len, default=())
    return [(epoch.starts_after, epoch.config) for epoch in longest] or [(0, cluster.config)]


def check_sim(cluster: "SimCluster", correct: set[int], evidence: Evidence | None = None) -> list[Violation]:
    """S1..S5, S7 and S8 over a simulation, treating the replicas in ``correct`` as correct.

    Logs come from ``cluster.stores[i].log`` (checked equal to the finalized
    stream ``cluster.finalized[i]``), certificates from ``cluster.operations``.
    Evidence must cover every ALLOW here (``require_evidence``): pass the same
    ``evidence`` on every call of a long run so that votes whose replies left the
    client window are still known.
    """
    evidence = gather_sim_evidence(cluster, correct, evidence if evidence is not None else Evidence())
    durable = {replica_id: cluster.stores[replica_id].load() for replica_id in sorted(correct)}
    logs = {replica_id: state.log for replica_id, state in durable.items()}
    violations = [Violation("S3", f"replica {replica_id}'s persisted log differs from what it finalized")
                  for replica_id in sorted(correct)
                  if cluster.record_history and list(logs[replica_id]) != cluster.finalized[replica_id]]
    epochs = sim_epochs(cluster, correct)
    if len(epochs) > 1:  # Reconfigured: every seq is judged under its own epoch's configuration.
        return violations + check_all_epochs(
            logs, epochs, sim_certificates(cluster), evidence=evidence,
            signed={replica_id: state.signed for replica_id, state in durable.items()},
            stable_proofs={replica_id: cluster.replicas[replica_id].stable_proof for replica_id in correct},
            adoptions={replica_id: tuple(cluster.replicas[replica_id].state_adoptions) for replica_id in correct},
            require_evidence=True)
    return violations + check_all(
        logs, cluster.config, sim_certificates(cluster), evidence=evidence,
        signed={replica_id: state.signed for replica_id, state in durable.items()},
        stable_proofs={replica_id: cluster.replicas[replica_id].stable_proof for replica_id in correct},
        adoptions={replica_id: tuple(cluster.replicas[replica_id].state_adoptions) for replica_id in correct},
        require_evidence=True)


class SimMonitor:
    """Checks a simulation after every phase: ``check_sim`` plus S6 between consecutive calls.

    It keeps the evidence gathered so far, so votes and requests that left the
    replicas' bounded windows still back the entries they justified.
    """

    def __init__(self, cluster: "SimCluster", correct: set[int]) -> None:
        assert correct <= set(range(len(cluster.replicas))), correct
        self.cluster = cluster
        self.correct = set(correct)
        self.evidence = Evidence()
        self._previous: dict[int, tuple[LogEntry, ...]] = {replica_id: () for replica_id in self.correct}
        self.checks = 0

    def check(self) -> list[Violation]:
        violations = check_sim(self.cluster, self.correct, self.evidence)
        current = {replica_id: self.cluster.stores[replica_id].load().log for replica_id in self.correct}
        violations += check_stability(self._previous, current)
        self._previous = current
        self.checks += 1
        return violations

    def replica_joined(self, replica_id: int) -> None:
        """A replica joined (a new id, or a replacement with a fresh store and no history) and is correct."""
        self.correct.add(replica_id)
        self._previous[replica_id] = ()

    def assert_ok(self, context: str = "") -> None:
        violations = self.check()
        assert not violations, f"{context}\n" + "\n".join(map(str, violations[:20]))
