"""The mutual handshake: each side proves it holds the private key the cluster configuration lists for it,
and both agree fresh session keys that seal every later frame of the connection.

Three frames, then a welcome:

1. initiator -> acceptor: HELLO (magic, cluster id, role, identity, ephemeral X25519 public key e_i)
2. acceptor -> initiator: HELLO (magic, cluster id, "replica", its id, e_a) and its Ed25519 signature
3. initiator -> acceptor: PROOF, its Ed25519 signature
4. acceptor -> initiator: WELCOME

Both signatures cover the same transcript (both hellos, hence both fresh
ephemeral keys) under a domain tag, the cluster id and the signer's side.  A
fresh ephemeral key from the other side means a recorded signature cannot be
replayed; the side label means the acceptor's signature cannot be reflected
back as the initiator's; the domain tag means no protocol message signature
can pass for a handshake one.  An identity absent from the configuration, a
wrong cluster, or a signature that does not verify is refused with a
``RemoteProtocolError``.

Session keys: each side computes the X25519 shared secret of its ephemeral key
and the other's, and derives one key per direction from it and a transcript of
both hellos and both configured Ed25519 public keys (``_link_cipher``).  A man
in the middle who swaps an ephemeral key breaks the signature over the hellos;
one who relays the handshake untouched learns neither ephemeral secret and so
cannot read, alter or inject frames.  After the welcome every frame, both ways,
is sealed (``FramedConnection.secure``).  The ephemeral secrets live only for
the handshake, so a stolen long-term key does not open recorded traffic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.signing

from ..core import ClusterConfig, RemoteProtocolError
from ._connection import FramedConnection
from ._link_cipher import FrameOpener, FrameSealer, derive_session_keys

HANDSHAKE_DOMAIN = b"bft-handshake/v2"
HELLO = "bft-hello/2"
PROOF = "bft-proof/2"
WELCOME = "bft-welcome/2"
EPHEMERAL_KEY_BYTES = nacl.bindings.crypto_scalarmult_BYTES
SIGNATURE_BYTES = 64
ROLES = ("replica", "client")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is at the other end of an authenticated connection."""

    role: str
    name: int | str

    def __post_init__(self) -> None:
        assert self.role in ROLES
        assert isinstance(self.name, int) if self.role == "replica" else isinstance(self.name, str)

    def __str__(self) -> str:
        return f"{self.role} {self.name}"


def public_key_of(config: ClusterConfig, identity: Identity) -> bytes | None:
    """The configured key of ``identity``, or None if the cluster does not know it."""
    if identity.role == "replica":
        name = identity.name
        return config.replica_keys[name] if 0 <= name < config.replica_count else None
    return config.client_keys.get(identity.name)


def _pack(plain: Any) -> bytes:
    return msgpack.packb(plain, use_bin_type=True)


def _unpack(data: bytes, peer: str, expected_length: int) -> list:
    try:
        plain = msgpack.unpackb(data, raw=False, use_list=True, max_map_len=0, max_ext_len=0)
    except Exception as error:  # msgpack raises many unrelated types for bad input.
        raise RemoteProtocolError("bad-handshake", f"not valid msgpack ({type(error).__name__})", peer) from None
    if type(plain) is not list or len(plain) != expected_length:
        raise RemoteProtocolError("bad-handshake", "unexpected handshake frame shape", peer)
    return plain


class _Ephemeral:
    """A one-connection X25519 key pair; its secret never leaves the handshake."""

    def __init__(self) -> None:
        self.secret = os.urandom(nacl.bindings.crypto_scalarmult_SCALARBYTES)
        self.public = nacl.bindings.crypto_scalarmult_base(self.secret)

    def shared_with(self, other_public: bytes, peer: str) -> bytes:
        try:
            shared = nacl.bindings.crypto_scalarmult(self.secret, other_public)
        except nacl.exceptions.CryptoError:  # libsodium refuses a low-order point (an all-zero result).
            raise RemoteProtocolError("bad-handshake", "the ephemeral key is a low-order point", peer) from None
        assert len(shared) == EPHEMERAL_KEY_BYTES
        return shared


def _hello(config: ClusterConfig, identity: Identity, ephemeral_public: bytes) -> bytes:
    return _pack([HELLO, config.cluster_id, identity.role, identity.name, ephemeral_public])


def _parse_hello(data: bytes, config: ClusterConfig, peer: str) -> tuple[Identity, bytes]:
    """The identity a hello claims and its ephemeral public key."""
    magic, cluster_id, role, name, ephemeral_public = _unpack(data, peer, 5)
    if magic != HELLO:
        raise RemoteProtocolError("bad-handshake", "not a bft hello", peer)
    if cluster_id != config.cluster_id:
        raise RemoteProtocolError("wrong-cluster", f"peer is in cluster {cluster_id!r}", peer)
    if type(ephemeral_public) is not bytes or len(ephemeral_public) != EPHEMERAL_KEY_BYTES:
        raise RemoteProtocolError("bad-handshake", f"the ephemeral key must be {EPHEMERAL_KEY_BYTES} bytes", peer)
    valid_name = type(name) is int if role == "replica" else (role == "client" and type(name) is str)
    if not valid_name:
        raise RemoteProtocolError("bad-handshake", "the identity must be a replica id or a client id", peer)
    identity = Identity(role, name)
    if public_key_of(config, identity) is None:
        raise RemoteProtocolError("unknown-identity", f"{identity} is not in the cluster configuration", peer)
    return identity, ephemeral_public


def _transcript(config: ClusterConfig, side: str, initiator_hello: bytes, acceptor_hello: bytes) -> bytes:
    return _pack([HANDSHAKE_DOMAIN, config.cluster_id, side, initiator_hello, acceptor_hello])


def _session_keys(config: ClusterConfig, shared_secret: bytes, initiator: Identity, acceptor: Identity,
                  initiator_hello: bytes, acceptor_hello: bytes) -> tuple[bytes, bytes]:
    """(initiator-to-acceptor, acceptor-to-initiator) keys, bound to this handshake and both identities."""
    transcript = _pack([HANDSHAKE_DOMAIN, config.cluster_id, "session-keys", initiator_hello, acceptor_hello,
                        public_key_of(config, initiator), public_key_of(config, acceptor)])
    return derive_session_keys(shared_secret, transcript)


def _check_signature(public_key: bytes, transcript: bytes, signature: Any, identity: Identity, peer: str) -> None:
    if type(signature) is not bytes or len(signature) != SIGNATURE_BYTES:
        raise RemoteProtocolError("bad-handshake", "the signature must be 64 bytes", peer)
    try:
        nacl.signing.VerifyKey(public_key).verify(transcript, signature)
    except nacl.exceptions.BadSignatureError:
        raise RemoteProtocolError("bad-key", f"the peer does not hold {identity}'s configured key", peer) from None


async def _receive(connection: FramedConnection) -> bytes:
    payload = await connection.receive()
    if payload is None:
        raise RemoteProtocolError("refused", "the peer closed the connection during the handshake", connection.peer)
    return payload


async def initiate(connection: FramedConnection, config: ClusterConfig, own: Identity, seed: bytes,
                   expected: Identity) -> None:
    """Authenticate to the replica ``expected`` as ``own`` and seal the connection; raise ``RemoteProtocolError``
    on any failure."""
    assert expected.role == "replica" and public_key_of(config, own) is not None
    connection.set_frame_limit(connection.limits.handshake_frame_bytes)
    ephemeral = _Ephemeral()
    initiator_hello = _hello(config, own, ephemeral.public)
    await connection.send(initiator_hello)
    acceptor_hello, signature = _unpack(await _receive(connection), connection.peer, 2)
    if type(acceptor_hello) is not bytes:
        raise RemoteProtocolError("bad-handshake", "the hello must be bytes", connection.peer)
    identity, acceptor_ephemeral = _parse_hello(acceptor_hello, config, connection.peer)
    if identity != expected:
        raise RemoteProtocolError("wrong-identity", f"expected {expected}, the peer says it is {identity}",
                                  connection.peer)
    _check_signature(public_key_of(config, expected), _transcript(config, "acceptor", initiator_hello, acceptor_hello),
                     signature, expected, connection.peer)
    shared_secret = ephemeral.shared_with(acceptor_ephemeral, connection.peer)
    proof = nacl.signing.SigningKey(seed).sign(_transcript(config, "initiator", initiator_hello, acceptor_hello))
    await connection.send(_pack([PROOF, proof.signature]))
    welcome = _unpack(await _receive(connection), connection.peer, 1)
    if welcome != [WELCOME]:
        raise RemoteProtocolError("bad-handshake", "expected a welcome", connection.peer)
    outgoing, incoming = _session_keys(config, shared_secret, own, expected, initiator_hello, acceptor_hello)
    connection.secure(FrameSealer(outgoing), FrameOpener(incoming))


async def accept(connection: FramedConnection, config: ClusterConfig, own: Identity, seed: bytes,
                 on_hello: Callable[[Identity], None] | None = None) -> Identity:
    """Authenticate an incoming connection and seal it; return who it is, or raise ``RemoteProtocolError``.

    ``on_hello`` learns the identity the peer claims as soon as its hello names a configured one,
    before anything is proven: admission uses it to move the connection out of the anonymous pool."""
    assert own.role == "replica" and public_key_of(config, own) is not None
    connection.set_frame_limit(connection.limits.handshake_frame_bytes)
    initiator_hello = await _receive(connection)
    identity, initiator_ephemeral = _parse_hello(initiator_hello, config, connection.peer)
    if identity == own:
        raise RemoteProtocolError("wrong-identity", "a peer claims to be this replica", connection.peer)
    if on_hello is not None:
        on_hello(identity)
    ephemeral = _Ephemeral()
    shared_secret = ephemeral.shared_with(initiator_ephemeral, connection.peer)
    acceptor_hello = _hello(config, own, ephemeral.public)
    signature = nacl.signing.SigningKey(seed).sign(_transcript(config, "acceptor", initiator_hello, acceptor_hello))
    await connection.send(_pack([acceptor_hello, signature.signature]))
    magic, proof = _unpack(await _receive(connection), connection.peer, 2)
    if magic != PROOF:
        raise RemoteProtocolError("bad-handshake", "expected a proof", connection.peer)
    _check_signature(public_key_of(config, identity), _transcript(config, "initiator", initiator_hello, acceptor_hello),
                     proof, identity, connection.peer)
    await connection.send(_pack([WELCOME]))
    incoming, outgoing = _session_keys(config, shared_secret, identity, own, initiator_hello, acceptor_hello)
    connection.secure(FrameSealer(outgoing), FrameOpener(incoming))
    return identity
