"""What replicas send each other: typed records, their wire form, and the order per link.

One XADD entry on a replica's inbox carries a batch of records from one sender, with the
sender's link epoch and a sequence number per (sender, receiver) link. The receiver keeps
the last number per sender (:class:`LinkSeq`), so a resent entry is dropped and a lost one
is seen as a gap, never skipped silently. Frames travel as the bytes (or JSON text) the
relay received or encoded: nothing is decoded on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack

from ...protocol.errors import ProtocolError

Frame = bytes | str  # a msgpack envelope, or a JSON text frame


@dataclass(frozen=True, slots=True)
class ConnInfo:
    conn: str
    user: str
    encoding: str


@dataclass(frozen=True, slots=True)
class Roster:
    """Every connection the sender holds now; its view of the sender is replaced.

    Sent to a replica the sender has just found (and back, when ``reply`` asks for it)."""

    conns: tuple[ConnInfo, ...]
    reply: bool = False


@dataclass(frozen=True, slots=True)
class ConnUp:
    info: ConnInfo


@dataclass(frozen=True, slots=True)
class ConnDown:
    conn: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Put ``frame`` on the queues of the receiver's connections ``conns``.

    ``sid``: the session it belongs to, when the sender is that session's home, so the
    receiver knows where its connections' answers go."""

    conns: tuple[str, ...]
    frame: Frame
    typ: int
    msg_id: str
    broadcast: bool
    sid: str = ""


@dataclass(frozen=True, slots=True)
class Ingress:
    """A frame that connection ``conn`` (on the sender) sent for a session homed here."""

    conn: str
    frame: Frame


@dataclass(frozen=True, slots=True)
class AclPut:
    """An ACL file was loaded on the sender: load it, and pass the FileWrite on to
    everyone here but ``exclude_user``."""

    path: str
    text: str
    exclude_user: str
    frame: Frame


@dataclass(frozen=True, slots=True)
class AclDel:
    path: str


@dataclass(frozen=True, slots=True)
class EndSession:
    """End session ``sid``, homed here, for ``reason`` (its opener opened it elsewhere)."""

    sid: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reset:
    """The sender lost records of ours: forget it, as if it had died, and start afresh."""


@dataclass(frozen=True, slots=True)
class Bye:
    """The sender stops (a clean shutdown): act now rather than when its key expires."""


Record = Roster | ConnUp | ConnDown | Deliver | Ingress | AclPut | AclDel | EndSession | Reset | Bye


class Kind(int, Enum):
    ROSTER = 1
    UP = 2
    DOWN = 3
    DELIVER = 4
    INGRESS = 5
    ACL_PUT = 6
    ACL_DEL = 7
    END = 9
    RESET = 10
    BYE = 11


def _fields(record: Record) -> list[object]:
    match record:
        case Roster(conns, reply):
            return [Kind.ROSTER, [[c.conn, c.user, c.encoding] for c in conns], reply]
        case ConnUp(info):
            return [Kind.UP, info.conn, info.user, info.encoding]
        case ConnDown(conn):
            return [Kind.DOWN, conn]
        case Deliver(conns, frame, typ, msg_id, broadcast, sid):
            return [Kind.DELIVER, list(conns), frame, typ, msg_id, broadcast, sid]
        case Ingress(conn, frame):
            return [Kind.INGRESS, conn, frame]
        case AclPut(path, text, exclude_user, frame):
            return [Kind.ACL_PUT, path, text, exclude_user, frame]
        case AclDel(path):
            return [Kind.ACL_DEL, path]
        case EndSession(sid, reason):
            return [Kind.END, sid, reason]
        case Reset():
            return [Kind.RESET]
        case Bye():
            return [Kind.BYE]
    raise TypeError(f"not a record: {record!r}")


def pack(records: list[Record]) -> bytes:
    """The wire form of a batch of records (one inbox entry)."""
    return msgpack.packb([_fields(r) for r in records], use_bin_type=True)


def _frame(value: object) -> Frame:
    if isinstance(value, bytes | str):
        return value
    raise ProtocolError("record frame is neither bytes nor text")


def _str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ProtocolError(f"record field is {type(value).__name__}, not text")


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ProtocolError(f"record field is {type(value).__name__}, not a whole number")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ProtocolError(f"record field is {type(value).__name__}, not a boolean")


def _list(value: object, size: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (size is not None and len(value) != size):
        raise ProtocolError("record field is not a list of the expected size")
    return value


# Fields after the kind, per kind.
_SIZES = {
    Kind.ROSTER: 2,
    Kind.UP: 3,
    Kind.DOWN: 1,
    Kind.DELIVER: 6,
    Kind.INGRESS: 2,
    Kind.ACL_PUT: 4,
    Kind.ACL_DEL: 1,
    Kind.END: 2,
    Kind.RESET: 0,
    Kind.BYE: 0,
}


def _record(item: object) -> Record:
    fields = _list(item)
    if not fields:
        raise ProtocolError("empty record")
    try:
        kind = Kind(_int(fields[0]))
    except ValueError:
        raise ProtocolError(f"unknown record kind {fields[0]!r}") from None
    args = fields[1:]
    if len(args) != _SIZES[kind]:
        raise ProtocolError(f"record {kind.name} with {len(args)} fields")
    match kind:
        case Kind.ROSTER:
            infos = tuple(ConnInfo(*(_str(v) for v in _list(entry, 3))) for entry in _list(args[0]))
            return Roster(infos, _bool(args[1]))
        case Kind.UP:
            return ConnUp(ConnInfo(_str(args[0]), _str(args[1]), _str(args[2])))
        case Kind.DOWN:
            return ConnDown(_str(args[0]))
        case Kind.DELIVER:
            conns = tuple(_str(c) for c in _list(args[0]))
            return Deliver(
                conns, _frame(args[1]), _int(args[2]), _str(args[3]), _bool(args[4]), _str(args[5])
            )
        case Kind.INGRESS:
            return Ingress(_str(args[0]), _frame(args[1]))
        case Kind.ACL_PUT:
            return AclPut(_str(args[0]), _str(args[1]), _str(args[2]), _frame(args[3]))
        case Kind.ACL_DEL:
            return AclDel(_str(args[0]))
        case Kind.END:
            return EndSession(_str(args[0]), _str(args[1]))
        case Kind.RESET:
            return Reset()
        case Kind.BYE:
            return Bye()
    raise ProtocolError(f"unknown record kind {kind}")  # pragma: no cover (Enum refused it)


def unpack(data: bytes) -> list[Record]:
    """Records from an inbox entry; :class:`ProtocolError` for anything malformed (only
    replicas write inboxes, so this means a bug or a foreign writer, not a user)."""
    try:
        items = msgpack.unpackb(data, raw=False)
        if not isinstance(items, list):
            raise ProtocolError("record batch is not a list")
        return [_record(item) for item in items]
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed record batch: {type(exc).__name__}: {exc}") from None


class Order(Enum):
    NEXT = "next"  # apply it
    DUPLICATE = "duplicate"  # seen already (a resend after a Redis blip): drop it
    GAP = "gap"  # entries between were lost: the link is broken
    NEW_LINK = "new link"  # the sender started the link afresh (it forgot us)


BROKEN = 1 << 62  # a link's "last number" once entries were lost on it


class LinkSeq:
    """The order of entries per sending replica: epoch and sequence number of the last one.

    The sender numbers its entries to each receiver 1, 2, 3... under an epoch it picks when
    it starts talking to that receiver. A new epoch starting at 1 is a new link (the
    sender forgot this receiver, so everything the two shared is gone); anything else
    out of step is a gap.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}

    def check(self, src: str, epoch: str, seq: int) -> Order:
        last = self._last.get(src)
        if last is not None and last[0] == epoch:
            if seq <= last[1]:
                return Order.DUPLICATE
            if seq != last[1] + 1:
                return Order.GAP
            self._last[src] = (epoch, seq)
            return Order.NEXT
        if seq != 1:
            return Order.GAP
        self._last[src] = (epoch, seq)
        return Order.NEXT if last is None else Order.NEW_LINK

    def break_link(self, src: str, epoch: str) -> None:
        """Entries were lost on ``src``'s link ``epoch``: the rest of it is dropped (as
        duplicates) until ``src`` starts a new one."""
        self._last[src] = (epoch, BROKEN)

    def forget(self, src: str) -> None:
        self._last.pop(src, None)
