"""The invariants across configuration epochs (specs/RECONFIGURATION.md section 4), and S11.

``epochs`` is the chain as plain data: ``(starts_after, config)`` pairs in order,
the genesis first with ``starts_after`` 0; epoch k orders the seqs in
``(starts_after_k, starts_after_{k+1}]``.  Every predicate that needs keys or a
quorum reads them from the epoch of the seq it judges: "quorum" in S1-S10 means
the quorum of the epoch the log assigns to the seq.  The checks that need no
keys (agreement, exactly-once, deadline, the hash chain, log prefixes, S7, S10)
run over the whole logs, across the switches.

S11 (epochs hand over at their activation seq):
(a) no correct replica signs a PRE-PREPARE, PREPARE, COMMIT or CHECKPOINT for a
    seq of a later epoch unless it is a member of that epoch with the key it
    signs with, so a replica removed (or re-keyed) at the activation seq ``a``
    signs nothing above ``a``;
(b) no view spans two epochs at a correct replica: every PRE-PREPARE, PREPARE or
    COMMIT it signs for a seq of epoch k is in a view above every view in which
    it signed one for a seq of an earlier epoch.  So the old epoch orders
    nothing above ``a``: a replica that kept ordering past ``a`` in the old view
    would sign for a seq of the new epoch in a view of the old one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from bft.core import Checkpoint, ClusterConfig, Commit, PrePrepare, Prepare, VerdictCertificate

from ._common import Evidence, Logs, SignedByReplica, Violation, _signature_ok, _verifier
from ._logs import (certificate_violations, check_agreement, check_deadline, check_exactly_once, check_integrity,
                    check_validity, _request_problems)
from ._signed import check_checkpoints, check_log_prefixes, check_no_equivocation, check_state_transfers, \
    check_vote_floor

Epochs = Sequence[tuple[int, ClusterConfig]]
_PHASES = (PrePrepare, Prepare, Commit, Checkpoint)


def _epoch_index(epochs: Epochs, seq: int) -> int:
    return max(index for index, (starts_after, _) in enumerate(epochs) if starts_after < max(seq, 1))


def _in_epoch(epochs: Epochs, index: int, seq: int) -> bool:
    return _epoch_index(epochs, seq) == index


def check_epoch_views(signed: SignedByReplica, epochs: Epochs) -> list[Violation]:
    """S11 (b) over what correct replicas persisted of their own signed messages."""
    violations = []
    for replica_id in sorted(signed):
        views: dict[int, list[int]] = {}  # Epoch index -> the views of this replica's phase messages for its seqs.
        for message in signed[replica_id]:
            if type(message) in (PrePrepare, Prepare, Commit) and message.replica_id == replica_id:
                views.setdefault(_epoch_index(epochs, message.seq), []).append(message.view)
        highest_before = -1
        for index in sorted(views):
            if min(views[index]) <= highest_before:
                violations.append(Violation("S11", f"replica {replica_id} signed for a seq of epoch {index} in view "
                                                   f"{min(views[index])}, a view in which it also signed for an "
                                                   f"earlier epoch's seq (up to view {highest_before})"))
            highest_before = max(highest_before, max(views[index]))
    return violations


def check_epoch_membership(signed: SignedByReplica, epochs: Epochs) -> list[Violation]:
    """S11 (a) over what correct replicas persisted of their own signed messages."""
    violations = []
    first_switch = epochs[1][0] if len(epochs) > 1 else None
    for replica_id in sorted(signed):
        for message in signed[replica_id]:
            if type(message) not in _PHASES or message.replica_id != replica_id:
                continue
            if first_switch is None or message.seq <= first_switch:
                continue  # The genesis epoch's membership is what S1-S10 already assume.
            index = _epoch_index(epochs, message.seq)
            config = epochs[index][1]
            if replica_id >= config.replica_count or not _signature_ok(_verifier(config), message):
                violations.append(Violation("S11", f"replica {replica_id} signed a {type(message).__name__} for seq "
                                                   f"{message.seq} of epoch {index}, which it is not a member of "
                                                   f"with that key"))
    return violations


def check_all_epochs(logs: Logs, epochs: Epochs, certificates: Sequence[VerdictCertificate] = (), *,
                     evidence: Evidence | None = None, signed: SignedByReplica | None = None,
                     stable_proofs: Mapping[int, Sequence[Checkpoint]] | None = None,
                     adoptions: Mapping[int, Sequence] | None = None,
                     require_evidence: bool = False) -> list[Violation]:
    """``check_all`` with each seq judged under its own epoch's configuration, plus S11."""
    assert epochs and epochs[0][0] == 0, "the chain starts with the genesis epoch"
    cluster_id = epochs[0][1].cluster_id
    merged = Evidence(dict(evidence.vote_sets), {k: list(v) for k, v in evidence.requests.items()}) \
        if evidence else Evidence()
    for certificate in certificates:
        merged.add_certificate(cluster_id, certificate)
    violations = check_agreement(logs) + check_integrity(logs) + check_exactly_once(logs, certificates)
    violations += check_deadline(logs, certificates) + check_log_prefixes(logs)
    if signed is not None:
        violations += check_no_equivocation(signed) + check_vote_floor(signed)
        violations += check_epoch_membership(signed, epochs) + check_epoch_views(signed, epochs)
    for index, (_, config) in enumerate(epochs):
        epoch_logs = {r: tuple(e for e in log if _in_epoch(epochs, index, e.seq)) for r, log in logs.items()}
        epoch_certificates = [c for c in certificates if _in_epoch(epochs, index, c.seq)]
        violations += check_validity(epoch_logs, config, merged, epoch_certificates, require_evidence=require_evidence)
        for replica_id in sorted(epoch_logs):
            violations += _request_problems(replica_id, epoch_logs[replica_id], config, merged, require_evidence)
        violations += certificate_violations(epoch_certificates, config)
        if signed is None:
            continue
        epoch_signed = {r: [m for m in messages if isinstance(m, Checkpoint) and _in_epoch(epochs, index, m.seq)]
                        for r, messages in signed.items()}
        epoch_proofs = {r: proof for r, proof in (stable_proofs or {}).items()
                        if proof and _in_epoch(epochs, index, proof[0].seq)}
        violations += check_checkpoints(epoch_signed, config, epoch_proofs)
        epoch_adoptions = {r: [a for a in found if _in_epoch(epochs, index, a.seq)]
                           for r, found in (adoptions or {}).items()}
        violations += check_state_transfers(epoch_adoptions, logs, signed, config)
    return violations
