"""Small-scope model checking of the real core: n=4, one Byzantine replica, two requests.

The checker drives the same ``bft.core.Replica`` objects as every other
driver, in one thread, and explores the choices a scheduler has:

- which in-flight message is delivered next (messages to the client are
  handed over at once: the client only reads);
- "time passes": every replica's clock moves by one view-change timeout, so
  progress timers fire and view changes start;
- "crash-restart r": a correct replica loses its memory and restarts from what
  its store made durable.

and, as the root choice, which Byzantine behaviour replica ``b`` shows, from
``MENU``.  Every reachable state is checked against ``specs.invariants``
(S1-S8; S7 over what correct replicas persisted *and* what they sent on the
wire; S6 against the parent state), and at quiescence, in runs with a correct
primary and no timeouts or crashes, every correct replica must have executed
both requests (the normal case needs no timer).

Bounds.  Exploring every interleaving is hopeless beyond a few steps, so
schedules are counted in *deviations* from delivering the oldest message
first (delay-bounded search): with ``deviations`` = k, every schedule that
departs from FIFO order at most k times, each departure being any other
delivery, a timeout or a crash, is explored, up to ``depth`` steps and
``max_states`` states.  States are fingerprinted (``_fingerprint``) and a state
already reached with no more depth or deviations spent is not explored again.
The search is depth-first and fully deterministic.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import pickle
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator

from bft.core import (Batch, BatchEntry, Checkpoint, ClientCore, ClusterConfig, Commit, Decision, KeyPair, Limits,
                      LogEntry, Message, NewView, PrePrepare, Prepare, PreparedProof, Replica, Reply, Request, Risk,
                      Signer, VerdictCertificate, VerdictRule, Verifier, ViewChange, Vote, apply_ready,
                      request_digest)
from bft.core._messages import NULL_BATCH
from types import MappingProxyType
from bft.policy import PolicyDecision, evaluate_fail_safe
from bft.storage import MemoryStore
from bft.testing import equivocating_primary
from specs.invariants import Evidence, Violation, check_all, check_stability

REPLICA_COUNT = 4
# The default schedule delivers messages phase by phase, in this order; any other choice is a deviation.
_PHASE_RANK = {kind: rank for rank, kind in enumerate(
    (Request, Vote, PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView))}
CLIENT_ID = "client-0"
START_MS = 1_000_000
TICK_MS = 10
DEADLINE_MS = START_MS + 10**9
# Small scope: checkpoints every two sequence numbers, so two requests already reach one.
LIMITS = Limits(checkpoint_interval=2, log_window=8, max_in_flight_batches=4, vote_wait_ticks=2)
ACTIONS = ({"tool": "read_file", "path": "README"}, Risk.LOW), ({"tool": "send_email", "to": "x"}, Risk.HIGH)
TRACE_SHOWN_MAX = 200


# ----------------------------------------------------------------------------- policies and adversaries


class ToolPolicy:
    """Replica 2 denies e-mail; everyone allows reading.  So one request is vetoed at HIGH risk, one is not."""

    def __init__(self, denied: frozenset[str]) -> None:
        self.denied = denied
        self.name = "deny:" + ",".join(sorted(denied))

    def evaluate(self, action, context) -> PolicyDecision:
        if action.get("tool") in self.denied:
            return PolicyDecision.deny(f"{action.get('tool')} is denied")
        return PolicyDecision.allow("allowed")


POLICIES = {replica_id: ToolPolicy(frozenset({"send_email"} if replica_id == 2 else ())) for replica_id in
            range(REPLICA_COUNT)}

Transform = Callable[[Replica, int, Message, Signer], list[Message]]


@dataclass(frozen=True)
class Adversary:
    """A Byzantine behaviour: which replica, what core it runs, and how it rewrites what that core sends."""

    name: str
    replica_id: int
    transform: Transform
    description: str
    core_type: type = Replica


def _from_interceptor(interceptor) -> Transform:
    return lambda core, destination, message, signer: interceptor(destination, message, signer)


def _other_batch(batch: Batch) -> Batch:
    return dataclasses.replace(batch, timestamp_ms=batch.timestamp_ms + 1)


def _double_preprepare(core, destination, message, signer) -> list[Message]:
    """Sends every backup two different pre-prepares for one seq, one after the other."""
    if not isinstance(message, PrePrepare):
        return [message]
    return [message, signer.sign(dataclasses.replace(message, batch=_other_batch(message.batch)))]


def _resign_entries(message: PrePrepare, signer: Signer, rewrite: Callable[[BatchEntry], tuple]) -> PrePrepare:
    entries = tuple(dataclasses.replace(entry, votes=rewrite(entry)) for entry in message.batch.entries)
    return signer.sign(dataclasses.replace(message, batch=dataclasses.replace(message.batch, entries=entries)))


def _transplanting_primary(core, destination, message, signer) -> list[Message]:
    """Gives every entry the all-ALLOW vote set of another request this primary knows, if there is one."""
    if not isinstance(message, PrePrepare):
        return [message]
    known = [tuple(entry.votes) for slot in core.slots.values() if slot.preprepare is not None
             for entry in slot.preprepare.batch.entries]
    known += [pending.vote_tuple() for pending in core.pending]
    approving = [votes for votes in known if len(votes) >= core.quorum
                 and all(vote.decision is Decision.ALLOW for vote in votes)]

    def rewrite(entry: BatchEntry) -> tuple:
        digest = request_digest(core.config.cluster_id, entry.request)
        foreign = [votes for votes in approving if votes[0].request_digest != digest]
        return foreign[0] if foreign else entry.votes
    return [_resign_entries(message, signer, rewrite)]


def _stuffing_primary(core, destination, message, signer) -> list[Message]:
    """Replaces every entry's votes by its own ALLOW vote, repeated a quorum of times."""
    if not isinstance(message, PrePrepare):
        return [message]

    def rewrite(entry: BatchEntry) -> tuple:
        own = signer.sign(Vote(request_digest(core.config.cluster_id, entry.request), Decision.ALLOW, "stuffed",
                               core.replica_id, bytes(64)))
        return (own,) * core.quorum
    return [_resign_entries(message, signer, rewrite)]


def _forging_voter(core, destination, message, signer) -> list[Message]:
    """With each vote, also sends ALLOW votes in the other replicas' names (signed with its own key)."""
    if not isinstance(message, Vote):
        return [message]
    forged = [signer.sign(dataclasses.replace(message, decision=Decision.ALLOW, reason="forged",
                                              replica_id=other))
              for other in range(REPLICA_COUNT) if other not in (core.replica_id, destination)]
    return [message] + forged


def _lying_new_primary(core, destination, message, signer) -> list[Message]:
    """As a new primary, re-proposes no-ops where the view-change proofs require real batches."""
    if not isinstance(message, NewView) or not message.preprepares:
        return [message]
    empty = tuple(signer.sign(dataclasses.replace(preprepare, batch=NULL_BATCH)) for preprepare in message.preprepares)
    return [signer.sign(dataclasses.replace(message, preprepares=empty))]


class UsurpingReplica(Replica):
    """A backup that runs the proposer's code as if it were primary, signing PRE-PREPAREs in its own name.

    It races ahead: it proposes one seq beyond the next one to execute, so its
    batch reaches the others before the real primary's batch for that seq.
    """

    @property
    def is_primary(self) -> bool:
        return True

    def _propose(self, entries) -> None:
        self.next_seq = max(self.next_seq, self.last_executed + 2)
        while self.next_seq in self.slots and self.slots[self.next_seq].preprepare is not None:
            self.next_seq += 1
        if self.next_seq <= self.high_water:
            super()._propose(entries)


def _usurping_backup(core, destination, message, signer) -> list[Message]:
    """Its own proposals get a later timestamp, so they never coincide with the real primary's."""
    if isinstance(message, PrePrepare) and message.replica_id == core.replica_id:
        return [signer.sign(dataclasses.replace(message, batch=_other_batch(message.batch)))]
    return [message]


MENU: dict[str, Adversary] = {adversary.name: adversary for adversary in (
    Adversary("equivocating-primary", 0, _from_interceptor(equivocating_primary({2, 3})),
              "the primary sends replicas 2 and 3 a different batch for each seq"),
    Adversary("double-preprepare", 0, _double_preprepare,
              "the primary sends every backup two different batches for each seq"),
    Adversary("transplanting-primary", 0, _transplanting_primary,
              "the primary justifies each request with another request's ALLOW votes"),
    Adversary("stuffing-primary", 0, _stuffing_primary,
              "the primary justifies each request with its own ALLOW vote, repeated"),
    Adversary("forging-voter", 1, _forging_voter, "a backup sends ALLOW votes in the other replicas' names"),
    Adversary("usurping-backup", 1, _usurping_backup, "a backup proposes batches as if it were primary",
              UsurpingReplica),
    Adversary("lying-new-primary", 1, _lying_new_primary,
              "the primary of view 1 re-proposes no-ops in its NEW-VIEW"),
)}


# ----------------------------------------------------------------------------- settings and results


@dataclass(frozen=True)
class ModelCheckSettings:
    depth: int = 60
    max_states: int = 5_000
    deviations: int = 1
    crashes_max: int = 1
    time_steps_max: int = 1
    reorders: bool = True  # Whether delivering a replica's messages out of order counts as a deviation.
    adversaries: tuple[str, ...] = tuple(MENU)

    def problem(self) -> str | None:
        if not 1 <= self.depth <= 10_000:
            return "--depth must be in [1, 10000]"
        if not 1 <= self.max_states <= 10_000_000:
            return "--max-states must be in [1, 10000000]"
        if not 0 <= self.deviations <= 16 or not 0 <= self.crashes_max <= 4 or not 0 <= self.time_steps_max <= 4:
            return "--deviations must be in [0, 16], crashes and time steps in [0, 4]"
        unknown = sorted(set(self.adversaries) - set(MENU))
        if unknown or not self.adversaries:
            return f"unknown adversary {unknown[0] if unknown else '(none given)'}; choose from {', '.join(MENU)}"
        return None


@dataclass
class Counterexample:
    adversary: str
    deviations: int
    violations: list[str]
    trace: list[str]

    def describe(self) -> list[str]:
        lines = [f"counterexample with adversary {self.adversary} ({MENU[self.adversary].description}), "
                 f"{self.deviations} deviations from the default schedule, {len(self.trace)} steps:"]
        lines += [f"  violated: {violation}" for violation in self.violations]
        lines += [f"  {step:3}. {line}" for step, line in enumerate(self.trace, 1)]
        return lines


@dataclass
class ModelCheckResult:
    settings: ModelCheckSettings
    states: int = 0
    transitions: int = 0
    depth_reached: int = 0
    wall_seconds: float = 0.0
    exhausted: bool = True  # False when ``max_states`` cut the search short.
    states_by_adversary: dict[str, int] = field(default_factory=dict)
    counterexample: Counterexample | None = None

    def describe(self) -> list[str]:
        settings = self.settings
        verdict = "VIOLATION FOUND" if self.counterexample else \
            ("no violation" + ("" if self.exhausted else " (state budget reached before the bounds were exhausted)"))
        lines = [f"model check: {verdict}",
                 f"  {self.states} states, {self.transitions} transitions, depth reached {self.depth_reached} "
                 f"(bound {settings.depth}), {settings.deviations} deviations from FIFO, "
                 f"{self.wall_seconds:.1f} s"]
        lines += [f"  {name:24} {count} states" for name, count in self.states_by_adversary.items()]
        return lines + (self.counterexample.describe() if self.counterexample else [])


# ----------------------------------------------------------------------------- the model


def _keypair(name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(f"bft-modelcheck/{name}".encode()).digest())


@dataclass
class _World:
    """Everything that changes: cores, stores, the client, messages in flight, and the budget spent."""

    replicas: list[Replica]
    stores: list[MemoryStore]
    client: ClientCore
    # In-flight messages as (order key, source, destination, message), kept sorted by ``_Model.send_order``.
    network: list[tuple[tuple, int | str, int, Message]]
    wire: dict[int, list[Message]]  # What each correct replica signed and sent, for S7 on the wire.
    certificates: dict[tuple[str, int], VerdictCertificate]
    requests: tuple[Request, ...]
    now_ms: int = START_MS
    acted: tuple[int, ...] = ()  # Replicas that sent something in the last step: the ones worth crashing next.
    client_shared: bool = False  # The client object is the parent state's until a reply arrives.
    deviations: int = 0
    crashes: int = 0
    time_steps: int = 0


@dataclass(frozen=True)
class _Action:
    kind: str  # "deliver", "time" or "restart"
    index: int = 0  # The network position to deliver, or the replica to restart.


class _Model:
    """The fixed part of the model (keys, config, adversary) and the transition function."""

    def __init__(self, adversary: Adversary) -> None:
        self.adversary = adversary
        replica_keys = [_keypair(f"replica-{i}") for i in range(REPLICA_COUNT)]
        client_key = _keypair(CLIENT_ID)
        self.config = ClusterConfig.create("modelcheck", tuple(k.public_key for k in replica_keys),
                                           {CLIENT_ID: client_key.public_key}, limits=LIMITS)
        self.seeds = [k.seed for k in replica_keys]
        self.client_seed = client_key.seed
        self.byzantine_signer = Signer(self.config.cluster_id, self.seeds[adversary.replica_id])
        self.correct = [i for i in range(REPLICA_COUNT) if i != adversary.replica_id]
        self.evidence = Evidence()  # Shared by all states: it only indexes signed material, re-verified on use.
        self.codec = _StateCodec()
        self.messages_sent = 0

    def initial(self) -> _World:
        replicas = [(self.adversary.core_type if i == self.adversary.replica_id else Replica)(
            self.config, i, self.seeds[i]) for i in range(REPLICA_COUNT)]
        client = ClientCore(self.config, CLIENT_ID, self.client_seed)
        requests = tuple(client.new_request(action, risk, DEADLINE_MS) for action, risk in ACTIONS)
        world = _World(replicas, [MemoryStore() for _ in replicas], client, [], {i: [] for i in self.correct}, {},
                       requests)
        for request in requests:
            self.evidence.add_request(self.config.cluster_id, request)
            for replica_id in range(REPLICA_COUNT):
                self._send(world, CLIENT_ID, replica_id, request)
        for replica_id, replica in enumerate(replicas):
            self._handle(world, replica_id, replica.tick(START_MS))
        return world

    # ------------------------------------------------------------- transitions

    def actions(self, world: _World, settings: ModelCheckSettings) -> Iterator[_Action]:
        """The steps to explore from ``world``, in the order the depth-first search tries them.

        The default step delivers the first message.  A deviation is a crash,
        a timeout, or delivering another message to the replica the default
        message is for: a reordering of that replica's inbox.  (Deliveries to
        different replicas commute, so reorderings across replicas matter only
        through such per-replica orders.)  Crashes and reorderings are tried
        before the default step, so schedules that deviate early come first;
        timeouts after it, so the search times out late runs first, where
        more is in flight.
        """
        may_deviate = world.deviations < settings.deviations
        if may_deviate and world.crashes < settings.crashes_max:
            yield from (_Action("restart", replica_id) for replica_id in self.correct if replica_id in world.acted)
        if may_deviate and settings.reorders and world.network:
            inbox = world.network[0][2]
            yield from (_Action("deliver", index) for index in range(1, len(world.network))
                        if world.network[index][2] == inbox)
        if world.network:
            yield _Action("deliver", 0)
        if may_deviate and world.time_steps < settings.time_steps_max:
            yield _Action("time")

    def apply(self, world: _World, action: _Action) -> tuple[_World | None, str]:
        """The successor state (a copy: ``world`` is never changed) and a line describing the step.

        A timeout that makes no replica send anything is not a step worth exploring: None.
        """
        touched = [world.network[action.index][2]] if action.kind == "deliver" else range(REPLICA_COUNT)
        child = self._copy(world, touched)
        child.acted = ()
        if action.kind != "deliver" or action.index != 0:
            child.deviations += 1
        if action.kind == "deliver":
            _, source, destination, message = child.network.pop(action.index)
            description = f"deliver {type(message).__name__} {_summary(message)} from {source} to {destination}"
            replica = child.replicas[destination]
            ready = replica.submit(message) if isinstance(message, Request) else replica.step(message)
            self._handle(child, destination, ready)
            rejected = [f"{r.reason}" for r in ready.rejected]
            return child, description + (f" (rejected: {', '.join(rejected)})" if rejected else "")
        if action.kind == "time":
            child.time_steps += 1
            sent_before = self.messages_sent
            self._pass_time(child)
            idle = self.messages_sent == sent_before
            return None if idle else child, f"time passes: {LIMITS.view_change_timeout_ticks + 1} ticks everywhere"
        child.crashes += 1
        self._restart(child, action.index)
        return child, f"replica {action.index} crashes and restarts from its store"

    def _copy(self, world: _World, touched) -> _World:
        """Copy on write: the replicas a step touches (and their stores) are cloned, the rest shared."""
        replicas, stores = list(world.replicas), list(world.stores)
        for replica_id in touched:
            replicas[replica_id] = self.codec.clone(replicas[replica_id])
            stores[replica_id] = stores[replica_id].snapshot()
        return dataclasses.replace(world, replicas=replicas, stores=stores, client_shared=True,
                                   network=list(world.network),
                                   wire={replica_id: list(sent) for replica_id, sent in world.wire.items()},
                                   certificates=dict(world.certificates))

    def _pass_time(self, world: _World) -> None:
        for _ in range(LIMITS.view_change_timeout_ticks + 1):
            world.now_ms += TICK_MS
            for replica_id, replica in enumerate(world.replicas):
                self._handle(world, replica_id, replica.tick(world.now_ms))

    def _restart(self, world: _World, replica_id: int) -> None:
        recovered = world.stores[replica_id].load()
        world.replicas[replica_id] = Replica.recover(self.config, replica_id, self.seeds[replica_id],
                                                     recovered.signed, recovered.log)
        self._handle(world, replica_id, world.replicas[replica_id].tick(world.now_ms))

    def _handle(self, world: _World, replica_id: int, ready) -> None:
        byzantine = replica_id == self.adversary.replica_id

        def to_replica(destination: int, message: Message) -> None:
            sent = self.adversary.transform(world.replicas[replica_id], destination, message,
                                            self.byzantine_signer) if byzantine else [message]
            for each in sent:
                self._note_evidence(each)
                if not byzantine and getattr(each, "replica_id", None) == replica_id:
                    world.wire[replica_id].append(each)
                self._send(world, replica_id, destination, each)

        def to_client(client_id: str, reply: Reply) -> None:
            sent = self.adversary.transform(world.replicas[replica_id], client_id, reply,
                                            self.byzantine_signer) if byzantine else [reply]
            for each in sent:
                if isinstance(each, Reply):
                    self._note_evidence(each)
                    if world.client_shared:
                        world.client, world.client_shared = self.codec.clone(world.client), False
                    certificate = world.client.on_reply(each)
                    if certificate is not None:
                        world.certificates[certificate.request.key] = certificate

        apply_ready(ready, world.stores[replica_id], to_replica, to_client)
        for request in ready.evaluate:
            decision = evaluate_fail_safe(POLICIES[replica_id], request, replica_id)
            digest = request_digest(self.config.cluster_id, request)
            self._handle(world, replica_id,
                         world.replicas[replica_id].record_decision(digest, decision.decision, decision.reason))

    def _send(self, world: _World, source: int | str, destination: int, message: Message) -> None:
        self.messages_sent += 1
        if isinstance(source, int) and source not in world.acted:
            world.acted += (source,)
        rank = _PHASE_RANK.get(type(message), len(_PHASE_RANK))  # Message kinds added later go last.
        key = (rank, destination, str(source), self.codec.record_digest(message))
        bisect.insort(world.network, (key, source, destination, message), key=lambda entry: entry[0])

    def _note_evidence(self, message: Message) -> None:
        cluster_id = self.config.cluster_id
        if isinstance(message, PrePrepare):
            self.evidence.add_batch_entries(cluster_id, message)
        elif isinstance(message, NewView):
            for preprepare in message.preprepares:
                self.evidence.add_batch_entries(cluster_id, preprepare)
        elif isinstance(message, Reply):
            self.evidence.add_votes(message.votes)

    # ------------------------------------------------------------- checks

    def logs(self, world: _World) -> dict[int, tuple[LogEntry, ...]]:
        return {replica_id: tuple(world.stores[replica_id].log) for replica_id in self.correct}

    def check_inputs(self, world: _World) -> tuple:
        """What the invariants read; a state whose inputs equal its parent's needs no new check of them."""
        proofs = [world.replicas[r].stable_proof for r in self.correct]
        return (tuple((len(world.stores[r].log), len(world.stores[r].signed), len(world.wire[r])) for r in self.correct),
                tuple(proof[0].seq if proof else 0 for proof in proofs), len(world.certificates))

    def violations(self, world: _World, parent_inputs: tuple | None = None) -> list[Violation]:
        """S1-S5, S7 (persisted and on the wire) and S8 over the correct replicas, plus progress at quiescence."""
        if parent_inputs == self.check_inputs(world):
            return self._progress_violations(world)
        signed = {replica_id: tuple(world.stores[replica_id].signed) + tuple(world.wire[replica_id])
                  for replica_id in self.correct}
        stable_proofs = {replica_id: world.replicas[replica_id].stable_proof for replica_id in self.correct}
        violations = check_all(self.logs(world), self.config, tuple(world.certificates.values()),
                               evidence=self.evidence, signed=signed, stable_proofs=stable_proofs,
                               require_evidence=True)
        return violations + self._progress_violations(world)

    def _progress_violations(self, world: _World) -> list[Violation]:
        """With a correct primary, reliable delivery and no timer or crash, both requests execute everywhere."""
        primary = world.replicas[self.correct[0]].primary_id
        if world.network or world.time_steps or world.crashes or primary == self.adversary.replica_id:
            return []
        wanted = {request.key for request in world.requests}
        return [Violation("progress", f"quiescent with a correct primary, but correct replica {replica_id} "
                                      f"executed {sorted(entry.key for entry in log)} of {sorted(wanted)}")
                for replica_id, log in self.logs(world).items() if {entry.key for entry in log} != wanted]


def _summary(message: Message) -> str:
    if isinstance(message, Request):
        return f"{message.client_id}#{message.request_number}"
    if isinstance(message, Vote):
        return f"{message.decision.value} by {message.replica_id} on {message.request_digest.hex()[:8]}"
    if isinstance(message, (PrePrepare, Prepare, Commit)):
        digest = message.batch.timestamp_ms if isinstance(message, PrePrepare) else message.batch_digest.hex()[:8]
        return f"view {message.view} seq {message.seq} ({digest}) by {message.replica_id}"
    if isinstance(message, ViewChange):
        return f"to view {message.new_view} by {message.replica_id} with {len(message.prepared)} proofs"
    if isinstance(message, NewView):
        return f"view {message.view} by {message.replica_id} re-proposing {len(message.preprepares)}"
    if isinstance(message, Checkpoint):
        return f"seq {message.seq} by {message.replica_id}"
    return ""


# ----------------------------------------------------------------------------- cloning and fingerprints


# Frozen records never change, so states share them.  Configuration, keys and verifiers are shared too (a
# verifier's cache holds only facts about signatures).
_IMMUTABLE_TYPES = frozenset({Request, Vote, PrePrepare, Prepare, Commit, Reply, Checkpoint, ViewChange, NewView,
                              Batch, BatchEntry, PreparedProof, LogEntry, VerdictCertificate})
_SHARED_TYPES = (ClusterConfig, Limits, MappingProxyType, Signer, Verifier, VerdictRule)


_PLAIN_TYPES = frozenset({int, str, bytes, tuple, list, dict, bool, type(None)})


def _is_shared(obj) -> bool:
    kind = type(obj)
    return kind not in _PLAIN_TYPES and (kind in _IMMUTABLE_TYPES or isinstance(obj, _SHARED_TYPES))


class _CloningPickler(pickle.Pickler):
    def __init__(self, buffer, shared: list) -> None:
        super().__init__(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self.shared = shared

    def persistent_id(self, obj):
        if _is_shared(obj):
            self.shared.append(obj)
            return len(self.shared) - 1
        return None


class _FingerprintPickler(pickle.Pickler):
    """Pickles a state with records replaced by their digests and sets in a fixed order."""

    def __init__(self, buffer, codec: "_StateCodec") -> None:
        super().__init__(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self.codec = codec

    def persistent_id(self, obj):
        kind = type(obj)
        if kind in _PLAIN_TYPES:
            return None
        if kind in _IMMUTABLE_TYPES:
            return self.codec.record_digest(obj)
        if isinstance(obj, _SHARED_TYPES):
            return type(obj).__name__
        return None

    def reducer_override(self, obj):
        if type(obj) in (set, frozenset):
            return type(obj), (sorted(obj, key=repr),)
        return NotImplemented


class _StateCodec:
    """Clones and fingerprints the mutable parts of a state (replicas, stores, the client) through pickle.

    States are copy-on-write: a transition clones only what it changes, so an
    object is never mutated after its fingerprint is taken, and the
    fingerprint is cached on the object's identity.
    """

    def __init__(self) -> None:
        self._records: dict[int, tuple[object, bytes]] = {}
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def clone(self, obj):
        buffer, shared = io.BytesIO(), []
        _CloningPickler(buffer, shared).dump(obj)
        unpickler = pickle.Unpickler(io.BytesIO(buffer.getvalue()))
        unpickler.persistent_load = shared.__getitem__
        return unpickler.load()

    def fingerprint(self, obj) -> bytes:
        cached = self._fingerprints.get(obj)
        if cached is None:
            cached = self._fingerprints[obj] = self._digest(obj)
        return cached

    def record_digest(self, record) -> bytes:
        cached = self._records.get(id(record))
        if cached is None or cached[0] is not record:
            fields = tuple(getattr(record, name.name) for name in dataclasses.fields(record))
            cached = self._records[id(record)] = (record, self._digest((type(record).__name__, fields)))
        return cached[1]

    def _digest(self, obj) -> bytes:
        buffer = io.BytesIO()
        _FingerprintPickler(buffer, self).dump(obj)
        return hashlib.blake2b(buffer.getvalue(), digest_size=16).digest()

    def world_fingerprint(self, world: _World) -> bytes:
        parts = ([self.fingerprint(replica) for replica in world.replicas],
                 [self.fingerprint(store) for store in world.stores], self.fingerprint(world.client),
                 [key for key, _, _, _ in world.network],
                 [(replica_id, [self.record_digest(m) for m in sent]) for replica_id, sent in sorted(world.wire.items())],
                 sorted(world.certificates), world.now_ms, world.acted)
        return hashlib.blake2b(pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL), digest_size=16).digest()


# ----------------------------------------------------------------------------- the search


class _Found(Exception):
    def __init__(self, violations: list[Violation], trace: list[str]) -> None:
        super().__init__(violations)
        self.violations, self.trace = violations, trace


class _BudgetSpent(Exception):
    pass


class _Search:
    """Depth-first, deviation-bounded exploration of one adversary's runs."""

    def __init__(self, model: _Model, settings: ModelCheckSettings, result: ModelCheckResult) -> None:
        self.model, self.settings, self.result = model, settings, result
        self.codec = model.codec
        # Per state, the budgets it was explored with; a later visit that spent no less of any is skipped.
        self.visited: dict[bytes, list[tuple[int, int, int, int]]] = {}

    def run(self) -> None:
        world = self.model.initial()
        self._visit(world, 0, None, {}, None)

    def _visit(self, world: _World, depth: int, trace: tuple | None, parent_logs: dict,
               parent_inputs: tuple | None) -> None:
        logs = self.model.logs(world)
        stability = check_stability(parent_logs, logs)
        if stability:
            raise _Found(stability, _unwind(trace))
        spent = (depth, world.deviations, world.crashes, world.time_steps)
        fingerprint = self.codec.world_fingerprint(world)
        earlier = self.visited.setdefault(fingerprint, [])
        if any(all(old <= new for old, new in zip(previous, spent)) for previous in earlier):
            return
        earlier.append(spent)
        self.result.states += 1
        self.result.depth_reached = max(self.result.depth_reached, depth)
        inputs = self.model.check_inputs(world)
        violations = self.model.violations(world, parent_inputs)
        if violations:
            raise _Found(violations, _unwind(trace))
        if self.result.states >= self.settings.max_states:
            raise _BudgetSpent()
        if depth >= self.settings.depth:
            return
        for action in list(self.model.actions(world, self.settings)):
            try:
                child, description = self.model.apply(world, action)
            except Exception as error:  # A core that raises mid-input is a finding, like a broken invariant.
                raise _Found([Violation("crash", f"{type(error).__name__} while taking step {action}: {error}")],
                             _unwind(trace)) from error
            if child is None:
                continue
            self.result.transitions += 1
            self._visit(child, depth + 1, (description, trace), logs, inputs)


def _unwind(trace: tuple | None) -> list[str]:
    steps = []
    while trace is not None:
        steps.append(trace[0])
        trace = trace[1]
    return steps[::-1][-TRACE_SHOWN_MAX:]


def run_model_check(settings: ModelCheckSettings) -> ModelCheckResult:
    """Explore every adversary with 0 deviations, then with 1, and so on; stop at the first violation.

    Few deviations come first because most bugs need few, and each pass is
    much cheaper than the next.  Each (pass, adversary) gets an equal share of
    what is left of the state budget.
    """
    problem = settings.problem()
    if problem:
        raise ValueError(problem)
    result = ModelCheckResult(settings)
    started = time.perf_counter()
    passes = [(deviations, name) for deviations in range(settings.deviations + 1) for name in settings.adversaries]
    for position, (deviations, name) in enumerate(passes):
        before = result.states
        share = max(1, (settings.max_states - before) // (len(passes) - position))
        bounds = dataclasses.replace(settings, deviations=deviations, max_states=before + share)
        try:
            _Search(_Model(MENU[name]), bounds, result).run()
        except _BudgetSpent:
            result.exhausted = False
        except _Found as found:
            violations = list(dict.fromkeys(str(violation) for violation in found.violations))
            result.counterexample = Counterexample(name, deviations, violations, found.trace)
        result.states_by_adversary[name] = result.states_by_adversary.get(name, 0) + result.states - before
        if result.counterexample:
            break
    result.wall_seconds = time.perf_counter() - started
    return result
