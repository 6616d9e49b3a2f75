"""Where sessions homed on other replicas live, and which local connections take part.

A replica learns a session's home from the records that home sends (an offered Open,
a forwarded Accept, a Close...): every later message of a local connection for that
session is forwarded there. When the home is lost, each local connection that took part
is told its session ended.

What it learns from offers is bounded and forgets the least recently used first: a
hostile user offering a connection endless Opens costs at most :data:`MAX_PER_CONN`
entries for it and :data:`MAX_HOMES` in all. A session a local connection *accepted* is
kept apart until that connection leaves it, however many Opens come meanwhile: forgotten,
its later messages (a credit grant, its Close) would be answered here as for an unknown
session and never reach the opener, who could then wait for credit forever. A connection
may take part in at most :data:`MAX_JOINED_PER_CONN` such sessions at once.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_HOMES = 65_536  # sessions homed elsewhere that this replica remembers
MAX_PER_CONN = 4096  # sessions homed elsewhere one local connection takes part in
MAX_JOINED_PER_CONN = 4096  # of those, sessions it accepted (kept until it leaves them)


class RemoteSessions:
    def __init__(
        self,
        max_homes: int = MAX_HOMES,
        max_per_conn: int = MAX_PER_CONN,
        max_joined_per_conn: int = MAX_JOINED_PER_CONN,
    ) -> None:
        self._home: OrderedDict[str, str] = OrderedDict()  # sid -> home replica
        self._parts: dict[str, OrderedDict[str, str]] = {}  # local conn -> sid -> home
        self._joined: dict[str, dict[str, str]] = {}  # local conn -> accepted sid -> home
        self._max_homes = max_homes
        self._max_per_conn = max_per_conn
        self._max_joined = max_joined_per_conn

    def home_of(self, sid: str) -> str | None:
        return self._home.get(sid)

    def home_for(self, conn: str, sid: str) -> str | None:
        """Where ``conn``'s messages for ``sid`` go: the home of a session it accepted,
        else what the offers taught (None: not known here)."""
        joined = self._joined.get(conn)
        if joined is not None:
            home = joined.get(sid)
            if home is not None:
                return home
        return self._home.get(sid)

    def join(self, conn: str, sid: str, home: str) -> bool:
        """``conn`` accepts ``sid`` (homed on ``home``): kept until it leaves. False when it
        already takes part in :data:`MAX_JOINED_PER_CONN` sessions (refuse the Accept)."""
        joined = self._joined.setdefault(conn, {})
        if sid not in joined and len(joined) >= self._max_joined:
            return False
        joined[sid] = home
        return True

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
        """``conn`` is no longer part of ``sid`` (it left, or was closed for it)."""
        for table in (self._parts, self._joined):
            entries = table.get(conn)
            if entries is not None:
                entries.pop(sid, None)
                if not entries:
                    del table[conn]

    def drop_conn(self, conn: str) -> None:
        self._parts.pop(conn, None)
        self._joined.pop(conn, None)

    def lose(self, home: str) -> list[tuple[str, str]]:
        """Forget replica ``home``: the (local conn, sid) pairs that took part in its
        sessions, for each to be told."""
        for sid in [sid for sid, h in self._home.items() if h == home]:
            del self._home[sid]
        told: dict[tuple[str, str], None] = {}  # in order, each pair once
        for table in (self._joined, self._parts):
            for conn in list(table):
                entries = table[conn]
                for sid in [sid for sid, h in entries.items() if h == home]:
                    del entries[sid]
                    told[(conn, sid)] = None
                if not entries:
                    del table[conn]
        return list(told)

    def __len__(self) -> int:
        return len(self._home)
