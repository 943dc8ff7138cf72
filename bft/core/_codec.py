"""The one canonical encoding: msgpack arrays of ints, bytes and str.

``decode`` is strict: size limit first, then msgpack with map/ext disabled,
then the schema, then a re-encode that must reproduce the input byte for byte
(so two different byte strings never decode to the same message).  Every
failure is a ``RemoteProtocolError`` naming the reason; nothing is mutated.

A signed message keeps its encoding once made (see ``CodecMemo``), so sending
it to every peer and storing it encode it once, and what its signature covers
is cut from the encoding rather than built again: a msgpack array is its
header followed by its items' encodings, so the signing payload is the
encoding's items without the trailing signature, behind the payload's own
header and the domain and cluster prefix.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import msgpack

from ._errors import RemoteProtocolError
from ._messages import MESSAGE_TYPE_BY_TAG, MESSAGE_TYPES, SIGNATURE_BYTES, SIGNED_MESSAGE_TYPES, Message
from ._schema import on_decode, pack, record_from_wire, record_to_wire

DOMAIN = b"bft-verdict/v1"
MAX_WIRE_BYTES = 8 * 1024 * 1024

# A signature is the last item of every signed message: bin 8 with a 64-byte length, then the bytes.
_SIGNATURE_HEADER = b"\xc4" + bytes([SIGNATURE_BYTES])
_SIGNATURE_WIRE_BYTES = len(_SIGNATURE_HEADER) + SIGNATURE_BYTES
_FIXARRAY = 0x90
# The encoding is [tag, fields...] and the payload [domain, cluster, tag, fields but the signature]: both
# fit a one-byte array header (at most 15 items), and the tag is a one-byte positive fixint.
for _message_type in SIGNED_MESSAGE_TYPES:
    assert len(_message_type.SCHEMA) + 2 <= 15 and 0 <= _message_type.TAG < 128, _message_type


def encode(message: Message) -> bytes:
    """Canonical bytes of a message, type tag first."""
    wire = getattr(message, "_wire", None)
    if wire is None:
        wire = pack([message.TAG, *record_to_wire(message)])
        object.__setattr__(message, "_wire", wire)
    return wire


def decode(data: bytes, max_bytes: int = MAX_WIRE_BYTES) -> Message:
    """Parse and validate one message, or raise ``RemoteProtocolError``."""
    assert 0 < max_bytes <= MAX_WIRE_BYTES, max_bytes
    if type(data) is not bytes:
        raise RemoteProtocolError("malformed", f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise RemoteProtocolError("oversized", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    plain = _unpack(data, max_bytes)
    if type(plain) is not list or not plain:
        raise RemoteProtocolError("malformed", "a message must be a non-empty array")
    tag = plain[0]
    message_type = MESSAGE_TYPE_BY_TAG.get(tag) if type(tag) is int else None
    if message_type is None:
        shown = tag if type(tag) is int else type(tag).__name__  # Never repr peer data: it may nest deeply.
        raise RemoteProtocolError("unknown-type", f"unknown message type tag {shown}")
    message = record_from_wire(message_type, plain[1:], message_type.__name__)
    if message._wire != data:  # The re-encode, made by ``_keep_encoding`` from the checked plain data.
        raise RemoteProtocolError("non-canonical", f"{message_type.__name__} is not canonically encoded")
    return message


def _keep_encoding(message: Message, plain: list) -> None:
    """Every message the schema decodes, nested ones included, keeps its canonical encoding.

    The schema passed, so ``plain`` is exactly what ``record_to_wire(message)``
    returns (each kind's ``to_wire`` inverts its check): packing it is the
    encoding, without walking the record again.
    """
    object.__setattr__(message, "_wire", pack([message.TAG, *plain]))


for _message_type in MESSAGE_TYPES:
    on_decode(_message_type, _keep_encoding)


def unpack_plain(data: bytes, max_bytes: int = MAX_WIRE_BYTES) -> Any:
    """Plain msgpack data (arrays, ints, bytes, str) from a peer, or ``RemoteProtocolError``; no schema."""
    if type(data) is not bytes or len(data) > max_bytes:
        raise RemoteProtocolError("malformed", f"expected at most {max_bytes} bytes of msgpack")
    return _unpack(data, max_bytes)


def _unpack(data: bytes, max_bytes: int) -> Any:
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            max_str_len=max_bytes, max_bin_len=max_bytes, max_array_len=max_bytes,
            max_map_len=0, max_ext_len=0,
        )
    except Exception as error:  # msgpack raises many unrelated types for bad input.
        raise RemoteProtocolError("malformed", f"not valid msgpack ({type(error).__name__})") from None


@functools.lru_cache(maxsize=16)
def _signing_prefix(cluster_id: str) -> bytes:
    return pack(DOMAIN) + pack(cluster_id)


def _has_signature_bytes(message: Message) -> bool:
    signature = message.signature
    return type(signature) is bytes and len(signature) == SIGNATURE_BYTES


def signing_payload(cluster_id: str, message: Message) -> bytes:
    """What a signature covers: domain, cluster, message type and every field but the signature."""
    if not _has_signature_bytes(message):  # Only a hand-built message; its encoding cannot be cut.
        return pack([DOMAIN, cluster_id, message.TAG, *record_to_wire(message)[:-1]])
    return (bytes([_FIXARRAY | (len(message.SCHEMA) + 2)]) + _signing_prefix(cluster_id)
            + encode(message)[1:-_SIGNATURE_WIRE_BYTES])


def keep_signed_encoding(signed: Message, cluster_id: str, payload: bytes) -> None:
    """Give ``signed`` its encoding from the ``payload`` its signature covers, as a signer has it in hand."""
    assert _has_signature_bytes(signed) and getattr(signed, "_wire", None) is None
    body = payload[1 + len(_signing_prefix(cluster_id)):]  # The tag and the fields but the signature.
    wire = bytes([_FIXARRAY | (len(signed.SCHEMA) + 1)]) + body + _SIGNATURE_HEADER + signed.signature
    object.__setattr__(signed, "_wire", wire)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def record_digest(record: Any) -> bytes:
    """Digest of a nested record (a batch, a vote set) by its canonical encoding."""
    return digest(pack(record_to_wire(record)))


def request_digest(cluster_id: str, request: Any) -> bytes:
    """Identity of a request's content (everything its client signed)."""
    return digest(signing_payload(cluster_id, request))
