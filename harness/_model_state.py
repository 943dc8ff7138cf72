"""Cloning and fingerprinting the model checker's states, through pickle.

A state's mutable parts (replicas, stores, the client) are cloned by pickling
them with every immutable record and every shared object (configuration,
keys, verifiers) passed by reference, so a clone copies only what can change.
A fingerprint pickles the same parts with records replaced by their cached
digests and sets put in a fixed order, then hashes the bytes: equal states
built along the same kind of path get equal fingerprints, in every process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import weakref
from types import MappingProxyType

from bft.core import (Batch, BatchEntry, Bundle, Checkpoint, ClusterConfig, Commit, Limits, LogEntry, NewView,
                      PrePrepare, Prepare, PreparedProof, Reply, Request, Signer, VerdictCertificate, VerdictRule,
                      Verifier, ViewChange, Vote)

# Frozen records never change, so states share them.  Configuration, keys and verifiers are shared too (a
# verifier's cache holds only facts about signatures).
_IMMUTABLE_TYPES = frozenset({Request, Vote, PrePrepare, Prepare, Commit, Bundle, Reply, Checkpoint, ViewChange,
                              NewView, Batch, BatchEntry, PreparedProof, LogEntry, VerdictCertificate})
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

    def __init__(self, buffer, codec: "StateCodec") -> None:
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


class StateCodec:
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


def describe_message(message: Message) -> str:
    """One message in a counterexample trace: who sent what for which slot, without its bytes."""
    if isinstance(message, Request):
        return f"{message.client_id}#{message.request_number}"
    if isinstance(message, Vote):
        return f"{message.decision.value} by {message.replica_id} on {message.request_digest.hex()[:8]}"
    if isinstance(message, (PrePrepare, Prepare, Commit)):
        digest = message.batch.timestamp_ms if isinstance(message, PrePrepare) else message.batch_digest.hex()[:8]
        return f"view {message.view} seq {message.seq} ({digest}) by {message.replica_id}"
    if isinstance(message, Bundle):
        parts = (*message.prepares, *message.commits)
        return f"{len(parts)} of {describe_message(parts[0])} forwarded by {message.replica_id}" if parts else "empty"
    if isinstance(message, ViewChange):
        return f"to view {message.new_view} by {message.replica_id} with {len(message.prepared)} proofs"
    if isinstance(message, NewView):
        return f"view {message.view} by {message.replica_id} re-proposing {len(message.preprepares)}"
    if isinstance(message, Checkpoint):
        return f"seq {message.seq} by {message.replica_id}"
    return ""
