"""A config-change executes deterministically: valid changes record the next epoch and its activation seq in the
verdict log, invalid ones (bad signatures, too few operators, n < 3f+1, duplicate keys, stale epoch or digest, a
change already pending) execute as DENY with the reason, and replaying the log rebuilds the same chain.

Each test runs the same signed batches through several independent ``ExecutionState``s, as correct replicas
would, and compares their entries and exported states.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from bft.core import (Batch, BatchEntry, ClusterConfig, Decision, KeyPair, Limits, Request, Risk, Signer, Vote,
                      canonical_action, command_vote, request_digest)
from bft.core._accountability import CommandError, parse_command
from bft.core._execution import ExecutionState
from bft.core._reconfiguration import (activation_seq, change_document, configuration_digest, sign_document)

ALLOW, DENY = Decision.ALLOW, Decision.DENY
ZERO = bytes(64)
LIMITS = Limits(log_window=8, checkpoint_interval=4)


def seed_for(name: str) -> bytes:
    return hashlib.sha256(f"bft-reconfiguration-test/{name}".encode()).digest()


def key_of(name: str) -> bytes:
    return KeyPair.from_seed(seed_for(name)).public_key


def config_of(replicas: list[str], operators=("alice", "bob"), threshold: int = 1, clients=("client",),
              faulty_max: int | None = None) -> ClusterConfig:
    return ClusterConfig.create("reconf", tuple(key_of(r) for r in replicas), {c: key_of(c) for c in clients},
                                faulty_max=faulty_max, limits=LIMITS, operator_keys={o: key_of(o) for o in operators},
                                operator_threshold=threshold)


class Replicas:
    """n correct replicas' execution states, fed the same batches; ``seq`` advances by one per batch."""

    def __init__(self, genesis: ClusterConfig, names: list[str]) -> None:
        self.config = genesis
        self.names = names
        self.states = [ExecutionState(genesis.rules, 64, genesis) for _ in names]
        self.numbers: dict[str, int] = {}
        self.now_ms = 1_000_000

    def request(self, signer: str, action, risk: Risk) -> Request:
        number = self.numbers[signer] = self.numbers.get(signer, 0) + 1
        text = action if isinstance(action, str) else canonical_action(action)
        return Signer("reconf", seed_for(signer.split(":")[-1])).sign(
            Request(signer, number, risk, text, self.now_ms + 60_000, ZERO))

    def execute(self, request: Request, voters: list[int] | None = None):
        """Order ``request`` alone at the next seq on every replica; return the log entries (one per replica)."""
        self.now_ms += 10
        digest = request_digest("reconf", request)
        votes = tuple(Signer("reconf", seed_for(self.names[i])).sign(Vote(digest, ALLOW, "ok", i, ZERO))
                      for i in (voters if voters is not None else range(len(self.names))))
        batch = Batch(self.now_ms, (BatchEntry(request, votes),))
        entries = []
        for replica_id, state in enumerate(self.states):
            sign = lambda reply, r=replica_id: dataclasses.replace(reply, replica_id=r)
            results = state.execute(state.last_executed_seq + 1, batch, (digest,), sign)
            entries.append(results[0][0])
        assert len({entry.entry_hash for entry in entries}) == 1, "replicas disagree on the entry"
        return entries[0]

    def skip_to(self, seq: int) -> None:
        """Execute empty batches up to ``seq`` (as null batches of a view change would)."""
        for state in self.states:
            while state.last_executed_seq < seq:
                state.execute(state.last_executed_seq + 1, Batch(self.now_ms, ()), (), lambda reply: reply)

    def change(self, new: ClusterConfig, epoch: int, previous: ClusterConfig, signers=("alice",), issuer="alice",
               **overrides) -> Request:
        document = {**change_document(new, epoch, previous), **overrides}
        signed = sign_document("reconf", document, {name: seed_for(name) for name in signers})
        return self.request(f"operator:{issuer}", signed, Risk.CRITICAL)


GENESIS_NAMES = [f"r{i}" for i in range(4)]


@pytest.fixture
def cluster() -> Replicas:
    return Replicas(config_of(GENESIS_NAMES), GENESIS_NAMES)


def test_activation_seq_is_the_first_checkpoint_a_whole_window_above() -> None:
    assert activation_seq(1, 4, 8) == 12  # 1 + 8 = 9, rounded up to a multiple of 4.
    assert activation_seq(4, 4, 8) == 12
    assert activation_seq(5, 4, 8) == 16
    assert activation_seq(1, 32, 128) == 160


def test_valid_change_records_the_epoch_and_activation_seq(cluster: Replicas) -> None:
    grown = config_of([f"r{i}" for i in range(7)])
    entry = cluster.execute(cluster.change(grown, 1, cluster.config))
    assert entry.decision is ALLOW, entry.reason
    events = json.loads(entry.events)
    assert events == [{"event": "epoch-change", "epoch": 1, "configuration": configuration_digest(grown).hex(),
                       "activation_seq": 12, "replicas": 7, "faulty_max": 2}]
    chain = cluster.states[0].accountability.epochs
    assert [epoch.starts_after for epoch in chain.epochs] == [0, 12]
    assert chain.epoch_of_seq(12).number == 0 and chain.epoch_of_seq(13).number == 1
    assert chain.epoch_of_seq(13).config.quorum == 5


def test_the_new_epoch_applies_from_the_seq_after_activation(cluster: Replicas) -> None:
    shrunk_keys = config_of(["r0", "r1", "r2", "r9"])  # r3 replaced by r9.
    cluster.execute(cluster.change(shrunk_keys, 1, cluster.config))
    cluster.skip_to(11)
    state = cluster.states[0]
    assert state.accountability.epoch == 0  # Seq 12 is still ordered by epoch 0.
    cluster.skip_to(12)
    assert state.accountability.epoch == 1
    assert len({s.state_digest() for s in cluster.states}) == 1


@pytest.mark.parametrize("mutation, reason", [
    ({"signatures": {}}, "0 operator signatures"),
    ({"epoch": 2}, "the next epoch is 1"),
    ({"previous": "00" * 32}, "'previous' does not name the current configuration"),
    ({"faulty_max": 2}, "n >= 3f+1"),
])
def test_invalid_change_is_denied_with_a_reason(cluster: Replicas, mutation, reason) -> None:
    document = {**change_document(config_of(GENESIS_NAMES + ["r4"]), 1, cluster.config), **mutation}
    signed = {**sign_document("reconf", document, {"alice": seed_for("alice")}), **(
        {"signatures": mutation["signatures"]} if "signatures" in mutation else {})}
    entry = cluster.execute(cluster.request("operator:alice", signed, Risk.CRITICAL))
    assert entry.decision is DENY and reason in entry.reason, entry.reason
    assert len(cluster.states[0].accountability.epochs.epochs) == 1


def test_duplicate_replica_keys_are_denied(cluster: Replicas) -> None:
    document = change_document(config_of(GENESIS_NAMES), 1, cluster.config)
    document["replicas"] = document["replicas"] + [document["replicas"][0]]
    signed = sign_document("reconf", document, {"alice": seed_for("alice")})
    entry = cluster.execute(cluster.request("operator:alice", signed, Risk.CRITICAL))
    assert entry.decision is DENY and "distinct" in entry.reason, entry.reason


def test_a_forged_or_foreign_signature_is_denied(cluster: Replicas) -> None:
    new = config_of(GENESIS_NAMES + ["r4"])
    entry = cluster.execute(cluster.change(new, 1, cluster.config, signers=("mallory",)))
    assert entry.decision is DENY and "not an operator" in entry.reason, entry.reason
    document = sign_document("reconf", change_document(new, 1, cluster.config), {"alice": seed_for("alice")})
    document["faulty_max"] = 0  # Altered after signing.
    entry = cluster.execute(cluster.request("operator:alice", document, Risk.CRITICAL))
    assert entry.decision is DENY and "does not verify" in entry.reason, entry.reason


def test_operator_threshold_needs_that_many_distinct_operators() -> None:
    cluster = Replicas(config_of(GENESIS_NAMES, threshold=2), GENESIS_NAMES)
    new = config_of(GENESIS_NAMES + ["r4"], threshold=2)
    entry = cluster.execute(cluster.change(new, 1, cluster.config, signers=("alice",)))
    assert entry.decision is DENY and "needs 2" in entry.reason, entry.reason
    entry = cluster.execute(cluster.change(new, 1, cluster.config, signers=("alice", "bob")))
    assert entry.decision is ALLOW, entry.reason


def test_a_second_change_while_one_is_pending_is_denied(cluster: Replicas) -> None:
    first = config_of(GENESIS_NAMES + ["r4"])
    assert cluster.execute(cluster.change(first, 1, cluster.config)).decision is ALLOW
    second = config_of(GENESIS_NAMES + ["r4", "r5"])
    entry = cluster.execute(cluster.change(second, 2, first))
    assert entry.decision is DENY and "already pending" in entry.reason, entry.reason
    cluster.skip_to(12)
    cluster.names = GENESIS_NAMES + ["r4"]  # Epoch 1's five replicas vote now.
    entry = cluster.execute(cluster.change(second, 2, first))
    assert entry.decision is ALLOW, entry.reason  # After activation epoch 1's operators may change it again.


def test_a_change_without_every_vote_is_denied(cluster: Replicas) -> None:
    """CRITICAL risk: every replica of the current epoch must find the change valid."""
    entry = cluster.execute(cluster.change(config_of(GENESIS_NAMES + ["r4"]), 1, cluster.config), voters=[0, 1, 2])
    assert entry.decision is DENY
    assert len(cluster.states[0].accountability.epochs.epochs) == 1


def test_only_operators_at_critical_risk_may_issue_a_change(cluster: Replicas) -> None:
    document = change_document(config_of(GENESIS_NAMES), 1, cluster.config)
    action = canonical_action(sign_document("reconf", document, {"alice": seed_for("alice")}))
    with pytest.raises(CommandError, match="critical risk"):
        parse_command("operator:alice", action, Risk.LOW)
    with pytest.raises(CommandError, match="only an operator"):
        parse_command("replica:0", action, Risk.CRITICAL)
    assert parse_command("operator:alice", action, Risk.CRITICAL).change.epoch == 1
    malformed = cluster.request("operator:alice", {"command": "config-change", "epoch": "one"}, Risk.CRITICAL)
    decision, reason = command_vote(malformed)
    assert decision is DENY and "malformed" in reason


def test_replaying_the_log_rebuilds_the_same_chain_and_state(cluster: Replicas) -> None:
    new = config_of(["r0", "r1", "r2", "r9"])
    entries = [cluster.execute(cluster.change(new, 1, cluster.config))]
    cluster.skip_to(12)
    cluster.names = ["r0", "r1", "r2", "r9"]
    entries.append(cluster.execute(cluster.request("client", {"tool": "read"}, Risk.LOW)))
    restored = ExecutionState(cluster.config.rules, 64, cluster.config)
    restored.restore(tuple(entries), cluster.states[0].last_executed_seq)
    assert restored.export_state() == cluster.states[0].export_state()
    assert restored.accountability.epoch == 1
