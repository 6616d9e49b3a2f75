"""What the sans-I/O handlers return: which message goes to which connection, and why not.

The router and the file handler never touch a socket. They take one decoded message from one
connection and answer with an :class:`Outcome`; the app turns its sends into frames on the
connections' bounded queues, logs its ``detail`` once and counts its ``refusal``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..protocol.messages import Error, Message

ConnId = str

MAX_TEXT_CHARS = 200
"""Length of any text the relay sends in an Error reply or writes in a bad-input log line.

Details name ids, paths and reasons that came from the network; each is already shortened
where it is made, and this cut is the last line of defence (an 8 MiB session id would
otherwise become an 8 MiB log line and reply).
"""


def clip_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` at most ``limit`` characters long, with control and other unprintable
    characters escaped so that input cannot start a forged log line or reorder one."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if text.isprintable():
        return text
    escaped = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Send:
    """Put ``message`` on connection ``conn``'s send queue.

    The relay never waits for queue space (a sender's read loop must keep reading, or its
    pings go unanswered). A direct send (forwarded Accept, Data, Close, Signal, replies) that
    does not fit means the receiver is not reading its socket: it is disconnected. A
    ``broadcast`` send (an Open or FileWrite fanned out to many users) that does not fit is
    dropped. Clients' per-session flow control keeps well-behaved streams far below the bound.
    """

    conn: ConnId
    message: Message
    broadcast: bool = False


@dataclass(frozen=True, slots=True)
class FanOut:
    """Broadcast ``message`` to every connection except those of ``exclude_user``: one
    decision for all receivers, so the relay can queue it once (see :mod:`.fanout`)."""

    message: Message
    exclude_user: str


@dataclass(slots=True)
class Outcome:
    """The decisions for one input message.

    ``refusal`` is a short label when the input was refused or dropped (a Reject reason such
    as ``permission denied``, or ``not participant``); it is counted per label in the metrics.
    ``detail`` says in words what happened, for the one log line the app writes about it.
    ``fan_out`` is a broadcast to everyone but one user, after ``sends``.
    """

    sends: list[Send] = field(default_factory=list)
    refusal: str | None = None
    detail: str = ""
    fan_out: FanOut | None = None

    def send(self, conn: ConnId, message: Message, *, broadcast: bool = False) -> None:
        self.sends.append(Send(conn, message, broadcast))

    def refuse(self, label: str, detail: str) -> Outcome:
        self.refusal = label
        self.detail = detail
        return self


def error_reply(conn: ConnId, code: int, text: str, *, path: str = "") -> Send:
    """A server-originated ``Error`` (fresh id) to one connection; ``text`` is clipped.

    ``path`` goes back whole: it is the sender's own path, which its client matches to the
    file it wrote.
    """
    return Send(conn, Message.new(Error(cod=code, pth=path, msg=clip_text(text))))


class ConnectionTable:
    """Which user each live connection belongs to, in connection order, and each user's
    connections.

    The router needs it to fan an Open out to readers, and the file handler to fan out a
    FileWrite; the app keeps it in step with the hub (add on upgrade, remove on close). The
    per-user index lets an Open with a target, or with readers the ACL names, reach them
    without walking every connection (thousands of idle ones on a busy relay).
    """

    def __init__(self) -> None:
        self._users: dict[ConnId, str] = {}
        # user -> its connections in connection order (a few: connections per user are capped)
        self._by_user: dict[str, list[ConnId]] = {}
        self._order: dict[ConnId, int] = {}
        self._next = 0

    def add(self, conn: ConnId, user: str) -> None:
        self.remove(conn)
        self._users[conn] = user
        self._by_user.setdefault(user, []).append(conn)
        self._order[conn] = self._next
        self._next += 1

    def remove(self, conn: ConnId) -> None:
        user = self._users.pop(conn, None)
        if user is None:
            return
        del self._order[conn]
        conns = self._by_user[user]
        conns.remove(conn)
        if not conns:
            del self._by_user[user]

    def user(self, conn: ConnId) -> str | None:
        return self._users.get(conn)

    def of_user(self, user: str) -> list[ConnId]:
        """The connections of ``user``, in connection order."""
        return list(self._by_user.get(user, ()))

    def in_order(self, conns: list[ConnId]) -> list[ConnId]:
        """``conns`` (live connections) sorted into connection order."""
        return sorted(conns, key=self._order.__getitem__)

    def items(self) -> Iterator[tuple[ConnId, str]]:
        return iter(list(self._users.items()))

    def __contains__(self, conn: object) -> bool:
        return conn in self._users

    def __len__(self) -> int:
        return len(self._users)
