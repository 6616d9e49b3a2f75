"""Live WebSocket connections, each with one bounded send queue and one writer task.

Every frame for a client goes through its :class:`SendQueue`, bounded in messages *and*
bytes, and one writer task drains it onto the socket. Putting a frame never waits: the
relay must not stop reading one connection because another is behind (a sender whose read
loop stalls stops answering pings and its client drops the connection). Clients grant each
session a window of a few MiB and never stop reading their WebSocket, so a queue only
overflows when its reader is not reading at all; the relay then drops that reader (direct
sends) or the frame (broadcasts). Memory per connection stays under the queue bound
whatever the clients do.

Ownership: the WebSocket handler owns its :class:`Connection`. It calls ``start()`` after
the upgrade and ``finish()`` on the way out, which cancels and awaits the writer and any
close in flight. ``kill()`` may be called by anyone (another handler that found the queue
full); it only starts the close, the owner still awaits it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Iterator

from aiohttp import WSCloseCode, web

from ..protocol.codec import Encoding

log = logging.getLogger("hotlink.server")

Frame = bytes | str

# Room for several flow-controlled sessions toward one receiver that is behind but reading
# (each has at most its credit window, 8 MiB by default, in flight); the reference's 256
# messages would overflow with one. The message bound is the byte bound in 4 KiB frames,
# the smallest a client's tunnel chunk may be, so it does not bind before the bytes do.
DEFAULT_QUEUE_MESSAGES = 16384
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_WRITE_TIMEOUT = 20.0  # the reference's per-message write timeout
CLOSE_TIMEOUT = 2.0


def new_conn_id() -> str:
    """8 hex characters, like the reference's internal connection ids (never on the wire)."""
    return secrets.token_hex(4)


class SendQueue:
    """A FIFO of frames bounded by count and total size; one frame always fits when empty.

    Only the writer waits (in ``get``, which returns None once the queue is closed); a
    producer gets a yes or no from ``try_put`` at once.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._frames: deque[Frame] = deque()
        self._bytes = 0
        self._closed = False
        self._readable = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def _fits(self, size: int) -> bool:
        if not self._frames:
            return True
        return len(self._frames) < self.max_messages and self._bytes + size <= self.max_bytes

    def try_put(self, frame: Frame) -> bool:
        if self._closed or not self._fits(len(frame)):
            return False
        self._frames.append(frame)
        self._bytes += len(frame)
        self._readable.set()
        return True

    async def get(self) -> Frame | None:
        while not self._frames:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        return frame

    def close(self) -> None:
        """Stop accepting frames and drop what is queued (the connection is going away)."""
        self._closed = True
        self._frames.clear()
        self._bytes = 0
        self._readable.set()


class Connection:
    def __init__(
        self,
        conn_id: str,
        user: str,
        encoding: Encoding,
        ws: web.WebSocketResponse,
        *,
        queue_messages: int = DEFAULT_QUEUE_MESSAGES,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        client_version: str = "",
        remote: str = "",
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.id = conn_id
        self.user = user
        self.encoding = encoding
        self.ws = ws
        self.queue = SendQueue(queue_messages, queue_bytes)
        self.write_timeout = write_timeout
        self.client_version = client_version
        self.remote = remote
        # Kept to abort a connection whose peer stopped reading: a plain close would wait
        # for the unsent buffer to drain, which never happens.
        self.transport = transport
        self.close_reason = ""
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"conn {self.id} ({self.user})"

    @property
    def closing(self) -> bool:
        return self._closer is not None or self.queue.closed

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.id}")

    async def _write_loop(self) -> None:
        while True:
            frame = await self.queue.get()
            if frame is None:
                return
            try:
                async with asyncio.timeout(self.write_timeout):
                    if isinstance(frame, str):
                        await self.ws.send_str(frame)
                    else:
                        await self.ws.send_bytes(frame)
            except TimeoutError:
                self.kill(f"write timed out after {self.write_timeout:g}s")
                return
            except Exception as exc:
                # Usually the peer went away under us (ConnectionResetError); whatever it
                # was, this connection cannot be written to any more, so close it.
                self.kill(f"write failed: {exc!r}")
                return

    def kill(self, reason: str, code: int = WSCloseCode.TRY_AGAIN_LATER) -> None:
        """Start closing this connection (idempotent). The owner awaits it in ``finish``."""
        if self._closer is not None:
            return
        self.close_reason = reason
        self.queue.close()
        self._closer = asyncio.create_task(self._close(code, reason), name=f"ws-closer-{self.id}")

    async def _close(self, code: int, reason: str) -> None:
        # Stop the writer first: it may be blocked on a full socket, and aiohttp shares one
        # drain future between writers, so cancelling it later would cancel our close too.
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code, message=reason.encode()[:120])
                await self._flushed()
            return
        except TimeoutError:
            log.info("%r: peer did not take the close frame; aborting the connection", self)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                self._abort()
                raise
        except Exception as exc:  # a broken socket must not leave the task unretrieved
            log.debug("%r: close failed: %s", self, exc)
        self._abort()

    async def _flushed(self) -> None:
        """Wait until the socket took everything we wrote (the close frame included).

        Only needed when the peer is behind: then aiohttp's close leaves the transport
        closing with a full buffer, which it would hold for as long as the peer does not
        read. The caller's timeout turns that into an abort.
        """
        # Polled: asyncio offers no "buffer empty" event, and this runs once per close.
        while self.transport is not None and self.transport.get_write_buffer_size() > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def _abort(self) -> None:
        # A plain transport close waits for the unsent buffer to drain, which a peer that
        # stopped reading never allows; abort drops the buffer and the socket at once.
        if self.transport is not None:
            self.transport.abort()

    async def finish(self) -> None:
        """Owner's clean-up: stop the writer, close the socket, await both tasks."""
        self.queue.close()
        if self._closer is None and not self.ws.closed:
            self._closer = asyncio.create_task(self._close(WSCloseCode.OK, ""))
        elif self._writer is not None:
            self._writer.cancel()
        tasks = [t for t in (self._writer, self._closer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


class Hub:
    """The live connections by id (the ConnectionTable knows their users)."""

    def __init__(self) -> None:
        self._conns: dict[str, Connection] = {}

    def add(self, conn: Connection) -> None:
        self._conns[conn.id] = conn

    def remove(self, conn_id: str) -> None:
        self._conns.pop(conn_id, None)

    def get(self, conn_id: str) -> Connection | None:
        return self._conns.get(conn_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._conns.values()))

    def __len__(self) -> int:
        return len(self._conns)

    def kill_all(self, reason: str, code: int) -> None:
        for conn in self:
            conn.kill(reason, code)
