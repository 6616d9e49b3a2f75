"""The fifteen message types of the SyftBox WebSocket protocol as typed dataclasses.

Each payload field carries its wire names in its metadata: the JSON key and the msgpack key
(PROTOCOL.md §1.9). Types 0-8 use Go field names in msgpack and always write every field;
hotlink types 9-14 use the short JSON keys in both encodings and leave empty fields out.
The codec (``codec.py``) reads this metadata; nothing here knows about bytes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode


class MsgType(IntEnum):
    SYSTEM = 0
    ERROR = 1
    FILE_WRITE = 2
    FILE_DELETE = 3
    ACK = 4
    NACK = 5
    HTTP = 6
    FILE_NOTIFY = 7
    ACL_MANIFEST = 8
    HOTLINK_OPEN = 9
    HOTLINK_ACCEPT = 10
    HOTLINK_REJECT = 11
    HOTLINK_DATA = 12
    HOTLINK_CLOSE = 13
    HOTLINK_SIGNAL = 14


# Field kinds the codec knows how to put on the wire.
STR, INT, UINT, BYTES, STRLIST, STRMAP, TIME, ACLORDER, SYFTURL = (
    "str",
    "int",
    "uint",
    "bytes",
    "strlist",
    "strmap",
    "time",
    "aclorder",
    "syfturl",
)


def wire(
    json_key: str, mp_key: str, kind: str, *, omit_json: bool = False, default: Any = ""
) -> Any:
    """A dataclass field with its wire names; ``omit_json`` is Go's ``omitempty`` for JSON."""
    meta = {"json": json_key, "mp": mp_key, "kind": kind, "omit_json": omit_json}
    if isinstance(default, (list, dict)):
        factory = type(default)
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def hot(key: str, kind: str = STR, *, omit: bool = False, default: Any = "") -> Any:
    """A hotlink field: same key in JSON and msgpack, ``omitempty`` in both when ``omit``."""
    return wire(key, key, kind, omit_json=omit, default=default)


@dataclass(frozen=True, slots=True)
class Payload:
    TYPE: ClassVar[MsgType]
    # Hotlink payloads leave empty optional fields out of msgpack too (they have msgpack tags).
    OMIT_IN_MSGPACK: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class System(Payload):
    TYPE = MsgType.SYSTEM
    ver: str = wire("ver", "SystemVersion", STR)
    msg: str = wire("msg", "Message", STR)


@dataclass(frozen=True, slots=True)
class Error(Payload):
    TYPE = MsgType.ERROR
    cod: int = wire("cod", "Code", INT, default=0)
    pth: str = wire("pth", "Path", STR)
    msg: str = wire("msg", "Message", STR)


@dataclass(frozen=True, slots=True)
class FileWrite(Payload):
    TYPE = MsgType.FILE_WRITE
    pth: str = wire("pth", "Path", STR)
    etg: str = wire("etg", "ETag", STR)
    len: int = wire("len", "Length", INT, default=0)
    con: bytes = wire("con", "Content", BYTES, omit_json=True, default=b"")


@dataclass(frozen=True, slots=True)
class FileNotify(Payload):
    TYPE = MsgType.FILE_NOTIFY
    pth: str = wire("pth", "Path", STR)
    etg: str = wire("etg", "ETag", STR)
    len: int = wire("len", "Length", INT, default=0)
    con: bytes = wire("con", "Content", BYTES, omit_json=True, default=b"")


@dataclass(frozen=True, slots=True)
class FileDelete(Payload):
    TYPE = MsgType.FILE_DELETE
    pth: str = wire("pth", "Path", STR)


@dataclass(frozen=True, slots=True)
class Ack(Payload):
    TYPE = MsgType.ACK
    oid: str = wire("oid", "OriginalId", STR)


@dataclass(frozen=True, slots=True)
class Nack(Payload):
    TYPE = MsgType.NACK
    oid: str = wire("oid", "OriginalId", STR)
    err: str = wire("err", "Error", STR)


@dataclass(frozen=True, slots=True)
class SyftURL:
    """``syft://<datasite>/app_data/<app>/rpc/<endpoint>[?k=v&...]``.

    A string in JSON, a map in msgpack.
    """

    datasite: str = ""
    app_name: str = ""
    endpoint: str = ""
    query: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        url = f"syft://{self.datasite}/app_data/{self.app_name}/rpc/{self.endpoint}"
        if self.query:
            url += "?" + urlencode(sorted(self.query.items()))
        return url

    @classmethod
    def parse(cls, text: str) -> SyftURL:
        from .errors import ProtocolError

        if not text:
            return cls()
        if not text.startswith("syft://"):
            raise ProtocolError(f"syft url must start with syft://, got {text!r}")
        rest, _, query = text[len("syft://") :].partition("?")
        parts = rest.split("/")
        if len(parts) < 5 or parts[1] != "app_data" or parts[3] != "rpc":
            raise ProtocolError(
                f"syft url must be syft://<datasite>/app_data/<app>/rpc/<endpoint>, got {text!r}"
            )
        # keep_blank_values: ``?k=`` is a real (empty) parameter, as Go's url.ParseQuery keeps it.
        return cls(
            parts[0], parts[2], "/".join(parts[4:]), dict(parse_qsl(query, keep_blank_values=True))
        )


@dataclass(frozen=True, slots=True)
class Http(Payload):
    TYPE = MsgType.HTTP
    frm: str = wire("from", "From", STR)
    syft_url: SyftURL = wire("syft_url", "SyftURL", SYFTURL, default=SyftURL())
    method: str = wire("method", "Method", STR)
    headers: dict[str, str] = wire("headers", "Headers", STRMAP, omit_json=True, default={})
    body: bytes = wire("body", "Body", BYTES, omit_json=True, default=b"")
    id: str = wire("id", "Id", STR)
    etag: str = wire("etag", "Etag", STR, omit_json=True)


@dataclass(frozen=True, slots=True)
class ACLEntry:
    path: str = ""
    hash: str = ""


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ACLManifest(Payload):
    TYPE = MsgType.ACL_MANIFEST
    version: int = wire("version", "Version", INT, default=1)
    datasite: str = wire("datasite", "Datasite", STR)
    for_: str = wire("for", "For", STR)
    for_hash: str = wire("for_hash", "ForHash", STR)
    generated: datetime = wire("generated", "Generated", TIME, default=EPOCH)
    acl_order: tuple[ACLEntry, ...] = wire("acl_order", "ACLOrder", ACLORDER, default=())


@dataclass(frozen=True, slots=True)
class HotlinkOpen(Payload):
    TYPE = MsgType.HOTLINK_OPEN
    OMIT_IN_MSGPACK = True
    sid: str = hot("sid")
    pth: str = hot("pth")
    frm: str = hot("frm", omit=True)
    to: str = hot("to", omit=True)


@dataclass(frozen=True, slots=True)
class HotlinkAccept(Payload):
    TYPE = MsgType.HOTLINK_ACCEPT
    OMIT_IN_MSGPACK = True
    sid: str = hot("sid")


@dataclass(frozen=True, slots=True)
class HotlinkReject(Payload):
    TYPE = MsgType.HOTLINK_REJECT
    OMIT_IN_MSGPACK = True
    sid: str = hot("sid")
    rsn: str = hot("rsn", omit=True)


@dataclass(frozen=True, slots=True)
class HotlinkData(Payload):
    TYPE = MsgType.HOTLINK_DATA
    OMIT_IN_MSGPACK = True
    sid: str = hot("sid")
    seq: int = hot("seq", UINT, default=0)
    pth: str = hot("pth")
    etg: str = hot("etg", omit=True)
    pay: bytes = hot("pay", BYTES, omit=True, default=b"")


@dataclass(frozen=True, slots=True)
class HotlinkClose(Payload):
    TYPE = MsgType.HOTLINK_CLOSE
    OMIT_IN_MSGPACK = True
    sid: str = hot("sid")
    rsn: str = hot("rsn", omit=True)


@dataclass(frozen=True, slots=True)
class HotlinkSignal(Payload):
    TYPE = MsgType.HOTLINK_SIGNAL
    OMIT_IN_MSGPACK = True
    sid: str = hot("sid")
    knd: str = hot("knd")
    adr: tuple[str, ...] = hot("adr", STRLIST, omit=True, default=())
    tok: str = hot("tok", omit=True)
    err: str = hot("err", omit=True)


PAYLOAD_TYPES: dict[MsgType, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        System,
        Error,
        FileWrite,
        FileDelete,
        Ack,
        Nack,
        Http,
        FileNotify,
        ACLManifest,
        HotlinkOpen,
        HotlinkAccept,
        HotlinkReject,
        HotlinkData,
        HotlinkClose,
        HotlinkSignal,
    )
}

HOTLINK_TYPES = frozenset(range(MsgType.HOTLINK_OPEN, MsgType.HOTLINK_SIGNAL + 1))


def new_message_id() -> str:
    """6 lowercase hex characters, like the Go server (DECISIONS.md #27)."""
    return secrets.token_hex(3)


def new_session_id() -> str:
    """16 lowercase hex characters (8 random bytes), DECISIONS.md #27."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Message:
    """One message on the WebSocket: an id and a typed payload (the ``typ`` follows from it)."""

    id: str
    payload: Payload

    @property
    def typ(self) -> MsgType:
        return self.payload.TYPE

    @classmethod
    def new(cls, payload: Payload) -> Message:
        return cls(new_message_id(), payload)
