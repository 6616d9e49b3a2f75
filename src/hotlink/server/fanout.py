"""Broadcasts to every other user, queued once for all connections and written in batches.

An ACL FileWrite goes to every connection of every other user (PROTOCOL.md §1.11). When a
thousand clients reconnect at once and each re-publishes its ACL files, that is a thousand
broadcasts to a thousand connections: a million frames, which sent one by one cost the
relay a queue entry, a wake-up and a ``send`` each (21 s of a core). Here a broadcast is
one :class:`Broadcast` in a :class:`BroadcastLog`, framed once per encoding, and each
connection has a cursor into the log:

* A connection that is idle (nothing queued, nothing unsent, writable at once) is simply
  behind in the log. Every so often (at once when the log was quiet, else after
  :data:`COALESCE_INTERVAL` or more, see :data:`DRAIN_PAUSE_FACTOR`) the relay catches
  every connection up: what it missed is joined into one buffer and written with one
  ``send``, so a storm costs a send per connection per interval, not per broadcast.
* A connection that is busy gets the broadcast queued at once like any other frame (the
  same rules: a broadcast that does not fit is dropped), after whatever it missed.
* Before anything else is queued for a connection, it is caught up first, so every
  connection still receives its frames in the order the relay handled them.

So what each receiver gets, and in which order, is what it got when every broadcast was
queued at once; only the moment of writing moves, by at most the interval, for receivers
that had nothing else to receive. Large broadcasts (over ``COALESCE_MAX_FRAME``) are not
logged: they are queued at once as one shared object, which keeps their memory one frame.

The log holds its frames in the relay's ledger (each counted once) until every connection
has caught up; then it is emptied.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol.messages import MsgType
from .frames import Frame, frame_header

if TYPE_CHECKING:
    from .hub import QueuedBytes

# How long an idle connection may be left behind in the log while broadcasts keep coming,
# at least. With many connections a catch-up of all of them takes a while (tens of
# microseconds each), and the pause after one is this many times as long: while broadcasts
# keep coming, catching up takes at most a tenth of the relay's time.
COALESCE_INTERVAL = 0.1
DRAIN_PAUSE_FACTOR = 9


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One broadcast: its frame per encoding, and that frame with its WebSocket header."""

    frames: dict[str, Frame]
    wire: dict[str, bytes]
    exclude_user: str  # its sender, whose own connections do not get it
    typ: MsgType
    msg_id: str

    @classmethod
    def of(
        cls, frames: dict[str, Frame], exclude_user: str, typ: MsgType, msg_id: str
    ) -> Broadcast:
        wire = {enc: frame_header(frame) + frame for enc, frame in frames.items()}
        return cls(frames, wire, exclude_user, typ, msg_id)


@dataclass(frozen=True, slots=True)
class Batch:
    """Broadcasts joined for one encoding: the bytes to write, the broadcasts, their frame
    bytes, and per type (type, bytes, messages) for the metrics."""

    data: bytes
    broadcasts: tuple[Broadcast, ...]
    size: int
    by_type: tuple[tuple[MsgType, int, int], ...]


def join(broadcasts: list[Broadcast], encoding: str) -> Batch:
    """``broadcasts`` framed for ``encoding`` and joined into one buffer."""
    mine = [b for b in broadcasts if encoding in b.frames]
    counts: Counter[MsgType] = Counter()
    sizes: Counter[MsgType] = Counter()
    for b in mine:
        counts[b.typ] += 1
        sizes[b.typ] += len(b.frames[encoding])
    return Batch(
        b"".join([b.wire[encoding] for b in mine]),
        tuple(mine),
        sum(sizes.values()),
        tuple((typ, sizes[typ], n) for typ, n in counts.items()),
    )


class BroadcastLog:
    """The broadcasts some connection has not caught up with yet, numbered from ``base``.

    A connection's cursor is the number of the first broadcast it has not had; ``head`` is
    the number the next broadcast will get (a new connection starts there: it gets only
    broadcasts made after it connected).
    """

    def __init__(self, ledger: QueuedBytes | None = None) -> None:
        self._ledger = ledger
        self._entries: list[Broadcast] = []
        self.base = 0
        self.head = 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, broadcast: Broadcast) -> None:
        if self._ledger is not None:
            for frame in broadcast.frames.values():
                self._ledger.hold(frame)
        self._entries.append(broadcast)
        self.head += 1

    def since(self, cursor: int) -> list[Broadcast]:
        """The broadcasts from number ``cursor`` on (all there are for an older cursor)."""
        return self._entries[max(0, cursor - self.base) :]

    def batch(self, encoding: str) -> Batch:
        """Every broadcast in the log, for a connection of ``encoding`` whose user sent none
        of them (at a catch-up of everyone, most connections: one object for all)."""
        return join(self._entries, encoding)

    def senders(self) -> set[str]:
        return {b.exclude_user for b in self._entries}

    def clear(self) -> None:
        """Forget every broadcast (every connection has caught up)."""
        if self._ledger is not None:
            for broadcast in self._entries:
                for frame in broadcast.frames.values():
                    self._ledger.release(frame)
        self._entries.clear()
        self.base = self.head
