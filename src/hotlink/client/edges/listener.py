"""A local listener and the app connections it accepted: what the TCP proxy's tunnels and the
IPC endpoints share.

The listener owns every connection's task (the task outlives the connection's place in
``connections`` until it finishes) and cancels and awaits them all on close. Inbound sessions
ask it for the newest connection able to take their bytes (:meth:`LocalListener.wait_writer`,
the :class:`~hotlink.client.session.base.Sink` side); which connection qualifies is the subclass's
rule.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from typing import Any, ClassVar


class LocalConnection:
    """One accepted app socket; subclasses add the reading and the writing rules."""

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

    def _abort(self) -> None:
        """Reset the socket (the app sees a reset, not EOF), stop reading, leave the listener."""
        self.closed = True
        self.writer.transport.abort()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.listener.connection_gone(self)

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
        """Track a new connection and start its task."""
        self.connections.append(conn)
        conn.task = asyncio.get_running_loop().create_task(run, name=name)
        self._tasks.add(conn.task)
        conn.task.add_done_callback(self._tasks.discard)
        self._arrived.set()

    def connection_gone(self, conn: C) -> None:
        if conn in self.connections:
            self.connections.remove(conn)

    def _usable(self, conn: C) -> bool:
        """Whether an inbound session may write into ``conn`` now."""
        return not conn.closed

    async def wait_writer(self, within: float) -> C | None:
        """The newest usable connection, waiting up to ``within`` s for one to arrive."""
        try:
            async with asyncio.timeout(within):
                while True:
                    for conn in reversed(self.connections):
                        if self._usable(conn):
                            return conn
                    self._arrived.clear()
                    await self._arrived.wait()
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
    tunnels, the IPC hub's endpoints); the daemon owns :meth:`run` and cancels it to stop."""

    scan_interval: float

    async def scan_once(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Stop every listener this hub started."""
        raise NotImplementedError

    async def run(self) -> None:
        try:
            while True:
                await self.scan_once()
                await asyncio.sleep(self.scan_interval)
        finally:
            await self.close()
