"""How many log lines a user, and everyone together, may cause per minute.

Anyone who can connect can make the relay log: a bad frame, a refused message, a connection
opened and closed. Counting per connection is not enough (a reconnect starts afresh), and
counting per user is not either (dev mode has as many users as names). A
:class:`LogBudget` allows each key (a user) ``per_key`` lines per window and all keys
together ``total`` lines per window; what it refuses is counted per key and reported by
:meth:`LogBudget.due` once the key's window has ended, so the log says how much it left
out, in a bounded number of summary lines (:func:`summarize`).

The keys are kept in a bounded LRU map: a key pushed out takes its count of left-out lines
into one shared "other users" count, so nothing is forgotten and memory stays bounded. No
I/O and no timers: the relay calls :meth:`LogBudget.due` from its own periodic task.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

LOG_WINDOW = 60.0  # seconds
MAX_LOG_KEYS = 4096  # users whose windows are remembered
SUMMARY_LINES = 10  # users named one by one in a report; the rest share one line


@dataclass(slots=True)
class _Window:
    start: float
    used: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class Skipped:
    """``count`` lines of ``key`` left out (``key`` None: of keys no longer remembered,
    ``keys`` of them)."""

    key: str | None
    count: int
    keys: int = 1


class LogBudget:
    def __init__(
        self,
        per_key: int,
        total: int,
        *,
        window: float = LOG_WINDOW,
        max_keys: int = MAX_LOG_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_key = per_key
        self.total = total
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, _Window] = OrderedDict()
        self._all = _Window(clock())
        # Left-out lines of windows that ended or of keys pushed out, not yet reported.
        self._ended: dict[str, int] = {}
        self._forgotten = 0
        self._forgotten_keys = 0

    def __len__(self) -> int:
        return len(self._keys)

    def allow(self, key: str) -> bool:
        """Whether to log one more line for ``key`` now (if not, it is counted)."""
        now = self._clock()
        if now - self._all.start >= self.window:
            self._all = _Window(now)
        window = self._keys.get(key)
        if window is None or now - window.start >= self.window:
            if window is not None:
                self._end(key, window)
            window = _Window(now)
            self._keys[key] = window
            self._evict()
        self._keys.move_to_end(key)
        if window.used < self.per_key and self._all.used < self.total:
            window.used += 1
            self._all.used += 1
            return True
        window.skipped += 1
        return False

    def due(self) -> list[Skipped]:
        """What was left out in windows that have ended (each reported once), most first."""
        now = self._clock()
        for key, window in list(self._keys.items()):
            if now - window.start >= self.window:
                del self._keys[key]
                self._end(key, window)
        out = [Skipped(key, count) for key, count in self._ended.items()]
        out.sort(key=lambda s: -s.count)
        if self._forgotten:
            out.append(Skipped(None, self._forgotten, self._forgotten_keys))
        self._ended.clear()
        self._forgotten = self._forgotten_keys = 0
        return out

    def flush(self) -> list[Skipped]:
        """Everything left out so far, windows ended or not (at shutdown)."""
        for key, window in self._keys.items():
            self._end(key, window)
        self._keys.clear()
        return self.due()

    def _end(self, key: str, window: _Window) -> None:
        if window.skipped:
            self._ended[key] = self._ended.get(key, 0) + window.skipped
            if len(self._ended) > self.max_keys:
                # Bounded too: a flood of new names between two reports.
                old, count = next(iter(self._ended.items()))
                del self._ended[old]
                self._forget(count)

    def _evict(self) -> None:
        while len(self._keys) > self.max_keys:
            _key, window = self._keys.popitem(last=False)
            if window.skipped:
                self._forget(window.skipped)

    def _forget(self, count: int) -> None:
        self._forgotten += count
        self._forgotten_keys += 1


def summarize(skipped: list[Skipped], what: str, limit: int = SUMMARY_LINES) -> list[str]:
    """At most ``limit + 1`` lines for :meth:`LogBudget.due`'s answer: the ``limit`` biggest
    by name, the rest together. ``what`` names the lines (``bad-input lines``)."""
    named = [s for s in skipped if s.key is not None][:limit]
    lines = [f"{s.count} more {what} from {s.key} in the last minute (not logged)" for s in named]
    rest = [s for s in skipped if s not in named]
    if rest:
        count = sum(s.count for s in rest)
        keys = sum(s.keys for s in rest)
        lines.append(f"{count} more {what} from {keys} other(s) in the last minute (not logged)")
    return lines
