"""What the model checker's replicas think, and the menu of Byzantine behaviours it explores.

Replica 2's policy denies e-mail and every policy allows reading, so of the
two requests one is vetoed at HIGH risk and one is approved by everybody:
enough for the verdict rule, the veto and forged approvals to matter.

Each ``Adversary`` names one replica, the core it runs (the real one, or a
subclass that believes it is primary) and a transform applied to everything
that core sends.  Transforms are pure functions of the core's state and the
message, so the checker can clone and fingerprint a state without them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from bft.core import (Batch, BatchEntry, Commit, Decision, Message, NewView, PrePrepare, Prepare, Replica, Signer,
                      Vote, request_digest)
from bft.core._messages import NULL_BATCH
from bft.core._normal_case import NormalCase
from bft.policy import PolicyDecision
from bft.testing import equivocating_primary

REPLICA_COUNT = 4

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


class UsurpingNormalCase(NormalCase):
    """The usurper's normal case: it races ahead, proposing one seq beyond the next one to execute, so its
    batch reaches the others before the real primary's batch for that seq.  The votes it needs it copies
    from the real primary's PRE-PREPAREs."""

    def on_preprepare(self, preprepare) -> None:
        # Votes go to the real primary alone, so the usurper takes them from its proposals, validly
        # signed, and races to propose the same requests at a later seq before accepting the original.
        replica = self.replica
        if preprepare.replica_id != replica.replica_id:
            for vote in (vote for entry in preprepare.batch.entries for vote in entry.votes):
                pending = replica.pending.get(vote.request_digest)
                if pending is not None and vote.replica_id not in pending.votes:
                    replica.requests.add_vote(pending, vote)
        super().on_preprepare(preprepare)

    def _propose(self, entries) -> None:
        self.next_seq = max(self.next_seq, self.replica.last_executed + 2)
        while self.next_seq in self.slots and self.slots[self.next_seq].preprepare is not None:
            self.next_seq += 1
        if self.next_seq <= self.replica.high_water:
            super()._propose(entries)


class RelayingPrimary(Replica):
    """A Byzantine primary's (or would-be primary's) core that relays every PREPARE and COMMIT it receives to every other replica at
    once, whatever its own slot holds.  PREPAREs and COMMITs go to the primary alone, so the quorums backups
    see are the ones it chooses to pass on; an honest core would pass on only those matching its own batch,
    which would hide the splits a lying primary aims for."""

    def _receive(self, message, handler=None, forwarder=None) -> None:
        super()._receive(message, handler, forwarder)
        if isinstance(message, (Prepare, Commit)) and message.replica_id != self.replica_id:
            self._out.to_replicas.extend((other, message) for other in range(self.config.replica_count)
                                         if other not in (self.replica_id, message.replica_id))


class UsurpingReplica(Replica):
    """A backup that runs the proposer's code as if it were primary, signing PRE-PREPAREs in its own name."""

    def __init__(self, *arguments) -> None:
        super().__init__(*arguments)
        self.normal = UsurpingNormalCase(self)
        self._handlers = self._handler_table()

    @property
    def is_primary(self) -> bool:
        return True


def _usurping_backup(core, destination, message, signer) -> list[Message]:
    """Its own proposals get a later timestamp, so they never coincide with the real primary's."""
    if isinstance(message, PrePrepare) and message.replica_id == core.replica_id:
        return [signer.sign(dataclasses.replace(message, batch=_other_batch(message.batch)))]
    return [message]


MENU: dict[str, Adversary] = {adversary.name: adversary for adversary in (
    Adversary("equivocating-primary", 0, _from_interceptor(equivocating_primary({2, 3})),
              "the primary sends replicas 2 and 3 a different batch for each seq", RelayingPrimary),
    Adversary("double-preprepare", 0, _double_preprepare,
              "the primary sends every backup two different batches for each seq", RelayingPrimary),
    Adversary("transplanting-primary", 0, _transplanting_primary,
              "the primary justifies each request with another request's ALLOW votes", RelayingPrimary),
    Adversary("stuffing-primary", 0, _stuffing_primary,
              "the primary justifies each request with its own ALLOW vote, repeated", RelayingPrimary),
    Adversary("forging-voter", 1, _forging_voter, "a backup sends ALLOW votes in the other replicas' names"),
    Adversary("usurping-backup", 1, _usurping_backup, "a backup proposes batches as if it were primary",
              UsurpingReplica),
    Adversary("lying-new-primary", 1, _lying_new_primary,
              "the primary of view 1 re-proposes no-ops in its NEW-VIEW", RelayingPrimary),
)}
