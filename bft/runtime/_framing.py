"""Length-prefixed frames: a 4-byte big-endian length, then that many payload bytes.

The decoder is sans-IO in the h11 manner: ``receive_data(bytes)`` feeds it any
slice of the stream and ``next_frame()`` pulls whole frames out, so the same
bytes fed whole or one at a time give the same frames.  The length is checked
against the configured maximum as soon as the 4 header bytes are in, before
any of the body is buffered, so a peer can never make us hold more than one
maximum-sized frame.  A violation is a ``RemoteProtocolError``; the decoder is
then dead (the stream cannot be resynchronised) and the caller drops the
connection.

A zero-length frame carries no message: links send it as a keep-alive.
"""

from __future__ import annotations

from ..core import LocalProtocolError, RemoteProtocolError

HEADER_BYTES = 4
# The largest length a 4-byte header can state; configured maxima must stay below it.
FRAME_BYTES_LIMIT = 2**32 - 1


def encode_frame(payload: bytes, max_frame_bytes: int) -> bytes:
    """The frame carrying ``payload``; refusing to send what the peer is bound to reject."""
    assert 0 < max_frame_bytes <= FRAME_BYTES_LIMIT, max_frame_bytes
    if len(payload) > max_frame_bytes:
        raise LocalProtocolError(f"a {len(payload)}-byte frame exceeds the limit of {max_frame_bytes} bytes")
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


class FrameDecoder:
    """Incremental decoder with a hard cap on the frame size and so on its buffer."""

    def __init__(self, max_frame_bytes: int) -> None:
        assert 0 < max_frame_bytes <= FRAME_BYTES_LIMIT, max_frame_bytes
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._failed: RemoteProtocolError | None = None
        self.frames_decoded = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not (what slowloris exploits)."""
        return bool(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Append received bytes.  Call ``next_frame`` until it returns None before feeding more."""
        self._raise_if_failed()
        self._buffer += data
        self._check_header()

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None when more bytes are needed."""
        self._raise_if_failed()
        if len(self._buffer) < HEADER_BYTES:
            return None
        length = self._check_header()
        end = HEADER_BYTES + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_BYTES:end])
        del self._buffer[:end]
        self.frames_decoded += 1
        self._check_header()
        return payload

    def end_of_stream(self) -> None:
        """The peer closed its side: raise if it left a frame unfinished."""
        self._raise_if_failed()
        if self._buffer:
            self._fail(RemoteProtocolError(
                "truncated-frame", f"the stream ended inside a frame ({len(self._buffer)} bytes pending)"))

    def _check_header(self) -> int:
        """The pending frame's length once its header is complete; fail at once if it is too large."""
        if len(self._buffer) < HEADER_BYTES:
            return 0
        length = int.from_bytes(self._buffer[:HEADER_BYTES], "big")
        if length > self.max_frame_bytes:
            self._fail(RemoteProtocolError(
                "oversized-frame", f"a frame of {length} bytes exceeds the limit of {self.max_frame_bytes}"))
        return length

    def _fail(self, error: RemoteProtocolError) -> None:
        self._failed = error
        self._buffer.clear()
        raise error

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise self._failed
