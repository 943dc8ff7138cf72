"""Ed25519 signing and verification bound to one cluster.

Signatures are deterministic (Ed25519), so signing the same payload twice gives
the same bytes: useful for tests and for idempotent re-sends after a restart.
``Verifier`` remembers a bounded number of signatures it already checked so a
vote seen alone and again inside a pre-prepare is verified once.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import nacl.exceptions
import nacl.signing

from ._codec import digest, encode, keep_signed_encoding, signing_payload
from ._errors import RemoteProtocolError
from ._messages import Message, Request


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPair:
    seed: bytes
    public_key: bytes

    @staticmethod
    def from_seed(seed: bytes) -> "KeyPair":
        assert len(seed) == 32, "an Ed25519 seed is 32 bytes"
        return KeyPair(seed, bytes(nacl.signing.SigningKey(seed).verify_key))

    @staticmethod
    def generate() -> "KeyPair":
        return KeyPair.from_seed(bytes(nacl.signing.SigningKey.generate()))


class Signer:
    """Signs messages as one identity of one cluster."""

    def __init__(self, cluster_id: str, seed: bytes) -> None:
        self._cluster_id = cluster_id
        self._key = nacl.signing.SigningKey(seed)

    def sign(self, unsigned: Message) -> Message:
        """Return ``unsigned`` with its signature field filled in."""
        payload = signing_payload(self._cluster_id, unsigned)  # The signature field is not part of it.
        signed = dataclasses.replace(unsigned, signature=self._key.sign(payload).signature)
        keep_signed_encoding(signed, self._cluster_id, payload)
        return signed


class Verifier:
    """Checks signatures against the cluster's configured public keys.

    ``checks`` counts the signatures really checked (cache hits are not), so a
    benchmark can report signature verifications per verdict.
    """

    def __init__(self, cluster_id: str, replica_keys: tuple[bytes, ...],
                 client_keys: dict[str, bytes], cache_size: int = 8192) -> None:
        assert cache_size > 0
        self._cluster_id = cluster_id
        self._identities = (tuple(replica_keys), dict(client_keys))
        self._replica_keys = tuple(nacl.signing.VerifyKey(key) for key in replica_keys)
        self._client_keys = {client: nacl.signing.VerifyKey(key) for client, key in client_keys.items()}
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self.checks = 0

    def checks_for(self, cluster_id: str, replica_keys: tuple[bytes, ...], client_keys) -> bool:
        """Whether this verifier checks signatures for exactly this cluster and these identities."""
        return (cluster_id, tuple(replica_keys), dict(client_keys)) == (self._cluster_id, *self._identities)

    def verify(self, message: Message) -> None:
        """Raise ``RemoteProtocolError`` unless ``message`` is signed by the identity it names."""
        key = self._key_for(message)
        # The encoding holds the type, every signed field and the signature, and this verifier serves one
        # cluster, so its digest names exactly what a successful check proved.
        cache_key = digest(encode(message))
        if cache_key in self._verified:
            self._verified.move_to_end(cache_key)
            return
        self.checks += 1
        try:
            key.verify(signing_payload(self._cluster_id, message), message.signature)
        except nacl.exceptions.BadSignatureError:
            raise RemoteProtocolError("bad-signature", f"{type(message).__name__} signature does not verify") from None
        self._verified[cache_key] = None
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        assert len(self._verified) <= self._cache_size

    def _key_for(self, message: Message) -> nacl.signing.VerifyKey:
        if isinstance(message, Request):
            key = self._client_keys.get(message.client_id)
            if key is None:
                raise RemoteProtocolError("unknown-signer", f"client {message.client_id!r} is not in the cluster configuration")
            return key
        if not 0 <= message.replica_id < len(self._replica_keys):
            raise RemoteProtocolError("unknown-signer", f"replica {message.replica_id} is not in the cluster configuration")
        return self._replica_keys[message.replica_id]
