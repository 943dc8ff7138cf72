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

import dataclasses
import types
from typing import Callable, ContextManager

from bft.core import ClusterConfig, Commit, Decision, PreparedProof, RemoteProtocolError, Vote
from bft.core._codec import record_digest
from bft.core._messages import NULL_BATCH

from ._mutant_kinds import Mutant, PatchPoint
from ._mutants_epochs import EPOCH_MUTANTS, EPOCH_PATCH_POINTS


# Every seam in one table.  Keep targets narrow: a method, or a name a core module looks up at call time.
PATCH_POINTS: dict[str, PatchPoint] = {
    "replica-init": PatchPoint("bft.core._replica:Replica.__init__",
                               "the configuration (quorum, verdict rules) a replica works with"),
    "replica-verifier": PatchPoint("bft.core._replica:Verifier", "the signature verifier a replica builds"),
    "on-preprepare": PatchPoint("bft.core._normal_case:NormalCase.on_preprepare",
                                "which PRE-PREPAREs a backup accepts"),
    "primary-of": PatchPoint("bft.core._normal_case:primary_of", "who a replica takes for the primary of a view"),
    "check-new-view": PatchPoint("bft.core._replica_views:check_new_view", "NEW-VIEW proof validation"),
    "check-prepared": PatchPoint("bft.core._normal_case:NormalCase._check_prepared",
                                 "what happens once a slot is prepared"),
    "send-own": PatchPoint("bft.core._replica:Replica._send_own",
                           "persist-then-send of a replica's own signed messages"),
    "receive-bundle": PatchPoint("bft.core._replica:Replica._receive_bundle",
                                 "how a backup takes in the quorum its primary forwards"),
    "batch-fill-target": PatchPoint("bft.core._normal_case:NormalCase._batch_fill_target",
                                    "how many ready requests the primary waits for before a batch"),
    "tick-input": PatchPoint("bft.core._replica:Replica._tick", "what a replica does when its clock ticks"),
    "validate-votes": PatchPoint("bft.core._normal_case:NormalCase._validate_votes",
                                 "which vote sets a batch entry may carry"),
    "count-votes": PatchPoint("bft.core._verdict:count_votes", "how the verdict rule counts votes"),
    # The verdict rule as execution applies it: one binding per module that executes verdicts.
    "execution-decide": PatchPoint("bft.core._execution:decide", "the verdict rule in plain execution"),
    "accountability-decide": PatchPoint("bft.core._accountability_state:decide",
                                        "the verdict rule when accountability is on"),
    "restore-execution": PatchPoint("bft.core._execution:ExecutionState.restore", "execution state after a restart"),
    "share-overdue-votes": PatchPoint("bft.core._requests:Requests.share_overdue_votes",
                                      "when a backup shares a vote the primary left unproposed"),
    "adds-nothing": PatchPoint("bft.core._normal_case:NormalCase.adds_nothing",
                               "which PREPAREs and COMMITs are dropped unverified as superfluous"),
    "choose-reproposals-primary": PatchPoint("bft.core._replica_views:choose_reproposals",
                                             "what a new primary re-proposes from the VIEW-CHANGEs it holds"),
    "choose-reproposals-check": PatchPoint("bft.core._view_change:choose_reproposals",
                                           "what a backup requires a NEW-VIEW to re-propose"),
    "check-prepared-proof": PatchPoint("bft.core._view_change:check_prepared_proof",
                                       "which prepared certificates a VIEW-CHANGE may carry"),
    "check-stable": PatchPoint("bft.core._checkpoints:Checkpoints._check_stable",
                               "when collected CHECKPOINTs make a checkpoint stable"),
    "advance-low-water": PatchPoint("bft.core._checkpoints:Checkpoints.advance_low_water",
                                    "moving the low water mark to a stable checkpoint"),
    "snapshot-digest": PatchPoint("bft.core._checkpoints:state_matches_proof",
                                  "whether a fetched snapshot is the state its proof certifies"),
    "execute-committed": PatchPoint("bft.core._replica_execution:Execution.execute_committed",
                                    "which committed slot executes next"),
    "execution-execute": PatchPoint("bft.core._execution:ExecutionState.execute", "applying one batch at a seq"),
    "client-init": PatchPoint("bft.core._client:ClientCore.__init__",
                              "the configuration a client checks replies with"),
    **EPOCH_PATCH_POINTS,  # Reconfiguration's seams and mutants are in ``_mutants_epochs``.
}


# ----------------------------------------------------------------------------- helpers


def _config_overriding(config: ClusterConfig, properties: dict[str, int] | None = None,
                       fields: dict | None = None) -> ClusterConfig:
    """A copy of ``config`` with some fields replaced and some properties (``quorum``...) returning fixed values."""
    overrides = {name: property(lambda self, value=value: value) for name, value in (properties or {}).items()}
    overridden_type = type(f"Mutated{type(config).__name__}", (type(config),), overrides)
    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)} | (fields or {})
    return overridden_type(**values)


def _replica_config(mutate: Callable[[ClusterConfig], ClusterConfig]) -> list[ContextManager]:
    """Replicas built while active see ``mutate(config)``; clients and checkers keep the real one."""
    point = PATCH_POINTS["replica-init"]
    original = point.original()

    def init(self, config, replica_id, seed, *arguments, **options):
        original(self, mutate(config), replica_id, seed, *arguments, **options)

    return [point.patch(init)]


def _wrap(point_key: str, make: Callable[[Callable], Callable]) -> ContextManager:
    point = PATCH_POINTS[point_key]
    return point.patch(make(point.original()))


# ----------------------------------------------------------------------------- the mutants


def _quorum_one_smaller() -> list[ContextManager]:
    return _replica_config(lambda config: _config_overriding(config, {"quorum": config.quorum - 1}))


def _two_f_plus_one_quorum() -> list[ContextManager]:
    return _replica_config(lambda config: _config_overriding(config, {"quorum": 2 * config.faulty_max + 1}))


def _skip_signature_verification() -> list[ContextManager]:
    point = PATCH_POINTS["replica-verifier"]

    class TrustingVerifier(point.original()):
        """Accepts every signature: a replica that forgot to check them."""

        def verify(self, message) -> None:
            self._key_for(message)  # Still names a known signer, so only the signature check is missing.
    return [point.patch(TrustingVerifier)]


def _accept_preprepare_from_non_primary() -> list[ContextManager]:
    primary_point = PATCH_POINTS["primary-of"]
    real_primary_of = primary_point.original()

    def make(original):
        def on_preprepare(self, preprepare):
            # While judging this PRE-PREPARE, its sender counts as the primary of the view it names.
            def primary_of(view, replica_count):
                return preprepare.replica_id if view == preprepare.view else real_primary_of(view, replica_count)

            with primary_point.patch(primary_of):
                return original(self, preprepare)
        return on_preprepare
    return [_wrap("on-preprepare", make)]


def _skip_new_view_validation() -> list[ContextManager]:
    def check_new_view(new_view, config, verifier, keys_for_seq=None):
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
                self.replica.executor.execute_committed()
        return check_prepared
    return [_wrap("check-prepared", make)]


_UNPERSISTED = "_mutant_unpersisted"


def _send_before_persist() -> list[ContextManager]:
    """Own signed messages go out at once and become durable at the next tick, like a timer-driven sync."""
    def send_own(self, message, destinations):
        self._out.to_replicas.extend((replica_id, message) for replica_id in destinations)
        self.__dict__.setdefault(_UNPERSISTED, []).append(message)

    def make_tick(original):
        def tick(self, now_ms):
            self._out.persist.extend(self.__dict__.pop(_UNPERSISTED, []))
            return original(self, now_ms)
        return tick
    return [PATCH_POINTS["send-own"].patch(send_own), _wrap("tick-input", make_tick)]


def _own_messages_ahead_of_the_disk() -> list[ContextManager]:
    """Own signed messages are persisted in the same Ready but sent with the forwards, ahead of the disk."""
    def send_own(self, message, destinations):
        self._out.persist.append(message)
        self._out.forwards.extend((replica_id, message) for replica_id in destinations)
    return [PATCH_POINTS["send-own"].patch(send_own)]


def _vote_not_bound_to_request() -> list[ContextManager]:
    def validate_votes(self, votes, digest):
        replica_ids = [vote.replica_id for vote in votes]
        if replica_ids != sorted(set(replica_ids)):
            raise RemoteProtocolError("bad-votes", "votes must come from distinct replicas in ascending order")
        if len(votes) < self.replica.quorum:
            raise RemoteProtocolError("bad-votes", f"{len(votes)} votes, a quorum is {self.replica.quorum}")
        for vote in votes:
            self.replica._verifier.verify(vote)  # Signed, but for whichever request the vote names.
    return [PATCH_POINTS["validate-votes"].patch(validate_votes)]


def _count_duplicate_votes() -> list[ContextManager]:
    def validate_votes(self, votes, digest):
        replica_ids = [vote.replica_id for vote in votes]
        if replica_ids != sorted(replica_ids):  # Ascending, but repeats allowed.
            raise RemoteProtocolError("bad-votes", "votes must be in ascending replica order")
        if len(votes) < self.replica.quorum:
            raise RemoteProtocolError("bad-votes", f"{len(votes)} votes, a quorum is {self.replica.quorum}")
        for vote in votes:
            if vote.request_digest != digest:
                raise RemoteProtocolError("bad-votes", f"replica {vote.replica_id}'s vote is for another request")
            self.replica._verifier.verify(vote)

    def count_votes(votes: tuple[Vote, ...]) -> tuple[int, int]:
        allow = sum(1 for vote in votes if vote.decision is Decision.ALLOW)
        return allow, len(votes) - allow
    return [PATCH_POINTS["validate-votes"].patch(validate_votes), PATCH_POINTS["count-votes"].patch(count_votes)]


def _ignore_deadline() -> list[ContextManager]:
    def make(original):
        def decide(rule, votes, timestamp_ms, deadline_ms):
            return original(rule, votes, timestamp_ms, max(deadline_ms, timestamp_ms))
        return decide
    return [_wrap("execution-decide", make), _wrap("accountability-decide", make)]


def _verdict_ignores_vetoes() -> list[ContextManager]:
    def lenient(config: ClusterConfig) -> ClusterConfig:
        rules = {risk: dataclasses.replace(rule, max_deny_votes=config.replica_count)
                 for risk, rule in config.rules.items()}
        return _config_overriding(config, fields={"rules": types.MappingProxyType(rules)})
    return _replica_config(lenient)


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
        weak = _config_overriding(config, {"reply_quorum": config.faulty_max})
        original(self, weak, client_id, seed, *arguments, **options)
    return [point.patch(init)]


def _backup_never_shares_overdue_votes() -> list[ContextManager]:
    """Votes go to the primary alone and a backup never shares one the primary left unproposed: backups
    never see a quorum of votes, so a primary that takes the votes and never proposes is never replaced."""
    def share_overdue_votes(self):
        return None
    return [PATCH_POINTS["share-overdue-votes"].patch(share_overdue_votes)]


def _bundle_trusts_its_forwarder() -> list[ContextManager]:
    """A backup takes the PREPAREs and COMMITs its primary forwards on the primary's word: the bundle came
    over an authenticated link from the primary, so its parts go straight to their handlers, unverified."""
    def receive_bundle(self, bundle):
        for part in (*bundle.prepares, *bundle.commits):
            try:
                self._handlers[type(part)](part)
            except RemoteProtocolError as error:
                self._reject(error.from_sender(f"replica {bundle.replica_id}"))
    return [PATCH_POINTS["receive-bundle"].patch(receive_bundle)]


def _batch_waits_for_a_full_batch() -> list[ContextManager]:
    """The fill target forgets that it should fall with the batches in flight: a batch waits until it is
    full, so requests that arrive slowly are never proposed."""
    def batch_fill_target(self, in_flight):
        return self.replica.limits.max_batch_requests
    return [PATCH_POINTS["batch-fill-target"].patch(batch_fill_target)]


def _drop_phase_votes_before_their_quorum() -> list[ContextManager]:
    """The superfluous-message filter judges a slot by its PRE-PREPARE instead of its quorum: the PREPAREs
    and COMMITs a slot still needs are dropped unverified, and the slot never prepares."""
    def adds_nothing(self, message):
        if type(message).__name__ not in ("Prepare", "Commit") or message.view != self.replica.view:
            return False
        slot = self.current_slot(message.seq)
        return slot is not None and slot.preprepare is not None and message.replica_id != slot.preprepare.replica_id
    return [PATCH_POINTS["adds-nothing"].patch(adds_nothing)]


def _wrong_reproposals(lowest_view_wins: bool = False, one_short: bool = False) -> list[ContextManager]:
    """A wrong re-proposal rule, shared by the new primary and the backups that check its NEW-VIEW (so they
    agree with each other, as a bug in the one function both use would make them)."""
    def choose_reproposals(view_changes):
        stable_seq = max(view_change.stable_seq for view_change in view_changes)
        best: dict[int, tuple[int, bytes, object]] = {}
        for view_change in view_changes:
            for proof in view_change.prepared:
                preprepare = proof.preprepare
                if preprepare.seq <= stable_seq:
                    continue
                candidate = (preprepare.view, record_digest(preprepare.batch), preprepare.batch)
                current = best.get(preprepare.seq)
                if current is None or (candidate[:2] > current[:2]) != lowest_view_wins:
                    best[preprepare.seq] = candidate
        top = max(best, default=stable_seq + one_short) - one_short
        return stable_seq, tuple(best[seq][2] if seq in best else NULL_BATCH for seq in range(stable_seq + 1, top + 1))
    return [PATCH_POINTS["choose-reproposals-primary"].patch(choose_reproposals),
            PATCH_POINTS["choose-reproposals-check"].patch(choose_reproposals)]


def _reproposal_ignores_highest_view() -> list[ContextManager]:
    """A flipped comparison: of the prepared certificates for one seq, the one from the lowest view wins."""
    return _wrong_reproposals(lowest_view_wins=True)


def _new_view_drops_a_prepared_request() -> list[ContextManager]:
    """An off-by-one: the highest prepared seq is left out of the re-proposals."""
    return _wrong_reproposals(one_short=True)


def _prepared_with_one_prepare_too_few() -> list[ContextManager]:
    """A slot counts as prepared on q-1 matching PREPAREs, and VIEW-CHANGEs may carry such certificates."""
    def check_prepared(self, slot):
        replica = self.replica
        quorum = replica.quorum - 1
        if slot.prepared or slot.preprepare is None or slot.matching_prepare_count() < quorum:
            return
        slot.prepared = True
        proof = self.prepared_proofs[slot.seq] = PreparedProof(slot.preprepare, slot.matching_prepares()[:quorum])
        replica._out.persist.extend(message for message in (proof.preprepare, *proof.prepares)
                                    if message.replica_id != replica.replica_id)
        self._forward_quorum(prepares=proof.prepares)
        if not self.may_sign("commit", slot.seq, slot.batch_digest):
            return
        commit = replica._sign(Commit(replica.view, slot.seq, slot.batch_digest, replica.replica_id, bytes(64)))
        replica._send_to_primary(commit)
        slot.commits[replica.replica_id] = commit
        self._check_committed(slot)

    def make_check_proof(original):
        def check_prepared_proof(proof, config, verifier):
            return original(proof, _config_overriding(config, {"quorum": config.quorum - 1}), verifier)
        return check_prepared_proof
    return [PATCH_POINTS["check-prepared"].patch(check_prepared), _wrap("check-prepared-proof", make_check_proof)]


def _stable_checkpoint_from_f_plus_one() -> list[ContextManager]:
    """f+1 matching CHECKPOINTs make a checkpoint stable (instead of a quorum): the low water mark moves,
    and slots are discarded, on the word of a single correct replica."""
    def check_stable(self, seq):
        replica = self.replica
        enough = replica.config.faulty_max + 1
        by_digest: dict[bytes, list] = {}
        for checkpoint in self.checkpoints.get(seq, {}).values():
            by_digest.setdefault(checkpoint.state_digest, []).append(checkpoint)
        proof = next((group for group in by_digest.values() if len(group) >= enough), None)
        if proof is None:
            return
        if replica.last_executed < seq:
            self.note_lag(seq)
            return
        self.advance_low_water(seq, tuple(sorted(proof, key=lambda c: c.replica_id)))

    def advance_low_water(self, seq, proof):
        # As shipped, but without the assertion that the proof is a quorum (the same wrong threshold).
        replica = self.replica
        replica._out.persist.extend(checkpoint for checkpoint in proof if checkpoint.replica_id != replica.replica_id)
        self.low_water, self.stable_proof, self.stable_state = seq, proof, self.checkpoint_states.get(seq)
        for table in (self.checkpoint_states, self.checkpoints):
            for old_seq in [s for s in table if s <= seq]:
                del table[old_seq]
        replica.normal.forget_up_to(seq)
    return [PATCH_POINTS["check-stable"].patch(check_stable),
            PATCH_POINTS["advance-low-water"].patch(advance_low_water)]


def _state_transfer_skips_digest_check() -> list[ContextManager]:
    """A fetched snapshot is adopted if its proof is valid, whether or not the state hashes to what it certifies."""
    def state_matches_proof(state, proof):
        return True
    return [PATCH_POINTS["snapshot-digest"].patch(state_matches_proof)]


def _execute_out_of_order() -> list[ContextManager]:
    """The next committed slot above the last executed one runs, even if a slot below it has not committed."""
    def execute_committed(self):
        replica = self.replica
        while True:
            above = [seq for seq in replica.slots.irange(minimum=replica.last_executed + 1)
                     if replica.slots[seq].committed]
            if not above:
                return
            self._execute(replica.slots[above[0]])

    def make_execute(original):
        def execute(self, seq, batch, request_digests, sign_reply):
            self.last_executed_seq = max(self.last_executed_seq, seq - 1)  # No gap check: whatever comes is next.
            return original(self, seq, batch, request_digests, sign_reply)
        return execute
    return [PATCH_POINTS["execute-committed"].patch(execute_committed), _wrap("execution-execute", make_execute)]


MUTANTS: dict[str, Mutant] = {mutant.name: mutant for mutant in (
    Mutant("quorum-one-smaller", "quorums of q-1: two quorums may share no correct replica (S1)",
           ("replica-init",), _quorum_one_smaller),
    Mutant("two-f-plus-one-quorum", "2f+1 used as the quorum when n > 3f+1 (at n=5: 3 instead of 4)",
           ("replica-init",), _two_f_plus_one_quorum),
    Mutant("skip-signature-verification", "replicas accept any signature: forged votes and messages count (S2)",
           ("replica-verifier",), _skip_signature_verification),
    Mutant("accept-preprepare-from-non-primary", "a backup may propose; correct replicas split and stall",
           ("on-preprepare", "primary-of"), _accept_preprepare_from_non_primary),
    Mutant("skip-new-view-validation", "a new primary's re-proposals are installed unchecked (S1, S8)",
           ("check-new-view",), _skip_new_view_validation),
    Mutant("execute-before-commit", "a prepared batch executes without a commit quorum (S1 after a view change)",
           ("check-prepared",), _execute_before_commit),
    Mutant("send-before-persist", "own signed messages are sent before they are durable (S7 after a restart)",
           ("send-own", "tick-input"), _send_before_persist),
    Mutant("own-messages-ahead-of-the-disk", "own signed messages leave with the forwards, before the store "
           "wrote them (S7 after a crash between the two)", ("send-own",), _own_messages_ahead_of_the_disk),
    Mutant("vote-not-bound-to-request", "a vote signed for one request justifies another (S2)",
           ("validate-votes",), _vote_not_bound_to_request),
    Mutant("count-duplicate-votes", "one replica's vote counted several times (S2)",
           ("validate-votes", "count-votes"), _count_duplicate_votes),
    Mutant("ignore-deadline", "requests ordered after their deadline may be ALLOW (S5)",
           ("execution-decide", "accountability-decide"), _ignore_deadline),
    Mutant("verdict-ignores-vetoes", "DENY votes no longer veto MEDIUM/HIGH/CRITICAL requests (S2)",
           ("replica-init",), _verdict_ignores_vetoes),
    Mutant("forget-exactly-once-after-restart", "a restarted replica forgets what it answered; state diverges (S8, S4)",
           ("restore-execution",), _forget_exactly_once_after_restart),
    Mutant("certificate-accepts-f-replies", "clients accept a verdict on f replies, none surely correct (S3)",
           ("client-init",), _certificate_accepts_f_replies),
    Mutant("backup-never-shares-overdue-votes", "a primary that withholds proposals is never replaced (liveness)",
           ("share-overdue-votes",), _backup_never_shares_overdue_votes),
    Mutant("bundle-trusts-forwarder", "a backup counts the PREPAREs and COMMITs its primary forwards without "
           "checking their signatures: a Byzantine primary forges a quorum (S1)",
           ("receive-bundle",), _bundle_trusts_its_forwarder),
    Mutant("batch-waits-for-a-full-batch", "a batch is proposed only once full: slow requests wait forever "
           "(liveness; they end REFUSED at their deadlines)", ("batch-fill-target",), _batch_waits_for_a_full_batch),
    Mutant("drop-phase-votes-before-quorum", "PREPAREs and COMMITs a slot still needs are dropped (liveness)",
           ("adds-nothing",), _drop_phase_votes_before_their_quorum),
    Mutant("reproposal-ignores-highest-view", "a new view re-proposes the lowest view's prepared certificate, "
           "not the highest's: a batch committed in a later view is replaced (S1)",
           ("choose-reproposals-primary", "choose-reproposals-check"), _reproposal_ignores_highest_view),
    Mutant("new-view-drops-a-prepared-request", "the highest prepared seq is not re-proposed: a committed batch "
           "may be lost or replaced (S1, durability)",
           ("choose-reproposals-primary", "choose-reproposals-check"), _new_view_drops_a_prepared_request),
    Mutant("prepared-with-one-prepare-too-few", "q-1 PREPAREs make a prepared certificate: with a primary "
           "that equivocates its PREPAREs too, conflicting certificates in one view (S1 after a view change)",
           ("check-prepared", "check-prepared-proof"), _prepared_with_one_prepare_too_few),
    Mutant("stable-checkpoint-from-f-plus-1", "f+1 CHECKPOINTs make a checkpoint stable (S8; others reject its "
           "proofs)", ("check-stable", "advance-low-water"), _stable_checkpoint_from_f_plus_one),
    Mutant("state-transfer-skips-digest-check", "a snapshot is adopted without checking it hashes to its proof "
           "(S9, S1)", ("snapshot-digest",), _state_transfer_skips_digest_check),
    Mutant("execute-out-of-order", "a committed slot executes before a lower one has committed (S1)",
           ("execute-committed", "execution-execute"), _execute_out_of_order),
)} | EPOCH_MUTANTS

assert all(key in PATCH_POINTS for mutant in MUTANTS.values() for key in mutant.patch_points)
assert {key for mutant in MUTANTS.values() for key in mutant.patch_points} == set(PATCH_POINTS), \
    "every patch point is used by some mutant"
