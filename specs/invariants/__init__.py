"""The safety invariants of SPEC.md, each written once as a pure predicate over plain data.

The same predicates serve unit tests, hypothesis schedules, the simulator, the
model checker and the harness's real-process runs, so their inputs are plain
values every driver can produce:

- ``logs``: ``Mapping[replica_id, Sequence[LogEntry]]`` holding only replicas
  assumed *correct*; a Byzantine replica's log proves nothing.
- ``certificates``: verdict certificates that clients accepted.
- ``Evidence``: signed vote sets (indexed by ``votes_digest``) and signed
  requests (indexed by request digest) gathered from batches, replies and
  certificates.  A log entry stores only the digest of its vote set, so the
  votes behind it must come from somewhere else; where they come from does not
  matter, because every vote is re-verified here against the configured keys.
- ``signed``: ``Mapping[replica_id, Sequence[Message]]``, what each correct
  replica persisted of its own signed messages.

What is checked from what:

==  ================  ===========================================================
S1  agreement         logs: equal entries at every position, equal entry lists at
                      every sequence number both replicas executed.
S2  validity          certificates that say ALLOW (their own vote sets), and ALLOW
                      log entries whose vote set is in the evidence (found by
                      recomputing ``votes_digest``).  With ``require_evidence``, an
                      ALLOW entry whose votes cannot be found is itself reported:
                      an ALLOW nobody can justify is treated as unjustified.
S3  integrity         logs alone for the hash chain; the evidence's requests for
                      "every finalized request was signed by its client"; the
                      certificates' own signatures for certificate integrity.
S4  exactly-once      logs (one entry per key per replica) and certificates (one
                      outcome per key, equal to the correct replicas' log entry).
S5  deadline          logs and certificates.
S6  stability         two snapshots of the same replicas' logs, taken in order.
S7  no equivocation   ``signed``.
S8  checkpoints       ``signed`` and each correct replica's stable proof.
S9  state transfer    each adoption a correct replica recorded (its proof, its state
                      digest, the log head it names), ``signed`` and the logs: the
                      proof certifies the digest, correct replicas checkpointed the
                      same digest there, and every correct log is a prefix of every
                      longer correct log.
S10 vote floor        ``signed`` in the order each replica persisted it (a repeated
                      message counts where it first appears): after a VIEW-CHANGE
                      for view w, no PRE-PREPARE, PREPARE or COMMIT of a view below w.
S11 epochs            ``signed`` and the epoch chain: no correct replica signs for a
                      seq of an epoch it is not a member of (with that key), and no
                      view spans two epochs at a replica (``_epochs``, which also
                      judges S1-S10 per epoch: ``check_all_epochs``).
==  ================  ===========================================================

Predicates return violations and never raise on bad data: a checker that
crashes on the corruption it is looking for would hide it.

Where each lives: ``_common`` (the plain-data types, ``Violation``,
``Evidence``), ``_logs`` (S1-S6), ``_signed`` (S7-S10), ``_together``
(``check_all``) and ``_sim`` (the simulator adapter, ``SimMonitor``); every
public name is re-exported here.
"""

from __future__ import annotations

from ._common import Evidence, Logs, MAX_REQUEST_CANDIDATES, SignedByReplica, Violation
from ._epochs import check_all_epochs, check_epoch_membership, check_epoch_views
from ._logs import (allow_problem, certificate_problem, check_agreement, check_deadline, check_exactly_once,
                    check_integrity, check_stability, check_validity)
from ._signed import (check_checkpoints, check_log_prefixes, check_no_equivocation, check_state_transfers,
                      check_vote_floor)
from ._sim import SimMonitor, check_sim, gather_sim_evidence, sim_certificates
from ._together import check_all

__all__ = ["Evidence", "Logs", "MAX_REQUEST_CANDIDATES", "SignedByReplica", "SimMonitor", "Violation",
           "allow_problem", "certificate_problem", "check_agreement", "check_all", "check_all_epochs",
           "check_checkpoints", "check_epoch_membership", "check_epoch_views",
           "check_deadline", "check_exactly_once", "check_integrity", "check_log_prefixes", "check_no_equivocation",
           "check_sim", "check_stability", "check_state_transfers", "check_validity", "check_vote_floor",
           "gather_sim_evidence", "sim_certificates"]
