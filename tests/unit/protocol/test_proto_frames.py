"""HLNK frames: layout, one-message decoding, and the resyncing stream decoder."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.frames import (
    HEADER_SIZE,
    MAGIC,
    Frame,
    FrameDecoder,
    decode_frame,
    encode_frame,
    frame_overhead,
)

_frames = st.builds(
    Frame,
    st.text(max_size=30),
    st.text(max_size=20),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=300),
)


def test_header_layout_is_big_endian() -> None:
    raw = encode_frame(Frame("a/b.request", "e1", 0x0102030405060708, b"xyz"))
    assert raw[:4] == b"HLNK"
    assert raw[4] == 1
    assert struct.unpack(">HHIQ", raw[5:21]) == (11, 2, 3, 0x0102030405060708)
    assert raw[21:] == b"a/b.requeste1xyz"
    assert len(raw) == HEADER_SIZE + 11 + 2 + 3


def test_frame_overhead_counts_utf8_bytes() -> None:
    assert frame_overhead("", "") == 21
    assert frame_overhead("é/x", "ab") == 21 + 4 + 2
    frame = Frame("ü@x.y/stream.tcp.request", "", 1, b"p" * 100)
    assert len(encode_frame(frame)) == frame_overhead(frame.path, frame.etag) + 100


@settings(max_examples=300, deadline=None)
@given(_frames)
def test_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


@given(_frames, st.binary(max_size=20))
def test_trailing_bytes_ignored(frame: Frame, tail: bytes) -> None:
    assert decode_frame(encode_frame(frame) + tail) == frame


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = encode_frame(Frame("p", "", 5, b"data"))
    assert decode_frame(bytearray(raw)) == decode_frame(memoryview(raw)) == decode_frame(raw)


GOOD = encode_frame(Frame("a@b.c/x.request", "etag", 7, b"payload"))


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "shorter"),
        (GOOD[:20], "shorter"),
        (b"XLNK" + GOOD[4:], "magic"),
        (GOOD[:4] + b"\x02" + GOOD[5:], "version"),
        (GOOD[:4] + b"\x00" + GOOD[5:], "version"),
        (GOOD[:-1], "truncated"),
        (GOOD[:21], "truncated"),
        (
            MAGIC + b"\x01" + struct.pack(">HHIQ", 2, 0, 0, 1) + b"\xff\xfe",
            "UTF-8",
        ),
        (
            MAGIC + b"\x01" + struct.pack(">HHIQ", 0, 1, 0, 1) + b"\xff",
            "UTF-8",
        ),
    ],
)
def test_decode_rejects_bad_messages(data: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        decode_frame(data)


@pytest.mark.parametrize(
    "frame",
    [
        Frame("p" * 65536, "", 1, b""),
        Frame("p", "e" * 65536, 1, b""),
        Frame("p", "", -1, b""),
        Frame("p", "", 2**64, b""),
    ],
)
def test_encode_rejects_what_does_not_fit(frame: Frame) -> None:
    with pytest.raises(ProtocolError):
        encode_frame(frame)


# ---------------------------------------------------------------- stream decoder


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# Garbage that cannot form a frame the decoder would accept: no bare magic, plus magics
# followed by headers the decoder must skip (bad version, path/etag/payload over bounds).
_safe_garbage = st.binary(max_size=40).filter(lambda b: MAGIC not in b)
_bad_headers = st.sampled_from(
    [
        MAGIC + b"\x02" + struct.pack(">HHIQ", 1, 0, 0, 1),
        MAGIC + b"\x00" + struct.pack(">HHIQ", 0, 0, 0, 1),
        MAGIC + b"\x01" + struct.pack(">HHIQ", 5000, 0, 0, 1),
        MAGIC + b"\x01" + struct.pack(">HHIQ", 0, 129, 0, 1),
        MAGIC + b"\x01" + struct.pack(">HHIQ", 0, 0, 16 * 1024 * 1024 + 1, 1),
        b"HLN",
        b"HL",
        b"H",
    ]
)
_garbage = st.lists(_safe_garbage | _bad_headers, max_size=3).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_frames, max_size=8),
    st.data(),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_stream_split_anywhere_with_garbage(
    frames: list[Frame], data: st.DataObject, cuts: list[int]
) -> None:
    parts = []
    for frame in frames:
        parts.append(data.draw(_garbage))
        parts.append(encode_frame(frame))
    parts.append(data.draw(_safe_garbage))
    stream = b"".join(parts)
    decoder = FrameDecoder()
    out: list[Frame] = []
    for chunk in _chunks(stream, cuts):
        out.extend(decoder.feed(chunk))
    assert out == frames


@settings(max_examples=100, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=5))
def test_stream_one_byte_at_a_time(frames: list[Frame]) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
    assert out == frames
    assert decoder.skipped_bytes == 0
    assert decoder.buffered == 0


def test_skipped_bytes_counts_garbage() -> None:
    decoder = FrameDecoder()
    frame = Frame("p", "", 1, b"x")
    assert decoder.feed(b"garbage!" + encode_frame(frame) + b"more") == [frame]
    assert decoder.skipped_bytes == 8 + 1  # "more" minus the 3-byte tail kept for a magic
    assert decoder.buffered == 3
    assert decoder.feed(b"") == []


def test_bad_version_is_skipped_and_counted() -> None:
    decoder = FrameDecoder()
    frame = Frame("p", "", 2, b"y")
    bad = MAGIC + b"\x07" + struct.pack(">HHIQ", 1, 0, 1, 1)
    assert decoder.feed(bad + encode_frame(frame)) == [frame]
    assert decoder.bad_headers == 1
    assert decoder.skipped_bytes == len(bad)


@pytest.mark.parametrize(
    "kwargs,frame",
    [
        ({"max_path": 3}, Frame("long", "", 1, b"")),
        ({"max_etag": 1}, Frame("p", "ee", 1, b"")),
        ({"max_payload": 10}, Frame("p", "", 1, b"x" * 11)),
    ],
)
def test_bounds_reject_oversized_headers(kwargs: dict[str, int], frame: Frame) -> None:
    decoder = FrameDecoder(**kwargs)
    ok = Frame("q", "", 2, b"z")
    assert decoder.feed(encode_frame(frame) + encode_frame(ok)) == [ok]
    assert decoder.bad_headers >= 1


def test_oversized_claim_does_not_buffer_forever() -> None:
    # A header claiming 4 GiB must not make the decoder wait for 4 GiB.
    decoder = FrameDecoder()
    claim = MAGIC + b"\x01" + struct.pack(">HHIQ", 0, 0, 0xFFFFFFFF, 1)
    ok = Frame("p", "", 1, b"ok")
    assert decoder.feed(claim + encode_frame(ok)) == [ok]


def test_invalid_utf8_path_skips_whole_frame() -> None:
    decoder = FrameDecoder()
    bad = MAGIC + b"\x01" + struct.pack(">HHIQ", 1, 0, 4, 1) + b"\xff" + MAGIC
    ok = Frame("p", "", 2, b"x")
    assert decoder.feed(bad + encode_frame(ok)) == [ok]
    assert decoder.skipped_bytes == len(bad)


def test_partial_frame_is_buffered_until_complete() -> None:
    decoder = FrameDecoder()
    raw = encode_frame(Frame("p", "e", 9, b"0123456789"))
    assert decoder.feed(raw[:25]) == []
    assert decoder.buffered == 25
    assert decoder.feed(raw[25:]) == [Frame("p", "e", 9, b"0123456789")]
    assert decoder.buffered == 0


def test_large_stream_decodes_quickly() -> None:
    # 16 MiB in 64 KiB reads of 60 KiB frames: a byte-at-a-time decoder would take minutes.
    payload = bytes(range(256)) * 240
    frames = [Frame("a@b.c/x/stream.tcp.request", "", i, payload) for i in range(1, 281)]
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(stream), 65536):
        out.extend(decoder.feed(stream[i : i + 65536]))
    assert out == frames
