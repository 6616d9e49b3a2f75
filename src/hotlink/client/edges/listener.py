"""A local listener and the app connections it accepted: what the TCP proxy's tunnels and the
IPC endpoints share.

The listener owns every connection's task (the task outlives the connection's place in
``connections`` until it finishes) and cancels and awaits them all on close. ``connections``
holds only live connections, each once: a connection leaves it when it fails or when both of
its directions ended. Inbound sessions ask the listener for the newest connection able to take
their bytes (:meth:`LocalListener.wait_writer`, the :class:`~hotlink.client.session.base.Sink`
side); which connection qualifies is the subclass's rule.

How a connection ends is what the app learns about its stream, so there are exactly two ways:
:meth:`LocalConnection._abort` (something was lost: the app must see a failure) and
:meth:`LocalConnection._close_gracefully` (everything was delivered: the app sees EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Coroutine
from typing import Any, ClassVar

from .changes import FULL, ChangeFeed, Changes

log = logging.getLogger("hotlink.edges")

# A scan that keeps failing is reported at most this often (with a count of the others).
SCAN_ERROR_REPORT_INTERVAL = 60.0
# After a failed scan, the next one (in full) comes at most this many seconds later.
SCAN_RETRY = 5.0

# SO_LINGER on with a zero timeout: close() sends a reset and drops unsent data. Without it,
# ``transport.abort()`` on a socket with no unread input sends a FIN, which the app cannot
# tell from a complete stream.
_LINGER_RESET = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)


def is_tcp(sock: Any) -> bool:
    return sock is not None and getattr(sock, "family", None) in (
        socket.AF_INET,
        socket.AF_INET6,
    )


def set_linger_reset(sock: Any, reset: bool) -> None:
    """``reset``: closing the socket resets the connection (even when the process dies);
    otherwise the kernel delivers what is buffered and a FIN."""
    if not is_tcp(sock):
        return
    # Already closed: nothing left to decide (uvloop's socket says so with a ValueError).
    with contextlib.suppress(OSError, ValueError):
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET if reset else _LINGER_OFF
        )


class LocalConnection:
    """One accepted app socket; subclasses add the reading and the writing rules.

    A TCP socket is set to reset on close right at accept, so that every way we can lose it
    (an abort, a crash, kill -9 of the client) is a reset at the app; only a graceful end
    clears that first.
    """

    _ids: ClassVar[itertools.count[int]]  # each kind numbers its connections from 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._ids = itertools.count(1)

    def __init__(
        self,
        listener: LocalListener[Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.listener = listener
        self.id = next(self._ids)
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.sock = writer.get_extra_info("socket")
        self.tcp = is_tcp(self.sock)
        set_linger_reset(self.sock, True)

    async def _write_app(self, data: bytes) -> None:
        """Write ``data`` and wait for room. A connection the app has left raises
        ConnectionResetError on every loop: uvloop raises RuntimeError for a closed
        transport where asyncio's loop drops the bytes and fails the drain."""
        if self.writer.transport.is_closing():
            raise ConnectionResetError("app connection is closed")
        try:
            self.writer.write(data)
        except RuntimeError as exc:
            raise ConnectionResetError(f"app connection is closed: {exc}") from None
        await self.writer.drain()

    def _reset(self) -> None:
        """End the socket so the app sees a failure: a TCP reset."""
        set_linger_reset(self.sock, True)  # a graceful finish may have cleared it
        self.writer.transport.abort()

    def _abort(self) -> None:
        """Reset the connection (never a clean end), stop reading, leave the listener."""
        self.closed = True
        self._reset()
        self._stop_reading()
        self.listener.connection_gone(self)

    def _close_gracefully(self) -> None:
        """Both directions ended cleanly: the app gets every byte we wrote, then EOF."""
        self.closed = True
        set_linger_reset(self.sock, False)
        self.writer.close()
        self._stop_reading()
        self.listener.connection_gone(self)

    def _stop_reading(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def fail(self, reason: str) -> None:
        raise NotImplementedError


class LocalListener[C: LocalConnection]:
    """A server socket, its live connections (oldest first) and their tasks."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections: list[C] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._arrived = asyncio.Event()

    def _adopt(self, conn: C, run: Coroutine[Any, Any, None], name: str) -> None:
        """Track a new connection (once) and start its task."""
        self.connections.append(conn)
        conn.task = asyncio.get_running_loop().create_task(run, name=name)
        self._tasks.add(conn.task)
        conn.task.add_done_callback(self._tasks.discard)
        self._arrived.set()

    def connection_gone(self, conn: C) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(conn)

    def _usable(self, conn: C) -> bool:
        """Whether an inbound session may write into ``conn`` now."""
        return not conn.closed

    def writer_now(self) -> C | None:
        """The newest usable connection, or None."""
        for conn in reversed(self.connections):
            if self._usable(conn):
                return conn
        return None

    def eof_writer(self) -> C | None:
        """Where an empty stream's end goes: the newest usable connection."""
        return self.writer_now()

    async def wait_writer(self, within: float) -> C | None:
        """The newest usable connection, waiting up to ``within`` s for one to arrive."""
        try:
            async with asyncio.timeout(within):
                while (conn := self.writer_now()) is None:
                    self._arrived.clear()
                    await self._arrived.wait()
                return conn
        except TimeoutError:
            return None

    async def _stop(self, reason: str) -> None:
        """Stop listening, abort every connection and await their tasks."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.fail(reason)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ListenerHub:
    """A discovery loop that starts listeners for the markers it finds (the TCP proxy's
    tunnels, the IPC hub's endpoints); the daemon owns :meth:`run` and cancels it to stop.

    The loop scans once in full, then whenever its :class:`~.changes.ChangeFeed` has changes
    (file events, the watcher's safety rescan) or :meth:`next_wakeup` says a timer of the hub
    is due (a retry, an idle endpoint to close); it never walks the tree on a timer of its own.

    One failed scan (an unexpected file, a full disk, a bug) must not end the loop: the
    daemon stops when this task ends, so a planted file would otherwise stop the client.
    Failures are logged at most once per :data:`SCAN_ERROR_REPORT_INTERVAL`, and the next
    scan, at most :data:`SCAN_RETRY` s later, looks at everything again."""

    feed: ChangeFeed

    async def scan_once(self, changes: Changes = FULL) -> None:
        """Look at ``changes`` (the default: everything) and start or stop listeners."""
        raise NotImplementedError

    def next_wakeup(self) -> float | None:
        """Seconds until the hub must scan again even if nothing changed (None: never)."""
        return None

    async def close(self) -> None:
        """Stop every listener this hub started."""
        raise NotImplementedError

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reported_at: float | None = None
        unreported = 0
        changes = FULL
        try:
            while True:
                failed = False
                try:
                    await self.scan_once(changes)
                except Exception as exc:
                    failed = True
                    now = loop.time()
                    if reported_at is None or now - reported_at >= SCAN_ERROR_REPORT_INTERVAL:
                        log.error(
                            "%s: a scan failed (%d more failures since the last report): %s",
                            type(self).__name__,
                            unreported,
                            exc,
                            exc_info=exc,
                        )
                        reported_at, unreported = now, 0
                    else:
                        unreported += 1
                timeout = self.next_wakeup()
                if failed:
                    timeout = SCAN_RETRY if timeout is None else min(timeout, SCAN_RETRY)
                changes = await self.feed.next(timeout)
                if failed:
                    changes = FULL  # what the failed scan was to look at may not be done
        finally:
            await self.close()
