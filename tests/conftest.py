"""Shared fixtures: deterministic clusters built from fixed seeds, signers, message builders and a tiny in-order network."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pytest

from bft.core import (Batch, BatchEntry, Checkpoint, ClusterConfig, Commit, Decision, KeyPair, Limits,
                      Message, PrePrepare, Prepare, Ready, Replica, Reply, Request, Risk, Signer, Vote,
                      VerdictRule, canonical_action, request_digest)
from bft.core._codec import record_digest

# Replica clocks in unit tests start here, far from zero, so deadlines and timestamps have room on both sides.
START_MS = 1_000_000
ZERO_SIGNATURE = bytes(64)


def seed_for(name: str) -> bytes:
    """A fixed 32-byte Ed25519 seed per name, so every run signs the same bytes."""
    return hashlib.sha256(f"bft-unit-test/{name}".encode()).digest()


class Kit:
    """A deterministic cluster description plus signers and builders for validly signed messages."""

    def __init__(self, replica_count: int = 4, client_ids: tuple[str, ...] = ("alice", "bob"),
                 cluster_id: str = "unit", limits: Limits | None = None,
                 rules: Mapping[Risk, VerdictRule] | None = None) -> None:
        self.cluster_id = cluster_id
        self.replica_pairs = [KeyPair.from_seed(seed_for(f"replica-{i}")) for i in range(replica_count)]
        self.client_pairs = {client_id: KeyPair.from_seed(seed_for(f"client-{client_id}")) for client_id in client_ids}
        self.config = ClusterConfig.create(
            cluster_id, tuple(pair.public_key for pair in self.replica_pairs),
            {client_id: pair.public_key for client_id, pair in self.client_pairs.items()},
            rules=rules, limits=limits)
        self.replica_signers = [Signer(cluster_id, pair.seed) for pair in self.replica_pairs]
        self.client_signers = {client_id: Signer(cluster_id, pair.seed) for client_id, pair in self.client_pairs.items()}

    @property
    def n(self) -> int:
        return self.config.replica_count

    @property
    def f(self) -> int:
        return self.config.faulty_max

    def replica(self, replica_id: int, now_ms: int = START_MS) -> Replica:
        """A fresh replica whose clock already reads ``now_ms``."""
        replica = Replica(self.config, replica_id, self.replica_pairs[replica_id].seed)
        replica.tick(now_ms)
        return replica

    # ------------------------------------------------------------ signed message builders

    def request(self, client_id: str = "alice", number: int = 1, risk: Risk = Risk.LOW,
                action: Mapping | str = None, deadline_ms: int = START_MS + 60_000) -> Request:
        text = canonical_action(action if action is not None else {"op": "read", "n": number})
        return self.client_signers[client_id].sign(Request(client_id, number, risk, text, deadline_ms, ZERO_SIGNATURE))

    def digest(self, request: Request) -> bytes:
        return request_digest(self.cluster_id, request)

    def vote(self, replica_id: int, target: Request | bytes, decision: Decision = Decision.ALLOW,
             reason: str = "ok") -> Vote:
        digest = self.digest(target) if isinstance(target, Request) else target
        return self.replica_signers[replica_id].sign(Vote(digest, decision, reason, replica_id, ZERO_SIGNATURE))

    def votes(self, request: Request, replica_ids=None, deny: tuple[int, ...] = ()) -> tuple[Vote, ...]:
        """Votes in ascending replica order; ``deny`` lists who votes DENY, everyone else ALLOW."""
        chosen = range(self.config.quorum) if replica_ids is None else replica_ids
        return tuple(self.vote(i, request, Decision.DENY if i in deny else Decision.ALLOW, "deny" if i in deny else "ok")
                     for i in sorted(chosen))

    def entry(self, request: Request, replica_ids=None, deny: tuple[int, ...] = ()) -> BatchEntry:
        return BatchEntry(request, self.votes(request, replica_ids, deny))

    def preprepare(self, seq: int, entries: tuple[BatchEntry, ...], view: int = 0, timestamp_ms: int = START_MS,
                   replica_id: int | None = None) -> PrePrepare:
        sender = view % self.n if replica_id is None else replica_id
        batch = Batch(timestamp_ms, tuple(entries))
        return self.replica_signers[sender].sign(PrePrepare(view, seq, batch, sender, ZERO_SIGNATURE))

    def prepare(self, replica_id: int, seq: int, batch_digest: bytes, view: int = 0) -> Prepare:
        return self.replica_signers[replica_id].sign(Prepare(view, seq, batch_digest, replica_id, ZERO_SIGNATURE))

    def commit(self, replica_id: int, seq: int, batch_digest: bytes, view: int = 0) -> Commit:
        return self.replica_signers[replica_id].sign(Commit(view, seq, batch_digest, replica_id, ZERO_SIGNATURE))

    def checkpoint(self, replica_id: int, seq: int, state_digest: bytes) -> Checkpoint:
        return self.replica_signers[replica_id].sign(Checkpoint(seq, state_digest, replica_id, ZERO_SIGNATURE))

    def reply(self, replica_id: int, request: Request, seq: int, timestamp_ms: int, decision: Decision,
              reason: str, votes: tuple[Vote, ...]) -> Reply:
        return self.replica_signers[replica_id].sign(Reply(
            request.client_id, request.request_number, self.digest(request), seq, timestamp_ms, decision,
            reason, votes, replica_id, ZERO_SIGNATURE))


def batch_digest_of(preprepare: PrePrepare) -> bytes:
    return record_digest(preprepare.batch)


# Attributes that are configuration, crypto plumbing, a component's link back to its replica or counters of
# rejections, not protocol state.
_NOT_STATE = {"config", "limits", "replica_id", "replica", "_signer", "_verifier", "_verifiers", "_out", "_handlers",
              "rejected_counts"}


def freeze(value: Any) -> Any:
    """A comparable deep copy of replica state, whatever new fields the replica grows."""
    if isinstance(value, (str, bytes, int, float, bool, type(None), enum.Enum)):
        return value
    if dataclasses.is_dataclass(value) and getattr(type(value), "__dataclass_params__").frozen:
        return value  # Messages and log entries are frozen and compare by value.
    if isinstance(value, Mapping):
        return ("map", tuple((freeze(key), freeze(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple, deque)):
        return tuple(freeze(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(item) for item in value)
    if callable(value):
        return ("callable",)
    if hasattr(value, "__dict__"):
        return (type(value).__name__, freeze({k: v for k, v in vars(value).items() if k not in _NOT_STATE}))
    slot_names = [name for klass in type(value).__mro__ for name in getattr(klass, "__slots__", ())]
    assert slot_names, f"cannot snapshot {type(value).__name__}"
    return (type(value).__name__, tuple((name, freeze(getattr(value, name, None))) for name in slot_names))


def replica_snapshot(replica: Replica) -> dict[str, Any]:
    """Everything about a replica's protocol state that a rejected message must leave untouched.

    It is built generically from the replica's attributes, so fields added to the
    core later are covered too; the headline numbers are listed first for readable diffs.
    """
    headline = {"view": replica.view, "low_water": replica.low_water, "next_seq": replica.next_seq,
                "last_executed": replica.last_executed, "state_digest": replica.execution.state_digest(),
                "slots": len(replica.slots), "pending": len(replica.pending)}
    rest = {name: freeze(value) for name, value in vars(replica).items() if name not in _NOT_STATE}
    return {**headline, **rest}


@dataclass
class LocalNet:
    """In-order, lossless delivery between replicas of one ``Kit``, driven by hand.

    ``policy(replica_id, request)`` answers each evaluation; ``hold`` may keep a
    message back (it returns True to drop it).  Every loop is bounded by ``step_limit``.
    """

    kit: Kit
    replicas: list[Replica]
    policy: Callable[[int, Request], Decision] = lambda replica_id, request: Decision.ALLOW
    hold: Callable[[int, int, Message], bool] = lambda source, destination, message: False
    step_limit: int = 100_000
    queue: deque = field(default_factory=deque)
    replies: list[tuple[int, Reply]] = field(default_factory=list)
    readies: list[tuple[int, Ready]] = field(default_factory=list)
    inputs: list[tuple[int, str, tuple]] = field(default_factory=list)

    @staticmethod
    def create(kit: Kit, **options) -> "LocalNet":
        return LocalNet(kit, [kit.replica(i) for i in range(kit.n)], **options)

    def handle(self, replica_id: int, ready: Ready) -> Ready:
        self.replicas[replica_id].check_invariants()  # In full: the core checks only its bounds per input.
        self.readies.append((replica_id, ready))
        for destination, message in ready.messages_to_replicas:
            if not self.hold(replica_id, destination, message):
                self.queue.append((destination, message))
        self.replies.extend((replica_id, reply) for _, reply in ready.to_clients)
        for request in ready.evaluate:
            decision = self.policy(replica_id, request)
            arguments = (self.kit.digest(request), decision, decision.value.lower())
            self.inputs.append((replica_id, "record_decision", arguments))
            self.handle(replica_id, self.replicas[replica_id].record_decision(*arguments))
        return ready

    def submit(self, request: Request, to: tuple[int, ...] | None = None) -> None:
        for replica_id in (range(self.kit.n) if to is None else to):
            self.inputs.append((replica_id, "submit", (request,)))
            self.handle(replica_id, self.replicas[replica_id].submit(request))

    def tick(self, now_ms: int) -> None:
        for replica in self.replicas:
            self.inputs.append((replica.replica_id, "tick", (now_ms,)))
            self.handle(replica.replica_id, replica.tick(now_ms))

    def deliver_all(self) -> int:
        delivered = 0
        while self.queue:
            assert delivered < self.step_limit, "the network did not quiesce"
            destination, message = self.queue.popleft()
            self.inputs.append((destination, "step", (message,)))
            self.handle(destination, self.replicas[destination].step(message))
            delivered += 1
        return delivered

    def replay(self, replica_id: int) -> Replica:
        """A fresh replica fed exactly the inputs ``replica_id`` got here: an independent copy of its state."""
        replica = self.kit.replica(replica_id)
        for destination, method, arguments in self.inputs:
            if destination == replica_id:
                getattr(replica, method)(*arguments)
        return replica

    def rejections(self) -> list:
        return [rejection for _, ready in self.readies for rejection in ready.rejected]


_KITS: dict[tuple, Kit] = {}


def get_kit(replica_count: int = 4, limits: Limits | None = None, cluster_id: str = "unit",
            client_ids: tuple[str, ...] = ("alice", "bob")) -> Kit:
    """Kits are immutable after construction, so one per shape is shared by every test."""
    key = (replica_count, limits, cluster_id, client_ids)
    if key not in _KITS:
        _KITS[key] = Kit(replica_count, client_ids, cluster_id, limits)
    return _KITS[key]


@pytest.fixture(scope="session")
def kit() -> Kit:
    """A 4-replica, f=1 cluster with clients alice and bob."""
    return get_kit(4)


@pytest.fixture(scope="session")
def make_kit() -> Callable[..., Kit]:
    return get_kit


@pytest.fixture(scope="session")
def cluster_config(kit: Kit) -> ClusterConfig:
    return kit.config


@pytest.fixture(scope="session")
def signer_for(kit: Kit) -> Callable[[int | str], Signer]:
    """The signer of a replica (by id) or a client (by name) of the default kit."""
    def signer(identity: int | str) -> Signer:
        return kit.replica_signers[identity] if isinstance(identity, int) else kit.client_signers[identity]
    return signer


@pytest.fixture(scope="session")
def snapshot() -> Callable[[Replica], tuple]:
    return replica_snapshot


@pytest.fixture(scope="session")
def make_net() -> Callable[..., LocalNet]:
    return LocalNet.create


@pytest.fixture(scope="session")
def batch_digest() -> Callable[[PrePrepare], bytes]:
    return batch_digest_of


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--rewrite``: tests/test_interactions.py writes the replayed output back into the golden scripts."""
    parser.addoption("--rewrite", action="store_true", default=False,
                     help="rewrite the expected output of tests/interactions/*.txt from the current behaviour")
