"""Small-scope model checking of the real core: n=4, one Byzantine replica, two requests.

The checker drives the same ``bft.core.Replica`` objects as every other
driver, in one thread, and explores the choices a scheduler has:

- which in-flight message is delivered next (messages to the client are
  handed over at once: the client only reads);
- "time passes": every replica's clock moves by one view-change timeout, so
  progress timers fire and view changes start;
- "crash-restart r": a correct replica loses its memory and restarts from what
  its store made durable;
- "cut r": the next message is delivered to a correct replica r, which dies
  once that input's forwards and replies left (``send_unguarded``), before
  its store wrote anything of it, and restarts: the latest a runtime may send
  them ahead of the disk.

and, as the root choice, which Byzantine behaviour replica ``b`` shows, from
``MENU``.  Every reachable state is checked against ``specs.invariants``
(S1-S8; S7 over what correct replicas persisted *and* what they sent on the
wire; S6 against the parent state), and at quiescence, in runs with a correct
primary and no timeouts or crashes, every correct replica must have executed
both requests (the normal case needs no timer).

Bounds.  Exploring every interleaving is hopeless beyond a few steps, so
runs are counted in *deviations* from a default schedule (delay-bounded
search).  The default delivers in-flight messages phase by phase (requests,
then votes, pre-prepares, prepares, commits, checkpoints, view changes), each
phase by destination; a deviation is a crash, a timeout, or delivering another
message to the same replica first (``_Model.actions``).  Passes with 0, 1, ...
``deviations`` deviations run in turn, up to ``depth`` steps per run and
``max_states`` states in all.  States are fingerprinted (``_model_state``),
and a state already reached with no more steps, deviations, crashes or
timeouts spent is not explored again.  The search is depth-first and fully
deterministic.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import pickle
import time
from dataclasses import dataclass, field
from typing import Iterator

from bft.core import (Bundle, Checkpoint, ClientCore, ClusterConfig, Commit, KeyPair, Limits, LogEntry, Message,
                      NewView, PrePrepare, Prepare, Ready, Replica, Reply, Request, Risk, Signer, VerdictCertificate,
                      ViewChange, Vote, apply_ready, send_unguarded)
from bft.storage import MemoryStore
from specs.invariants import Evidence, Violation, check_all, check_stability

from ._model_io import ModelIO
from ._model_menu import MENU, REPLICA_COUNT, Adversary
from ._model_state import StateCodec, describe_message

# Counted per sender, so their order of arrival at one replica does not matter (see ``_Model.actions``).
_ORDER_INSENSITIVE = (Prepare, Commit, Checkpoint)
# The default schedule delivers messages phase by phase, in this order; any other choice is a deviation.
_PHASE_RANK = {kind: rank for rank, kind in enumerate(
    (Request, Vote, PrePrepare, Prepare, Commit, Bundle, Checkpoint, ViewChange, NewView))}
CLIENT_ID = "client-0"
START_MS = 1_000_000
TICK_MS = 10
DEADLINE_MS = START_MS + 10**9
# Small scope: checkpoints every two sequence numbers, so two requests already reach one.
# One request per batch, so the two requests take two seqs that can be in flight together (with larger
# batches the second would wait for the first, and seqs could never execute or commit out of order).
LIMITS = Limits(checkpoint_interval=2, log_window=8, max_in_flight_batches=4, max_batch_requests=1,
                vote_wait_ticks=2)
ACTIONS = ({"tool": "read_file", "path": "README"}, Risk.LOW), ({"tool": "send_email", "to": "x"}, Risk.HIGH)
TRACE_SHOWN_MAX = 200
DEPTH_MAX = 500  # The search recurses once per step; this stays well inside Python's recursion limit.


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
        if not 1 <= self.depth <= DEPTH_MAX:
            return f"--depth must be in [1, {DEPTH_MAX}]"
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
                 f"(bound {settings.depth}), at most {settings.deviations} deviations from the default schedule, "
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
    # In-flight messages as (order key, source, destination, message), kept sorted: the default delivers the first.
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
    kind: str  # "deliver", "time", "restart" or "cut"
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
        self.codec = StateCodec()
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
        through such per-replica orders.  Prepares, commits and checkpoints are
        counted per sender, so moving one ahead of a message of an earlier
        phase reaches no new state, and is not tried.)  Crashes are tried
        before the default step, so runs crash early first, while little is
        durable; reorderings and timeouts after it, so the search tries them
        late in a run first, where more is in flight.
        """
        may_deviate = world.deviations < settings.deviations
        if may_deviate and world.crashes < settings.crashes_max:
            yield from (_Action("restart", replica_id) for replica_id in self.correct if replica_id in world.acted)
            if world.network and world.network[0][2] in self.correct:
                yield _Action("cut", 0)
        if world.network:
            yield _Action("deliver", 0)
        if may_deviate and settings.reorders and world.network:
            inbox = world.network[0][2]
            yield from (_Action("deliver", index) for index in range(1, len(world.network))
                        if world.network[index][2] == inbox
                        and not isinstance(world.network[index][3], _ORDER_INSENSITIVE))
        if may_deviate and world.time_steps < settings.time_steps_max:
            yield _Action("time")

    def apply(self, world: _World, action: _Action) -> tuple[_World | None, str]:
        """The successor state (a copy: ``world`` is never changed) and a line describing the step.

        A timeout that makes no replica send anything is not a step worth exploring: None.
        """
        touched = [world.network[action.index][2]] if action.kind in ("deliver", "cut") else range(REPLICA_COUNT)
        child = self._copy(world, touched)
        child.acted = ()
        if action.kind != "deliver" or action.index != 0:
            child.deviations += 1
        if action.kind == "deliver":
            _, source, destination, message = child.network.pop(action.index)
            description = f"deliver {type(message).__name__} {describe_message(message)} from {source} to {destination}"
            replica = child.replicas[destination]
            from_client = isinstance(source, str) and isinstance(message, Request)
            ready = replica.submit(message) if from_client else replica.step(message)
            self._handle(child, destination, ready)
            rejected = [f"{r.reason}" for r in ready.rejected]
            return child, description + (f" (rejected: {', '.join(rejected)})" if rejected else "")
        if action.kind == "cut":
            return self._cut(child, action.index)
        if action.kind == "time":
            child.time_steps += 1
            sent_before = self.messages_sent
            self._pass_time(child)
            idle = self.messages_sent == sent_before
            return None if idle else child, f"time passes: {LIMITS.view_change_timeout_ticks + 1} ticks everywhere"
        child.crashes += 1
        self._restart(child, action.index)
        return child, f"replica {action.index} crashes and restarts from its store"

    def _cut(self, world: _World, index: int) -> tuple[_World | None, str]:
        """Deliver, then crash the receiver between its Ready's unguarded sends and its persist.  A Ready
        that sends nothing ahead of the disk, or persists nothing, makes this an ordinary crash: None."""
        world.crashes += 1
        _, source, destination, message = world.network.pop(index)
        replica = world.replicas[destination]
        from_client = isinstance(source, str) and isinstance(message, Request)
        ready = replica.submit(message) if from_client else replica.step(message)
        if not ready.persist or not (ready.forwards or ready.to_clients):
            return None, "cut with nothing sent ahead of the disk"
        send_unguarded(ready, ModelIO(self, world, destination))
        self._restart(world, destination)
        return world, (f"deliver {type(message).__name__} {describe_message(message)} from {source} to {destination}"
                       f"; replica {destination} crashes once its forwards and replies left, before its store "
                       "wrote anything, and restarts")

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

    def _handle(self, world: _World, replica_id: int, ready: Ready) -> None:
        world.replicas[replica_id].check_invariants()  # In full: the core checks only its bounds per input.
        apply_ready(ready, world.replicas[replica_id], ModelIO(self, world, replica_id))

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
        sizes = tuple((len(world.stores[r].log), len(world.stores[r].signed), len(world.wire[r])) for r in self.correct)
        return sizes, tuple(proof[0].seq if proof else 0 for proof in proofs), len(world.certificates)

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


def _world_fingerprint(codec: StateCodec, world: _World) -> bytes:
    """The state's identity for pruning: every part that can change, in-flight messages in their sorted order."""
    parts = ([codec.fingerprint(replica) for replica in world.replicas],
             [codec.fingerprint(store) for store in world.stores], codec.fingerprint(world.client),
             [key for key, _, _, _ in world.network],
             [(replica_id, [codec.record_digest(m) for m in sent]) for replica_id, sent in sorted(world.wire.items())],
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
        fingerprint = _world_fingerprint(self.codec, world)
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
