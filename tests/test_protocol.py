"""Request and info-frame layouts, and per-connection request framing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packetcore.protocol import (
    HELLO,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    SUBSCRIBE,
    FeedInfo,
    Request,
    RequestFramer,
    decode_info,
    encode_info,
    hello_request,
    range_requests,
    resend_request,
    stream_all_request,
    subscribe_request,
)

from packetcore import ProtocolError


def test_request_bytes() -> None:
    assert stream_all_request() == b"\x01\x00"
    assert resend_request(200) == b"\x02\xc8"
    assert hello_request() == b"\x03\x00"
    ranged = b"\x04\x00\x01\x02\x03\x04\x00\x00\x00\x05"
    assert range_requests([(0x01020304, 5)]) == ranged
    assert range_requests([(0x01020304, 5), (1, 2)]) == ranged + range_requests([(1, 2)])
    assert range_requests([]) == b""
    with pytest.raises(ValueError, match="256"):
        resend_request(256)
    with pytest.raises(ValueError):
        range_requests([(-1, 1)])
    with pytest.raises(ValueError):
        range_requests([(1, 2**32)])
    assert subscribe_request(0x01020304) == b"\x05\x00\x01\x02\x03\x04"
    with pytest.raises(ValueError):
        subscribe_request(2**32)


def test_info_frame() -> None:
    frame = encode_info(FeedInfo(1, 14))
    assert frame == b"PKCI\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0e"
    assert decode_info(frame) == FeedInfo(1, 14, 1)
    with pytest.raises(ProtocolError, match="magic"):
        decode_info(b"XXXX" + frame[4:])
    with pytest.raises(ProtocolError, match="16 bytes"):
        decode_info(frame[:15])
    # Frames written out by hand: last = 2**31 - 1, the top int32 sequence; then 2**31,
    # which no packet can carry.
    assert decode_info(b"PKCI\0\0\0\x01\0\0\0\x01\x7f\xff\xff\xff") == FeedInfo(1, 2**31 - 1, 1)
    with pytest.raises(ProtocolError, match="implausible"):
        decode_info(b"PKCI\0\0\0\x01\0\0\0\x01\x80\0\0\0")
    with pytest.raises(ProtocolError, match="implausible"):
        decode_info(b"PKCI\0\0\0\0\0\0\0\x01\0\0\0\x01")  # version 0
    # A live server with nothing published yet: last = first - 1, and no lower.
    assert decode_info(b"PKCI\0\0\0\x01\0\0\0\x05\0\0\0\x04") == FeedInfo(5, 4, 1)
    with pytest.raises(ProtocolError, match="implausible"):
        decode_info(b"PKCI\0\0\0\x01\0\0\0\x05\0\0\0\x03")


STREAM = (
    stream_all_request()
    + resend_request(3)
    + hello_request()
    + range_requests([(7, 9)])
    + subscribe_request(70000)
    + resend_request(255)
)
EXPECTED = [
    Request(STREAM_ALL),
    Request(RESEND, 3, 1),
    Request(HELLO),
    Request(RESEND_RANGE, 7, 9),
    Request(SUBSCRIBE, 70000),
    Request(RESEND, 255, 1),
]


@given(st.lists(st.integers(0, len(STREAM)), max_size=8))
def test_framing_survives_any_split(cuts: list[int]) -> None:
    framer = RequestFramer()
    got: list[Request] = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        got += framer.feed(STREAM[start:end])
    assert got == EXPECTED
    assert framer.pending == 0


def test_unknown_call_type_is_a_two_byte_request() -> None:
    framer = RequestFramer()
    got = framer.feed(b"\x02\x01\x09\x00\x01\x00\x00\x07\xff")
    assert got == [Request(RESEND, 1, 1), Request(9), Request(STREAM_ALL), Request(0)]
    assert framer.pending == 1
    got = framer.feed(b"\xff" + range_requests([(2, 3)]))
    assert got == [Request(255), Request(RESEND_RANGE, 2, 3)]
    assert framer.pending == 0


def test_pending_is_bounded() -> None:
    framer = RequestFramer()
    assert framer.feed(b"\x04\x00\x00\x00\x00\x00\x00\x00\x00") == []
    assert framer.pending == 9
    assert framer.feed(b"\x02") == [Request(RESEND_RANGE, 0, 2)]
