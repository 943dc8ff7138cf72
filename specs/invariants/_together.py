"""``check_all``: every invariant that the given data can decide, at once."""

from __future__ import annotations

from typing import Mapping, Sequence

from bft.core import Checkpoint, ClusterConfig, VerdictCertificate

from ._common import Evidence, Logs, SignedByReplica, Violation
from ._logs import check_agreement, check_deadline, check_exactly_once, check_integrity, check_validity
from ._signed import (check_checkpoints, check_log_prefixes, check_no_equivocation, check_state_transfers,
                      check_vote_floor)


def check_all(logs: Logs, config: ClusterConfig, certificates: Sequence[VerdictCertificate] = (), *,
              evidence: Evidence | None = None, signed: SignedByReplica | None = None,
              stable_proofs: Mapping[int, Sequence[Checkpoint]] | None = None,
              adoptions: Mapping[int, Sequence] | None = None,
              require_evidence: bool = False) -> list[Violation]:
    """S1..S5 and the log-prefix half of S9 over logs and certificates, plus S7, S8 and the rest of S9
    when signed messages are given.

    Certificates also count as evidence (their requests and vote sets).
    ``evidence`` is not modified.
    """
    merged = Evidence(dict(evidence.vote_sets), {k: list(v) for k, v in evidence.requests.items()}) \
        if evidence else Evidence()
    for certificate in certificates:
        merged.add_certificate(config.cluster_id, certificate)
    violations = check_agreement(logs)
    violations += check_validity(logs, config, merged, certificates, require_evidence=require_evidence)
    violations += check_integrity(logs, config, merged, certificates, require_evidence=require_evidence)
    violations += check_exactly_once(logs, certificates)
    violations += check_deadline(logs, certificates)
    violations += check_log_prefixes(logs)
    if signed is not None:
        violations += check_no_equivocation(signed)
        violations += check_vote_floor(signed)
        violations += check_checkpoints(signed, config, stable_proofs)
        violations += check_state_transfers(adoptions or {}, logs, signed, config)
    return violations
