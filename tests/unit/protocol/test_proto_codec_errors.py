"""Decoding errors at the relay's frame size limit: short, escaped, never the input.

The relay sends a decoding error back in an Error reply and writes it in a log line. A
frame may be 8 MiB; if the message echoed a bad value, every bad frame would cost 8 MiB of
log and reply, and a value holding newlines or terminal escapes could forge log lines.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack
import pytest

from hotlink.protocol import codec
from hotlink.protocol.codec import MAX_ERROR_CHARS, MAX_EXCERPT_CHARS, clip_error, excerpt
from hotlink.protocol.errors import ProtocolError

FRAME_LIMIT = 8 * 1024 * 1024  # the relay refuses larger frames before decoding them
HUGE = FRAME_LIMIT - 4096  # a bad value that still fits in a frame with its envelope
FORGED = "\n2026-01-01 12:00:00 ERROR hotlink.server: forged \x1b[31mline\u202e"


def _json(typ: int, dat: dict[str, Any]) -> str:
    return json.dumps({"id": "a1", "typ": typ, "dat": dat})


def _msgpack(typ: int, dat: dict[str, Any]) -> bytes:
    return b"SB\x01\x01" + msgpack.packb({"id": "a1", "typ": typ, "dat": msgpack.packb(dat)})


def refusal(frame: bytes | str) -> str:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame)
    return str(info.value)


def assert_not_echoed(text: str, value_char: str) -> None:
    assert len(text) <= MAX_ERROR_CHARS, text[:300]
    assert value_char * (MAX_EXCERPT_CHARS + 1) not in text, text[:300]


# ---------------------------------------------------------------- excerpt and clip_error


def test_a_short_value_is_shown_whole_and_quoted():
    assert excerpt("2026-13-45") == "'2026-13-45'"
    assert excerpt(b"\x00\x01") == "b'\\x00\\x01'"


def test_a_long_value_is_cut_and_its_length_named():
    text = excerpt("U" * HUGE)
    assert text == f"{'U' * MAX_EXCERPT_CHARS!r}... ({HUGE} characters)"
    assert excerpt(b"B" * 1000).endswith("... (1000 bytes)")


@pytest.mark.parametrize("char", ["\n", "\r", "\x1b", "\u202e", "\u2028", "\x00", "\ud800"])
def test_an_excerpt_escapes_what_could_forge_or_reorder_a_log_line(char: str):
    text = excerpt(f"a{char}b" * 100)
    assert char not in text
    assert text.isprintable()


def test_clip_error_bounds_any_text():
    assert clip_error("short") == "short"
    clipped = clip_error("E" * 10_000)
    assert len(clipped) == MAX_ERROR_CHARS and clipped.endswith("...")
    assert len(clip_error("E" * 500, 100)) == 100


# ---------------------------------------------------------------- frames at the size limit


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (_json(6, {"syft_url": "U" * HUGE}), "syft_url"),
        (_msgpack(6, {"SyftURL": "U" * HUGE}), "syft_url"),
        (_json(8, {"generated": "U" * HUGE}), "generated"),
        (_msgpack(8, {"Generated": "U" * HUGE}), "generated"),
    ],
    ids=["json-syft-url", "msgpack-syft-url", "json-time", "msgpack-time"],
)
def test_an_8_mib_bad_value_is_named_not_echoed(frame: bytes | str, field: str):
    text = refusal(frame)
    assert_not_echoed(text, "U")
    assert field in text
    assert f"({HUGE} characters)" in text


def test_a_4000_digit_integer_is_refused_by_its_bound_not_its_digits():
    frame = '{"id":"a1","typ":12,"dat":{"sid":"s","seq":' + "9" * 4000 + "}}"
    text = refusal(frame)
    assert_not_echoed(text, "9")
    assert "HOTLINK_DATA.seq" in text and "out of range" in text


def test_an_8_mib_typ_integer_is_not_echoed():
    text = refusal('{"id":"a1","typ":' + "7" * 4000 + ',"dat":{}}')
    assert_not_echoed(text, "7")


@pytest.mark.parametrize(
    "frame",
    [
        _json(12, {"sid": "s", "pay": "!" * HUGE}),  # not base64
        _json(12, {"sid": "s", "pay": base64.b64encode(b"x").decode() + "!" * HUGE}),
        '{"id":"a1","typ":12,"dat":{"sid":"' + "!" * HUGE,  # cut short
        '{"id":"a1","typ":12,"dat":{"sid":"s"}}' + "!" * HUGE,  # trailing garbage
        b"SB\x01\x01" + msgpack.packb({"id": "a1", "typ": 12})[:-1] + b"!" * HUGE,
        b"SB\x01\x02" + b"!" * HUGE,  # JSON inside the envelope, malformed
        b"SB\x01\x09" + b"!" * HUGE,  # unknown encoding byte
        b"!" * HUGE,  # no envelope
    ],
    ids=[
        "bad-base64",
        "base64-tail",
        "truncated-json",
        "trailing-json",
        "msgpack-extra",
        "enveloped-json",
        "encoding-byte",
        "no-envelope",
    ],
)
def test_an_8_mib_malformed_frame_gets_a_short_error(frame: bytes | str):
    assert_not_echoed(refusal(frame), "!")


@pytest.mark.parametrize(
    "frame",
    [
        _json(6, {"syft_url": FORGED * 1000}),
        _json(8, {"generated": FORGED}),
        _msgpack(8, {"Generated": FORGED}),
    ],
    ids=["json-syft-url", "json-time", "msgpack-time"],
)
def test_a_bad_value_cannot_forge_a_log_line(frame: bytes | str):
    text = refusal(frame)
    assert text.isprintable(), text  # no newline, carriage return, escape or bidi override


def test_decode_clips_any_error_message_as_a_last_line_of_defence(monkeypatch):
    """Whatever a decoding step says (a library's own words included), decode() passes on
    at most MAX_ERROR_CHARS of it."""

    def wordy(text: str | bytes) -> Any:
        raise ProtocolError("W" * 100_000)

    monkeypatch.setattr(codec, "decode_json", wordy)
    with pytest.raises(ProtocolError) as info:
        codec.decode('{"id":"a1","typ":0,"dat":{}}')
    assert len(str(info.value)) <= MAX_ERROR_CHARS
    assert isinstance(info.value.__cause__, ProtocolError)  # the whole story for a debugger


def test_a_short_error_passes_through_decode_unchanged():
    text = refusal('{"id":"a1","typ":999,"dat":{}}')
    assert text == "unknown message type 999"
