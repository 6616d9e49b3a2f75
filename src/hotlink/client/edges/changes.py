"""What changed in the datasites tree, as one consumer of the file watcher sees it.

The watcher (:mod:`.watcher`) posts changed paths into one :class:`ChangeFeed` per consumer
(the TCP proxy, the IPC hub, the ACL publisher); the consumer takes everything pending at
once with :meth:`ChangeFeed.next`, so changes that arrive while it scans are coalesced into
its next scan. A feed is bounded: past :data:`MAX_PENDING_PATHS` paths it asks for a full
rescan instead. Without a watcher (tests, tools) a feed asks for a full rescan every
``poll_interval`` s, which is how the consumers worked before there was a watcher.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .discovery import inside

# Paths one feed holds before it gives up on them and asks for a full rescan.
MAX_PENDING_PATHS = 4096


@dataclass(frozen=True)
class Changes:
    """``full``: look at everything again; else the absolute ``paths`` that changed (files
    or folders, present or gone). Empty: a timer ran out and nothing changed."""

    full: bool = False
    paths: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return self.full or bool(self.paths)


FULL = Changes(full=True)
NOTHING = Changes()


class ChangeFeed:
    """The pending changes of one consumer: the file names it cares about, below which
    folders (``scopes``; empty: anywhere), and the paths posted since it last looked."""

    def __init__(
        self,
        *,
        names: Iterable[str] = (),
        scopes: Sequence[Path] = (),
        poll_interval: float | None = None,
        max_paths: int = MAX_PENDING_PATHS,
    ) -> None:
        self.names = frozenset(names)
        self.scopes = tuple(os.path.abspath(s) for s in scopes)
        self.poll_interval = poll_interval
        self.max_paths = max_paths
        self._paths: set[str] = set()
        self._full = False
        self._posted = asyncio.Event()
        self._poll_due: float | None = None

    def wants(self, path: str, watched: frozenset[str]) -> bool:
        """Whether a change at ``path`` may matter here. ``watched``: every name some
        consumer cares about; a path with any other name may be a folder (created, moved or
        removed), which matters when it is inside a scope or above one."""
        name = os.path.basename(path)
        if name in watched:
            return name in self.names and (
                not self.scopes or any(inside(path, s) for s in self.scopes)
            )
        return not self.scopes or any(inside(path, s) or inside(s, path) for s in self.scopes)

    def post(self, paths: Iterable[str]) -> None:
        if self._full:
            return
        self._paths.update(paths)
        if len(self._paths) > self.max_paths:
            self.post_full()
            return
        if self._paths:
            self._posted.set()

    def post_full(self) -> None:
        self._full = True
        self._paths.clear()
        self._posted.set()

    def wake(self) -> None:
        """Make the waiting :meth:`next` return now, with whatever is pending (perhaps
        nothing): the consumer's own state changed and its next timer may be sooner."""
        self._posted.set()

    @property
    def pending(self) -> bool:
        return self._full or bool(self._paths)

    def take(self) -> Changes:
        """Everything pending (possibly nothing), and clear it."""
        changes = FULL if self._full else Changes(paths=frozenset(self._paths))
        self._full = False
        self._paths.clear()
        self._posted.clear()
        return changes

    async def next(self, timeout: float | None = None) -> Changes:
        """The changes pending, waiting for some up to ``timeout`` s (None: no limit) or,
        when polling, until the next poll is due (a full rescan)."""
        loop = asyncio.get_running_loop()
        wait = timeout
        if self.poll_interval is not None:
            if self._poll_due is None:
                self._poll_due = loop.time() + self.poll_interval
            until_poll = max(0.0, self._poll_due - loop.time())
            wait = until_poll if wait is None else min(wait, until_poll)
        if not self.pending:
            try:
                async with asyncio.timeout(wait):
                    await self._posted.wait()
            except TimeoutError:
                pass
        if self._poll_due is not None and loop.time() >= self._poll_due:
            self._poll_due = None
            self.post_full()
        return self.take()
