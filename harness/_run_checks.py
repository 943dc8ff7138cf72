"""The checkers every simulated run, and the mission's runs, end with: the spec's invariants after every
phase, linearizability per request key, real-time order, durability of certified verdicts, and the
certificate behind every verdict a client accepted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bft.core import CertificateError, Decision
from bft.testing import SimCluster

from ._history import EventType, History
from ._linearizability import CheckResult, Validity, check_keys, check_real_time_order

MESSAGES_SHOWN_MAX = 20


@dataclass
class CheckOutcome:
    validity: Validity
    summary: str
    details: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"validity": self.validity.value, "summary": self.summary, "details": self.details}



class InvariantMonitor:
    """``specs.invariants`` checked after every phase (imported lazily: it is written in parallel)."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.violations: list[str] = []
        self.missing: str | None = None
        self._monitor = None
        self._correct: set[int] | None = None

    def check(self, byzantine: set[int]) -> None:
        try:
            from specs.invariants import SimMonitor
        except ImportError as error:
            self.missing = f"specs.invariants is not importable ({error})"
            return
        correct = set(range(len(self.cluster.replicas))) - byzantine
        if self._monitor is None or correct != self._correct:
            self._monitor, self._correct = SimMonitor(self.cluster, correct), correct
        self.violations += [str(violation) for violation in self._monitor.check()]


def check_run(history: History, cluster: SimCluster, byzantine: set[int],
              monitor: InvariantMonitor | None = None) -> dict[str, CheckOutcome]:
    """Every checker over a finished run; ``history`` may differ from the cluster's (tests corrupt it)."""
    checks = {}
    if monitor is not None:
        checks["invariants"] = invariant_outcome(monitor)
    per_key = check_keys(history)
    checks["linearizability"] = outcome_of(per_key, f"{per_key.partitions} request keys checked independently")
    order = check_real_time_order(history)
    checks["real_time_order"] = outcome_of(order, "a key certified before another was first sent has a lower seq")
    correct = set(range(len(cluster.replicas))) - byzantine
    checks["durability"] = check_durability(history, cluster, correct)
    checks["certified_verdicts"] = check_certificates(history, cluster)
    return checks


def invariant_outcome(monitor: InvariantMonitor) -> CheckOutcome:
    if monitor.missing:
        return CheckOutcome(Validity.UNKNOWN, monitor.missing)
    if monitor.violations:
        return CheckOutcome(Validity.INVALID, f"{len(monitor.violations)} invariant violations",
                            monitor.violations[:MESSAGES_SHOWN_MAX])
    return CheckOutcome(Validity.VALID, "S1-S8 hold after every phase")


def outcome_of(result: CheckResult, summary: str) -> CheckOutcome:
    details = [f"{name}: {value}" for name, value in (result.counterexample or {}).items()] + result.notes
    return CheckOutcome(result.validity, summary if result.validity is Validity.VALID else
                        f"{result.validity.value}: {(result.counterexample or {}).get('problem', 'see details')}",
                        details)


def check_durability(history: History, cluster: SimCluster, correct: set[int]) -> CheckOutcome:
    """Every certified verdict is in every correct replica's durable log, unchanged.

    A replica that has not executed up to the certificate's seq yet is behind,
    not lossy: it is listed (catching up is state transfer's job), not failed.
    A replica that executed past that seq without the entry lost it.
    """
    logs = {replica_id: {entry.key: entry for entry in cluster.stores[replica_id].log} for replica_id in correct}
    problems, behind = [], {replica_id: 0 for replica_id in correct}
    # Every distinct (key, verdict, seq) a client accepted; retries that agree count once.
    certified = {(op.key, op.verdict, op.seq): op for op in history.operations() if op.outcome is EventType.OK}
    for (key, _, _), operation in sorted(certified.items()):
        holders = 0
        for replica_id in sorted(correct):
            entry = logs[replica_id].get(key)
            if entry is not None:
                holders += 1
                if (entry.decision.value, entry.seq) != (operation.verdict, operation.seq):
                    problems.append(f"replica {replica_id} logged {key} as {entry.decision.value} at seq {entry.seq}, "
                                    f"the certificate says {operation.verdict} at seq {operation.seq}")
            elif cluster.replicas[replica_id].last_executed >= operation.seq:
                problems.append(f"replica {replica_id} executed past seq {operation.seq} but its log lacks {key}")
            else:
                behind[replica_id] += 1
        if holders == 0 and correct:
            problems.append(f"no correct replica's log holds certified {key} "
                            f"({operation.verdict} at seq {operation.seq})")
    notes = [f"replica {r} is behind on {count} certified verdicts" for r, count in sorted(behind.items()) if count]
    if problems:
        return CheckOutcome(Validity.INVALID, f"{len(problems)} certified verdicts lost or changed",
                            problems[:MESSAGES_SHOWN_MAX] + notes)
    return CheckOutcome(Validity.VALID, f"{len(certified)} certified verdicts held by every up-to-date correct replica",
                        notes)


def check_certificates(history: History, cluster: SimCluster) -> CheckOutcome:
    """No ALLOW (nor DENY) reached a client without a certificate that verifies and says what the history says."""
    problems, allows = [], 0
    for event in history:
        if event.type is not EventType.OK:
            continue
        allows += event.verdict == Decision.ALLOW.value
        problem = _certificate_problem(event, cluster)
        if problem:
            problems.append(f"{event.verdict} for {event.client_id}#{event.request_number}: {problem}")
    if problems:
        return CheckOutcome(Validity.INVALID, f"{len(problems)} accepted verdicts lack a valid certificate",
                            problems[:MESSAGES_SHOWN_MAX])
    return CheckOutcome(Validity.VALID, f"every accepted verdict ({allows} ALLOW) has a certificate that verifies")


def _certificate_problem(event, cluster: SimCluster) -> str | None:
    try:
        certificate = event.certificate_object()
        certificate.verify(cluster.config)
    except (CertificateError, ValueError) as error:
        return f"certificate does not verify: {error}"
    if (certificate.request.key, certificate.decision.value, certificate.seq) != (event.key, event.verdict, event.seq):
        return (f"certificate says {certificate.decision.value} at seq {certificate.seq} "
                f"for {certificate.request.key}, "
                f"the history says {event.verdict} at seq {event.seq}")
    return None
