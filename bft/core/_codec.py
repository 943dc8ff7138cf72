"""The one canonical encoding: msgpack arrays of ints, bytes and str.

``decode`` is strict: size limit first, then msgpack with map/ext disabled,
then the schema, then a re-encode that must reproduce the input byte for byte
(so two different byte strings never decode to the same message).  Every
failure is a ``RemoteProtocolError`` naming the reason; nothing is mutated.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from ._errors import RemoteProtocolError
from ._messages import MESSAGE_TYPE_BY_TAG, Message
from ._schema import record_from_wire, record_to_wire

DOMAIN = b"bft-verdict/v1"
MAX_WIRE_BYTES = 8 * 1024 * 1024


def pack(plain: Any) -> bytes:
    return msgpack.packb(plain, use_bin_type=True)


def encode(message: Message) -> bytes:
    """Canonical bytes of a message, type tag first."""
    return pack([message.TAG, *record_to_wire(message)])


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
    if encode(message) != data:
        raise RemoteProtocolError("non-canonical", f"{message_type.__name__} is not canonically encoded")
    return message


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


def signing_payload(cluster_id: str, message: Message) -> bytes:
    """What a signature covers: domain, cluster, message type and every field but the signature."""
    return pack([DOMAIN, cluster_id, message.TAG, *record_to_wire(message)[:-1]])


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def record_digest(record: Any) -> bytes:
    """Digest of a nested record (a batch, a vote set) by its canonical encoding."""
    return digest(pack(record_to_wire(record)))


def request_digest(cluster_id: str, request: Any) -> bytes:
    """Identity of a request's content (everything its client signed)."""
    return digest(signing_payload(cluster_id, request))
