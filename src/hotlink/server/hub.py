"""Live WebSocket connections, each with one bounded send queue, and the limits on how many
there may be.

Every frame for a client goes through its :class:`SendQueue`, bounded in messages *and*
bytes, and is written from there onto the socket (see "Writing" below). Putting a frame
never waits: the relay must not stop reading one connection because another is behind (a
sender whose read loop stalls stops answering pings and its client drops the connection).
Clients grant each session a window of a few MiB and never stop reading their WebSocket,
so a queue only overflows when its reader is not reading at all; the relay then drops that
reader (direct sends) or the frame (broadcasts).

The byte bound covers what a connection holds in its queue *and* in its socket's write
buffer (a peer that stops reading leaves the last frames there), so memory per connection
stays under the bound whatever the clients do. A :class:`QueuedBytes` ledger adds these up
over all connections for the relay-wide bound (``--max-queued-bytes``): every connection
can be within its own bound while thousands of them together exhaust the machine.

Writing: once started on a real transport, a connection writes what was queued during one
turn of the event loop in one go (:meth:`Connection._flush`, scheduled with ``call_soon``
by the first frame queued): small frames are framed here (RFC 6455 §5.2; a server never
masks) and joined into one buffer, so a burst read from one sender reaches its receiver
with one ``send`` instead of one per frame, and no task wakes per frame. When the socket
is behind (its write buffer over the transport's high-water mark), or closing, a writer
task takes over and sends frame by frame through aiohttp, which waits for the socket to
drain (with the write timeout); once the queue is empty the task ends and the direct path
resumes. An idle connection holds no task. Either way frames leave in queue order.

A frame is encoded once and the very same bytes object is queued for every receiver;
frames over 16 KiB go to the transport as they are (as aiohttp does), and Python's socket
transports keep a reference to unsent data, not a copy, so a large broadcast to many idle
readers costs one frame, not one per reader. Text (JSON) frames are kept as UTF-8 bytes
(:class:`TextFrame`) for the same reason: sending a ``str`` would encode a fresh copy per
connection.

:class:`Admission` caps WebSocket connections in total and per user (a failed ``accept()``
is reported by :mod:`hotlink.loop_errors`).

Ownership: the WebSocket handler owns its :class:`Connection`. It calls ``start()`` after
the upgrade and ``finish()`` on the way out, which cancels and awaits the writer task (if
one runs) and any close in flight. ``kill()`` may be called by anyone (another handler that
found the queue full); it only starts the close, the owner still awaits it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from aiohttp import WSCloseCode, WSMsgType, web

from ..event_loop import is_uvloop
from ..protocol.codec import Encoding
from .fanout import BroadcastLog
from .frames import COALESCE_MAX_FRAME, Frame, TextFrame, frame_header

log = logging.getLogger("hotlink.server")


# Room for several flow-controlled sessions toward one receiver that is behind but reading
# (each has at most its credit window, 8 MiB by default, in flight); the reference's 256
# messages would overflow with one. The message bound is the byte bound in 4 KiB frames,
# the smallest a client's tunnel chunk may be, so it does not bind before the bytes do.
DEFAULT_QUEUE_MESSAGES = 16384
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_WRITE_TIMEOUT = 20.0  # the reference's per-message write timeout
# All connections together: over it broadcasts are dropped, and a direct send to a
# connection holding more than its share (the bound over the connections, at least the
# floor) disconnects that connection as a slow reader.
DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024 * 1024
FAIR_SHARE_FLOOR = 16 * 1024 * 1024
# Socket buffers drain without telling us, so the ledger keeps written frames until it looks
# again (never less than the truth); before refusing anything for it, it looks at every
# connection's buffer, at most this often.
LEDGER_REFRESH_INTERVAL = 0.1
CLOSE_TIMEOUT = 2.0
# A client daemon holds one connection; a few more cover reconnects the relay has not yet
# noticed as closed (a dead peer is found by the heartbeat) and tools run by the same user.
DEFAULT_MAX_CONNECTIONS_PER_USER = 8
DEFAULT_MAX_CONNECTIONS = 10_000


def new_conn_id() -> str:
    """8 hex characters, like the reference's internal connection ids (never on the wire)."""
    return secrets.token_hex(4)


class QueuedBytes:
    """What all connections hold for their peers: the frames in their queues and the frames
    still (partly) in their sockets' write buffers, each distinct frame counted once.

    A broadcast is one bytes object queued for every receiver (see the module's notes), so
    it costs the relay its size once, however many receivers hold it; direct sends are
    distinct frames and add up. A frame is held (:meth:`hold`) once per holder and counted
    while anyone holds it; the ledger keeps a reference to it, so its ``id`` stays its own.
    A frame partly sent still counts whole: the figure is never less than the truth.
    """

    def __init__(self, limit: int = DEFAULT_MAX_QUEUED_BYTES) -> None:
        self.limit = limit
        self.total = 0
        self._held: dict[int, tuple[Frame, int]] = {}

    def __len__(self) -> int:
        """How many distinct frames are held."""
        return len(self._held)

    def cost(self, frame: Frame) -> int:
        """What holding ``frame`` once more adds: nothing when someone holds it already."""
        return 0 if id(frame) in self._held else len(frame)

    def hold(self, frame: Frame) -> None:
        key = id(frame)
        entry = self._held.get(key)
        if entry is None:
            self._held[key] = (frame, 1)
            self.total += len(frame)
        else:
            self._held[key] = (frame, entry[1] + 1)

    def release(self, frame: Frame) -> None:
        key = id(frame)
        held, count = self._held[key]
        if count > 1:
            self._held[key] = (held, count - 1)
        else:
            del self._held[key]
            self.total -= len(frame)

    def release_all(self, frames: Iterable[Frame]) -> None:
        for frame in frames:
            self.release(frame)


class SendQueue:
    """A FIFO of frames bounded by count and total size; one frame always fits when empty.

    Only the writer waits (in ``get``, which returns None once the queue is closed); a
    producer gets a yes or no from ``try_put`` at once. ``ledger`` (if any) is kept in step
    with the bytes queued here.
    """

    def __init__(
        self, max_messages: int, max_bytes: int, ledger: QueuedBytes | None = None
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._ledger = ledger
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

    def _fits(self, size: int, unsent: int) -> bool:
        if not self._frames and not unsent:
            return True
        if len(self._frames) >= self.max_messages:
            return False
        return unsent + self._bytes + size <= self.max_bytes

    def try_put(self, frame: Frame, unsent: int = 0) -> bool:
        """Queue ``frame`` if it fits; ``unsent``: bytes already written but not yet sent
        (the socket's write buffer), which count against the same byte bound."""
        if self._closed or not self._fits(len(frame), unsent):
            return False
        self._frames.append(frame)
        self._bytes += len(frame)
        if self._ledger is not None:
            self._ledger.hold(frame)
        self._readable.set()
        return True

    def get_nowait(self) -> Frame | None:
        """The oldest frame, or None when there is none; releases it like :meth:`get`."""
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        if self._ledger is not None:
            self._ledger.release(frame)
        return frame

    def take_all(self) -> list[Frame]:
        """Every queued frame, oldest first, still held in the ledger: the caller holds them
        from now on (a connection keeps them until its socket buffer cannot hold them)."""
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        return frames

    async def get(self) -> Frame | None:
        while not self._frames:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        if self._ledger is not None:
            self._ledger.release(frame)
        return frame

    def close(self) -> None:
        """Stop accepting frames and drop what is queued (the connection is going away)."""
        self._closed = True
        if self._ledger is not None:
            for frame in self._frames:
                self._ledger.release(frame)
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
        ledger: QueuedBytes | None = None,
        busy: set[Connection] | None = None,
    ) -> None:
        self.id = conn_id
        self.user = user
        self.encoding = encoding
        self.ws = ws
        self.queue = SendQueue(queue_messages, queue_bytes, ledger)
        self._ledger = ledger
        # The last frames written, oldest first, as many as the socket's write buffer may
        # still hold part of (held in the ledger until the buffer no longer can), and the
        # sum of their sizes.
        self._written: deque[Frame] = deque()
        self._written_bytes = 0
        self.write_timeout = write_timeout
        self.client_version = client_version
        self.remote = remote
        # Kept to abort a connection whose peer stopped reading: a plain close would wait
        # for the unsent buffer to drain, which never happens.
        self.transport = transport
        self.close_reason = ""
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        # The direct write path (see the module's notes): on once started on a real
        # transport; ``_slow`` while a writer task sends what is queued.
        self._direct = False
        self._flush_due = False
        self._slow = False
        self._high_water = 0
        # Bytes handed to the transport on the direct path, and the watch on its buffer:
        # frames written there have no awaited write to time out, so a timer checks that a
        # peer with bytes unsent keeps taking some (the reference's per-write timeout).
        self._bytes_out = 0
        self._taken_mark = 0
        self._drain_timer: asyncio.TimerHandle | None = None
        # The first broadcast of the relay's BroadcastLog this connection has not had.
        self.log_seen = 0
        # The hub's set of connections that may not be idle (see Hub.busy): joined whenever
        # something is queued or left unsent, left once seen idle.
        self._busy = busy

    def __repr__(self) -> str:
        return f"conn {self.id} ({self.user})"

    @property
    def closing(self) -> bool:
        return self._closer is not None or self.queue.closed

    @property
    def idle(self) -> bool:
        """Nothing queued, written or waiting: what is written now goes out at once."""
        return (
            self._direct
            and not self._slow
            and not self._written
            and not len(self.queue)
            and not self.queue.closed
            and self._closer is None
            and not self.ws.closed
            and self.transport is not None
            and not self.transport.is_closing()
        )

    @property
    def unsent(self) -> int:
        """Bytes written to the socket that its peer has not taken yet."""
        if self.transport is None:
            return 0
        try:
            return self.transport.get_write_buffer_size()
        except Exception:  # a transport torn down under us holds nothing
            return 0

    @property
    def backlog(self) -> int:
        """Bytes this connection holds for its peer: queued plus unsent."""
        return self.queue.nbytes + self.unsent

    def note_unsent(self) -> int:
        """Look at the socket's write buffer now and let go of the written frames it can no
        longer hold any part of; returns its size.

        The buffer holds the tail of what was written, so the frames kept are the newest
        ones that together cover it. Called after each write and whenever this connection
        is given a frame or the relay checks its bound, so the ledger counts at least what
        the buffers hold.
        """
        unsent = self.unsent
        written = self._written
        while written and self._written_bytes - len(written[0]) >= unsent:
            self._let_go(written.popleft())
        return unsent

    def _let_go(self, frame: Frame) -> None:
        self._written_bytes -= len(frame)
        if self._ledger is not None:
            self._ledger.release(frame)

    def try_put(self, frame: Frame) -> bool:
        """Queue ``frame`` unless the queue and the socket buffer together are full."""
        # The socket's buffer only matters when something was written and may still be
        # in it: on the direct path, once a flush saw it empty nothing is held there.
        unsent = self.note_unsent() if self._written or not self._direct else 0
        if not self.queue.try_put(frame, unsent):
            return False
        if self._busy is not None:
            self._busy.add(self)
        if self._direct and not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def start(self) -> None:
        """Start writing. On a real transport frames are written directly and a writer
        task runs only while the socket is behind; stand-ins (tests) get one for good."""
        transport = self.transport
        if not (isinstance(transport, asyncio.Transport) or is_uvloop(transport)):
            self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.id}")
            return
        assert transport is not None
        self._direct = True
        self._high_water = transport.get_write_buffer_limits()[1]
        if len(self.queue):
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write everything queued now, unless the socket is behind (then the writer task
        takes over) or a writer task is sending already."""
        self._flush_due = False
        if self._slow or not len(self.queue):
            return
        transport = self.transport
        assert transport is not None
        if self.ws.closed or transport.is_closing() or self.unsent > self._high_water:
            # An idle connection holds no task: one is made when there is waiting to do.
            self._slow = True
            self._writer = asyncio.create_task(self._slow_path(), name=f"ws-writer-{self.id}")
            return
        frames = self.queue.take_all()
        # From here the frames are in (or on their way to) the socket's buffer; the ledger
        # keeps holding them until the buffer cannot hold them any more.
        written = self._written
        chunk: list[bytes] = []
        size = 0
        try:
            for frame in frames:
                written.append(frame)
                size += len(frame)
                chunk.append(frame_header(frame))
                if len(frame) <= COALESCE_MAX_FRAME:
                    chunk.append(frame)
                    continue
                self._write(transport, b"".join(chunk))
                self._write(transport, frame)
                chunk = []
            if chunk:
                self._write(transport, b"".join(chunk))
            unsent = transport.get_write_buffer_size()
        except Exception as exc:  # the transport broke under us: this connection is done
            self._written_bytes += size
            self.kill(f"write failed: {exc!r}")
            return
        if unsent or self._ledger is None:
            self._written_bytes += size
            self.note_unsent()
            if unsent:
                self._watch_drain()
            return
        # The usual case: the socket took everything, so nothing written is held any more.
        self._ledger.release_all(written)
        written.clear()
        self._written_bytes = 0
        self.settle()

    def settle(self) -> None:
        """Leave the hub's busy set if idle now."""
        if self._busy is not None and self.idle:
            self._busy.discard(self)

    def _write(self, transport: asyncio.Transport, data: bytes) -> None:
        transport.write(data)
        self._bytes_out += len(data)

    def _watch_drain(self) -> None:
        """Bytes were left unsent: check in ``write_timeout`` s that the peer took some."""
        if self._drain_timer is None and not self.closing:
            self._taken_mark = self._bytes_out - self.unsent
            loop = asyncio.get_running_loop()
            self._drain_timer = loop.call_later(self.write_timeout, self._check_drain)

    def _check_drain(self) -> None:
        self._drain_timer = None
        if self.closing:
            return
        unsent = self.note_unsent()
        if not unsent:
            return
        if self._bytes_out - unsent <= self._taken_mark:
            self.kill(f"write timed out after {self.write_timeout:g}s")
            return
        self._watch_drain()  # it reads, slowly: watch the next stretch

    def _stop_drain_watch(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def write_batch(self, data: bytes) -> None:
        """Write ``data``, frames already framed, now; only for an :attr:`idle` connection
        (the caller checks: nothing queued may go after it).

        What the socket does not take at once stays held (see :meth:`note_unsent`)."""
        transport = self.transport
        assert transport is not None
        try:
            self._write(transport, data)
            unsent = transport.get_write_buffer_size()
        except Exception as exc:  # the transport broke under us: this connection is done
            self.kill(f"write failed: {exc!r}")
            return
        if unsent:
            self._watch_drain()
            self._written.append(data)
            self._written_bytes += len(data)
            if self._ledger is not None:
                self._ledger.hold(data)
            if self._busy is not None:
                self._busy.add(self)

    async def _write_loop(self) -> None:
        while True:
            frame = await self.queue.get()
            if frame is None or not await self._send(frame):
                return

    async def _slow_path(self) -> None:
        """Send what is queued through aiohttp, frame by frame (it waits while the socket is
        behind), until the queue is empty; then the direct path resumes."""
        while (frame := self.queue.get_nowait()) is not None:
            if not await self._send(frame):
                return
        self._slow = False
        self.settle()

    async def _send(self, frame: Frame) -> bool:
        """Send one frame taken from the queue; False when the connection had to be killed."""
        # The frame leaves the queue and enters the socket's buffer: held in the ledger
        # the whole time (the write may wait for a peer that never reads).
        self._written.append(frame)
        self._written_bytes += len(frame)
        if self._ledger is not None:
            self._ledger.hold(frame)
        try:
            async with asyncio.timeout(self.write_timeout):
                if isinstance(frame, TextFrame):
                    # Already UTF-8: send_str would encode a copy for this connection.
                    await self.ws.send_frame(frame, WSMsgType.TEXT)
                else:
                    await self.ws.send_bytes(frame)
        except TimeoutError:
            self.kill(f"write timed out after {self.write_timeout:g}s")
            return False
        except Exception as exc:
            # Usually the peer went away under us (ConnectionResetError); whatever it
            # was, this connection cannot be written to any more, so close it.
            self.kill(f"write failed: {exc!r}")
            return False
        self.note_unsent()
        return True

    def kill(self, reason: str, code: int = WSCloseCode.TRY_AGAIN_LATER) -> None:
        """Start closing this connection (idempotent). The owner awaits it in ``finish``."""
        if self._closer is not None:
            return
        self.close_reason = reason
        self.queue.close()
        self._stop_drain_watch()
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
        self._stop_drain_watch()
        if self._closer is None and not self.ws.closed:
            self._closer = asyncio.create_task(self._close(WSCloseCode.OK, ""))
        elif self._writer is not None:
            self._writer.cancel()
        tasks = [t for t in (self._writer, self._closer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        # The socket is closed or aborted: it holds nothing for the ledger any more.
        while self._written:
            self._let_go(self._written.popleft())


class Hub:
    """The live connections by id (the ConnectionTable knows their users), and the
    relay-wide bound on what they hold for their peers (:class:`QueuedBytes`)."""

    def __init__(
        self,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        *,
        fair_share_floor: int = FAIR_SHARE_FLOOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conns: dict[str, Connection] = {}
        # Connections that may have something queued or unsent: a superset of those that
        # are not idle (a connection joins when given a frame and leaves when seen idle).
        self.busy: set[Connection] = set()
        # How many connections use each encoding (a broadcast is encoded only for those).
        self.by_encoding: Counter[str] = Counter()
        self.ledger = QueuedBytes(max_queued_bytes)
        # Broadcasts to everyone, queued once for all connections (see .fanout).
        self.broadcasts = BroadcastLog(self.ledger)
        self.fair_share_floor = fair_share_floor
        self._clock = clock
        self._refreshed = float("-inf")

    def over_budget(self, extra: int) -> bool:
        """Whether ``extra`` more bytes would take the relay over its queued-bytes bound."""
        ledger = self.ledger
        if ledger.total + extra <= ledger.limit:
            return False
        if self._clock() - self._refreshed >= LEDGER_REFRESH_INTERVAL:
            self.refresh()
        return ledger.total + extra > ledger.limit

    def refresh(self) -> None:
        """Look at every connection's socket buffer, letting go of the frames sent since
        (also done now and then while idle, so the gauge does not stay high)."""
        self._refreshed = self._clock()
        for conn in self._conns.values():
            conn.note_unsent()
        for conn in list(self.busy):
            conn.settle()

    def largest_holder(self) -> Connection | None:
        """The open connection holding the most for its peer (a scan of all of them: only
        when the relay is over its bound)."""
        return max(
            (c for c in self._conns.values() if not c.closing),
            key=lambda c: c.backlog,
            default=None,
        )

    def fair_share(self) -> int:
        """What one connection may hold while the relay is over its bound."""
        return max(self.ledger.limit // max(1, len(self._conns)), self.fair_share_floor)

    def add(self, conn: Connection) -> None:
        self._conns[conn.id] = conn
        self.busy.add(conn)  # until seen idle
        conn.log_seen = self.broadcasts.head  # only broadcasts made from now on
        self.by_encoding[conn.encoding] += 1

    def remove(self, conn_id: str) -> None:
        conn = self._conns.pop(conn_id, None)
        if conn is not None:
            self.busy.discard(conn)
            self.by_encoding[conn.encoding] -= 1

    def get(self, conn_id: str) -> Connection | None:
        return self._conns.get(conn_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._conns.values()))

    def __len__(self) -> int:
        return len(self._conns)

    def kill_all(self, reason: str, code: int) -> None:
        for conn in self:
            conn.kill(reason, code)


# ---------------------------------------------------------------- limits on connections


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade is refused: the HTTP status and a JSON body (like an auth refusal)."""

    status: int
    code: str
    message: str

    def body(self) -> dict[str, str]:
        return {"code": self.code, "error": self.message}


class Admission:
    """Caps on WebSocket connections, in total and per user.

    A slot is taken before the upgrade (``admit``) and given back when the handler ends
    (``release``), so upgrades in flight count too and no burst can slip past the caps.
    """

    def __init__(self, max_total: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_user = max_per_user
        self._per_user: Counter[str] = Counter()
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def held_by(self, user: str) -> int:
        return self._per_user[user]

    def admit(self, user: str, elsewhere: int = 0) -> Refusal | None:
        """Take a slot for ``user``, or say why not (``elsewhere``: the user's connections
        to other replicas of a cluster, which count against the same cap)."""
        if self._total >= self.max_total:
            return Refusal(
                503, "server_busy", f"the relay is at its limit of {self.max_total} connections"
            )
        if self._per_user[user] + elsewhere >= self.max_per_user:
            return Refusal(
                429,
                "too_many_connections",
                f"{user} already has {self.max_per_user} connections to this relay",
            )
        self._per_user[user] += 1
        self._total += 1
        return None

    def release(self, user: str) -> None:
        if self._per_user[user] <= 0:
            return
        self._total -= 1
        self._per_user[user] -= 1
        if not self._per_user[user]:
            del self._per_user[user]
