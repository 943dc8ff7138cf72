"""The frame decoder is incremental and bounded: any slicing of the stream gives the same frames as feeding it whole, an oversize length fails as soon as its header arrives, a truncated frame fails at end of stream, and a failed decoder stays failed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from bft.core import LocalProtocolError, RemoteProtocolError
from bft.runtime import HEADER_BYTES, FrameDecoder, encode_frame

MAX = 256


def decode_slices(data: bytes, cuts: list[int], max_frame_bytes: int = MAX) -> list[bytes]:
    """Feed ``data`` cut at ``cuts`` and pull every frame after each slice."""
    decoder = FrameDecoder(max_frame_bytes)
    frames = []
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    for start, end in zip(bounds, bounds[1:]):
        decoder.receive_data(data[start:end])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
        assert decoder.buffered_bytes <= HEADER_BYTES + max_frame_bytes + (end - start)
    decoder.end_of_stream()
    return frames


def test_frames_round_trip_including_empty_keepalives():
    payloads = [b"hello", b"", b"x" * MAX, b"\x00\x01"]
    data = b"".join(encode_frame(p, MAX) for p in payloads)
    assert decode_slices(data, []) == payloads
    assert encode_frame(b"abc", MAX) == b"\x00\x00\x00\x03abc"


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=MAX), max_size=12), cuts=st.lists(st.integers(0, 4000), max_size=30))
def test_whole_sliced_and_byte_by_byte_give_the_same_frames(payloads, cuts):
    data = b"".join(encode_frame(p, MAX) for p in payloads)
    whole = decode_slices(data, [])
    assert whole == payloads
    assert decode_slices(data, cuts) == whole
    assert decode_slices(data, list(range(len(data)))) == whole


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=600), cuts=st.lists(st.integers(0, 600), max_size=10))
def test_arbitrary_bytes_either_decode_the_same_way_or_fail_the_same_way(garbage, cuts):
    def outcome(cut_points):
        try:
            return ("frames", decode_slices(garbage, cut_points))
        except RemoteProtocolError as error:
            return ("error", error.reason)
    whole = outcome([])
    assert outcome(cuts) == whole
    assert outcome(list(range(len(garbage)))) == whole


def test_an_oversize_length_fails_as_soon_as_the_header_is_complete():
    decoder = FrameDecoder(MAX)
    decoder.receive_data(b"\x00\x00")
    assert decoder.next_frame() is None
    with pytest.raises(RemoteProtocolError) as raised:
        decoder.receive_data(b"\x01\x01")  # length 257, one more than allowed; no body has arrived
    assert raised.value.reason == "oversized-frame"
    assert decoder.buffered_bytes == 0


def test_garbage_that_reads_as_a_huge_length_is_an_oversized_frame():
    decoder = FrameDecoder(4 * 1024 * 1024)
    with pytest.raises(RemoteProtocolError) as raised:
        decoder.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert raised.value.reason == "oversized-frame"


def test_a_failed_decoder_stays_failed():
    decoder = FrameDecoder(MAX)
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(b"\xff\xff\xff\xff")
    for attempt in (lambda: decoder.receive_data(encode_frame(b"ok", MAX)), decoder.next_frame,
                    decoder.end_of_stream):
        with pytest.raises(RemoteProtocolError):
            attempt()


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00\x00\x05ab"])
def test_a_truncated_frame_fails_at_end_of_stream(tail):
    decoder = FrameDecoder(MAX)
    decoder.receive_data(encode_frame(b"complete", MAX) + tail)
    assert decoder.next_frame() == b"complete"
    assert decoder.next_frame() is None
    assert decoder.in_frame
    with pytest.raises(RemoteProtocolError) as raised:
        decoder.end_of_stream()
    assert raised.value.reason == "truncated-frame"


def test_a_clean_end_of_stream_is_not_an_error():
    decoder = FrameDecoder(MAX)
    decoder.receive_data(encode_frame(b"a", MAX))
    assert decoder.next_frame() == b"a"
    assert not decoder.in_frame
    decoder.end_of_stream()
    assert decoder.frames_decoded == 1


def test_the_sender_refuses_a_frame_the_receiver_would_reject():
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (MAX + 1), MAX)
    with pytest.raises(AssertionError):
        FrameDecoder(0)
