"""Sealed frames: every frame after the handshake is encrypted and authenticated with a per-direction key.

The handshake (``_handshake``) agrees two fresh 32-byte keys per connection,
one for each direction.  Each frame's payload is then carried as::

    counter (8 bytes, big-endian) || ChaCha20-Poly1305 ciphertext and tag of the payload

with the 12-byte IETF nonce ``0000 || counter``.  The sender numbers its
frames 0, 1, 2, ... in the order they go on the wire; the receiver accepts
only a number above the last it accepted, then checks the tag.  So, on one
connection:

- a frame altered in transit (any byte: counter, ciphertext or tag) fails the
  tag check: ``bad-frame-auth``;
- a frame sent again (a replay), or moved after a later one, carries a number
  already passed: ``replayed-frame``;
- a frame removed leaves a gap, which is accepted and counted
  (``FrameOpener.frames_skipped``): TCP itself never loses bytes inside a
  connection, so a gap means something on the path removed whole frames,
  which the protocol tolerates like any lost message; tearing the link down
  would only lose the frame that revealed the gap as well;
- a frame injected by anyone without the key fails the tag: ``bad-frame-auth``;
- a frame from another connection, even between the same two parties, was
  sealed under other keys: ``bad-frame-auth``.

Each refused frame is a ``RemoteProtocolError``: the connection is dropped and
the reason counted.  A key never seals two frames under one nonce: the counter only grows
and each connection has fresh keys.  An empty payload (a keep-alive) is sealed
like any other.  Each frame costs one AEAD call; the sealed frame is built by
the one ``join`` that batches frames for the socket anyway.
"""

from __future__ import annotations

import hashlib

import nacl.bindings
import nacl.exceptions

from ..core import RemoteProtocolError
from ._framing import HEADER_BYTES

COUNTER_BYTES = 8
TAG_BYTES = nacl.bindings.crypto_aead_chacha20poly1305_ietf_ABYTES
KEY_BYTES = nacl.bindings.crypto_aead_chacha20poly1305_ietf_KEYBYTES
# What sealing adds to each payload.
SEAL_OVERHEAD_BYTES = COUNTER_BYTES + TAG_BYTES
COUNTER_LIMIT = 2 ** (8 * COUNTER_BYTES)
_NONCE_PREFIX = bytes(nacl.bindings.crypto_aead_chacha20poly1305_ietf_NPUBBYTES - COUNTER_BYTES)
_KEY_PERSONALISATION = b"bft-link-keys/1"

_encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt


def derive_session_keys(shared_secret: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """The (initiator-to-acceptor, acceptor-to-initiator) keys of one connection.

    ``shared_secret`` is the X25519 result of the two ephemeral keys; ``transcript`` names both
    hellos (hence both ephemeral public keys) and both long-term identities, so the keys belong
    to this one handshake between these two parties and to nothing else."""
    assert len(shared_secret) == 32 and transcript
    digest = hashlib.blake2b(transcript, key=shared_secret, digest_size=2 * KEY_BYTES,
                             person=_KEY_PERSONALISATION).digest()
    return digest[:KEY_BYTES], digest[KEY_BYTES:]


class FrameSealer:
    """Seals the outgoing frames of one direction of one connection, numbering them in wire order."""

    def __init__(self, key: bytes) -> None:
        assert len(key) == KEY_BYTES
        self._key = key
        self._counter = 0

    @property
    def frames_sealed(self) -> int:
        return self._counter

    def seal_frames(self, frames: list[bytes]) -> bytes:
        """The wire bytes of ``frames`` (each a plain frame: 4-byte length, payload), sealed in order.

        The caller must put the result on the wire before sealing anything else."""
        parts: list[bytes] = []
        for frame in frames:
            self._append_sealed(parts, frame[HEADER_BYTES:])
        return b"".join(parts)

    def seal(self, payload: bytes) -> bytes:
        """The wire bytes (header included) of one sealed ``payload``."""
        parts: list[bytes] = []
        self._append_sealed(parts, payload)
        return b"".join(parts)

    def _append_sealed(self, parts: list[bytes], payload: bytes) -> None:
        assert self._counter < COUNTER_LIMIT, "a connection may never reuse a nonce"
        counter = self._counter.to_bytes(COUNTER_BYTES, "big")
        self._counter += 1
        ciphertext = _encrypt(payload, None, _NONCE_PREFIX + counter, self._key)
        assert len(ciphertext) == len(payload) + TAG_BYTES
        parts.append((COUNTER_BYTES + len(ciphertext)).to_bytes(HEADER_BYTES, "big"))
        parts.append(counter)
        parts.append(ciphertext)


class FrameOpener:
    """Checks and decrypts the incoming frames of one direction of one connection, in increasing order."""

    def __init__(self, key: bytes) -> None:
        assert len(key) == KEY_BYTES
        self._key = key
        self._expected = 0
        self.frames_opened = 0
        self.frames_skipped = 0  # Frames the path removed: numbers passed over by a later authentic frame.

    def open(self, sealed: bytes, peer: str = "?") -> bytes:
        """The payload ``sealed`` carries; ``RemoteProtocolError`` if it is not the next authentic frame."""
        if len(sealed) < SEAL_OVERHEAD_BYTES:
            raise RemoteProtocolError("bad-frame-auth", f"a {len(sealed)}-byte frame is too short to be sealed", peer)
        counter = int.from_bytes(sealed[:COUNTER_BYTES], "big")
        if counter < self._expected:
            raise RemoteProtocolError("replayed-frame", f"frame number {counter} again (expected {self._expected})",
                                      peer)
        try:
            payload = _decrypt(sealed[COUNTER_BYTES:], None, _NONCE_PREFIX + sealed[:COUNTER_BYTES], self._key)
        except nacl.exceptions.CryptoError:
            raise RemoteProtocolError("bad-frame-auth", f"frame number {counter} fails authentication", peer) from None
        self.frames_skipped += counter - self._expected  # Counted only once the frame proved authentic.
        self.frames_opened += 1
        self._expected = counter + 1
        return payload
