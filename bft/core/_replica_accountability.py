"""The replica's accountability component: turning proofs and endorsements into ordered commands.

A replica that rejects a phase message as equivocation attaches the proof to
its ``Rejection`` (the rejection itself changes nothing, like every rejection).
The driver hands the proof back through ``report_equivocation``, the same way
it hands back policy decisions through ``record_decision``.  The replica then
signs an evidence command as "replica:I", takes it into its own pending pool
and sends it to every other replica, so it is ordered like any request; its
effect (quarantine) happens when it executes, at the same log position on every
correct replica.  ``endorse_blocklist_pattern`` proposes a shared-blocklist
pattern the same way.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Mapping

from ._accountability import (EquivocationProof, CommandError, canonical_json, endorsement_document,
                              parse_command)
from ._codec import request_digest
from ._config import replica_signer_id
from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages import MAX_ACTION_BYTES, Request, Risk

REPORTED_PROOFS_MAX = 64


class Accountability:
    """Owns what this replica reported and the numbering of its own commands; the replicated
    accountability state itself lives in the execution state, where commands take effect."""

    def __init__(self, replica) -> None:
        self.replica = replica
        self._reported_proofs: OrderedDict[tuple, None] = OrderedDict()
        self._evidence_in_flight: dict[int, bytes] = {}  # accused -> digest of our pending evidence request
        self._last_command_number = 0

    def check_bounds(self) -> None:
        assert len(self._reported_proofs) <= REPORTED_PROOFS_MAX
        assert len(self._evidence_in_flight) <= self.replica.config.replica_count

    def forget_peers_outside(self, members: frozenset[int]) -> None:
        """A new epoch: evidence in flight against replicas that left it is moot."""
        self._evidence_in_flight = {r: d for r, d in self._evidence_in_flight.items() if r in members}

    def report_equivocation(self, proof: EquivocationProof) -> None:
        """Submit ``proof`` (from ``Rejection.evidence``) as an evidence command, once per proof."""
        replica = self.replica
        if not isinstance(proof, EquivocationProof) or proof.problem(replica._verifier) is not None:
            raise LocalProtocolError("report_equivocation needs a proof taken from a Rejection")
        current = replica.accountability.quarantined.get(proof.accused)
        if proof.accused == replica.replica_id or proof.key in self._reported_proofs:
            return
        if current is not None and current.cause == "evidence":
            return  # Already isolated on proof; more proofs would only grow the log.
        in_flight = self._evidence_in_flight.get(proof.accused)
        if in_flight is not None and replica.pending.get(in_flight) is not None:
            return  # One proof per accused at a time: an equivocator must not make us flood the log.
        document = proof.to_document()
        if len(canonical_json(document).encode()) > MAX_ACTION_BYTES:
            return  # Two large pre-prepares do not fit in a request; conflicting prepares or commits will.
        self._reported_proofs[proof.key] = None
        while len(self._reported_proofs) > REPORTED_PROOFS_MAX:
            self._reported_proofs.popitem(last=False)
        request = self.submit_own_command(document)
        if request is not None:
            self._evidence_in_flight[proof.accused] = request_digest(replica.config.cluster_id, request)
        assert len(self._evidence_in_flight) <= replica.config.replica_count

    def endorse_blocklist_pattern(self, pattern: str, ttl_ms: int) -> None:
        self.submit_own_command(endorsement_document(pattern, ttl_ms))

    def submit_own_command(self, document: Mapping[str, Any]) -> Request | None:
        """Sign ``document`` as this replica's command, take it into our pending pool and send it to the others."""
        replica = self.replica
        signer_id = replica_signer_id(replica.replica_id)
        action = canonical_json(dict(document))
        try:
            parse_command(signer_id, action, Risk.LOW)
        except (CommandError, json.JSONDecodeError) as error:
            raise LocalProtocolError(f"malformed command: {error}") from None
        # Request numbers must grow across restarts too; the clock does, so it bounds them from below.
        number = max(self._last_command_number + 1, replica.now_ms, 1)
        self._last_command_number = number
        deadline_ms = replica.now_ms + replica.config.accountability.command_deadline_ms
        request = replica._sign(Request(signer_id, number, Risk.LOW, action, deadline_ms, bytes(64)))
        try:
            replica.requests.on_request(request)
        except RemoteProtocolError as error:
            replica._reject(error.from_sender(f"replica {replica.replica_id} (own command)"))
            return None
        replica._send_to_others(request)
        return request
