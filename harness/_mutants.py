"""Planted protocol bugs ("mutants") for testing the harness itself.

A harness that never fails proves nothing, so each mutant below is a small,
realistic bug in the consensus core, and the mutant hunt (``_mutant_hunt``)
checks that the harness's own checkers catch every one of them.

Every mutant is a context manager that patches the core only while it is
active (``unittest.mock.patch.object`` on a module attribute or a method).
Production code carries no switch that a deployment could turn on: nothing in
``bft`` imports this module, and outside a ``with`` block the core is exactly
as shipped.  Replicas and clients built inside the block keep what they bound
at construction (a verifier, a config), so build the cluster inside it.

Every patch point is listed once, in ``PATCH_POINTS``.  A refactor that removes
or renames one makes ``patch.object`` raise at once; a refactor that leaves the
name but stops using it makes the mutant inert, and the hunt's test then fails
because the mutant is no longer caught.  Either way the break is loud.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator
from unittest import mock

import bft.core._client as client_module
import bft.core._execution as execution_module
import bft.core._replica as replica_module
import bft.core._replica_views as replica_views_module
import bft.core._verdict as verdict_module
from bft.core import ClusterConfig, Decision, RemoteProtocolError, Vote
from bft.core._view_change import choose_reproposals


@dataclass(frozen=True, slots=True)
class PatchPoint:
    """One seam of the core that mutants patch: ``owner.attribute``, and what it decides."""

    owner: object
    attribute: str
    role: str

    @property
    def target(self) -> str:
        """The patched name in full, e.g. ``bft.core._replica.Replica._broadcast``."""
        if isinstance(self.owner, type):
            return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.attribute}"
        return f"{self.owner.__name__}.{self.attribute}"

    def original(self):
        return getattr(self.owner, self.attribute)

    def patch(self, replacement) -> ContextManager:
        if isinstance(replacement, types.FunctionType):
            # Keep the patched name, so bound methods still pickle (the model checker clones replicas).
            replacement.__name__ = self.attribute
            replacement.__qualname__ = f"{getattr(self.owner, '__qualname__', '')}.{self.attribute}".lstrip(".")
        return mock.patch.object(self.owner, self.attribute, replacement)


Replica = replica_module.Replica

# Every seam in one table.  Keep targets narrow: a method or a module-level name a core module looks up at call time.
PATCH_POINTS: dict[str, PatchPoint] = {
    "replica-init": PatchPoint(Replica, "__init__", "the configuration (quorum) a replica works with"),
    "replica-verifier": PatchPoint(replica_module, "Verifier", "the signature verifier a replica builds"),
    "on-preprepare": PatchPoint(Replica, "_on_preprepare", "which PRE-PREPAREs a backup accepts"),
    "check-new-view": PatchPoint(replica_views_module, "check_new_view", "NEW-VIEW proof validation"),
    "check-prepared": PatchPoint(Replica, "_check_prepared", "what happens once a slot is prepared"),
    "broadcast": PatchPoint(Replica, "_broadcast", "persist-then-send of a replica's own signed messages"),
    "tick-input": PatchPoint(Replica, "_tick", "what a replica does when its clock ticks"),
    "validate-votes": PatchPoint(Replica, "_validate_votes", "which vote sets a batch entry may carry"),
    "count-votes": PatchPoint(verdict_module, "count_votes", "how the verdict rule counts votes"),
    "execution-decide": PatchPoint(execution_module, "decide", "the verdict rule applied at execution"),
    "restore-execution": PatchPoint(execution_module.ExecutionState, "restore", "execution state after a restart"),
    "client-init": PatchPoint(client_module.ClientCore, "__init__", "the configuration a client checks replies with"),
}


@dataclass(frozen=True, slots=True)
class Mutant:
    """A named planted bug: what it breaks, and how it is switched on (``activate()`` is a context manager)."""

    name: str
    breaks: str
    patch_points: tuple[str, ...]
    build: Callable[[], list[ContextManager]]

    @contextlib.contextmanager
    def activate(self) -> Iterator["Mutant"]:
        with contextlib.ExitStack() as stack:
            for patcher in self.build():
                stack.enter_context(patcher)
            yield self


# ----------------------------------------------------------------------------- helpers


def _config_overriding(config: ClusterConfig, **values: int) -> ClusterConfig:
    """A copy of ``config`` whose named properties (``quorum``, ``reply_quorum``) return fixed values."""
    overrides = {name: property(lambda self, value=value: value) for name, value in values.items()}
    overridden_type = type(f"Mutated{type(config).__name__}", (type(config),), overrides)
    return overridden_type(**{field.name: getattr(config, field.name) for field in dataclasses.fields(config)})


def _replica_config(compute: Callable[[ClusterConfig], dict[str, int]]) -> list[ContextManager]:
    """Replicas built while active see a config with the computed overrides; checkers keep the real one."""
    point = PATCH_POINTS["replica-init"]
    original = point.original()

    def init(self, config, replica_id, seed, *arguments, **options):
        original(self, _config_overriding(config, **compute(config)), replica_id, seed, *arguments, **options)

    return [point.patch(init)]


def _wrap(point_key: str, make: Callable[[Callable], Callable]) -> ContextManager:
    point = PATCH_POINTS[point_key]
    return point.patch(make(point.original()))


# ----------------------------------------------------------------------------- the mutants


def _quorum_one_smaller() -> list[ContextManager]:
    return _replica_config(lambda config: {"quorum": config.quorum - 1})


def _two_f_plus_one_quorum() -> list[ContextManager]:
    return _replica_config(lambda config: {"quorum": 2 * config.faulty_max + 1})


class _TrustingVerifier(replica_module.Verifier):
    """Accepts every signature: a replica that forgot to check them."""

    def verify(self, message) -> None:
        self._key_for(message)  # Still names a known signer, so only the signature check is missing.


def _skip_signature_verification() -> list[ContextManager]:
    return [PATCH_POINTS["replica-verifier"].patch(_TrustingVerifier)]


def _accept_preprepare_from_non_primary() -> list[ContextManager]:
    def make(original):
        def on_preprepare(self, preprepare):
            # Judge the sender as if it were the primary of the view it names; nothing else changes.
            real_primary_of = replica_module.primary_of
            claimed = preprepare.replica_id

            def primary_of(view, replica_count):
                return claimed if view == preprepare.view else real_primary_of(view, replica_count)

            with mock.patch.object(replica_module, "primary_of", primary_of):
                return original(self, preprepare)
        return on_preprepare
    return [_wrap("on-preprepare", make)]


def _skip_new_view_validation() -> list[ContextManager]:
    def check_new_view(new_view, config, verifier):
        # Trusts the new primary: its re-proposals are installed as sent, proofs unchecked.
        stable_seq = max((view_change.stable_seq for view_change in new_view.view_changes), default=0)
        return stable_seq, tuple(preprepare.batch for preprepare in new_view.preprepares)
    return [PATCH_POINTS["check-new-view"].patch(check_new_view)]


def _execute_before_commit() -> list[ContextManager]:
    def make(original):
        def check_prepared(self, slot):
            original(self, slot)
            if slot.prepared and not slot.committed:
                slot.committed = True  # A prepare quorum taken for a commit quorum.
                self._execute_committed()
        return check_prepared
    return [_wrap("check-prepared", make)]


_UNPERSISTED = "_mutant_unpersisted"


def _send_before_persist() -> list[ContextManager]:
    """Own signed messages go out at once and become durable at the next tick, like a timer-driven sync."""
    def broadcast(self, message):
        self._send_to_others(message)
        self.__dict__.setdefault(_UNPERSISTED, []).append(message)

    def make_tick(original):
        def tick(self, now_ms):
            self._out.persist.extend(self.__dict__.pop(_UNPERSISTED, []))
            return original(self, now_ms)
        return tick
    return [PATCH_POINTS["broadcast"].patch(broadcast), _wrap("tick-input", make_tick)]


def _vote_not_bound_to_request() -> list[ContextManager]:
    def validate_votes(self, votes, digest):
        replica_ids = [vote.replica_id for vote in votes]
        if replica_ids != sorted(set(replica_ids)):
            raise RemoteProtocolError("bad-votes", "votes must come from distinct replicas in ascending order")
        if len(votes) < self.quorum:
            raise RemoteProtocolError("bad-votes", f"{len(votes)} votes, a quorum is {self.quorum}")
        for vote in votes:
            self._verifier.verify(vote)  # Signed, but for whichever request the vote names.
    return [PATCH_POINTS["validate-votes"].patch(validate_votes)]


def _count_duplicate_votes() -> list[ContextManager]:
    def validate_votes(self, votes, digest):
        replica_ids = [vote.replica_id for vote in votes]
        if replica_ids != sorted(replica_ids):  # Ascending, but repeats allowed.
            raise RemoteProtocolError("bad-votes", "votes must be in ascending replica order")
        if len(votes) < self.quorum:
            raise RemoteProtocolError("bad-votes", f"{len(votes)} votes, a quorum is {self.quorum}")
        for vote in votes:
            if vote.request_digest != digest:
                raise RemoteProtocolError("bad-votes", f"replica {vote.replica_id}'s vote is for another request")
            self._verifier.verify(vote)

    def count_votes(votes: tuple[Vote, ...]) -> tuple[int, int]:
        allow = sum(1 for vote in votes if vote.decision is Decision.ALLOW)
        return allow, len(votes) - allow
    return [PATCH_POINTS["validate-votes"].patch(validate_votes), PATCH_POINTS["count-votes"].patch(count_votes)]


def _ignore_deadline() -> list[ContextManager]:
    def make(original):
        def decide(rule, votes, timestamp_ms, deadline_ms):
            return original(rule, votes, timestamp_ms, max(deadline_ms, timestamp_ms))
        return decide
    return [_wrap("execution-decide", make)]


def _verdict_ignores_vetoes() -> list[ContextManager]:
    def make(original):
        def decide(rule, votes, timestamp_ms, deadline_ms):
            lenient = dataclasses.replace(rule, max_deny_votes=len(votes))
            return original(lenient, votes, timestamp_ms, deadline_ms)
        return decide
    return [_wrap("execution-decide", make)]


def _forget_exactly_once_after_restart() -> list[ContextManager]:
    def make(original):
        def restore(self, log, last_executed_seq):
            original(self, log, last_executed_seq)
            self.clients.clear()  # The hash chain survives; the table of answered requests does not.
        return restore
    return [_wrap("restore-execution", make)]


def _certificate_accepts_f_replies() -> list[ContextManager]:
    point = PATCH_POINTS["client-init"]
    original = point.original()

    def init(self, config, client_id, seed, *arguments, **options):
        weak = _config_overriding(config, reply_quorum=config.faulty_max)
        original(self, weak, client_id, seed, *arguments, **options)
    return [point.patch(init)]


MUTANTS: dict[str, Mutant] = {mutant.name: mutant for mutant in (
    Mutant("quorum-one-smaller", "quorums of q-1: two quorums may share no correct replica (S1)",
           ("replica-init",), _quorum_one_smaller),
    Mutant("two-f-plus-one-quorum", "2f+1 used as the quorum when n > 3f+1 (at n=5: 3 instead of 4)",
           ("replica-init",), _two_f_plus_one_quorum),
    Mutant("skip-signature-verification", "replicas accept any signature: forged votes and messages count (S2)",
           ("replica-verifier",), _skip_signature_verification),
    Mutant("accept-preprepare-from-non-primary", "a backup may propose; its batches poison later view changes",
           ("on-preprepare",), _accept_preprepare_from_non_primary),
    Mutant("skip-new-view-validation", "a new primary's re-proposals are installed unchecked (S1, S6)",
           ("check-new-view",), _skip_new_view_validation),
    Mutant("execute-before-commit", "a prepared batch executes without a commit quorum (S1 after a view change)",
           ("check-prepared",), _execute_before_commit),
    Mutant("send-before-persist", "own signed messages are sent before they are durable (S7 after a restart)",
           ("broadcast", "tick-input"), _send_before_persist),
    Mutant("vote-not-bound-to-request", "a vote signed for one request justifies another (S2)",
           ("validate-votes",), _vote_not_bound_to_request),
    Mutant("count-duplicate-votes", "one replica's vote counted several times (S2)",
           ("validate-votes", "count-votes"), _count_duplicate_votes),
    Mutant("ignore-deadline", "requests ordered after their deadline may be ALLOW (S5)",
           ("execution-decide",), _ignore_deadline),
    Mutant("verdict-ignores-vetoes", "DENY votes no longer veto MEDIUM/HIGH/CRITICAL requests (S2)",
           ("execution-decide",), _verdict_ignores_vetoes),
    Mutant("forget-exactly-once-after-restart", "a restarted replica re-executes answered requests (S1, S4)",
           ("restore-execution",), _forget_exactly_once_after_restart),
    Mutant("certificate-accepts-f-replies", "clients accept a verdict on f replies, none surely correct (S3)",
           ("client-init",), _certificate_accepts_f_replies),
)}

assert all(key in PATCH_POINTS for mutant in MUTANTS.values() for key in mutant.patch_points)
assert {key for mutant in MUTANTS.values() for key in mutant.patch_points} == set(PATCH_POINTS), \
    "every patch point is used by some mutant"
