"""Encoding and decoding of WebSocket messages (PROTOCOL.md §1.5-1.7).

Binary frames carry the SB envelope ``53 42 01 <enc>`` followed by a msgpack map
``{id, typ, dat}`` whose ``dat`` is a msgpack *bin* holding the payload's own msgpack (or
JSON bytes when ``enc`` is 0). Text frames carry ``{"id", "typ", "dat"}`` JSON with base64
bytes. Decoding is lenient where the reference peers differ (any int width, str or bin,
unknown keys, the msgpack timestamp extension) and strict about everything else: all bad
input raises :class:`ProtocolError` with a message that says what was wrong. That includes
a message without ``typ`` (not a System message) and text with no UTF-8 form (a lone
surrogate from a JSON escape), which no receiver could be sent.

Error messages name the field and the problem, never the input: a bad value appears only as
a short escaped excerpt (:func:`excerpt`), and every message is at most
:data:`MAX_ERROR_CHARS` long. The relay sends these messages back in an Error reply and logs
them, so an echoed 8 MiB field would cost 8 MiB of log and reply per frame.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import msgpack

from .errors import ProtocolError
from .messages import (
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
    Message,
    MsgType,
    Payload,
    SyftURL,
)

ENVELOPE_MAGIC = b"SB"
ENVELOPE_VERSION = 1
ENC_JSON = 0
ENC_MSGPACK = 1

Encoding = Literal["msgpack", "json"]

MAX_UINT64 = (1 << 64) - 1
MAX_INT64 = (1 << 63) - 1

MAX_ERROR_CHARS = 200
"""Length of a decoding error's message (it goes into an Error reply and a log line)."""
MAX_EXCERPT_CHARS = 40
"""How much of a bad value an error message shows, before escaping."""


def excerpt(value: str | bytes, limit: int = MAX_EXCERPT_CHARS) -> str:
    """A bad value for an error message: its escaped head (``repr``, so control characters,
    newlines and bidi overrides cannot forge or garble a log line) and, when cut, its length."""
    if len(value) <= limit:
        return repr(value)
    unit = "bytes" if isinstance(value, bytes) else "characters"
    return f"{value[:limit]!r}... ({len(value)} {unit})"


def clip_error(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters (the last line of defence for error messages)."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


# ---------------------------------------------------------------- encoding negotiation


def choose_encoding(header: str | None) -> Encoding:
    """The server's pick from ``X-Syft-WS-Encodings``: the first known token, else JSON."""
    for token in (header or "").split(","):
        token = token.strip().lower()
        if token in ("msgpack", "json"):
            return token  # type: ignore[return-value]
    return "json"


# ---------------------------------------------------------------- encode


def _empty(value: Any) -> bool:
    return value in ("", 0, b"", (), [], {}, None)


def _encode_value(kind: str, value: Any, *, json_form: bool) -> Any:
    if kind == BYTES:
        return base64.b64encode(value).decode("ascii") if json_form else bytes(value)
    if kind == STRLIST:
        return list(value)
    if kind == STRMAP:
        return dict(value)
    if kind == TIME:
        if json_form:
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return value
    if kind == ACLORDER:
        if json_form:
            return [{"path": e.path, "hash": e.hash} for e in value]
        return [{"Path": e.path, "Hash": e.hash} for e in value]
    if kind == SYFTURL:
        if json_form:
            return str(value)
        return {
            "Datasite": value.datasite,
            "AppName": value.app_name,
            "Endpoint": value.endpoint,
            "QueryParams": dict(value.query),
        }
    return value


def payload_to_obj(payload: Payload, *, json_form: bool) -> dict[str, Any]:
    """The payload as a plain map with the wire keys of the chosen encoding."""
    out: dict[str, Any] = {}
    for f in fields(payload):
        meta = f.metadata
        value = getattr(payload, f.name)
        if json_form:
            if meta["omit_json"] and _empty(value):
                continue
            key = meta["json"]
        else:
            if payload.OMIT_IN_MSGPACK and meta["omit_json"] and _empty(value):
                continue
            key = meta["mp"]
            if meta["kind"] == BYTES and not value and not payload.OMIT_IN_MSGPACK:
                # Go writes a nil []byte as msgpack nil.
                out[key] = None
                continue
        out[key] = _encode_value(meta["kind"], value, json_form=json_form)
    return out


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, datetime=True)


def encode_msgpack(message: Message) -> bytes:
    """``SB 01 01`` + the msgpack wire map, with ``typ`` as uint16 like the Go encoder."""
    dat = _pack(payload_to_obj(message.payload, json_form=False))
    return b"".join(
        (
            ENVELOPE_MAGIC,
            bytes((ENVELOPE_VERSION, ENC_MSGPACK)),
            b"\x83\xa2id",
            _pack(message.id),
            b"\xa3typ\xcd",
            struct.pack(">H", int(message.typ)),
            b"\xa3dat",
            _pack(dat),
        )
    )


def encode_json(message: Message) -> str:
    """The text-frame form ``{"id", "typ", "dat"}``."""
    obj = {
        "id": message.id,
        "typ": int(message.typ),
        "dat": payload_to_obj(message.payload, json_form=True),
    }
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def encode(message: Message, encoding: Encoding) -> bytes | str:
    """Bytes for a binary frame (msgpack) or a string for a text frame (JSON)."""
    return encode_msgpack(message) if encoding == "msgpack" else encode_json(message)


# ---------------------------------------------------------------- decode


def _what(value: Any) -> str:
    return type(value).__name__


def _as_str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        if not value.isascii():
            _check_unicode(value, where)
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{where}: bytes are not valid UTF-8") from exc
    raise ProtocolError(f"{where}: expected a string, got {_what(value)}")


def _check_unicode(text: str, where: str) -> None:
    """Refuse text that has no UTF-8 form: a lone surrogate, from a JSON ``\\udXXX`` escape.

    Such a string would fail later, when the relay encodes it for another receiver (or
    aiohttp encodes a text frame), far from the frame that carried it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolError(
            f"{where}: text is not valid Unicode (lone surrogate at character {exc.start})"
        ) from None


def _as_int(value: Any, where: str, *, lo: int, hi: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{where}: expected an integer, got {_what(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ProtocolError(f"{where}: expected an integer, got a fraction")
        value = int(value)
    if not lo <= value <= hi:
        # Python's JSON reads integers of up to 4300 digits: name the bound, not the value.
        raise ProtocolError(f"{where}: integer out of range {lo}..{hi}")
    return value


def _as_bytes(value: Any, where: str, *, json_form: bool) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        if not json_form:
            return value.encode("utf-8")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"{where}: not valid base64") from exc
    if isinstance(value, list):
        # The Rust decoder accepts byte arrays as lists of numbers; so do we.
        try:
            return bytes(value)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{where}: a byte list must hold integers 0-255") from exc
    raise ProtocolError(f"{where}: expected bytes, got {_what(value)}")


def _as_time(value: Any, where: str) -> datetime:
    if value is None:
        return datetime(1970, 1, 1, tzinfo=UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime()
    if isinstance(value, (str, bytes)):
        text = _as_str(value, where)
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ProtocolError(f"{where}: not an RFC 3339 time: {excerpt(text)}") from exc
    raise ProtocolError(f"{where}: expected a time, got {_what(value)}")


def _get(obj: dict[Any, Any], *keys: str) -> Any:
    for key in keys:
        if key in obj:
            return obj[key]
    return None


def _decode_value(kind: str, value: Any, where: str, *, json_form: bool) -> Any:
    if kind == STR:
        return _as_str(value, where)
    if kind == INT:
        return _as_int(value, where, lo=-MAX_INT64 - 1, hi=MAX_INT64)
    if kind == UINT:
        return _as_int(value, where, lo=0, hi=MAX_UINT64)
    if kind == BYTES:
        return _as_bytes(value, where, json_form=json_form)
    if kind == STRLIST:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ProtocolError(f"{where}: expected a list of strings, got {_what(value)}")
        return tuple(_as_str(v, where) for v in value)
    if kind == STRMAP:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a map, got {_what(value)}")
        return {_as_str(k, where): _as_str(v, where) for k, v in value.items()}
    if kind == TIME:
        return _as_time(value, where)
    if kind == ACLORDER:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ProtocolError(f"{where}: expected a list, got {_what(value)}")
        entries = []
        for item in value:
            if not isinstance(item, dict):
                raise ProtocolError(f"{where}: entries must be maps, got {_what(item)}")
            item = {_as_str(k, where).lower(): v for k, v in item.items()}
            entries.append(
                ACLEntry(_as_str(item.get("path"), where), _as_str(item.get("hash"), where))
            )
        return tuple(entries)
    if kind == SYFTURL:
        if value is None:
            return SyftURL()
        if isinstance(value, dict):
            query = _decode_value(
                STRMAP, _get(value, "QueryParams", "query_params"), where, json_form=False
            )
            return SyftURL(
                _as_str(_get(value, "Datasite", "datasite"), where),
                _as_str(_get(value, "AppName", "app_name"), where),
                _as_str(_get(value, "Endpoint", "endpoint"), where),
                query,
            )
        return _syft_url(_as_str(value, where), where)
    raise AssertionError(f"unknown field kind {kind}")  # pragma: no cover - a bug in messages.py


def _syft_url(text: str, where: str) -> SyftURL:
    try:
        return SyftURL.parse(text)
    except ProtocolError:
        # SyftURL.parse quotes the whole text; a frame may carry megabytes of it.
        raise ProtocolError(
            f"{where}: expected syft://<datasite>/app_data/<app>/rpc/<endpoint>, "
            f"got {excerpt(text)}"
        ) from None


def payload_from_obj(typ: MsgType, obj: Any, *, json_form: bool) -> Payload:
    """Build the payload dataclass for ``typ`` from a decoded map (JSON or msgpack keys)."""
    cls = PAYLOAD_TYPES[typ]
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ProtocolError(f"{typ.name} payload must be a map, got {_what(obj)}")
    # msgpack keys may arrive as bin; normalise to str so lookups work.
    obj = {
        (_as_str(k, f"{typ.name} key") if isinstance(k, (bytes, str)) else k): v
        for k, v in obj.items()
    }
    values: dict[str, Any] = {}
    for f in fields(cls):
        meta = f.metadata
        keys = (meta["json"],) if json_form else (meta["mp"], meta["json"])
        raw = _get(obj, *keys)
        if raw is None:
            continue  # absent: the dataclass default is the Go zero value
        values[f.name] = _decode_value(
            meta["kind"], raw, f"{typ.name}.{meta['json']}", json_form=json_form
        )
    return cls(**values)


def _msg_type(raw: Any) -> MsgType:
    if raw is None:
        # Not the zero value (System): a message without a type is not a message.
        raise ProtocolError("message has no typ")
    typ = _as_int(raw, "typ", lo=0, hi=0xFFFF)
    try:
        return MsgType(typ)
    except ValueError:
        raise ProtocolError(f"unknown message type {typ}") from None


def _unpack(data: bytes, where: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=3)
    except UnicodeDecodeError:
        # A str with invalid UTF-8; retry raw so the field check can name the field.
        try:
            return msgpack.unpackb(data, raw=True, strict_map_key=False, timestamp=3)
        except Exception as exc:
            raise ProtocolError(f"{where}: malformed msgpack: {_reason(exc)}") from exc
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"{where}: malformed msgpack: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """A library's own words for bad input, cut short: they are not ours to trust."""
    return clip_error(str(exc), 100)


def _wire_map(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: expected a map with id, typ and dat, got {_what(obj)}")
    return {
        (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v for k, v in obj.items()
    }


def decode_msgpack_payload(data: bytes) -> Message:
    """Decode the msgpack wire map (the bytes after the SB envelope)."""
    outer = _wire_map(_unpack(data, "message"), "message")
    typ = _msg_type(outer.get("typ"))
    msg_id = _as_str(outer.get("id"), "id")
    dat = outer.get("dat")
    if isinstance(dat, (bytes, bytearray)):
        inner = _unpack(bytes(dat), f"{typ.name} dat")
    else:
        inner = dat  # tolerate a peer that nests the map directly
    return Message(msg_id, payload_from_obj(typ, inner, json_form=False))


def decode_json(text: str | bytes) -> Message:
    """Decode a JSON text frame (or the JSON body of an encoding-0 envelope)."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: deeply nested arrays/objects must not escape as a non-protocol error.
        raise ProtocolError(f"malformed JSON: {_reason(exc)}") from exc
    outer = _wire_map(obj, "message")
    raw_typ = outer.get("typ")
    if raw_typ is not None and (not isinstance(raw_typ, (int, float)) or isinstance(raw_typ, bool)):
        raise ProtocolError(f"typ must be a JSON number, got {_what(raw_typ)}")
    typ = _msg_type(raw_typ)
    msg_id = _as_str(outer.get("id"), "id")
    return Message(msg_id, payload_from_obj(typ, outer.get("dat"), json_form=True))


def decode_binary(data: bytes) -> Message:
    """Decode a binary WebSocket frame: the SB envelope and what it holds."""
    if len(data) < 4 or data[:2] != ENVELOPE_MAGIC:
        raise ProtocolError("binary message missing SB envelope")
    if data[2] != ENVELOPE_VERSION:
        raise ProtocolError(f"unsupported ws envelope version {data[2]}")
    if data[3] == ENC_MSGPACK:
        return decode_msgpack_payload(data[4:])
    if data[3] == ENC_JSON:
        return decode_json(data[4:])
    raise ProtocolError(f"unknown ws encoding {data[3]}")


def decode(frame: bytes | str) -> Message:
    """Decode one WebSocket frame by its type: text is JSON, binary is the SB envelope.

    A :class:`ProtocolError` it raises has a message of at most :data:`MAX_ERROR_CHARS`.
    """
    try:
        if isinstance(frame, str):
            return decode_json(frame)
        return decode_binary(frame)
    except ProtocolError as exc:
        message = str(exc)
        if len(message) <= MAX_ERROR_CHARS:
            raise
        raise ProtocolError(clip_error(message)) from exc


# ---------------------------------------------------------------- routing without decoding


class DataHeader(NamedTuple):
    """What routing needs of a msgpack ``HotlinkData`` frame, read without copying ``pay``.

    :func:`peek_data` returns one only for a frame that :func:`decode` decodes cleanly into
    ``Message(id, HotlinkData(sid, seq, pth, etg, pay))`` with ``len(pay) == pay_len``.
    (A tuple: one is made per forwarded frame, and a frozen dataclass costs five times as
    much to build.)
    """

    id: str
    sid: str
    seq: int
    pth: str
    etg: str
    pay_len: int


# What NamedTuple's own constructor does underneath, without its Python-level wrapper.
_new_header = tuple.__new__
_SID, _SEQ, _PTH, _ETG, _PAY = 1, 2, 4, 8, 16
_FIELD_BITS = {b"sid": _SID, b"seq": _SEQ, b"pth": _PTH, b"etg": _ETG, b"pay": _PAY}
_STR_BITS = _SID | _PTH | _ETG
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from


def peek_data(frame: bytes) -> DataHeader | None:
    """The header of a binary ``HotlinkData`` frame in the common msgpack form, else None.

    The common form is what every client writes: the SB msgpack envelope, a map of exactly
    ``id`` (str), ``typ`` (12) and ``dat`` (bin), and in ``dat`` a map of ``sid``, ``seq``
    (unsigned), ``pth``, ``etg`` (str) and ``pay`` (bin), each at most once, with nothing
    after either map. Anything else (another type, JSON, nil or unknown fields, str keys as
    bin, ...) returns None and is left to :func:`decode`, which accepts or refuses it with
    the usual error. So whatever this returns, a full decode would have returned too; the
    relay routes on it and forwards the frame as is, without building the payload.
    """
    try:
        return _peek_data(frame)
    except (IndexError, UnicodeDecodeError, struct.error):
        return None  # truncated, or not UTF-8: decode says which


def _peek_data(buf: bytes) -> DataHeader | None:
    # Straight-line code on purpose: this runs for every Data frame the relay forwards, and
    # a helper call per field would cost more than the rest together. The frame must end
    # where the outer map does, and ``dat`` where the inner one does (no trailing bytes).
    size = len(buf)
    head = buf[8]
    if buf[:8] != b"SB\x01\x01\x83\xa2id" or not 0xA0 <= head <= 0xBF:
        return _peek_any_order(buf)
    pos = 9 + (head & 0x1F)
    msg_id = buf[9:pos].decode("utf-8")
    if buf[pos : pos + 11] != b"\xa3typ\xcd\x00\x0c\xa3dat":  # Go's and our own order
        return _peek_any_order(buf)
    pos += 11
    head = buf[pos]
    if head == 0xC5:
        pos += 3
        dat_end = pos + _U16(buf, pos - 2)[0]
    elif head == 0xC6:
        pos += 5
        dat_end = pos + _U32(buf, pos - 4)[0]
    elif head == 0xC4:
        pos += 2
        dat_end = pos + buf[pos - 1]
    else:
        return None
    if dat_end != size:
        return None
    return _peek_fields(buf, msg_id, pos, size)


def _peek_any_order(buf: bytes) -> DataHeader | None:
    """The outer map with its three keys in any order (and ``typ`` in any width)."""
    if buf[:5] != b"SB\x01\x01\x83":
        return None
    size = len(buf)
    pos = 5
    msg_id: str | None = None
    typ = -1
    dat_start = dat_end = -1
    for _ in range(3):
        head = buf[pos]
        if not 0xA0 <= head <= 0xBF:
            return None
        key_end = pos + 1 + (head & 0x1F)
        key = buf[pos + 1 : key_end]
        pos = key_end
        head = buf[pos]
        if key == b"id" and msg_id is None:
            if 0xA0 <= head <= 0xBF:
                end = pos + 1 + (head & 0x1F)
                pos += 1
            elif head == 0xD9:
                end = pos + 2 + buf[pos + 1]
                pos += 2
            else:
                return None
            if end > size:
                return None
            msg_id = buf[pos:end].decode("utf-8")
            pos = end
        elif key == b"typ" and typ < 0:
            if head <= 0x7F:
                typ = head
                pos += 1
            elif head == 0xCC:
                typ = buf[pos + 1]
                pos += 2
            elif head == 0xCD:
                typ = _U16(buf, pos + 1)[0]
                pos += 3
            else:
                return None
        elif key == b"dat" and dat_start < 0:
            if head == 0xC5:
                dat_start = pos + 3
                dat_end = dat_start + _U16(buf, pos + 1)[0]
            elif head == 0xC6:
                dat_start = pos + 5
                dat_end = dat_start + _U32(buf, pos + 1)[0]
            elif head == 0xC4:
                dat_start = pos + 2
                dat_end = dat_start + buf[pos + 1]
            else:
                return None
            pos = dat_end
        else:
            return None
    if typ != MsgType.HOTLINK_DATA or msg_id is None or pos != size:
        return None
    return _peek_fields(buf, msg_id, dat_start, dat_end)


def _peek_fields(buf: bytes, msg_id: str, pos: int, end: int) -> DataHeader | None:
    """The HotlinkData map that fills ``buf[pos:end]``: first the order clients write
    (``sid``, ``seq``, ``pth``, ``etg`` if any, ``pay``), then any order."""
    head = buf[pos]
    if (head == 0x84 or head == 0x85) and buf[pos + 1 : pos + 6] == b"\xa3sid\xb0":
        # sid: 16 characters (DECISIONS.md #27), so a fixstr of 16.
        sid = buf[pos + 6 : pos + 22].decode("utf-8")
        at = pos + 22
        if buf[at : at + 4] == b"\xa3seq":
            kind = buf[at + 4]
            if kind <= 0x7F:
                seq = kind
                at += 5
            elif kind == 0xCD:
                seq = _U16(buf, at + 5)[0]
                at += 7
            elif kind == 0xCE:
                seq = _U32(buf, at + 5)[0]
                at += 9
            elif kind == 0xCF:
                seq = _U64(buf, at + 5)[0]
                at += 13
            elif kind == 0xCC:
                seq = buf[at + 5]
                at += 6
            else:
                at = -1
            if at > 0 and buf[at : at + 4] == b"\xa3pth":
                kind = buf[at + 4]
                if kind == 0xD9:
                    stop = at + 6 + buf[at + 5]
                    pth = buf[at + 6 : stop].decode("utf-8")
                elif 0xA0 <= kind <= 0xBF:
                    stop = at + 5 + (kind & 0x1F)
                    pth = buf[at + 5 : stop].decode("utf-8")
                else:
                    stop = -1
                etg = ""
                if stop > 0 and head == 0x85 and buf[stop : stop + 4] == b"\xa3etg":
                    kind = buf[stop + 4]
                    if 0xA0 <= kind <= 0xBF:
                        at = stop + 5 + (kind & 0x1F)
                        etg = buf[stop + 5 : at].decode("utf-8")
                        stop = at
                    else:
                        stop = -1
                elif head == 0x85:
                    stop = -1
                if stop > 0 and buf[stop : stop + 4] == b"\xa3pay":
                    kind = buf[stop + 4]
                    if kind == 0xC5:
                        pay_len = _U16(buf, stop + 5)[0]
                        at = stop + 7 + pay_len
                    elif kind == 0xC6:
                        pay_len = _U32(buf, stop + 5)[0]
                        at = stop + 9 + pay_len
                    elif kind == 0xC4:
                        pay_len = buf[stop + 5]
                        at = stop + 6 + pay_len
                    else:
                        at = -1
                    if at == end:
                        return _new_header(DataHeader, (msg_id, sid, seq, pth, etg, pay_len))
    return _peek_fields_any_order(buf, msg_id, pos, end)


def _peek_fields_any_order(buf: bytes, msg_id: str, pos: int, end: int) -> DataHeader | None:
    head = buf[pos]
    if not 0x80 <= head <= 0x85:  # a fixmap of at most the five fields
        return None
    pos += 1
    sid = pth = etg = ""
    seq = pay_len = 0
    seen = 0
    for _ in range(head & 0x0F):
        if buf[pos] != 0xA3:  # every field name has three letters
            return None
        key = buf[pos + 1 : pos + 4]
        pos += 4
        bit = _FIELD_BITS.get(key, 0)
        if not bit or seen & bit:
            return None  # an unknown or repeated field
        seen |= bit
        head = buf[pos]
        if bit & _STR_BITS:
            if 0xA0 <= head <= 0xBF:
                stop = pos + 1 + (head & 0x1F)
                pos += 1
            elif head == 0xD9:
                stop = pos + 2 + buf[pos + 1]
                pos += 2
            elif head == 0xDA:
                stop = pos + 3 + _U16(buf, pos + 1)[0]
                pos += 3
            elif head == 0xC0:  # nil: the Rust client's absent string
                pos += 1
                stop = pos
            else:
                return None
            if stop > end:
                return None
            text = buf[pos:stop].decode("utf-8")
            pos = stop
            if bit == _SID:
                sid = text
            elif bit == _PTH:
                pth = text
            else:
                etg = text
        elif bit == _SEQ:
            if head <= 0x7F:
                seq = head
                pos += 1
            elif head == 0xCE:
                seq = _U32(buf, pos + 1)[0]
                pos += 5
            elif head == 0xCF:
                seq = _U64(buf, pos + 1)[0]
                pos += 9
            elif head == 0xCC:
                seq = buf[pos + 1]
                pos += 2
            elif head == 0xCD:
                seq = _U16(buf, pos + 1)[0]
                pos += 3
            else:
                return None
        else:  # pay
            if head == 0xC5:
                pay_len = _U16(buf, pos + 1)[0]
                pos += 3 + pay_len
            elif head == 0xC6:
                pay_len = _U32(buf, pos + 1)[0]
                pos += 5 + pay_len
            elif head == 0xC4:
                pay_len = buf[pos + 1]
                pos += 2 + pay_len
            else:
                return None
    if pos != end:
        return None
    return _new_header(DataHeader, (msg_id, sid, seq, pth, etg, pay_len))
