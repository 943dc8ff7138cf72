"""S7-S10: the invariants over what correct replicas signed and persisted, and the state they adopted."""

from __future__ import annotations

from typing import Mapping, Sequence

from bft.core import Checkpoint, ClusterConfig, Commit, Message, PrePrepare, Prepare, ViewChange, Vote

from ._common import Logs, SignedByReplica, Violation, _signature_ok, _verifier


def _equivocation_key(message: Message) -> tuple | None:
    """What a correct replica signs at most one message for."""
    if isinstance(message, (PrePrepare, Prepare, Commit)):
        return (type(message).__name__, message.view, message.seq)
    if isinstance(message, Checkpoint):
        return ("Checkpoint", message.seq)
    if isinstance(message, Vote):
        return ("Vote", message.request_digest)
    return None


def check_no_equivocation(signed: SignedByReplica) -> list[Violation]:
    """S7: no correct replica signs two different votes for one request, or two different pre-prepares,
    prepares, commits for one (view, seq), or two different checkpoints for one seq."""
    violations = []
    for replica_id in sorted(signed):
        first: dict[tuple, Message] = {}
        for message in signed[replica_id]:
            key = _equivocation_key(message)
            if key is None or message.replica_id != replica_id:
                continue
            if first.setdefault(key, message) != message:
                violations.append(Violation("S7", f"replica {replica_id} signed two different {key[0]} messages "
                                                  f"for {key[1:]}"))
    return violations


def check_vote_floor(signed: SignedByReplica) -> list[Violation]:
    """S10: a correct replica keeps the promise behind its VIEW-CHANGE: having asked to leave the views below
    ``w``, it signs no PRE-PREPARE, PREPARE or COMMIT in them (its own messages, in the order it persisted them)."""
    violations = []
    for replica_id in sorted(signed):
        floor, seen = 0, set()
        for message in signed[replica_id]:
            if getattr(message, "replica_id", None) != replica_id or message in seen:
                continue  # Another's, or a copy of one listed earlier (the same message seen on the wire too).
            seen.add(message)
            if isinstance(message, ViewChange):
                floor = max(floor, message.new_view)
            elif isinstance(message, (PrePrepare, Prepare, Commit)) and message.view < floor:
                violations.append(Violation("S10", f"replica {replica_id} signed a {type(message).__name__} for "
                                                   f"view {message.view} seq {message.seq} after its VIEW-CHANGE "
                                                   f"for view {floor}"))
    return violations


def check_checkpoints(signed: SignedByReplica, config: ClusterConfig | None = None,
                      stable_proofs: Mapping[int, Sequence[Checkpoint]] | None = None) -> list[Violation]:
    """S8: correct replicas' checkpoints at one seq carry one state digest, and every stable proof a correct
    replica holds is a quorum of distinct, validly signed checkpoints for that digest."""
    violations = []
    digest_at: dict[int, tuple[int, bytes]] = {}
    for replica_id in sorted(signed):
        for message in signed[replica_id]:
            if not isinstance(message, Checkpoint) or message.replica_id != replica_id:
                continue
            other_id, other_digest = digest_at.setdefault(message.seq, (replica_id, message.state_digest))
            if other_digest != message.state_digest:
                violations.append(Violation("S8", f"replicas {other_id} and {replica_id} checkpointed different "
                                                  f"states at seq {message.seq}"))
    for replica_id in sorted(stable_proofs or {}):
        proof = stable_proofs[replica_id]
        problem = _stable_proof_problem(proof, config, digest_at) if proof else None
        if problem:
            violations.append(Violation("S8", f"replica {replica_id}'s stable proof: {problem}"))
    return violations


def _stable_proof_problem(proof: Sequence[Checkpoint], config: ClusterConfig | None,
                          digest_at: Mapping[int, tuple[int, bytes]]) -> str | None:
    if len({(checkpoint.seq, checkpoint.state_digest) for checkpoint in proof}) != 1:
        return "the checkpoints name different seqs or states"
    seq, state = proof[0].seq, proof[0].state_digest
    if seq in digest_at and digest_at[seq][1] != state:
        return f"it certifies a state at seq {seq} that correct replica {digest_at[seq][0]} did not reach"
    if config is None:
        return None
    verifier = _verifier(config)
    signers = {checkpoint.replica_id for checkpoint in proof if _signature_ok(verifier, checkpoint)}
    if len(signers) < config.quorum:
        return f"{len(signers)} distinct validly signed checkpoints, a quorum is {config.quorum}"
    return None


# ----------------------------------------------------------------------------- S9 state transfer


def check_log_prefixes(logs: Logs) -> list[Violation]:
    """S9 (second half): every correct replica's log is a prefix of every longer correct replica's log.

    After a state transfer a replica's log jumps ahead by fetched entries; this
    says the jump never leaves a gap or a fork.  (S1 compares equal positions;
    this also catches a log that skips positions.)
    """
    violations = []
    by_length = sorted(logs.items(), key=lambda item: (len(item[1]), item[0]))
    if not by_length:
        return violations
    longest_id, longest = by_length[-1]
    for replica_id, log in by_length[:-1]:
        if tuple(longest[:len(log)]) != tuple(log):
            violations.append(Violation("S9", f"replica {replica_id}'s log of {len(log)} entries is not a prefix of "
                                              f"replica {longest_id}'s log of {len(longest)}"))
    return violations


def check_state_transfers(adoptions: Mapping[int, Sequence], logs: Logs, signed: SignedByReplica,
                          config: ClusterConfig) -> list[Violation]:
    """S9 (first half): every state a correct replica adopted by transfer is certified by a quorum checkpoint.

    ``adoptions[r]`` lists what replica ``r`` adopted (records with ``seq``,
    ``state_digest``, ``proof``, ``log_length``, ``head_hash``, such as
    ``bft.core``'s ``StateAdoption``).  Each proof must be a quorum of distinct,
    validly signed checkpoints on exactly that (seq, digest); correct replicas
    that checkpointed that seq must have computed the same digest; and the
    adopter's log must pass through the adopted head.
    """
    digest_at: dict[int, tuple[int, bytes]] = {}
    for replica_id in sorted(signed):
        for message in signed[replica_id]:
            if isinstance(message, Checkpoint) and message.replica_id == replica_id:
                digest_at.setdefault(message.seq, (replica_id, message.state_digest))
    violations = []
    for replica_id in sorted(adoptions):
        for adoption in adoptions[replica_id]:
            where = f"replica {replica_id} adopted the state at seq {adoption.seq}"
            proof = tuple(adoption.proof)
            if not proof or {(c.seq, c.state_digest) for c in proof} != {(adoption.seq, adoption.state_digest)}:
                violations.append(Violation("S9", f"{where} with a proof for another seq or state"))
                continue
            problem = _stable_proof_problem(proof, config, digest_at)
            if problem:
                violations.append(Violation("S9", f"{where}: {problem}"))
            log = logs.get(replica_id, ())
            if adoption.log_length and (len(log) < adoption.log_length
                                        or log[adoption.log_length - 1].entry_hash != adoption.head_hash):
                violations.append(Violation("S9", f"{where} but its log does not pass through the adopted head"))
    return violations
