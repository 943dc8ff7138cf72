"""Cluster configuration and limits, validated once at start-up.

Relations between settings are checked here (n >= 3f+1, the quorum, rule floors,
window versus checkpoint interval) so that the core can assume them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ._codec import MAX_WIRE_BYTES
from ._messages import MAX_BATCH_ENTRIES, MAX_PREPARED_PROOFS, MAX_REPLICAS, Risk
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

    def problem(self) -> str | None:
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

    @staticmethod
    def create(cluster_id: str, replica_keys: tuple[bytes, ...], client_keys: Mapping[str, bytes],
               faulty_max: int | None = None, rules: Mapping[Risk, VerdictRule] | None = None,
               limits: Limits | None = None) -> "ClusterConfig":
        replica_count = len(replica_keys)
        faulty = max_faulty(max(replica_count, 1)) if faulty_max is None else faulty_max
        if replica_count < 1 or faulty < 0 or replica_count < 3 * faulty + 1:
            raise ConfigError(f"{replica_count} replicas cannot tolerate {faulty} faulty ones: n >= 3f+1 is required")
        chosen_rules = dict(rules or default_rules(replica_count, faulty, quorum_size(replica_count, faulty)))
        config = ClusterConfig(cluster_id, tuple(replica_keys), MappingProxyType(dict(client_keys)),
                               faulty, MappingProxyType(chosen_rules), limits or Limits())
        problem = config.problem()
        if problem:
            raise ConfigError(problem)
        return config

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
        if any(len(key) != 32 for key in self.client_keys.values()):
            return "client public keys must be 32-byte Ed25519 keys"
        if set(self.rules) != set(Risk):
            return "a verdict rule is needed for every risk class: " + ", ".join(risk.value for risk in Risk)
        for risk, rule in self.rules.items():
            problem = rule_problem(rule, n, f)
            if problem:
                return f"rule for {risk.value}: {problem}"
        return self.limits.problem()
