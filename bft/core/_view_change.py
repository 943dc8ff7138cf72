"""View-change proofs: pure validation and the deterministic choice of what a new view re-proposes.

Safety rests on one rule.  A batch that committed at seq s in some view was
prepared by a quorum, and any quorum of VIEW-CHANGE messages intersects that
quorum in at least one correct replica, which reports the prepared proof.  The
new view re-proposes, for every seq above the highest stable checkpoint, the
batch of the proof with the highest view (or a no-op if none), so the
committed batch is the one chosen.  Every replica recomputes this choice from
the signed VIEW-CHANGE messages inside NEW-VIEW and accepts nothing else.
"""

from __future__ import annotations

from typing import Callable

from ._codec import record_digest
from ._config import ClusterConfig
from ._crypto import Verifier
from ._errors import RemoteProtocolError
from ._messages import NULL_BATCH, Batch, Checkpoint, NewView, PreparedProof, ViewChange
from ._quorum import primary_of


def _invalid(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError("bad-view-change", detail)


def check_distinct_ascending(replica_ids: list[int], quorum: int, what: str) -> None:
    if replica_ids != sorted(set(replica_ids)) or len(replica_ids) < quorum:
        raise _invalid(f"{what} needs {quorum} signers, distinct and ascending")


def check_stable_proof(seq: int, proof: tuple[Checkpoint, ...], config: ClusterConfig, verifier: Verifier) -> None:
    """A stable checkpoint at ``seq`` is proven by a quorum of matching signed checkpoints (none for seq 0)."""
    if seq == 0:
        if proof:
            raise _invalid("the initial state needs no checkpoint proof")
        return
    if seq % config.limits.checkpoint_interval != 0:
        raise _invalid(f"stable seq {seq} is not a checkpoint boundary")
    check_distinct_ascending([c.replica_id for c in proof], config.quorum, "a stable checkpoint")
    if any(c.seq != seq or c.state_digest != proof[0].state_digest for c in proof):
        raise _invalid("checkpoint proof does not agree on one seq and state")
    for checkpoint in proof:
        verifier.verify(checkpoint)


def check_prepared_proof(proof: PreparedProof, config: ClusterConfig, verifier: Verifier) -> None:
    """A pre-prepare from its view's primary plus a quorum of matching prepares."""
    preprepare = proof.preprepare
    if preprepare.replica_id != primary_of(preprepare.view, config.replica_count):
        raise _invalid(f"pre-prepare for view {preprepare.view} not from its primary")
    verifier.verify(preprepare)
    batch_digest = record_digest(preprepare.batch)
    check_distinct_ascending([p.replica_id for p in proof.prepares], config.quorum, "a prepared proof")
    for prepare in proof.prepares:
        if (prepare.view, prepare.seq, prepare.batch_digest) != (preprepare.view, preprepare.seq, batch_digest):
            raise _invalid(f"prepare from replica {prepare.replica_id} does not match its pre-prepare")
        verifier.verify(prepare)


# The configuration and verifier of the epoch that ordered a seq (``Epochs.keys_for_seq``): a stable checkpoint
# certificate is checked with its own epoch's keys and quorum, which differ from the current ones at the first
# checkpoint of an epoch (specs/RECONFIGURATION.md section 3).
KeysForSeq = Callable[[int], tuple[ClusterConfig, Verifier]]


def check_view_change(view_change: ViewChange, config: ClusterConfig, verifier: Verifier,
                      keys_for_seq: KeysForSeq | None = None) -> None:
    """Validate every proof a VIEW-CHANGE carries (its own signature is checked by the caller)."""
    stable_config, stable_verifier = keys_for_seq(view_change.stable_seq) if keys_for_seq else (config, verifier)
    check_stable_proof(view_change.stable_seq, view_change.stable_proof, stable_config, stable_verifier)
    window_top = view_change.stable_seq + config.limits.log_window
    seen: set[int] = set()
    for proof in view_change.prepared:
        preprepare = proof.preprepare
        if not view_change.stable_seq < preprepare.seq <= window_top:
            raise _invalid(f"prepared proof for seq {preprepare.seq} outside ({view_change.stable_seq}, {window_top}]")
        if preprepare.seq in seen or preprepare.view >= view_change.new_view:
            raise _invalid(f"prepared proof for seq {preprepare.seq} is duplicated or from a future view")
        seen.add(preprepare.seq)
        check_prepared_proof(proof, config, verifier)


def choose_reproposals(view_changes: tuple[ViewChange, ...]) -> tuple[int, tuple[Batch, ...]]:
    """(highest stable seq, batches for seq stable+1 .. highest prepared), deterministically.

    Ties between proofs of the same view (possible only with more than f faulty
    replicas) break on the batch digest so every replica still chooses alike.
    """
    stable_seq = max(view_change.stable_seq for view_change in view_changes)
    best: dict[int, tuple[int, bytes, Batch]] = {}
    for view_change in view_changes:
        for proof in view_change.prepared:
            preprepare = proof.preprepare
            if preprepare.seq <= stable_seq:
                continue
            candidate = (preprepare.view, record_digest(preprepare.batch), preprepare.batch)
            current = best.get(preprepare.seq)
            if current is None or candidate[:2] > current[:2]:
                best[preprepare.seq] = candidate
    top = max(best, default=stable_seq)
    return stable_seq, tuple(best[seq][2] if seq in best else NULL_BATCH for seq in range(stable_seq + 1, top + 1))


def check_new_view(new_view: NewView, config: ClusterConfig, verifier: Verifier,
                   keys_for_seq: KeysForSeq | None = None) -> tuple[int, tuple[Batch, ...]]:
    """Validate NEW-VIEW fully and return the (stable seq, batches) it must re-propose."""
    if new_view.replica_id != primary_of(new_view.view, config.replica_count):
        raise _invalid(f"NEW-VIEW for view {new_view.view} not from its primary")
    check_distinct_ascending([vc.replica_id for vc in new_view.view_changes], config.quorum, "NEW-VIEW")
    for view_change in new_view.view_changes:
        if view_change.new_view != new_view.view:
            raise _invalid(f"VIEW-CHANGE from replica {view_change.replica_id} is for another view")
        verifier.verify(view_change)
        check_view_change(view_change, config, verifier, keys_for_seq)
    stable_seq, batches = choose_reproposals(new_view.view_changes)
    expected = [(stable_seq + offset + 1, batch) for offset, batch in enumerate(batches)]
    actual = [(pp.seq, pp.batch) for pp in new_view.preprepares]
    if actual != expected:
        raise _invalid("NEW-VIEW re-proposals differ from what its VIEW-CHANGE proofs require")
    for preprepare in new_view.preprepares:
        if preprepare.view != new_view.view or preprepare.replica_id != new_view.replica_id:
            raise _invalid("a re-proposal is not signed for the new view by its primary")
        verifier.verify(preprepare)
    return stable_seq, batches


def stable_proof_for(view_changes: tuple[ViewChange, ...], stable_seq: int) -> tuple[Checkpoint, ...]:
    """The checkpoint proof carried by a VIEW-CHANGE at ``stable_seq`` (one exists by construction)."""
    for view_change in view_changes:
        if view_change.stable_seq == stable_seq:
            return view_change.stable_proof
    raise AssertionError(f"no VIEW-CHANGE carries the stable seq {stable_seq}")
