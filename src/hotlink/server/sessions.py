"""The hotlink session store (PROTOCOL.md §2.1), indexed by connection for clean-up.

Unlike the reference, sessions do not outlive their connections (DECISIONS.md #18): the
store keeps, for every connection, the sessions it opened and the sessions it accepted, so a
disconnect can close exactly those without scanning everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .decisions import ConnId

TCP_REQUEST_SUFFIX = "/stream.tcp.request"


@dataclass(slots=True)
class Session:
    sid: str
    path: str
    from_user: str
    to_user: str  # "" when the opener named no target (or named itself)
    from_conn: ConnId
    # Accepting connection -> its user; insertion order is the order of acceptance.
    accepted: dict[ConnId, str] = field(default_factory=dict)
    # The accepted connections whose users may read ``path``, as decided in ACL epoch
    # ``readers_epoch`` (None: not decided since ``accepted`` last changed).
    readers: tuple[ConnId, ...] = ()
    readers_epoch: object = None

    @property
    def is_tcp(self) -> bool:
        """A TCP-proxy session: one remote user only ("already accepted", §2.2)."""
        return self.path.endswith(TCP_REQUEST_SUFFIX)


class SessionStore:
    """``on_removed`` hears of every session that ends (not of one replaced by a new Open
    with its id): a cluster replica gives up its claim on the id there."""

    def __init__(self, on_removed: Callable[[str], None] | None = None) -> None:
        self._on_removed = on_removed
        self._sessions: dict[str, Session] = {}
        self._opened: dict[ConnId, set[str]] = {}
        self._accepted: dict[ConnId, set[str]] = {}
        # Open sessions per opening user, over all of its connections (a per-user cap).
        self._per_user: dict[str, int] = {}

    def get(self, sid: str) -> Session | None:
        return self._sessions.get(sid)

    def put(self, session: Session) -> Session | None:
        """Store ``session``; an existing one with the same id is replaced and returned."""
        old = self._remove(session.sid)
        self._sessions[session.sid] = session
        self._opened.setdefault(session.from_conn, set()).add(session.sid)
        self._per_user[session.from_user] = self._per_user.get(session.from_user, 0) + 1
        return old

    def remove(self, sid: str) -> Session | None:
        session = self._remove(sid)
        if session is not None and self._on_removed is not None:
            self._on_removed(sid)
        return session

    def _remove(self, sid: str) -> Session | None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return None
        _discard(self._opened, session.from_conn, sid)
        left = self._per_user.get(session.from_user, 0) - 1
        if left > 0:
            self._per_user[session.from_user] = left
        else:
            self._per_user.pop(session.from_user, None)
        for conn in session.accepted:
            _discard(self._accepted, conn, sid)
        return session

    def accept(self, session: Session, conn: ConnId, user: str) -> None:
        session.accepted[conn] = user
        session.readers_epoch = None
        self._accepted.setdefault(conn, set()).add(session.sid)

    def unaccept(self, session: Session, conn: ConnId) -> bool:
        if session.accepted.pop(conn, None) is None:
            return False
        session.readers_epoch = None
        _discard(self._accepted, conn, session.sid)
        return True

    def opened_by(self, conn: ConnId) -> list[Session]:
        return [self._sessions[sid] for sid in sorted(self._opened.get(conn, ()))]

    def accepted_by(self, conn: ConnId) -> list[Session]:
        return [self._sessions[sid] for sid in sorted(self._accepted.get(conn, ()))]

    def count_opened_by(self, conn: ConnId) -> int:
        return len(self._opened.get(conn, ()))

    def count_opened_by_user(self, user: str) -> int:
        return self._per_user.get(user, 0)

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sid: object) -> bool:
        return sid in self._sessions


def _discard(index: dict[ConnId, set[str]], conn: ConnId, sid: str) -> None:
    sids = index.get(conn)
    if sids is None:
        return
    sids.discard(sid)
    if not sids:
        del index[conn]
