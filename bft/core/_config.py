"""Cluster configuration and limits, validated once at start-up.

Relations between settings are checked here (n >= 3f+1, the quorum, rule floors,
window versus checkpoint interval) so that the core can assume them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ._codec import MAX_WIRE_BYTES
from ._messages import (MAX_ACTION_BYTES, MAX_ACTION_DEPTH, MAX_BATCH_ENTRIES, MAX_ID_BYTES, MAX_PREPARED_PROOFS,
                        MAX_REPLICAS, Risk)
from ._quorum import max_faulty, quorum_size, reply_quorum
from ._verdict import VerdictRule, default_rules, rule_problem


class ConfigError(ValueError):
    """The configuration is unsafe or inconsistent; the message says which setting and why."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound the core enforces.  Timer settings are in ticks of the driver's clock."""

    max_batch_requests: int = 64
    max_in_flight_batches: int = 8
    log_window: int = 128
    checkpoint_interval: int = 32
    max_pending_requests: int = 4096
    client_window: int = 64
    max_clock_skew_ms: int = 1000
    vote_wait_ticks: int = 5
    view_change_timeout_ticks: int = 50
    view_change_timeout_ticks_max: int = 800
    orphan_vote_ticks: int = 100
    max_message_bytes: int = 4 * 1024 * 1024
    # State transfer (``_state_transfer``): log entries per fetched chunk, the largest log gap a
    # replica fills by transfer (it buffers the gap until it verifies against the certified head),
    # ticks to wait for ordinary execution to reach a certified checkpoint before fetching, and
    # ticks before an unanswered fetch is asked of the next peer.
    state_transfer_chunk_entries: int = 256
    state_transfer_entries_max: int = 65_536
    state_transfer_wait_ticks: int = 10
    state_transfer_retry_ticks: int = 20
    # A replica that heard nothing for this long probes a peer even if few ticks passed: a quiescent
    # replica is ticked rarely (the runtime's idle_tick_ms), and must still notice a cluster that moved on.
    quiet_probe_ms: int = 500
    # The shape of an action a client may sign: brackets deep (the object itself is 1) and canonical
    # JSON bytes.  The protocol maxima bound every replica whatever is configured.
    action_depth_max: int = MAX_ACTION_DEPTH
    action_bytes_max: int = MAX_ACTION_BYTES

    def problem(self) -> str | None:
        if self.quiet_probe_ms < 1:
            return "quiet_probe_ms must be positive"
        if not 1 <= self.max_batch_requests <= MAX_BATCH_ENTRIES:
            return f"max_batch_requests must be in [1, {MAX_BATCH_ENTRIES}]"
        if self.checkpoint_interval < 1 or self.log_window < 2 * self.checkpoint_interval:
            return "log_window must be at least twice checkpoint_interval so the window can advance"
        if not 1 <= self.max_in_flight_batches <= self.log_window:
            return "max_in_flight_batches must be in [1, log_window]"
        if min(self.max_pending_requests, self.client_window, self.vote_wait_ticks + 1) < 1:
            return "max_pending_requests and client_window must be positive, vote_wait_ticks non-negative"
        if not 1 <= self.view_change_timeout_ticks <= self.view_change_timeout_ticks_max:
            return "view_change_timeout_ticks must be in [1, view_change_timeout_ticks_max]"
        if self.max_clock_skew_ms < 0 or self.orphan_vote_ticks < 1:
            return "max_clock_skew_ms must be non-negative and orphan_vote_ticks positive"
        if not 1024 <= self.max_message_bytes <= MAX_WIRE_BYTES:
            return f"max_message_bytes must be in [1024, {MAX_WIRE_BYTES}]"
        if self.log_window > MAX_PREPARED_PROOFS:
            return f"log_window must be at most {MAX_PREPARED_PROOFS} (a VIEW-CHANGE carries one proof per slot)"
        if not 1 <= self.state_transfer_chunk_entries <= min(4096, self.state_transfer_entries_max):
            # 4096 entries of at most ~600 bytes each keep a chunk far below the state-transfer frame limit.
            return "state_transfer_chunk_entries must be in [1, min(4096, state_transfer_entries_max)]"
        if not 1 <= self.action_depth_max <= MAX_ACTION_DEPTH:
            return f"action_depth_max must be in [1, {MAX_ACTION_DEPTH}]"
        if not 2 <= self.action_bytes_max <= MAX_ACTION_BYTES:
            return f"action_bytes_max must be in [2, {MAX_ACTION_BYTES}]"
        if min(self.state_transfer_wait_ticks + 1, self.state_transfer_retry_ticks) < 1:
            return "state_transfer_wait_ticks must be non-negative and state_transfer_retry_ticks positive"
        return None


# Request signers with these prefixes are not ordinary clients: a request from one of them is a
# command to the replicated accountability state (see ``_accountability``).  "replica:3" signs
# with replica 3's key, "operator:alice" with the key listed under "alice" in ``operator_keys``.
REPLICA_SIGNER_PREFIX = "replica:"
OPERATOR_SIGNER_PREFIX = "operator:"
RESERVED_SIGNER_PREFIXES = (REPLICA_SIGNER_PREFIX, OPERATOR_SIGNER_PREFIX)


def replica_signer_id(replica_id: int) -> str:
    return f"{REPLICA_SIGNER_PREFIX}{replica_id}"


def operator_signer_id(name: str) -> str:
    return f"{OPERATOR_SIGNER_PREFIX}{name}"


@dataclass(frozen=True, slots=True)
class AccountabilityOptions:
    """Bounds and switches of the accountability state; every replica of a cluster must use the same.

    Detection of drifting replicas is always on and only raises alerts; isolating a
    merely suspicious replica automatically is the deployer's choice
    (``auto_quarantine_suspects``), off by default.  Proven equivocators are always
    quarantined.  Rates are in per mille so that every replica computes them in integers.

    A replica is suspect when it is one-sided: it votes DENY (or ALLOW) at most
    ``one_sided_share_permille`` of its peers' median DENY (ALLOW) rate, *and* it
    went against the other voters on at least ``against_peers_permille`` of the
    (at least ``suspicion_min_contested``) verdicts where most of them voted the
    other way.  Either half alone is normal for honest but different policies.
    """

    auto_quarantine_suspects: bool = False
    suspicion_window_entries: int = 200
    suspicion_min_votes: int = 50
    suspicion_min_contested: int = 20
    one_sided_share_permille: int = 100
    against_peers_permille: int = 900
    blocklist_patterns_max: int = 64
    blocklist_endorsements_per_replica_max: int = 16
    blocklist_ttl_ms_max: int = 7 * 24 * 3600 * 1000
    evidence_records_max: int = 256
    command_deadline_ms: int = 60_000

    def problem(self) -> str | None:
        if not 1 <= self.suspicion_min_votes <= self.suspicion_window_entries <= 100_000:
            return "suspicion_min_votes must be in [1, suspicion_window_entries] and the window at most 100000"
        if not 1 <= self.suspicion_min_contested <= self.suspicion_window_entries:
            return "suspicion_min_contested must be in [1, suspicion_window_entries]"
        if not (1 <= self.one_sided_share_permille <= 1000 and 501 <= self.against_peers_permille <= 1000):
            return "one_sided_share_permille must be in [1, 1000] and against_peers_permille in [501, 1000]"
        if not (1 <= self.blocklist_patterns_max <= 4096 and 1 <= self.blocklist_endorsements_per_replica_max <= 4096):
            return "blocklist_patterns_max and blocklist_endorsements_per_replica_max must be in [1, 4096]"
        if min(self.blocklist_ttl_ms_max, self.evidence_records_max, self.command_deadline_ms) < 1:
            return "blocklist_ttl_ms_max, evidence_records_max and command_deadline_ms must be positive"
        return None


@dataclass(frozen=True)
class ClusterConfig:
    """Who is in the cluster, how many may be faulty, and the verdict rules."""

    cluster_id: str
    replica_keys: tuple[bytes, ...]
    client_keys: Mapping[str, bytes]
    faulty_max: int
    rules: Mapping[Risk, VerdictRule]
    limits: Limits = field(default_factory=Limits)
    operator_keys: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    accountability: AccountabilityOptions = field(default_factory=AccountabilityOptions)
    # How many operators of this epoch must sign a configuration change (``_reconfiguration``).
    operator_threshold: int = 1

    @staticmethod
    def create(cluster_id: str, replica_keys: tuple[bytes, ...], client_keys: Mapping[str, bytes],
               faulty_max: int | None = None, rules: Mapping[Risk, VerdictRule] | None = None,
               limits: Limits | None = None, operator_keys: Mapping[str, bytes] | None = None,
               accountability: AccountabilityOptions | None = None,
               operator_threshold: int = 1) -> "ClusterConfig":
        """A validated configuration.

        ``client_keys`` of the result also holds the reserved command signers
        ("replica:I" and "operator:NAME") with their keys, so every verifier
        built from it authenticates commands like any request.  Passing such a
        result's ``client_keys`` back in is accepted as long as the reserved
        entries are exactly the derived ones.
        """
        replica_count = len(replica_keys)
        faulty = max_faulty(max(replica_count, 1)) if faulty_max is None else faulty_max
        if replica_count < 1 or faulty < 0 or replica_count < 3 * faulty + 1:
            raise ConfigError(f"{replica_count} replicas cannot tolerate {faulty} faulty ones: n >= 3f+1 is required")
        chosen_rules = dict(rules or default_rules(replica_count, faulty, quorum_size(replica_count, faulty)))
        operators = dict(operator_keys or {})
        signers = _command_signer_keys(tuple(replica_keys), operators)
        clients = dict(client_keys)
        for client_id, key in clients.items():
            if client_id.startswith(RESERVED_SIGNER_PREFIXES) and signers.get(client_id) != key:
                raise ConfigError(f"client id {client_id!r} is reserved: ids starting with "
                                  f"{' or '.join(map(repr, RESERVED_SIGNER_PREFIXES))} name replicas and operators")
        config = ClusterConfig(cluster_id, tuple(replica_keys), MappingProxyType({**clients, **signers}),
                               faulty, MappingProxyType(chosen_rules), limits or Limits(),
                               MappingProxyType(operators), accountability or AccountabilityOptions(),
                               operator_threshold)
        problem = config.problem()
        if problem:
            raise ConfigError(problem)
        return config

    @property
    def ordinary_client_ids(self) -> tuple[str, ...]:
        """The clients that ask for verdicts, without the reserved command signers."""
        return tuple(sorted(c for c in self.client_keys if not c.startswith(RESERVED_SIGNER_PREFIXES)))

    @property
    def replica_count(self) -> int:
        return len(self.replica_keys)

    @property
    def quorum(self) -> int:
        return quorum_size(self.replica_count, self.faulty_max)

    @property
    def reply_quorum(self) -> int:
        return reply_quorum(self.faulty_max)

    def problem(self) -> str | None:
        n, f = self.replica_count, self.faulty_max
        if not 1 <= n <= MAX_REPLICAS:
            return f"the cluster needs between 1 and {MAX_REPLICAS} replicas, got {n}"
        if f < 0 or n < 3 * f + 1:
            return f"{n} replicas cannot tolerate {f} faulty ones: n >= 3f+1 is required"
        if len(set(self.replica_keys)) != n or any(len(key) != 32 for key in self.replica_keys):
            return "replica public keys must be distinct 32-byte Ed25519 keys"
        operator_problem = self._operator_problem()
        if operator_problem:
            return operator_problem
        if any(len(key) != 32 for key in self.client_keys.values()):
            return "client public keys must be 32-byte Ed25519 keys"
        if set(self.rules) != set(Risk):
            return "a verdict rule is needed for every risk class: " + ", ".join(risk.value for risk in Risk)
        for risk, rule in self.rules.items():
            problem = rule_problem(rule, n, f)
            if problem:
                return f"rule for {risk.value}: {problem}"
        return self.accountability.problem() or self.limits.problem()

    def _operator_problem(self) -> str | None:
        if not 1 <= self.operator_threshold <= max(1, len(self.operator_keys)):
            return f"operator_threshold must be in [1, max(1, operators)], got {self.operator_threshold}"
        for name, key in self.operator_keys.items():
            signer_id = operator_signer_id(name)
            if not name or not name.isprintable() or name != name.strip() or len(signer_id.encode()) > MAX_ID_BYTES:
                return f"operator name {name!r} must be printable, unpadded and at most " \
                       f"{MAX_ID_BYTES - len(OPERATOR_SIGNER_PREFIX)} bytes"
            if len(key) != 32:
                return f"operator {name!r} needs a 32-byte Ed25519 public key"
            if self.client_keys.get(signer_id) != key:
                return f"operator {name!r} is missing from the request signers (build configs with create)"
        return None


def _command_signer_keys(replica_keys: tuple[bytes, ...], operator_keys: Mapping[str, bytes]) -> dict[str, bytes]:
    signers = {replica_signer_id(index): key for index, key in enumerate(replica_keys)}
    signers.update({operator_signer_id(name): key for name, key in operator_keys.items()})
    return signers
