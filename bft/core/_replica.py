"""The sans-IO PBFT replica: inputs in, ``Ready`` out; no I/O, no clock, no randomness.

Inputs:
- ``submit(request)``: a client's request arrived.
- ``step(message)``: a message from another replica arrived.
- ``record_decision(digest, decision, reason)``: this replica's policy answered
  a request listed earlier in ``Ready.evaluate`` (the driver runs the policy, so
  it can enforce the policy deadline and map errors to DENY).
- ``tick(now_ms)``: one tick of the driver's clock passed; ``now_ms`` is its reading.

Each input returns a ``Ready``.  The driver must persist ``Ready.persist``
before sending anything (see ``apply_ready``).  A message that fails any check
is rejected with a reason and leaves the replica's state exactly as it was:
handlers validate first and mutate after.

The replica is composed of components, each owning its state and changing
another's only by calling it (etcd raft's structure; see ../shared/STYLE.md):

- ``requests`` (``_requests``): client requests waiting to be ordered and the votes on them;
- ``normal`` (``_normal_case``): the slots between the water marks and the three phases;
- ``views`` (``_replica_views``): the current view, the progress timer, VIEW-CHANGE and NEW-VIEW;
- ``checkpointing`` (``_checkpoints``): checkpoints, the low water mark and state transfer;
- ``executor`` (``_replica_execution``): executing committed slots in order against the verdict log;
- ``catch_up`` (``_catch_up``): learning what committed elsewhere from proofs;
- ``accuser`` (``_replica_accountability``): turning equivocation proofs and endorsements into commands;
- ``epochs`` (``_replica_epochs``): the configuration epoch it works in, and the switch to the next one.

The replica itself routes inputs to them (``_handlers``), owns the clock, the
keys and the outbox of the input being handled (``_out``, with ``_sign``,
``_broadcast``, ``_send_to_primary``, ``_send_to_others`` and ``_reject`` as
the components' way out), and dispatches what differs by role through
``ROLE_STEPS``.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ._accountability import EquivocationProof
from ._accountability_state import AccountabilityState
from ._catch_up import CATCH_UP_STATES, CatchUp
from ._checkpoints import Checkpoints
from ._config import ClusterConfig
from ._crypto import KeyPair, Signer, Verifier
from ._errors import LocalProtocolError, RemoteProtocolError
from ._execution import LogEntry
from ._messages import (Bundle, Checkpoint, Commit, Decision, Message, NewView, PrePrepare, Prepare, Request,
                        StateReply, StateRequest, ViewChange, Vote)
from ._normal_case import NormalCase, sender_of
from ._quorum import primary_of
from ._ready import LogRead, ReadyBuilder, Ready, Rejection
from ._replica_accountability import Accountability
from ._replica_epochs import Epochs
from ._replica_execution import Execution
from ._replica_views import ViewChanges
from ._requests import Requests


class Role(enum.Enum):
    PRIMARY = "primary"
    BACKUP = "backup"


def _nothing(*_arguments) -> None:
    return None


@dataclass(frozen=True, slots=True)
class RoleSteps:
    """What a replica does differently as the primary of its view and as a backup (etcd raft's
    ``stepLeader`` / ``stepFollower``).  Entries look their component's method up at call time, so a
    patched method (the planted mutants) is the one that runs."""

    on_tick: Callable[["Replica"], None]  # Before the timers run.
    propose: Callable[["Replica"], None]
    send_own_vote: Callable[["Replica", Vote], None]
    answer_lagging_view_change: Callable[["Replica", ViewChange], None]


ROLE_STEPS: dict[Role, RoleSteps] = {
    Role.PRIMARY: RoleSteps(
        on_tick=_nothing,
        propose=lambda replica: replica.normal.maybe_propose(),
        send_own_vote=_nothing,  # The primary keeps its own vote for its batch.
        answer_lagging_view_change=lambda replica, view_change: replica.views.resend_new_view(view_change)),
    Role.BACKUP: RoleSteps(
        on_tick=lambda replica: replica.requests.share_overdue_votes(),
        propose=_nothing,
        send_own_vote=lambda replica, vote: replica.requests.send_vote_to_primary(vote),
        answer_lagging_view_change=_nothing),
}


class Replica:
    def __init__(self, config: ClusterConfig, replica_id: int, seed: bytes,
                 later_epochs: tuple[tuple[int, ClusterConfig], ...] = ()) -> None:
        """``config`` is the genesis configuration.  A replica that joins a later epoch also gets the chain
        after the genesis as ``later_epochs``, (activation seq, configuration) pairs from the epoch
        certificates (specs/RECONFIGURATION.md section 3.5); it works in the last one and fetches the state
        by state transfer, checking it against the certificate of the epoch that ordered it."""
        working = later_epochs[-1][1] if later_epochs else config
        if not 0 <= replica_id < working.replica_count:
            raise LocalProtocolError(f"replica id {replica_id} is not in a cluster of {working.replica_count}")
        if KeyPair.from_seed(seed).public_key != working.replica_keys[replica_id]:
            raise LocalProtocolError(f"the private key does not match replica {replica_id}'s configured public key")
        self.config = config
        self.replica_id = replica_id
        self.limits = config.limits
        self._quorum = config.quorum  # Asked on most inputs; it changes only with the epoch (``install_configuration``).
        self._signer = Signer(config.cluster_id, seed)
        self._verifier = Verifier(config.cluster_id, config.replica_keys, dict(config.client_keys))
        self.now_ms = 0
        self.ticks = 0
        self.rejected_counts: Counter[str] = Counter()
        self._out: ReadyBuilder | None = None
        self.executor = Execution(self)
        self.requests = Requests(self)
        self.normal = NormalCase(self)
        self.checkpointing = Checkpoints(self)
        self.views = ViewChanges(self)
        self.catch_up = CatchUp(self)
        self.accuser = Accountability(self)
        self.epochs = Epochs(self, KeyPair.from_seed(seed).public_key, later_epochs)
        self._handlers = self._handler_table()

    def _handler_table(self) -> dict[type, Callable]:
        return {
            Request: self.requests.on_forwarded_request, Vote: self.requests.on_vote,
            PrePrepare: self.normal.on_preprepare, Prepare: self.normal.on_prepare, Commit: self.normal.on_commit,
            Checkpoint: self.checkpointing.on_checkpoint,
            ViewChange: self.views.on_view_change, NewView: self.views.on_new_view,
            StateRequest: self.checkpointing.on_state_request, StateReply: self.checkpointing.on_state_reply,
        }

    @classmethod
    def recover(cls, config: ClusterConfig, replica_id: int, seed: bytes,
                signed: tuple[Message, ...], log: tuple,
                later_epochs: tuple[tuple[int, ClusterConfig], ...] = ()) -> "Replica":
        """A replica restarted from durable storage: the signed messages it persisted and its verdict log.

        It remembers every digest it signed (S7 holds across the restart), and
        it gets back its stable checkpoint and its prepared proofs, which it
        persisted before sending anything that relied on them (see
        ``_recovery``), so its VIEW-CHANGE is as good as a replica's that never
        stopped.  It resumes in the highest view it took part in: active if it
        had already worked in that view, otherwise waiting for the view's
        NEW-VIEW with its own VIEW-CHANGE ready to send again.  Replies to the
        requests it executed above its stable checkpoint are signed again from
        the stored batches, so a client retrying after a restart of the whole
        cluster still gets f+1 replies.  A replica that joined in a later epoch is given the chain again
        (``later_epochs``, as when it joined); the chain rebuilt from its log must agree with it.
        """
        replica = cls(config, replica_id, seed, later_epochs)
        signed = list(signed)
        own = [m for m in signed if getattr(m, "replica_id", None) == replica_id]
        replica.execution.restore(tuple(log), max((m.seq for m in own if isinstance(m, Checkpoint)), default=0))
        replica.checkpointing.restore(signed, own)
        replica.epochs.enter_if_due()
        replica.views.restore(own)
        replica.normal.restore(signed, own)
        replica.executor.restore_replies(signed)
        replica.requests.restore_votes(own)
        replica.catch_up.probe_soon()  # It was away for an unknown time: ask a peer what committed meanwhile.
        replica.check_invariants()
        return replica

    # ----------------------------------------------------------------- inputs

    def submit(self, request: Request) -> Ready:
        """A request from its client (a retransmission of a finalized one is answered from the cache)."""
        if not isinstance(request, Request):
            raise LocalProtocolError(f"submit takes a client's Request, not {type(request).__name__}")
        return self._run(self._receive, request, self.requests.on_request)

    def step(self, message: Message) -> Ready:
        """A message from a peer replica; a ``Request`` among them is one the peer forwarded."""
        return self._run(self._receive, message)

    def record_decision(self, digest: bytes, decision: Decision, reason: str) -> Ready:
        return self._run(self.requests.record_decision, digest, decision, reason)

    def report_equivocation(self, proof: EquivocationProof) -> Ready:
        """Submit ``proof`` (from ``Rejection.evidence``) as an evidence command, once per proof."""
        return self._run(self.accuser.report_equivocation, proof)

    def endorse_blocklist_pattern(self, pattern: str, ttl_ms: int) -> Ready:
        """Propose a shared-blocklist pattern as this replica; it takes effect once f+1 replicas endorse it.

        Raises ``LocalProtocolError`` if the endorsement is malformed (an
        over-broad pattern, a bad ttl), before anything is signed.
        """
        return self._run(self.accuser.endorse_blocklist_pattern, pattern, ttl_ms)

    def tick(self, now_ms: int) -> Ready:
        if now_ms < self.now_ms:
            raise LocalProtocolError(f"the clock went backwards: {now_ms} < {self.now_ms}")
        return self._run(self._tick, now_ms)

    def peer_reconnected(self) -> Ready:
        """The driver's link to a peer came back (a healed partition, a restarted peer): look around at
        the next tick, as after a pause, instead of waiting for the quiet-period probe, which a rarely
        ticking idle replica (``is_quiescent``) sends only every few seconds.  Returns the (empty) Ready."""
        return self._run(self.catch_up.probe_soon)

    def answer_log_read(self, read: LogRead, entries: tuple[LogEntry, ...]) -> Ready:
        """The driver read ``entries`` (positions ``read.first_position`` onwards) from its store."""
        return self._run(self.checkpointing.answer_log_read, read, tuple(entries))

    # ----------------------------------------------------------------- views of state

    @property
    def quorum(self) -> int:
        return self._quorum

    @property
    def primary_id(self) -> int:
        return primary_of(self.view, self.config.replica_count)

    @property
    def is_primary(self) -> bool:
        return self.primary_id == self.replica_id and not self.epochs.retired

    def install_configuration(self, config: ClusterConfig, verifier: Verifier, seed: bytes | None = None) -> None:
        """The next epoch's configuration and keys (``_replica_epochs``); the limits never change.  ``seed``:
        this replica's own new key, when the epoch rotates it."""
        assert config.cluster_id == self.config.cluster_id and config.limits == self.limits
        self.config, self._quorum, self._verifier = config, config.quorum, verifier
        if seed is not None:
            self._signer = Signer(config.cluster_id, seed)

    def stage_next_key(self, seed: bytes) -> None:
        """Keep ``seed`` for a key rotation: if an epoch that lists its public key at this replica's id
        activates, the replica signs with it from then on and stays a member (it is never sent anywhere)."""
        self.epochs.stage_key(seed)

    @property
    def accountability(self) -> AccountabilityState:
        """The replicated accountability state (read it, e.g. ``.status()``; never change it)."""
        state = self.execution.accountability
        assert state is not None, "a replica always keeps the accountability state"
        return state

    # The view-change component's state, read-only.
    view = property(lambda self: self.views.view)
    view_active = property(lambda self: self.views.view_active)
    vote_floor_view = property(lambda self: self.views.vote_floor_view)
    view_change_by_replica = property(lambda self: self.views.view_change_by_replica)
    new_view_message = property(lambda self: self.views.new_view_message)

    # The checkpoint component's state, read-only (the runtime's metrics, the simulator, the tests read it).
    low_water = property(lambda self: self.checkpointing.low_water)
    stable_proof = property(lambda self: self.checkpointing.stable_proof)
    checkpoints = property(lambda self: self.checkpointing.checkpoints)
    checkpoint_states = property(lambda self: self.checkpointing.checkpoint_states)
    stable_state = property(lambda self: self.checkpointing.stable_state)
    lag_target_seq = property(lambda self: self.checkpointing.lag_target_seq)
    transfer = property(lambda self: self.checkpointing.transfer)
    transfer_counts = property(lambda self: self.checkpointing.transfer_counts)
    state_adoptions = property(lambda self: self.checkpointing.state_adoptions)

    @property
    def highest_seq_known(self) -> int:
        """The highest seq this replica knows the cluster committed (from proofs, never from one peer's say)."""
        return self.catch_up.highest_seq_known

    def catching_up(self) -> bool:
        """Known to be behind: a proof shows the cluster committed past what this replica executed."""
        return self.catch_up.catching_up()

    catch_up_counts = property(lambda self: self.catch_up.catch_up_counts)
    committed_seq_known = property(lambda self: self.catch_up.committed_seq_known)

    def progress_summary(self) -> dict:
        """What an operator needs to tell a healthy replica from a stranded one (no I/O, O(1)).

        A follower (active in a view below the one it asked for, ``_replica_views``) executes with the cluster
        but does not vote: the cluster has one voter fewer until its next view change, so it is reported as
        ``view-change``, not ``ok``.
        """
        changing = not self.view_active or self.view < self.vote_floor_view
        state = "view-change" if changing else "catching-up" if self.catching_up() else "ok"
        assert state in CATCH_UP_STATES
        return {"view": self.view, "view_active": self.view_active, "asked_view": self.vote_floor_view,
                "last_executed": self.last_executed, "highest_seq_known": self.highest_seq_known,
                "lag": self.highest_seq_known - self.last_executed, "state": state}

    @property
    def role(self) -> Role:
        return Role.PRIMARY if self.is_primary else Role.BACKUP

    @property
    def role_steps(self) -> RoleSteps:
        return ROLE_STEPS[self.role]

    # The components' state, read-only (the runtime's metrics, the simulator, the harness and the tests read it).
    execution = property(lambda self: self.executor.state)
    pending = property(lambda self: self.requests.pending)
    recovered_votes = property(lambda self: self.requests.recovered_votes)
    slots = property(lambda self: self.normal.slots)
    next_seq = property(lambda self: self.normal.next_seq)
    prepared_proofs = property(lambda self: self.normal.prepared_proofs)
    early_preprepares = property(lambda self: self.normal.early_preprepares)
    signed_digests = property(lambda self: self.normal.signed_digests)

    @property
    def high_water(self) -> int:
        """The top of the window, which never passes the activation seq of a pending epoch."""
        ceiling = self.epochs.ceiling()
        window_top = self.low_water + self.limits.log_window
        return window_top if ceiling is None else min(window_top, ceiling)

    @property
    def last_executed(self) -> int:
        return self.execution.last_executed_seq

    @property
    def is_quiescent(self) -> bool:
        """True when no timer of the core needs fine ticks: no request or vote waits, no slot waits for
        execution, no view change, state transfer or catch-up is under way.

        A driver may then tick rarely (the runtime's ``idle_tick_ms``), as long as it ticks (to bring
        ``now_ms`` up to date) before feeding its next input.  Ticks of a quiescent replica change
        nothing but its clock and the catch-up probe: a replica that heard nothing for
        ``view_change_timeout_ticks`` ticks asks one peer whether it missed anything (section 10b), so a
        rarely ticking idle replica also probes rarely; a pause, a restart or any input still makes it
        look at once.
        """
        # catching_up() covers a state transfer under way; a lag target already reached is cleared by a tick.
        return (self.view_active and self.requests.idle and not self.lag_target_seq
                and not self.catch_up.probe_due and not self.catching_up() and not self.views.has_outstanding_work())

    # ----------------------------------------------------------------- plumbing

    def _run(self, handler: Callable, *arguments) -> Ready:
        if self._out is not None:
            raise LocalProtocolError("core inputs must not be re-entered")
        self._out = ReadyBuilder()
        self._out.dead_votes.extend(self.requests.take_dead_votes_backlog())
        try:
            if self.epochs.retired:  # Not in the current epoch: it takes no part any more.
                self.rejected_counts["retired"] += handler == self._receive
                return self._out.build()
            handler(*arguments)
            return self._out.build()
        finally:
            self._out = None
            self._check_bounds()

    def _receive(self, message: Message, handler: Callable | None = None, forwarder: int | None = None) -> None:
        try:
            if type(message) is Bundle:
                self._receive_bundle(message)
                return
            handler = handler or self._handlers.get(type(message))
            if handler is None:
                raise RemoteProtocolError("unexpected-type", f"replicas do not accept {type(message).__name__}")
            if self.normal.adds_nothing(message):
                return  # Dropped unverified: a signature check that could change nothing is not worth its cost.
            self._verifier.verify(message)
            handler(message)
            if isinstance(message, (PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView)):
                self.catch_up.note_heard()  # The cluster's own traffic, accepted (a rejected message changes nothing).
        except RemoteProtocolError as error:
            self._reject(self.epochs.classify(error, message).from_sender(sender_of(message, forwarder)))

    def _receive_bundle(self, bundle: Bundle) -> None:
        """Each part of a primary's forwarded quorum is taken as if its author had sent it: the bundle
        itself is signed by no one and proves nothing beyond its parts (SPEC.md section 5, step 6)."""
        self.normal.check_bundle(bundle)
        for part in (*bundle.prepares, *bundle.commits):
            self._receive(part, forwarder=bundle.replica_id)

    def _count_rejected(self, reason: str) -> None:
        """A remote input refused without a Rejection (kept for what it proves, not acted on)."""
        self.rejected_counts[reason] += 1

    def _reject(self, error: RemoteProtocolError) -> None:
        self.rejected_counts[error.reason] += 1
        self._out.rejected.append(Rejection(error.sender, error.reason, error.detail, error.evidence))

    def _sign(self, unsigned: Message) -> Message:
        return self._signer.sign(unsigned)

    def _broadcast(self, message: Message) -> None:
        """Persist our own signed message, then queue it for every other replica."""
        self._send_own(message, self._other_replicas())

    def _send_to_primary(self, message: Message) -> None:
        """Persist our own signed PREPARE or COMMIT, then queue it for the primary of the view, which
        forwards each quorum to everyone (SPEC.md section 5, steps 6-7); the primary keeps its own."""
        self._send_own(message, [] if self.is_primary else [self.primary_id])

    def _send_own(self, message: Message, destinations: list[int]) -> None:
        """Persist-then-send, the S7 guard: our signed message is durable before any peer sees it."""
        self._out.persist.append(message)
        self._out.to_replicas.extend((replica_id, message) for replica_id in destinations)

    def _send_to_others(self, message: Message) -> None:
        """Queue ``message`` for every other replica, without persisting it (it is already durable or not ours)."""
        self._out.to_replicas.extend((replica_id, message) for replica_id in self._other_replicas())

    def _forward_to_others(self, bundle: Bundle) -> None:
        """Queue the primary's bundle for every other replica, ahead of this input's persist
        (``Ready.forwards``), unless one of its parts is our own message that this input persists."""
        own_parts_pending = any(part is item for part in (*bundle.prepares, *bundle.commits)
                                if part.replica_id == self.replica_id for item in self._out.persist)
        outbox = self._out.to_replicas if own_parts_pending else self._out.forwards
        outbox.extend((replica_id, bundle) for replica_id in self._other_replicas())

    def _other_replicas(self) -> list[int]:
        return [replica_id for replica_id in range(self.config.replica_count) if replica_id != self.replica_id]

    def check_invariants(self) -> None:
        """Every structural invariant; a failure is a bug in the core.

        The bounds (``_check_bounds``) hold after every input and are checked
        then.  This also re-derives the pending pool's indexes, a Python loop
        per input that a production replica does not pay for: the test drivers
        (the simulator, the unit tests' network, the model checker) call it
        after every input instead.
        """
        self._check_bounds()
        self.pending.check_invariants()

    def _check_bounds(self) -> None:
        """Structural bounds that must hold after every input, each component's own; a failure is a bug.

        It runs after every input, so each check costs O(1) or a C-level pass over a
        window-bounded table, never a Python loop over the pending pool or the log.
        """
        self.normal.check_bounds()
        self.requests.check_bounds()
        self.checkpointing.check_bounds()
        self.catch_up.check_bounds()
        self.accuser.check_bounds()
        self.views.check_bounds()
        self.epochs.check_bounds()

    # ----------------------------------------------------------------- time

    def _tick(self, now_ms: int) -> None:
        self.catch_up.note_clock(now_ms)
        self.now_ms = now_ms
        self.ticks += 1
        self.requests.expire()
        self.role_steps.on_tick(self)
        self.views.tick()
        self.checkpointing.tick()
        self.catch_up.tick()
        self.role_steps.propose(self)
