"""A TCP load balancer for tests: each connection goes to the first backend that accepts.

Backends are tried in order, so users land on the first live replica; when it dies, their
reconnects go to the next one (like HAProxy with ``option redispatch``). Bytes are copied
both ways; a backend's reset resets the client. Every task it starts is its own, and
:meth:`close` ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from support.server_proc import ServerProcess


class Balancer:
    def __init__(self, backends: Sequence[ServerProcess]) -> None:
        self.backends = list(backends)
        self.chosen: list[str] = []  # the backend URL of each connection, in order
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            for srv in self.backends:
                try:
                    up_r, up_w = await asyncio.open_connection("127.0.0.1", srv.port)
                except OSError:
                    continue
                self.chosen.append(srv.url)
                await self._pipe(reader, writer, up_r, up_w)
                return
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                # A gone backend (kill -9) must look gone to the client too.
                dst.transport.abort()

        try:
            await asyncio.gather(copy(reader, up_w), copy(up_r, writer))
        finally:
            up_w.close()


@contextlib.asynccontextmanager
async def balancing(backends: Sequence[ServerProcess]) -> AsyncIterator[Balancer]:
    balancer = Balancer(backends)
    await balancer.start()
    try:
        yield balancer
    finally:
        await balancer.close()
