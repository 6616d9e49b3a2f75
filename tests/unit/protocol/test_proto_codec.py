"""SB envelope + msgpack and JSON codec: golden bytes, Go/Rust encodings, round trips, bad input."""

from __future__ import annotations

import json
import struct
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotlink.protocol import codec
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.messages import (
    ACLORDER,
    BYTES,
    INT,
    PAYLOAD_TYPES,
    STR,
    STRLIST,
    STRMAP,
    SYFTURL,
    TIME,
    UINT,
    ACLEntry,
    ACLManifest,
    FileWrite,
    HotlinkAccept,
    HotlinkData,
    HotlinkOpen,
    HotlinkSignal,
    Message,
    MsgType,
    Payload,
    SyftURL,
    System,
)

# ---------------------------------------------------------------- golden bytes (§1.6)

GOLDEN_ACCEPT = bytes.fromhex(
    "53420101"  # envelope
    "83"  # map(3)
    "a26964"
    "a6"
    + b"a1b2c3".hex()  # id
    + "a3747970"
    "cd000a"  # typ = 10 as uint16
    "a3646174"
    "c416"  # dat = bin(22)
    "81"
    "a3736964"
    "b0" + b"0123456789abcdef".hex()
)


def test_golden_accept_decodes() -> None:
    msg = codec.decode(GOLDEN_ACCEPT)
    assert msg == Message("a1b2c3", HotlinkAccept(sid="0123456789abcdef"))
    assert msg.typ is MsgType.HOTLINK_ACCEPT


def test_golden_accept_reencodes_byte_for_byte() -> None:
    msg = Message("a1b2c3", HotlinkAccept(sid="0123456789abcdef"))
    assert codec.encode(msg, "msgpack") == GOLDEN_ACCEPT
    assert codec.encode_msgpack(codec.decode(GOLDEN_ACCEPT)) == GOLDEN_ACCEPT


def test_json_example_of_spec_decodes() -> None:
    text = (
        '{"id":"3f9a1c","typ":9,"dat":{"sid":"9c1e44d0a7b2f3e1",'
        '"pth":"alice@example.com/app_data/latency/rpc/hotlink/warmup.request",'
        '"frm":"alice@example.com"}}'
    )
    msg = codec.decode(text)
    assert msg.id == "3f9a1c"
    assert msg.payload == HotlinkOpen(
        sid="9c1e44d0a7b2f3e1",
        pth="alice@example.com/app_data/latency/rpc/hotlink/warmup.request",
        frm="alice@example.com",
    )
    assert json.loads(codec.encode_json(msg)) == json.loads(text)


def test_json_omits_empty_hotlink_fields() -> None:
    text = codec.encode_json(Message("x", HotlinkOpen(sid="s" * 16, pth="a@b.c/x.request")))
    assert json.loads(text)["dat"] == {"sid": "s" * 16, "pth": "a@b.c/x.request"}


def test_msgpack_go_types_write_every_field_with_go_names() -> None:
    raw = codec.encode_msgpack(Message("abc123", FileWrite(pth="a@b.c/f", etg="e", len=0)))
    outer = msgpack.unpackb(raw[4:], raw=False)
    inner = msgpack.unpackb(outer["dat"], raw=False)
    assert inner == {"Path": "a@b.c/f", "ETag": "e", "Length": 0, "Content": None}


# ---------------------------------------------------------------- Go / Rust encodings


def _go_wire(
    typ: int, dat: bytes, *, typ_bytes: bytes | None = None, msg_id: bytes = b"\xa3abc"
) -> bytes:
    typ_enc = typ_bytes if typ_bytes is not None else b"\xcd" + struct.pack(">H", typ)
    return (
        b"SB\x01\x01\x83\xa2id"
        + msg_id
        + b"\xa3typ"
        + typ_enc
        + b"\xa3dat"
        + msgpack.packb(dat, use_bin_type=True)
    )


@pytest.mark.parametrize(
    "typ_bytes",
    [
        b"\x0c",  # positive fixint
        b"\xcc\x0c",  # uint8
        b"\xcd\x00\x0c",  # uint16 (Go)
        b"\xce\x00\x00\x00\x0c",  # uint32
        b"\xcf" + struct.pack(">Q", 12),  # uint64
        b"\xd0\x0c",  # int8
        b"\xd1\x00\x0c",  # int16
        b"\xd2\x00\x00\x00\x0c",  # int32
        b"\xd3" + struct.pack(">q", 12),  # int64
    ],
)
def test_typ_any_integer_width(typ_bytes: bytes) -> None:
    dat = b"\x82\xa3sid\xa2s1\xa3seq\x01"
    msg = codec.decode(_go_wire(12, dat, typ_bytes=typ_bytes))
    assert msg.payload == HotlinkData(sid="s1", seq=1)


def test_go_fixed_width_uint64_seq_and_int64_length() -> None:
    # HotlinkData.seq as 0xcf uint64.
    dat = b"\x83\xa3sid\xa2s1\xa3seq\xcf" + struct.pack(">Q", 2**64 - 1) + b"\xa3pth\xa1p"
    msg = codec.decode(_go_wire(12, dat))
    assert msg.payload == HotlinkData(sid="s1", seq=2**64 - 1, pth="p")
    # FileWrite.Length as 0xd3 int64, Content as bin, ETag absent-as-nil.
    dat = (
        b"\x84\xa4Path\xa3a/b\xa4ETag\xc0\xa6Length\xd3"
        + struct.pack(">q", -5)
        + b"\xa7Content\xc4\x02hi"
    )
    msg = codec.decode(_go_wire(2, dat))
    assert msg.payload == FileWrite(pth="a/b", etg="", len=-5, con=b"hi")


def test_error_code_as_go_int64() -> None:
    dat = b"\x83\xa4Code\xd3" + struct.pack(">q", 403) + b"\xa4Path\xa1p\xa7Message\xa4deny"
    msg = codec.decode(_go_wire(1, dat))
    assert (msg.payload.cod, msg.payload.pth, msg.payload.msg) == (403, "p", "deny")  # type: ignore[attr-defined]


def test_str_or_bin_for_strings_and_bytes() -> None:
    # Strings sent as bin, bytes sent as str: both accepted (Go decoder rules).
    inner = msgpack.packb(
        {"sid": b"0123456789abcdef", "seq": 3, "pth": b"a@b.c/x.request", "pay": "text"},
        use_bin_type=True,
    )
    msg = codec.decode(_go_wire(12, inner))
    assert msg.payload == HotlinkData(
        sid="0123456789abcdef", seq=3, pth="a@b.c/x.request", pay=b"text"
    )


def test_keys_as_bin_and_id_as_bin() -> None:
    inner = msgpack.packb({b"sid": b"abcdefgh"}, use_bin_type=True)
    wire = b"SB\x01\x01" + msgpack.packb(
        {b"id": b"idid", b"typ": 10, b"dat": inner}, use_bin_type=True
    )
    assert codec.decode(wire) == Message("idid", HotlinkAccept(sid="abcdefgh"))


def test_rust_style_nils_and_empty_lists() -> None:
    inner = msgpack.packb(
        {"sid": "abcdefgh", "knd": "sdp_offer", "adr": [], "tok": "", "err": None},
        use_bin_type=True,
    )
    msg = codec.decode(_go_wire(14, inner))
    assert msg.payload == HotlinkSignal(sid="abcdefgh", knd="sdp_offer")
    inner = msgpack.packb(
        {"sid": "abcdefgh", "pth": "p", "frm": None, "to": None}, use_bin_type=True
    )
    assert codec.decode(_go_wire(9, inner)).payload == HotlinkOpen(sid="abcdefgh", pth="p")


def test_unknown_extra_keys_are_ignored() -> None:
    inner = msgpack.packb({"sid": "abcdefgh", "future": [1, 2, {"x": 1}]}, use_bin_type=True)
    assert codec.decode(_go_wire(10, inner)).payload == HotlinkAccept(sid="abcdefgh")
    text = '{"id":"i","typ":10,"dat":{"sid":"abcdefgh","zzz":{"a":[1]}},"extra":true}'
    assert codec.decode(text).payload == HotlinkAccept(sid="abcdefgh")


def test_envelope_encoding_zero_carries_json() -> None:
    body = b'{"id":"i","typ":10,"dat":{"sid":"abcdefgh"}}'
    assert codec.decode(b"SB\x01\x00" + body) == Message("i", HotlinkAccept(sid="abcdefgh"))


def test_json_bytes_as_number_array() -> None:
    text = '{"id":"i","typ":12,"dat":{"sid":"s","seq":1,"pth":"p","pay":[104,105]}}'
    assert codec.decode(text).payload == HotlinkData(sid="s", seq=1, pth="p", pay=b"hi")


def test_json_null_string_is_empty() -> None:
    text = '{"id":"i","typ":9,"dat":{"sid":"s","pth":"p","to":null}}'
    assert codec.decode(text).payload == HotlinkOpen(sid="s", pth="p")


# ---------------------------------------------------------------- timestamps (ACLManifest)


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 2, 7, 12, 30, 5, tzinfo=UTC),  # timestamp32
        datetime(2026, 2, 7, 12, 30, 5, 123456, tzinfo=UTC),  # timestamp64
        datetime(1960, 1, 1, tzinfo=UTC),  # timestamp96 (negative seconds)
        datetime(2500, 1, 1, 0, 0, 0, 1, tzinfo=UTC),  # timestamp96 (beyond 34 bits)
    ],
)
def test_acl_manifest_generated_as_msgpack_timestamp(when: datetime) -> None:
    inner = msgpack.packb(
        {
            "Version": 1,
            "Datasite": "alice@example.com",
            "For": "*",
            "ForHash": "public",
            "Generated": msgpack.Timestamp.from_datetime(when),
            "ACLOrder": [{"Path": "alice@example.com/syft.pub.yaml", "Hash": "h"}],
        },
        use_bin_type=True,
    )
    msg = codec.decode(_go_wire(8, inner))
    assert isinstance(msg.payload, ACLManifest)
    assert msg.payload.generated == when
    assert msg.payload.acl_order == (ACLEntry("alice@example.com/syft.pub.yaml", "h"),)
    # And it re-encodes as the timestamp extension (type -1), not a string.
    outer = msgpack.unpackb(codec.encode_msgpack(msg)[4:], raw=False)
    assert (
        b"\xd6\xff" in outer["dat"]
        or b"\xd7\xff" in outer["dat"]
        or b"\xc7\x0c\xff" in outer["dat"]
    )


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-02-07T12:30:05Z", datetime(2026, 2, 7, 12, 30, 5, tzinfo=UTC)),
        ("2026-02-07T12:30:05.123456789Z", datetime(2026, 2, 7, 12, 30, 5, 123456, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("2026-02-07T14:30:05+02:00", datetime(2026, 2, 7, 12, 30, 5, tzinfo=UTC)),
    ],
)
def test_acl_manifest_generated_as_rfc3339(text: str, expected: datetime) -> None:
    msg = codec.decode(json.dumps({"id": "i", "typ": 8, "dat": {"generated": text}}))
    assert msg.payload.generated == expected  # type: ignore[attr-defined]


# ---------------------------------------------------------------- round trips (hypothesis)

# Wire strings are UTF-8, so lone surrogates (category Cs) cannot occur in a real message.
_chars = st.characters(exclude_categories=("Cs",))
_text = st.text(alphabet=_chars, max_size=40)
_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
_url_part = st.text(
    alphabet=st.characters(exclude_characters="/?", exclude_categories=("Cs",)), max_size=12
)
_syft_urls = st.builds(
    SyftURL,
    _url_part,
    _url_part,
    st.lists(_url_part, min_size=1, max_size=3).map("/".join),
    st.dictionaries(_text, _text, max_size=3),
)

_KIND_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    STR: _text,
    INT: st.integers(-(2**63), 2**63 - 1),
    UINT: st.integers(0, 2**64 - 1),
    BYTES: st.binary(max_size=64),
    STRLIST: st.lists(_text, max_size=4).map(tuple),
    STRMAP: st.dictionaries(_text, _text, max_size=4),
    TIME: _datetimes,
    ACLORDER: st.lists(st.builds(ACLEntry, _text, _text), max_size=3).map(tuple),
    SYFTURL: _syft_urls,
}


def _payloads(cls: type[Payload]) -> st.SearchStrategy[Payload]:
    return st.builds(cls, **{f.name: _KIND_STRATEGIES[f.metadata["kind"]] for f in fields(cls)})


_messages = st.sampled_from(sorted(PAYLOAD_TYPES)).flatmap(
    lambda typ: st.builds(Message, _text, _payloads(PAYLOAD_TYPES[typ]))
)


@pytest.mark.parametrize("typ", sorted(PAYLOAD_TYPES), ids=lambda t: MsgType(t).name)
@pytest.mark.parametrize("encoding", ["msgpack", "json"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_type(typ: MsgType, encoding: codec.Encoding, data: st.DataObject) -> None:
    msg = Message(data.draw(_text), data.draw(_payloads(PAYLOAD_TYPES[typ])))
    wire = codec.encode(msg, encoding)
    assert isinstance(wire, bytes if encoding == "msgpack" else str)
    assert codec.decode(wire) == msg


@settings(max_examples=200, deadline=None)
@given(_messages)
def test_msgpack_and_json_agree(msg: Message) -> None:
    assert codec.decode(codec.encode_msgpack(msg)) == codec.decode(codec.encode_json(msg))


@pytest.mark.parametrize("typ", sorted(PAYLOAD_TYPES), ids=lambda t: MsgType(t).name)
def test_default_payload_round_trips(typ: MsgType) -> None:
    msg = Message("a1b2c3", PAYLOAD_TYPES[typ]())
    for encoding in ("msgpack", "json"):
        assert codec.decode(codec.encode(msg, encoding)) == msg


def test_choose_encoding() -> None:
    assert codec.choose_encoding("msgpack,json") == "msgpack"
    assert codec.choose_encoding(" JSON , msgpack") == "json"
    assert codec.choose_encoding("cbor, MsgPack") == "msgpack"
    assert codec.choose_encoding("cbor") == "json"
    assert codec.choose_encoding(None) == "json"


# ---------------------------------------------------------------- bad input


def _mp(obj: Any) -> bytes:
    return b"SB\x01\x01" + msgpack.packb(obj, use_bin_type=True)


BAD_FRAMES: list[tuple[str, bytes | str]] = [
    ("empty binary", b""),
    ("short binary", b"SB\x01"),
    ("no envelope", b"\x83\xa2id\xa1x"),
    ("wrong version", b"SB\x02\x01" + GOLDEN_ACCEPT[4:]),
    ("version zero", b"SB\x00\x01" + GOLDEN_ACCEPT[4:]),
    ("unknown encoding", b"SB\x01\x02" + GOLDEN_ACCEPT[4:]),
    ("truncated msgpack", GOLDEN_ACCEPT[:-5]),
    ("truncated outer", GOLDEN_ACCEPT[:12]),
    ("envelope only", b"SB\x01\x01"),
    ("msgpack not a map", _mp([1, 2, 3])),
    ("msgpack scalar", _mp(12)),
    ("typ as string", _mp({"id": "x", "typ": "10", "dat": b"\x80"})),
    ("typ as bool", _mp({"id": "x", "typ": True, "dat": b"\x80"})),
    ("typ as float", _mp({"id": "x", "typ": 10.5, "dat": b"\x80"})),
    ("typ negative", _mp({"id": "x", "typ": -1, "dat": b"\x80"})),
    ("unknown typ", _mp({"id": "x", "typ": 15, "dat": b"\x80"})),
    ("huge typ", _mp({"id": "x", "typ": 2**40, "dat": b"\x80"})),
    ("dat garbage", _mp({"id": "x", "typ": 10, "dat": b"\xc1\xc1"})),
    ("dat truncated", _mp({"id": "x", "typ": 10, "dat": b"\x81\xa3sid"})),
    ("dat not a map", _mp({"id": "x", "typ": 10, "dat": msgpack.packb([1])})),
    ("id as int", _mp({"id": 5, "typ": 10, "dat": b"\x80"})),
    ("sid as int", _mp({"id": "x", "typ": 10, "dat": msgpack.packb({"sid": 5})})),
    ("sid as list", _mp({"id": "x", "typ": 10, "dat": msgpack.packb({"sid": ["a"]})})),
    ("seq as string", _mp({"id": "x", "typ": 12, "dat": msgpack.packb({"seq": "1"})})),
    ("seq negative", _mp({"id": "x", "typ": 12, "dat": msgpack.packb({"seq": -1})})),
    ("seq bool", _mp({"id": "x", "typ": 12, "dat": msgpack.packb({"seq": True})})),
    ("pay as int", _mp({"id": "x", "typ": 12, "dat": msgpack.packb({"pay": 7})})),
    ("adr as string", _mp({"id": "x", "typ": 14, "dat": msgpack.packb({"adr": "a"})})),
    ("adr of ints", _mp({"id": "x", "typ": 14, "dat": msgpack.packb({"adr": [1]})})),
    ("bad utf8 str", _mp({"id": "x", "typ": 10, "dat": b"\x81\xa3sid\xa2\xff\xfe"})),
    (
        "bad utf8 bin",
        _mp({"id": "x", "typ": 10, "dat": msgpack.packb({"sid": b"\xff"}, use_bin_type=True)}),
    ),
    ("length as str", _mp({"id": "x", "typ": 2, "dat": msgpack.packb({"Length": "1"})})),
    (
        "generated bad ext",
        _mp({"id": "x", "typ": 8, "dat": msgpack.packb({"Generated": msgpack.ExtType(5, b"x")})}),
    ),
    ("generated int", _mp({"id": "x", "typ": 8, "dat": msgpack.packb({"Generated": 12})})),
    ("acl order not list", _mp({"id": "x", "typ": 8, "dat": msgpack.packb({"ACLOrder": "x"})})),
    ("acl order item", _mp({"id": "x", "typ": 8, "dat": msgpack.packb({"ACLOrder": [1]})})),
    ("headers not map", _mp({"id": "x", "typ": 6, "dat": msgpack.packb({"Headers": [1]})})),
    ("syft url bad", _mp({"id": "x", "typ": 6, "dat": msgpack.packb({"SyftURL": "http://x"})})),
    ("json garbage", "not json"),
    ("json empty", ""),
    ("json array", "[1,2]"),
    ("json typ string", '{"id":"x","typ":"10","dat":{"sid":"s"}}'),
    ("json typ missing", '{"id":"x","dat":{"sid":"s"}}'),
    ("json typ null", '{"id":"x","typ":null,"dat":{}}'),
    ("json typ bool", '{"id":"x","typ":true,"dat":{}}'),
    ("json unknown typ", '{"id":"x","typ":99,"dat":{}}'),
    ("json typ fraction", '{"id":"x","typ":9.5,"dat":{}}'),
    ("json dat list", '{"id":"x","typ":10,"dat":[1]}'),
    ("json dat string", '{"id":"x","typ":10,"dat":"sid"}'),
    ("json sid number", '{"id":"x","typ":10,"dat":{"sid":5}}'),
    ("json seq string", '{"id":"x","typ":12,"dat":{"seq":"5"}}'),
    ("json seq too big", '{"id":"x","typ":12,"dat":{"seq":18446744073709551616}}'),
    ("json pay not base64", '{"id":"x","typ":12,"dat":{"pay":"@@@"}}'),
    ("json pay bad list", '{"id":"x","typ":12,"dat":{"pay":[300]}}'),
    ("json pay list of str", '{"id":"x","typ":12,"dat":{"pay":["a"]}}'),
    ("json generated bad", '{"id":"x","typ":8,"dat":{"generated":"yesterday"}}'),
    ("json syft url bad", '{"id":"x","typ":6,"dat":{"syft_url":"syft://a/b"}}'),
    ("json deep nesting", '{"id":"x","typ":10,"dat":' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("json top deep nesting", "[" * 100_000),
    ("json nan typ", '{"id":"x","typ":NaN,"dat":{}}'),
    ("binary json garbage", b"SB\x01\x00{not json"),
    ("binary json bad utf8", b"SB\x01\x00\xff\xfe"),
    ("msgpack deep nesting", b"SB\x01\x01" + b"\x91" * 100_000 + b"\xc0"),
    ("typ missing", _mp({"id": "x", "dat": b"\x80"})),
    ("typ nil", _mp({"id": "x", "typ": None, "dat": b"\x80"})),
    ("json lone surrogate sid", '{"id":"x","typ":10,"dat":{"sid":"\\ud800"}}'),
    ("json lone surrogate id", '{"id":"\\udfff","typ":10,"dat":{}}'),
    ("json lone surrogate key", '{"id":"x","typ":10,"dat":{"\\ud800":1}}'),
    ("json lone surrogate in map", '{"id":"x","typ":6,"dat":{"headers":{"a":"\\ud800"}}}'),
    ("binary json surrogate bytes", b'SB\x01\x00{"id":"x","typ":10,"dat":{"sid":"\xed\xa0\x80"}}'),
]


@pytest.mark.parametrize("frame", [f for _, f in BAD_FRAMES], ids=[n for n, _ in BAD_FRAMES])
def test_bad_input_raises_protocol_error(frame: bytes | str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame)
    assert str(info.value)  # a message a person can read


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_binary_only_protocol_error(data: bytes) -> None:
    for frame in (data, b"SB\x01\x01" + data, b"SB\x01\x00" + data):
        try:
            codec.decode(frame)
        except ProtocolError:
            pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(-2, 20) | _json_values, _json_values, _json_values)
def test_fuzz_structured_only_protocol_error(typ: Any, dat: Any, msg_id: Any) -> None:
    text = json.dumps({"id": msg_id, "typ": typ, "dat": dat})
    try:
        codec.decode(text)
    except ProtocolError:
        pass
    try:
        packed = msgpack.packb(
            {"id": msg_id, "typ": typ, "dat": msgpack.packb(dat, use_bin_type=True)},
            use_bin_type=True,
        )
    except (OverflowError, TypeError, ValueError):
        return
    try:
        codec.decode(b"SB\x01\x01" + packed)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(_messages, st.data())
def test_fuzz_truncated_and_flipped_messages(msg: Message, data: st.DataObject) -> None:
    wire = codec.encode_msgpack(msg)
    cut = data.draw(st.integers(0, len(wire) - 1))
    try:
        codec.decode(wire[:cut])
    except ProtocolError:
        pass
    pos = data.draw(st.integers(0, len(wire) - 1))
    flipped = bytearray(wire)
    flipped[pos] ^= data.draw(st.integers(1, 255))
    try:
        codec.decode(bytes(flipped))
    except ProtocolError:
        pass


def test_system_greeting_round_trip() -> None:
    msg = Message.new(System(ver="0.1.0", msg="ok"))
    assert len(msg.id) == 6
    assert codec.decode(codec.encode_json(msg)) == msg


# ---------------------------------------------------------------- what the relay must never forward


@pytest.mark.parametrize(
    "frame",
    [
        '{"id":"x","typ":9,"dat":{"sid":"s","pth":"a@b.c/\\ud800.request"}}',
        '{"id":"x","typ":12,"dat":{"sid":"\\udc00","seq":1,"pth":"p"}}',
        b'SB\x01\x00{"id":"x","typ":12,"dat":{"sid":"s","pth":"\xed\xb0\x80"}}',
    ],
    ids=["json-open-path", "json-data-sid", "envelope-json-bytes"],
)
def test_text_without_a_utf8_form_is_refused_with_a_clear_reason(frame: bytes | str) -> None:
    """A lone surrogate decodes from JSON but cannot be encoded for any receiver."""
    with pytest.raises(ProtocolError, match="not valid Unicode"):
        codec.decode(frame)


def test_non_ascii_text_is_still_accepted() -> None:
    text = '{"id":"x","typ":9,"dat":{"sid":"s","pth":"a@b.c/caf\u00e9/\U0001f600.request"}}'
    assert codec.decode(text).payload == HotlinkOpen(
        sid="s", pth="a@b.c/caf\u00e9/\U0001f600.request"
    )


@pytest.mark.parametrize(
    "frame",
    [_mp({"id": "x", "dat": b"\x80"}), '{"id":"x","dat":{}}', '{"id":"x","typ":null,"dat":{}}'],
    ids=["msgpack", "json", "json-null"],
)
def test_a_message_without_typ_is_refused_not_read_as_system(frame: bytes | str) -> None:
    with pytest.raises(ProtocolError, match="no typ"):
        codec.decode(frame)


# ---------------------------------------------------------------- errors never echo the input

HUGE = 1 << 20  # a bad value this long must not come back in the error
BIG = 64 * 1024  # the same, for every field of every message
MAX_ERROR = 200  # an error message's length at most
EXCERPT = 40  # characters of a bad value it may show


def _huge_frames(value: Any) -> list[bytes | str]:
    """A frame per field of every payload type, that field holding ``value``, both encodings
    (JSON only for an integer msgpack cannot hold)."""
    frames: list[bytes | str] = []
    for typ, cls in PAYLOAD_TYPES.items():
        for f in fields(cls):
            dat = {f.metadata["json"]: value}
            frames.append(json.dumps({"id": "x", "typ": int(typ), "dat": dat}))
            if not isinstance(value, int):
                packed = msgpack.packb({f.metadata["mp"]: value})
                frames.append(_mp({"id": "x", "typ": int(typ), "dat": packed}))
    return frames


def _assert_short_and_not_echoed(frame: bytes | str, marker: str) -> None:
    try:
        codec.decode(frame)
    except ProtocolError as exc:
        text = str(exc)
        assert len(text) <= MAX_ERROR, text[:300]
        assert marker * (EXCERPT + 1) not in text, text[:300]


@pytest.mark.parametrize(
    "frame",
    [
        '{"id":"a","typ":6,"dat":{"syft_url":"' + "U" * HUGE + '"}}',
        '{"id":"a","typ":8,"dat":{"generated":"' + "U" * HUGE + '"}}',
        _mp({"typ": 6, "dat": msgpack.packb({"SyftURL": "U" * HUGE})}),
        _mp({"typ": 8, "dat": msgpack.packb({"Generated": "U" * HUGE})}),
    ],
    ids=["json-syft-url", "json-generated", "msgpack-syft-url", "msgpack-generated"],
)
def test_a_bad_value_is_named_by_its_field_and_a_short_excerpt_not_echoed(
    frame: bytes | str,
) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame)
    text = str(info.value)
    assert len(text) <= MAX_ERROR
    assert ("syft_url" in text) or ("generated" in text)
    assert f"({HUGE} characters)" in text  # says how long it was
    assert "U" * (EXCERPT + 1) not in text


@pytest.mark.parametrize(
    "value",
    ["U" * BIG, "\n" * BIG, ["U" * BIG], {"U" * BIG: "U" * BIG}, 10**4000],
    ids=["string", "newlines", "list", "map", "huge-int"],
)
def test_no_field_of_any_message_echoes_a_huge_bad_value(value: Any) -> None:
    if isinstance(value, int):
        marker = "0"
    elif isinstance(value, str) and value.startswith("\n"):
        marker = "\\n"
    else:
        marker = "U"
    for frame in _huge_frames(value):
        _assert_short_and_not_echoed(frame, marker)


def test_a_control_character_in_an_excerpt_is_escaped() -> None:
    frame = '{"id":"a","typ":6,"dat":{"syft_url":"x\\n2026-01-01 ERROR forged line"}}'
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame)
    assert "\n" not in str(info.value)
