"""``peek_data``: the header of a msgpack HotlinkData frame, read without decoding ``pay``.

What the relay relies on: whenever peek_data answers, a full decode of the same frame
succeeds and says the same; anything else (other types, odd forms, broken frames) gets
None, so the relay decodes it in full and refuses it with the usual error.
"""

from __future__ import annotations

import os
import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotlink.protocol.codec import DataHeader, decode, encode_json, encode_msgpack, peek_data
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkData,
    HotlinkSignal,
    Message,
    new_session_id,
)

PATH = "alice@example.com/app_data/mpc/_mpc/0_to_1/stream.tcp.request"


def agrees(frame: bytes, head: DataHeader | None) -> None:
    """``head`` (what peek_data said) is what a full decode says, or None."""
    if head is None:
        return
    message = decode(frame)  # must not raise
    p = message.payload
    assert isinstance(p, HotlinkData)
    assert (message.id, p.sid, p.seq, p.pth, p.etg, len(p.pay)) == tuple(head)


def envelope(outer: dict[Any, Any] | list[tuple[Any, Any]], inner: Any) -> bytes:
    """An SB msgpack frame with the outer map's entries in the given order."""
    dat = msgpack.packb(inner, use_bin_type=True) if not isinstance(inner, bytes) else inner
    items = list(outer.items()) if isinstance(outer, dict) else list(outer)
    items = [(k, dat if v is DAT else v) for k, v in items]
    packer = msgpack.Packer(use_bin_type=True)
    body = packer.pack_map_header(len(items)) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in items
    )
    return b"SB\x01\x01" + body


DAT = object()  # stands for the packed inner map in envelope()


# ---------------------------------------------------------------- what clients send


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    sid=st.text(max_size=40),
    seq=st.integers(0, (1 << 64) - 1),
    pth=st.text(max_size=300),
    etg=st.text(max_size=40),
    pay=st.binary(max_size=3000),
)
def test_our_own_encoding_of_any_data_message_is_read_exactly(sid, seq, pth, etg, pay):
    message = Message("abc123", HotlinkData(sid=sid, seq=seq, pth=pth, etg=etg, pay=pay))
    frame = encode_msgpack(message)
    head = peek_data(frame)
    assert head == DataHeader("abc123", sid, seq, pth, etg, len(pay))
    agrees(frame, head)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    sid=st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    seq=st.one_of(st.integers(0, 300), st.integers(0, (1 << 64) - 1)),
    pth=st.one_of(st.text(max_size=31), st.text(min_size=32, max_size=300)),
    etg=st.text(max_size=31),
    pay=st.binary(max_size=600),
)
def test_what_our_clients_send_is_read_exactly(sid, seq, pth, etg, pay):
    """16-character session ids, sequence numbers of every width, short and long paths."""
    message = Message("c0ffee", HotlinkData(sid=sid, seq=seq, pth=pth, etg=etg, pay=pay))
    frame = encode_msgpack(message)
    head = peek_data(frame)
    assert head == DataHeader("c0ffee", sid, seq, pth, etg, len(pay))
    agrees(frame, head)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 4096, 65535, 65536, 1 << 20])
def test_every_payload_size_and_bin_width(size):
    sid = new_session_id()
    frame = encode_msgpack(Message("m1", HotlinkData(sid=sid, seq=7, pth=PATH, pay=b"p" * size)))
    head = peek_data(frame)
    assert head is not None and head.sid == sid and head.pay_len == size
    agrees(frame, head)


def test_the_go_encoders_fixed_width_integers():
    inner = b"\x84\xa3sid\xb0" + b"0123456789abcdef" + b"\xa3seq\xcf" + (5).to_bytes(8, "big")
    inner += b"\xa3pth" + msgpack.packb(PATH) + b"\xa3pay\xc4\x03abc"
    frame = b"SB\x01\x01\x83\xa2id\xa6a1b2c3\xa3typ\xcd\x00\x0c\xa3dat" + msgpack.packb(inner)
    head = peek_data(frame)
    assert head == DataHeader("a1b2c3", "0123456789abcdef", 5, PATH, "", 3)
    agrees(frame, head)


@settings(max_examples=200)
@given(
    order=st.permutations(["id", "typ", "dat"]),
    fields=st.permutations(["sid", "seq", "pth", "etg", "pay"]),
    typ_width=st.sampled_from(["fixint", "uint8", "uint16"]),
)
def test_any_key_order_and_compact_integers(order, fields, typ_width):
    typ = {"fixint": b"\x0c", "uint8": b"\xcc\x0c", "uint16": b"\xcd\x00\x0c"}[typ_width]
    values = {"sid": "s" * 16, "seq": 300, "pth": PATH, "etg": "e1", "pay": b"\x00\xff" * 9}
    inner = msgpack.packb({f: values[f] for f in fields}, use_bin_type=True)
    parts = {
        "id": b"\xa2id" + msgpack.packb("q9"),
        "typ": b"\xa3typ" + typ,
        "dat": b"\xa3dat" + msgpack.packb(inner, use_bin_type=True),
    }
    frame = b"SB\x01\x01\x83" + b"".join(parts[k] for k in order)
    head = peek_data(frame)
    assert head == DataHeader("q9", "s" * 16, 300, PATH, "e1", 18)
    agrees(frame, head)


def test_nil_strings_as_the_rust_client_writes_them():
    inner = {"sid": "0123456789abcdef", "seq": 2, "pth": PATH, "etg": None, "pay": b"ab"}
    frame = envelope([("id", "r1"), ("typ", 12), ("dat", DAT)], inner)
    head = peek_data(frame)
    assert head == DataHeader("r1", "0123456789abcdef", 2, PATH, "", 2)
    agrees(frame, head)


# ---------------------------------------------------------------- left to the full decode


def test_other_messages_and_json_are_left_to_decode():
    assert peek_data(encode_msgpack(Message("a", HotlinkAccept(sid="s" * 16)))) is None
    assert peek_data(encode_msgpack(Message("a", HotlinkSignal(sid="s", knd="k")))) is None
    text = encode_json(Message("a", HotlinkData(sid="s", seq=1, pth=PATH, pay=b"x")))
    assert peek_data(text.encode()) is None
    assert peek_data(b"SB\x01\x00" + text.encode()) is None  # JSON inside an envelope


ODD_FORMS = {
    # Each decodes (or fails) in full; peek_data must not claim any of them.
    "unknown field": {"sid": "s", "seq": 1, "pth": PATH, "pay": b"x", "zzz": 1},
    "pay as str": {"sid": "s", "seq": 1, "pth": PATH, "pay": "text"},
    "pay as list": {"sid": "s", "seq": 1, "pth": PATH, "pay": [1, 2]},
    "sid as bin": {"sid": b"s", "seq": 1, "pth": PATH, "pay": b"x"},
    "negative seq": {"sid": "s", "seq": -1, "pth": PATH, "pay": b"x"},
    "float seq": {"sid": "s", "seq": 1.0, "pth": PATH, "pay": b"x"},
    "seq as str": {"sid": "s", "seq": "1", "pth": PATH, "pay": b"x"},
    "nil seq": {"sid": "s", "seq": None, "pth": PATH, "pay": b"x"},
    "nil pay": {"sid": "s", "seq": 1, "pth": PATH, "pay": None},
    "not a map": [1, 2, 3],
}


@pytest.mark.parametrize("inner", ODD_FORMS.values(), ids=ODD_FORMS.keys())
def test_odd_forms_are_left_to_decode(inner):
    frame = envelope([("id", "o1"), ("typ", 12), ("dat", DAT)], inner)
    assert peek_data(frame) is None


def test_odd_envelopes_are_left_to_decode():
    inner = {"sid": "s", "seq": 1, "pth": PATH, "pay": b"x"}
    good = envelope([("id", "o1"), ("typ", 12), ("dat", DAT)], inner)
    assert peek_data(good) is not None
    cases = [
        envelope([("id", "o1"), ("typ", 12)], inner),  # no dat
        envelope([("id", "o1"), ("typ", 12), ("dat", DAT), ("x", 1)], inner),  # extra key
        envelope([("id", 5), ("typ", 12), ("dat", DAT)], inner),  # id not a string
        envelope([("id", "o1"), ("typ", 13), ("dat", DAT)], inner),  # another type
        envelope([("id", "o1"), ("typ", 12), ("dat", inner)], b""),  # dat nested directly
        envelope([(b"id", "o1"), ("typ", 12), ("dat", DAT)], inner),  # key as bin
        good + b"\x00",  # trailing byte after the map
        good[:-1],  # cut short
    ]
    for frame in cases:
        assert peek_data(frame) is None, frame[:40]


def test_repeated_fields_are_left_to_decode():
    inner = b"\x83\xa3sid\xa1a\xa3sid\xa1b\xa3pay\xc4\x01x"
    frame = b"SB\x01\x01\x83\xa2id\xa2o1\xa3typ\x0c\xa3dat" + msgpack.packb(inner)
    assert peek_data(frame) is None
    decode(frame)  # the full decode takes the last one; the relay's full path handles it


def test_invalid_utf8_is_left_to_decode_which_refuses_it():
    frame = encode_msgpack(Message("b1", HotlinkData(sid="s" * 16, seq=1, pth="ab", pay=b"x")))
    broken = frame.replace(b"\xa2ab", b"\xa2\xff\xfe")
    assert peek_data(broken) is None
    with pytest.raises(ProtocolError):
        decode(broken)


# ---------------------------------------------------------------- never wrong on garbage


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 4), cut=st.integers(0, 400))
def test_a_damaged_frame_is_refused_or_read_exactly(seed, flips, cut):
    """Byte flips and truncations of a real frame: peek_data returns None, or exactly what
    a full decode returns (it never accepts what decode would refuse)."""
    rng = random.Random(seed)
    message = Message(
        "d1",
        HotlinkData(
            sid=new_session_id(), seq=rng.randrange(1 << 40), pth=PATH, pay=os.urandom(200)
        ),
    )
    frame = bytearray(encode_msgpack(message))
    for _ in range(flips):
        frame[rng.randrange(len(frame))] = rng.randrange(256)
    damaged = bytes(frame[: len(frame) - cut] if cut < len(frame) else frame)
    head = peek_data(damaged)
    if head is not None:
        agrees(damaged, head)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_after_the_envelope_are_refused_or_read_exactly(tail):
    frame = b"SB\x01\x01" + tail
    agrees(frame, peek_data(frame))
