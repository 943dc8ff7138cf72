"""Rebuilding a replica's view-change evidence from its durable store after a restart.

What a replica persists (before it sends anything that depends on it):

- its own signed messages (votes, pre-prepares, prepares, commits, checkpoints,
  view changes, new views): the S7 signing guard is rebuilt from them;
- when a slot prepares, the others' pre-prepare and prepares of its prepared
  proof, before its COMMIT leaves;
- when a checkpoint becomes stable (or is adopted by state transfer), the
  others' checkpoints of its stable proof;
- the verdict log.

So a restarted replica holds the same stable proof and the same prepared
proofs as a replica that never stopped, and its VIEW-CHANGE is as good as
anyone's: every batch that committed anywhere was prepared, and therefore
persisted, by a quorum before any of them sent COMMIT.  The functions here are
pure: they read stored messages (already verified when first received, and
written by this replica itself) and return what to restore.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

from ._codec import record_digest
from ._messages import Checkpoint, Message, NewView, PrePrepare, Prepare, PreparedProof
from ._quorum import primary_of


def latest_stable_proof(signed: Iterable[Message], quorum_at: Callable[[int], int],
                        executed_through: int) -> tuple[Checkpoint, ...]:
    """The quorum of matching stored checkpoints at the highest seq this replica executed, or ().
    ``quorum_at(seq)`` is the quorum of the epoch that ordered ``seq``."""
    signers: dict[tuple[int, bytes], dict[int, Checkpoint]] = defaultdict(dict)
    for message in signed:
        if isinstance(message, Checkpoint) and message.seq <= executed_through:
            signers[(message.seq, message.state_digest)][message.replica_id] = message
    proven = [key for key, by_replica in signers.items() if len(by_replica) >= quorum_at(key[0])]
    if not proven:
        return ()
    best = max(proven)
    return tuple(checkpoint for _, checkpoint in sorted(signers[best].items())[:quorum_at(best[0])])


def stored_preprepares(signed: Iterable[Message], replica_count: int) -> list[PrePrepare]:
    """Every stored pre-prepare signed by its view's primary, including the re-proposals inside our own NEW-VIEWs."""
    found = []
    for message in signed:
        candidates = message.preprepares if isinstance(message, NewView) else (message,)
        found += [pp for pp in candidates if isinstance(pp, PrePrepare)
                  and pp.replica_id == primary_of(pp.view, replica_count)]
    return found


def latest_prepared_proofs(signed: list[Message], replica_count: int, quorum: int,
                           low_water: int, high_water: int) -> dict[int, PreparedProof]:
    """For each seq in (low_water, high_water], the stored prepared proof of the highest view."""
    prepares: dict[tuple[int, int, bytes], dict[int, Prepare]] = defaultdict(dict)
    for message in signed:
        if isinstance(message, Prepare) and low_water < message.seq <= high_water:
            prepares[(message.view, message.seq, message.batch_digest)][message.replica_id] = message
    proofs: dict[int, PreparedProof] = {}
    for preprepare in stored_preprepares(signed, replica_count):
        if not low_water < preprepare.seq <= high_water:
            continue
        matching = prepares.get((preprepare.view, preprepare.seq, record_digest(preprepare.batch)), {})
        current = proofs.get(preprepare.seq)
        if len(matching) >= quorum and (current is None or current.preprepare.view < preprepare.view):
            proofs[preprepare.seq] = PreparedProof(preprepare, tuple(p for _, p in sorted(matching.items())[:quorum]))
    return proofs


def view_of(message: Message) -> int | None:
    """The view a signed message belongs to, or None for view-less messages (votes, checkpoints)."""
    return getattr(message, "view", getattr(message, "new_view", None))
