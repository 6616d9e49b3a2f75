"""Where sessions homed on other replicas live, and which local connections take part.

A replica learns a session's home from the records that home sends (an offered Open,
a forwarded Accept, a Close...): every later message of a local connection for that
session is forwarded there. When the home is lost, each local connection that took part
is told its session ended. Both maps are bounded: a hostile user offering a connection
endless Opens costs at most :data:`MAX_PER_CONN` entries for it.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_HOMES = 65_536  # sessions homed elsewhere that this replica remembers
MAX_PER_CONN = 4096  # sessions homed elsewhere one local connection takes part in


class RemoteSessions:
    def __init__(self, max_homes: int = MAX_HOMES, max_per_conn: int = MAX_PER_CONN) -> None:
        self._home: OrderedDict[str, str] = OrderedDict()  # sid -> home replica
        self._parts: dict[str, OrderedDict[str, str]] = {}  # local conn -> sid -> home
        self._max_homes = max_homes
        self._max_per_conn = max_per_conn

    def home_of(self, sid: str) -> str | None:
        return self._home.get(sid)

    def note(self, sid: str, home: str, conn: str) -> None:
        """``home`` sent local connection ``conn`` a message of session ``sid``."""
        homes = self._home
        homes[sid] = home
        homes.move_to_end(sid)
        if len(homes) > self._max_homes:
            homes.popitem(last=False)
        parts = self._parts.setdefault(conn, OrderedDict())
        parts[sid] = home
        parts.move_to_end(sid)
        if len(parts) > self._max_per_conn:
            parts.popitem(last=False)

    def left(self, conn: str, sid: str) -> None:
        """``conn`` is no longer part of ``sid`` (it was closed for it)."""
        parts = self._parts.get(conn)
        if parts is not None:
            parts.pop(sid, None)
            if not parts:
                del self._parts[conn]

    def drop_conn(self, conn: str) -> None:
        self._parts.pop(conn, None)

    def lose(self, home: str) -> list[tuple[str, str]]:
        """Forget replica ``home``: the (local conn, sid) pairs that took part in its
        sessions, for each to be told."""
        for sid in [sid for sid, h in self._home.items() if h == home]:
            del self._home[sid]
        told: list[tuple[str, str]] = []
        for conn in list(self._parts):
            parts = self._parts[conn]
            for sid in [sid for sid, h in parts.items() if h == home]:
                del parts[sid]
                told.append((conn, sid))
            if not parts:
                del self._parts[conn]
        return told

    def __len__(self) -> int:
        return len(self._home)
