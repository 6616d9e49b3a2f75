"""Inbound sessions: we accept, reorder, and write to the local app.

Tunnel sessions are accepted at once; IPC sessions once ``stream.accept`` exists (polled every
200 ms). Frames from the WebSocket and from a peer transport enter one reorder buffer; what it
releases waits (bounded) for the local app, up to 30 s for an app to connect (DECISIONS.md
#5). A TCP stream that cannot be delivered whole is closed loudly and the opener is told; the
peer's Close ``eof:N`` ends the stream cleanly once everything up to seq N is written.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...protocol.frames import Frame, encode_frame
from ...protocol.messages import HotlinkAccept
from ...protocol.reorder import GapTimeout, ReorderBuffer, ReorderOverflow
from .base import (
    EOF,
    AppWriter,
    OwnedSession,
    SessionHost,
    Sink,
    log_state,
    parse_eof,
    short_sid,
)
from .queues import BoundedQueue, QueueClosed

log = logging.getLogger("hotlink.session")

WRITER_WAIT = 30.0  # frames wait this long for the local app (DECISIONS.md #5)
# How long the receive path waits for a connected app that stopped reading. While it waits,
# the one WebSocket read loop waits too (backpressure reaches the sender through the relay),
# so it must stay below the relay's send timeout (20 s): past that the relay drops the whole
# connection, and every other session of this client with it. Closing just this session is
# the smaller loss.
APP_READ_WAIT = 10.0
ACCEPT_POLL = 0.2  # stream.accept polling (PROTOCOL.md §4.4)
ACCEPT_MARKER_WAIT = 30.0  # give up polling for stream.accept after this
GAP_TIMEOUT = 30.0  # a missing seq closes the stream after this (DECISIONS.md #17)
EOF_WAIT = 30.0  # after Close eof, the remaining frames must arrive within this
STALL_CHECK = 1.0  # how often an idle inbound session checks for gaps and a late eof
IN_QUEUE_BYTES = 16 * 1024 * 1024
IN_QUEUE_ITEMS = 4096
REORDER_MAX_PENDING = 4096
REORDER_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Delivery:
    data: bytes  # TCP: the payload; IPC: the whole HLNK frame
    payload_len: int
    released: float  # monotonic time the reorder buffer released it


def _delivery_size(item: Delivery | None) -> int:
    return 0 if item is None else len(item.data) + 64


def path_within(path: str, folder: str) -> bool:
    """Whether datasite-relative ``path`` is ``folder`` or inside it (DECISIONS.md #19)."""
    if not folder:
        return False
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments) or "\\" in path or "\x00" in path:
        return False
    return path == folder or path.startswith(folder + "/")


Kind = Literal["tcp", "ipc"]


class InboundSession(OwnedSession):
    """We receive: accept (at once for tunnels, on ``stream.accept`` for IPC), reorder, deliver."""

    direction = "in"

    def __init__(
        self,
        host: SessionHost,
        *,
        sid: str,
        path: str,
        peer: str,
        folder: str,
        kind: Kind,
        sink: Sink,
        accept_marker: Path | None = None,
    ) -> None:
        super().__init__(host, sid)
        self.path = path
        self.peer = peer
        self.folder = folder  # datasite-relative session folder; frames must stay inside
        self.kind = kind
        self.sink = sink
        self.accept_marker = accept_marker  # None: accept at once
        self.accepted = False
        self.reorder = ReorderBuffer(
            max_pending=REORDER_MAX_PENDING,
            max_pending_bytes=REORDER_MAX_BYTES,
            gap_timeout=GAP_TIMEOUT,
        )
        self.queue: BoundedQueue[Delivery | None] = BoundedQueue(
            IN_QUEUE_ITEMS, IN_QUEUE_BYTES, _delivery_size
        )
        self.lock = asyncio.Lock()
        self.max_seq_seen = 0
        self.eof_seq: int | None = None
        self.eof_deadline: float | None = None
        self._eof_queued = False
        self.app_seen = False
        self.delivered_bytes = 0
        self._writer: AppWriter | None = None
        self._delivering = False

    # ------------------------------------------------------------ the receive path

    async def receive(self, frame: Frame) -> None:
        """One frame from the WebSocket or a peer transport; both land in the same buffer."""
        if not self.accepted or self.ended:
            return
        if not path_within(frame.path, self.folder):
            log.warning(
                "hotlink session %s: dropping frame for %s outside the session folder %s",
                short_sid(self.sid),
                frame.path,
                self.folder,
            )
            return
        self._log_received(frame)
        item = frame.payload if self.kind == "tcp" else encode_frame(frame)
        failure = ""
        async with self.lock:
            now = time.monotonic()
            self.max_seq_seen = max(self.max_seq_seen, frame.seq)
            try:
                ready = self.reorder.push(frame.seq, item, now)
            except ReorderOverflow as exc:
                ready, failure = [], f"reorder overflow: {exc}"
            for data in ready:
                delivery = Delivery(data, self._payload_len(data), now)
                try:
                    if self.app_seen:
                        # The app is reading: wait for it (backpressure), within bounds.
                        await self.queue.put(delivery, within=APP_READ_WAIT)
                    elif not self.queue.put_nowait(delivery):
                        failure = "receive buffer full while no app is connected"
                        break
                except QueueClosed:
                    return
                except TimeoutError:
                    failure = f"local app did not read for {APP_READ_WAIT:.0f} s"
                    break
            if not failure:
                self._maybe_eof()
        if failure:
            await self.close(failure, notify=True)

    def _log_received(self, frame: Frame) -> None:
        if log.isEnabledFor(logging.DEBUG) and (frame.seq <= 3 or frame.seq % 500 == 0):
            log.debug(
                "hotlink recv data: session=%s seq=%d bytes=%d path=%s",
                short_sid(self.sid),
                frame.seq,
                len(frame.payload),
                frame.path,
            )

    def receive_nowait(self, frame: Frame) -> bool:
        """:meth:`receive` for the common case that needs no waiting: the next frame in
        order, nothing held or queued. Returns False (and does nothing) otherwise."""
        if (
            not self.accepted
            or self.ended
            or self.lock.locked()
            or frame.seq != self.reorder.next_seq
            or self.reorder.pending
            or len(self.queue)
            or self.kind != "tcp"
            or not path_within(frame.path, self.folder)
        ):
            return False
        self._log_received(frame)
        now = time.monotonic()
        self.max_seq_seen = max(self.max_seq_seen, frame.seq)
        ready = self.reorder.push(frame.seq, frame.payload, now)
        for data in ready:
            self._enqueue_or_write(Delivery(data, len(data), now))
        self._maybe_eof()
        return True

    def _enqueue_or_write(self, item: Delivery) -> None:
        """Queue is empty and may take one item: write it straight to the app when the
        owner is idle and the app's socket takes it at once, else queue it."""
        writer = self._writer
        if (
            writer is not None
            and not self._delivering
            and not len(self.queue)
            and writer.write_nowait(item.data)
        ):
            self.delivered_bytes += item.payload_len
            self.host.telemetry.record_rx(item.payload_len, 0.0)
            return
        self.queue.put_final(item)

    def _payload_len(self, data: bytes) -> int:
        if self.kind == "tcp":
            return len(data)
        (length,) = struct.unpack_from(">I", data, 9)  # HLNK header: payload_len at offset 9
        return int(length)

    def _maybe_eof(self) -> None:
        if self.eof_seq is not None and not self._eof_queued:
            if self.reorder.next_seq > self.eof_seq:
                self._eof_queued = True
                try:
                    self.queue.put_final(None)
                except QueueClosed:
                    pass

    async def peer_closed(self, reason: str) -> None:
        """The opener sent Close: ``eof[:N]`` finishes after seq N, anything else aborts."""
        is_eof, last = parse_eof(reason)
        if not is_eof or not self.accepted:
            await self.close(reason or "closed by peer", notify=False)
            return
        async with self.lock:
            self.eof_seq = last if last is not None else self.max_seq_seen
            self.eof_deadline = time.monotonic() + EOF_WAIT
            self._maybe_eof()

    # ------------------------------------------------------------ the owner

    def _fail(self, reason: str) -> str:
        self._tell_peer(reason)
        return reason

    async def _main(self) -> str:
        log_state("in", self.sid, self.peer, self.host.local_email, "open", f"path={self.path}")
        if self.accept_marker is not None and not await self._wait_accept_marker():
            return "no stream.accept"
        self.host.send_control(HotlinkAccept(self.sid))
        self.accepted = True
        log_state("in", self.sid, self.peer, self.host.local_email, "accepted")
        await self.host.inbound_accepted(self)
        while True:
            try:
                item = await self.queue.get(within=STALL_CHECK)
            except TimeoutError:
                problem = self._check_stalled()
                if problem:
                    return self._fail(problem)
                continue
            except QueueClosed as exc:
                return exc.reason
            if item is None:
                if self._writer is not None:
                    self._writer.finish()
                return EOF
            self._delivering = True
            try:
                problem = await self._deliver(item)
            finally:
                self._delivering = False
            if problem:
                return self._fail(problem)

    async def _wait_accept_marker(self) -> bool:
        assert self.accept_marker is not None
        deadline = time.monotonic() + ACCEPT_MARKER_WAIT
        while not self.accept_marker.exists():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(ACCEPT_POLL)
        return True

    def _check_stalled(self) -> str:
        now = time.monotonic()
        try:
            self.reorder.check(now)
        except GapTimeout as exc:
            return f"gap timeout: {exc}"
        if self.eof_deadline is not None and now >= self.eof_deadline and not self._eof_queued:
            return f"frames up to seq {self.eof_seq} missing after eof"
        if self.kind == "tcp" and self._writer is not None and self._writer.closed:
            # Tell the opener now rather than at its next frame.
            return "local app connection lost"
        return ""

    async def _deliver(self, item: Delivery) -> str:
        """Write one item to the app; returns a failure reason or ''."""
        deadline = item.released + WRITER_WAIT
        while True:
            writer = self._writer
            if writer is None:
                writer = await self.sink.wait_writer(max(0.0, deadline - time.monotonic()))
                if writer is None:
                    return f"no local app connected within {WRITER_WAIT:.0f} s"
                self._writer = writer
                self.app_seen = True
            try:
                await writer.write(item.data)
            except (ConnectionError, OSError) as exc:
                if self.kind == "tcp":
                    # A TCP stream with a hole is worse than none (DECISIONS.md #7).
                    return f"local app connection lost: {exc or type(exc).__name__}"
                # IPC frames are whole messages: retry this one on the next connection.
                writer.fail("write failed")
                self._writer = None
                if time.monotonic() >= deadline:
                    return "local app connection lost"
                continue
            break
        ms = (time.monotonic() - item.released) * 1000.0
        self.delivered_bytes += item.payload_len
        self.host.telemetry.record_rx(item.payload_len, ms)
        return ""

    async def _end(self, reason: str) -> None:
        self.close_reason = reason
        self.queue.close(reason)
        self._done.set()
        if self._writer is not None and self.kind == "tcp" and reason != EOF:
            self._writer.fail(reason)
        log_state(
            "in",
            self.sid,
            self.peer,
            self.host.local_email,
            f"closed({reason})",
            f"delivered {self.delivered_bytes} bytes",
        )
        await self.host.session_ended(self)

    def snapshot(self) -> dict[str, object]:
        return self._snapshot(self.path, self.peer)
