"""Named, composable Byzantine behaviours for ``SimCluster``.

Two kinds exist, matching the two places a replica can lie:

- Policies (``ApproveEverything``, ``DenyEverything``) make a replica's *opinion*
  wrong while its protocol core stays correct.
- Interceptors stand in for the replica's network card: ``SimCluster`` passes
  every message the replica sends, with its destination and the replica's own
  ``Signer``, and sends whatever the interceptor returns.  A Byzantine replica
  holds its own private key, so re-signed lies are in scope; other replicas'
  keys are not, which is why forged messages carry random signatures.

Every interceptor returns schema-valid messages (the simulator re-encodes and
decodes them), keeps its state bounded, and draws randomness only from the seed
it is built with, so a run stays reproducible.  ``compose`` chains them.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from typing import Callable, Collection

from ..core import (Batch, Bundle, Checkpoint, Commit, Decision, Message, PrePrepare, Prepare, Reply, Signer,
                    StateReply, ViewChange, Vote, max_faulty, quorum_size)
from ..core._codec import digest, record_digest
from ..core._state_transfer import pack_log_chunk, parse_log_chunk
from ..policy import PolicyDecision
from ._sim import Interceptor, relays_phase_votes

MAX_REPLAY_HISTORY = 64


# ----------------------------------------------------------------------------- lying policies


class ApproveEverything:
    """A policy that says ALLOW to anything: a compromised or careless replica."""

    name = "approve-everything"

    def evaluate(self, action, context) -> PolicyDecision:
        return PolicyDecision.allow("approve-everything")


class DenyEverything:
    """A policy that says DENY to anything: the most cautious (or a sabotaging) replica."""

    name = "deny-everything"

    def evaluate(self, action, context) -> PolicyDecision:
        return PolicyDecision.deny("deny-everything")


# ----------------------------------------------------------------------------- interceptors


def honest() -> Interceptor:
    """Sends every message unchanged; the identity for ``compose``."""
    return lambda destination, message, signer: [message]


def silent() -> Interceptor:
    """Drops everything the replica sends: a crashed or muted replica that keeps its state."""
    return lambda destination, message, signer: []


def lying_votes(decision: Decision = Decision.ALLOW) -> Interceptor:
    """Re-signs every outgoing vote with ``decision``, whatever the replica's policy concluded."""

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if isinstance(message, Vote) and message.decision is not decision:
            return [signer.sign(dataclasses.replace(message, decision=decision, reason="lying vote"))]
        return [message]

    return intercept


def lying_replies(decision: Decision = Decision.ALLOW) -> Interceptor:
    """Re-signs every reply to a client with ``decision``: one replica claiming a verdict on its own."""

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if isinstance(message, Reply) and message.decision is not decision:
            return [signer.sign(dataclasses.replace(message, decision=decision, reason="lying reply"))]
        return [message]

    return intercept


def lying_checkpoints(seed: int) -> Interceptor:
    """Re-signs every checkpoint with a random state digest: a validly signed claim about a state nobody has."""
    chooser = random.Random(seed)

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if isinstance(message, Checkpoint):
            return [signer.sign(dataclasses.replace(message, state_digest=chooser.randbytes(32)))]
        return [message]

    return intercept


def hiding_view_changes() -> Interceptor:
    """Re-signs every VIEW-CHANGE without its prepared proofs: a replica claiming it prepared nothing.

    The new view must still keep every committed batch, because any quorum of
    VIEW-CHANGEs holds f+1 correct ones and one of them reports the batch.
    """

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if isinstance(message, ViewChange) and message.prepared:
            return [signer.sign(dataclasses.replace(message, prepared=()))]
        return [message]

    return intercept


def forged_signatures(seed: int, probability: float = 1.0) -> Interceptor:
    """Replaces the signature of a message with random bytes, with ``probability`` per message."""
    assert 0.0 <= probability <= 1.0
    chooser = random.Random(seed)

    def forge(message: Message) -> Message:
        if isinstance(message, Bundle):  # A forwarder can forge only its parts: the bundle signs nothing.
            return _with_parts(message, forge)
        return dataclasses.replace(message, signature=chooser.randbytes(len(message.signature)))

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if chooser.random() >= probability:
            return [message]
        return [forge(message)]

    return intercept


def _with_parts(bundle: Bundle, change: Callable[[Message], Message]) -> Bundle:
    return dataclasses.replace(bundle, prepares=tuple(change(part) for part in bundle.prepares),
                               commits=tuple(change(part) for part in bundle.commits))


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _mangle(message: Message, chooser: random.Random) -> Message:
    """The same message with one meaningful field changed and the old signature kept."""
    if isinstance(message, Vote):
        flipped = Decision.DENY if message.decision is Decision.ALLOW else Decision.ALLOW
        return dataclasses.replace(message, decision=flipped)
    if isinstance(message, (Prepare, Commit)):
        if chooser.random() < 0.5:
            return dataclasses.replace(message, seq=message.seq + 1)
        return dataclasses.replace(message, batch_digest=_flip_first_byte(message.batch_digest))
    if isinstance(message, PrePrepare):
        batch = dataclasses.replace(message.batch, timestamp_ms=message.batch.timestamp_ms + 1)
        return dataclasses.replace(message, batch=batch)
    if isinstance(message, Reply):
        return dataclasses.replace(message, decision=Decision.ALLOW, reason="mangled")
    if isinstance(message, Checkpoint):
        return dataclasses.replace(message, state_digest=_flip_first_byte(message.state_digest))
    if isinstance(message, Bundle):
        return _with_parts(message, lambda part: _mangle(part, chooser))
    return dataclasses.replace(message, replica_id=message.replica_id ^ 1) if hasattr(message, "replica_id") \
        else message


def mangled_messages(seed: int, probability: float = 1.0) -> Interceptor:
    """Changes one field of a message but keeps the signature made for the original."""
    assert 0.0 <= probability <= 1.0
    chooser = random.Random(seed)

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        return [_mangle(message, chooser) if chooser.random() < probability else message]

    return intercept


def _other_batch(batch: Batch) -> Batch:
    """A different but well-formed batch: entries reversed if there are several, else a later timestamp."""
    if len(batch.entries) >= 2:
        return dataclasses.replace(batch, entries=tuple(reversed(batch.entries)))
    return dataclasses.replace(batch, timestamp_ms=batch.timestamp_ms + 1)


def relaying(interceptor: Interceptor) -> Interceptor:
    """The same behaviour, and every PREPARE and COMMIT the replica receives is relayed to every other replica
    at once (``SimCluster`` does the relaying).  PREPAREs and COMMITs go to the primary alone, so a lying
    primary decides which quorums backups see; relaying all of them is the most it can do with them."""
    interceptor.relays_phase_votes = True
    return interceptor


def equivocating_primary(targets: Collection[int]) -> Interceptor:
    """As primary, sends the replicas in ``targets`` a different (re-signed) batch for the same seq, and relays
    every PREPARE and COMMIT it gets, so that each side can assemble a quorum for its own batch."""
    chosen = frozenset(targets)

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if isinstance(message, PrePrepare) and destination in chosen:
            return [signer.sign(dataclasses.replace(message, batch=_other_batch(message.batch)))]
        return [message]

    return relaying(intercept)


def forging_collector(targets: Collection[int], replica_count: int) -> Interceptor:
    """As primary, sends the replicas in ``targets`` another (re-signed) batch for the seq and, at once, a
    bundle of PREPAREs and COMMITs for it in every other replica's name, with forged signatures; the real
    bundles never reach them.  Only a replica that trusts a bundle's forwarder would execute that batch."""
    chosen = frozenset(targets)
    chooser = random.Random(replica_count)

    def forged_quorum(preprepare: PrePrepare, destination: int, signer: Signer) -> Bundle:
        batch_digest = record_digest(preprepare.batch)
        parts = {phase: tuple(signer.sign(phase(preprepare.view, preprepare.seq, batch_digest, author, bytes(64)))
                              if author == preprepare.replica_id else
                              phase(preprepare.view, preprepare.seq, batch_digest, author, chooser.randbytes(64))
                              for author in range(replica_count) if author != destination)
                 for phase in (Prepare, Commit)}
        return Bundle(parts[Prepare], parts[Commit], preprepare.replica_id)

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if destination not in chosen:
            return [message]
        if isinstance(message, Bundle):
            return []
        if isinstance(message, PrePrepare):
            other = signer.sign(dataclasses.replace(message, batch=_other_batch(message.batch)))
            return [other, forged_quorum(other, destination, signer)]
        return [message]

    return intercept


def veto_dropping_primary(quorum: int) -> Interceptor:
    """As primary, removes DENY votes from every batch entry while more than ``quorum`` votes remain.

    This is the strongest legal-looking vote selection: the result is still a
    quorum of validly signed votes, which correct replicas must accept.
    """
    assert quorum >= 1

    def without_denials(votes: tuple[Vote, ...]) -> tuple[Vote, ...]:
        kept = list(votes)
        for vote in [vote for vote in votes if vote.decision is Decision.DENY][:max(0, len(votes) - quorum)]:
            kept.remove(vote)
        assert len(kept) >= min(quorum, len(votes))
        return tuple(kept)

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if not isinstance(message, PrePrepare):
            return [message]
        entries = tuple(dataclasses.replace(entry, votes=without_denials(entry.votes))
                        for entry in message.batch.entries)
        if entries == message.batch.entries:
            return [message]
        return [signer.sign(dataclasses.replace(message, batch=dataclasses.replace(message.batch, entries=entries)))]

    return intercept


def replaying(seed: int, probability: float = 0.3, history_max: int = MAX_REPLAY_HISTORY) -> Interceptor:
    """Sends each message, and with ``probability`` also an earlier message to the same kind of endpoint."""
    assert 0.0 <= probability <= 1.0 and history_max >= 1
    chooser = random.Random(seed)
    to_replicas: deque[Message] = deque(maxlen=history_max)
    to_clients: deque[Message] = deque(maxlen=history_max)

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        history = to_clients if isinstance(destination, str) else to_replicas
        sent = [message]
        if history and chooser.random() < probability:
            sent.append(history[chooser.randrange(len(history))])
        history.append(message)
        return sent

    return intercept


def _forged_chunk(data: bytes, first_position: int) -> bytes:
    """The same log chunk with its last verdict flipped and every hash recomputed: self-consistent, but not
    the certified chain."""
    entries = list(parse_log_chunk(data, first_position, len(data)))
    last = entries[-1]
    flipped = Decision.ALLOW if last.decision is Decision.DENY else Decision.DENY
    forged = dataclasses.replace(last, decision=flipped, reason="forged")
    entries[-1] = dataclasses.replace(forged, entry_hash=forged.computed_hash())
    return pack_log_chunk(tuple(entries))


def lying_state_transfer(seed: int) -> Interceptor:
    """Re-signs every state-transfer answer with a lie: a snapshot of a state nobody certified, a proof
    padded with the liar's own checkpoint on that state, or log entries with a flipped, re-hashed verdict."""
    chooser = random.Random(seed)

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if not isinstance(message, StateReply):
            return [message]
        if message.entries:
            return [signer.sign(dataclasses.replace(message, entries=_forged_chunk(message.entries,
                                                                                   message.first_position)))]
        state = message.state[:-1] + bytes([message.state[-1] ^ 1])
        if chooser.random() < 0.5:
            return [signer.sign(dataclasses.replace(message, state=state))]
        own = signer.sign(Checkpoint(message.checkpoint_seq, digest(state), message.replica_id, bytes(64)))
        proof = tuple(sorted((own, *(c for c in message.stable_proof if c.replica_id != message.replica_id)),
                             key=lambda checkpoint: checkpoint.replica_id))
        return [signer.sign(dataclasses.replace(message, state=state, stable_proof=proof))]

    return intercept


def compose(*interceptors: Interceptor) -> Interceptor:
    """Applies ``interceptors`` left to right; each one sees every message the previous one produced."""

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        messages = [message]
        for stage in interceptors:
            messages = [produced for current in messages for produced in stage(destination, current, signer)]
        return messages

    return relaying(intercept) if any(relays_phase_votes(stage) for stage in interceptors) else intercept


# A registry for randomized tests: name -> factory(seed, replica_count) -> interceptor.
STRATEGIES: dict[str, Callable[[int, int], Interceptor]] = {
    "silent": lambda seed, replica_count: silent(),
    "lying-votes": lambda seed, replica_count: lying_votes(),
    "lying-replies": lambda seed, replica_count: lying_replies(),
    "forged-signatures": lambda seed, replica_count: forged_signatures(seed, 0.5),
    "mangled-messages": lambda seed, replica_count: mangled_messages(seed, 0.5),
    "equivocating-primary": lambda seed, replica_count: equivocating_primary(
        random.Random(seed).sample(range(replica_count), replica_count // 2)),
    "forging-collector": lambda seed, replica_count: forging_collector(
        random.Random(seed).sample(range(replica_count), max_faulty(replica_count)), replica_count),
    "veto-dropping-primary": lambda seed, replica_count: veto_dropping_primary(
        quorum_size(replica_count, max_faulty(replica_count))),
    "replaying": lambda seed, replica_count: replaying(seed),
    "lying-checkpoints": lambda seed, replica_count: lying_checkpoints(seed),
    "hiding-view-changes": lambda seed, replica_count: hiding_view_changes(),
    "equivocating-hiding-primary": lambda seed, replica_count: compose(
        equivocating_primary(random.Random(seed).sample(range(replica_count), replica_count // 2)),
        hiding_view_changes()),
    "lying-replaying": lambda seed, replica_count: compose(lying_votes(), lying_replies(), replaying(seed)),
    "lying-state-transfer": lambda seed, replica_count: compose(lying_checkpoints(seed), lying_state_transfer(seed)),
}
