"""Inbound sessions: we accept, reorder, and write to the local app at the app's pace.

Tunnel sessions are accepted at once; IPC sessions once ``stream.accept`` exists (polled every
200 ms). Frames from the WebSocket and from a peer transport enter one reorder buffer; what it
releases waits for the local app, up to 30 s for an app to connect (DECISIONS.md #5).

Taking a frame never waits: the WebSocket and the data channel are shared by every session,
so their readers must never stop for one slow app. What the app has not taken yet is held
here, bounded by flow control (:mod:`hotlink.protocol.flow`): right after the Accept we grant
the opener a window of credit and grant more only as our app consumes, so a sender that
follows the grants never makes us hold more than a window. A sender that does not (a
reference client, which knows no credit) is held to the same hard bound and the stream is
closed loudly past it, rather than letting one session grow memory or stall the others.
Sessions also share the client's memory budget (:mod:`.budget`): what one peer's sessions
hold together, and what all hold, is bounded too, and a frame past either bound closes the
session that received it the same way.

A TCP stream that cannot be delivered whole is closed loudly (the app's connection is reset
and the opener told); the peer's Close ``eof:N`` ends it cleanly once everything up to seq N
is written.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...protocol.e2e.errors import E2EError
from ...protocol.e2e.handshake import E2E_HELLO
from ...protocol.e2e.session import E2ESession
from ...protocol.flow import FLOW_KIND, Credit, ReceiveCredit, credit_token
from ...protocol.frames import Frame, encode_frame
from ...protocol.messages import HotlinkAccept, HotlinkSignal
from ...protocol.reorder import GapTimeout, ReorderBuffer, ReorderOverflow
from ..connection import NotConnected
from ..localfs import is_regular_file
from .base import (
    EOF,
    AppWriter,
    FlowConfig,
    OwnedSession,
    SessionHost,
    Sink,
    log_state,
    parse_eof,
    short_sid,
)
from .budget import BudgetExceeded, BudgetLease, MemoryBudget, held_cost
from .queues import BoundedQueue, QueueClosed

log = logging.getLogger("hotlink.session")

WRITER_WAIT = 30.0  # frames wait this long for the local app (DECISIONS.md #5)
ACCEPT_POLL = 0.2  # stream.accept polling (PROTOCOL.md §4.4)
ACCEPT_MARKER_WAIT = 30.0  # give up polling for stream.accept after this
GAP_TIMEOUT = 30.0  # a missing seq closes the stream after this (DECISIONS.md #17)
EOF_WAIT = 30.0  # after Close eof, the remaining frames must arrive within this
STALL_CHECK = 1.0  # how often an idle inbound session checks for gaps and a late eof
# Frames held for a missing seq. What they hold in bytes is bounded by flow control.
REORDER_MAX_PENDING = 4096


@dataclass(frozen=True, slots=True)
class Delivery:
    data: bytes  # TCP: the payload; IPC: the whole HLNK frame; b"": the sealed end
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
        flow: FlowConfig | None = None,
        lease: BudgetLease | None = None,
        e2e: E2ESession | None = None,
    ) -> None:
        super().__init__(host, sid, e2e)
        self.path = path
        self.peer = peer
        self.folder = folder  # datasite-relative session folder; frames must stay inside
        self.kind = kind
        self.sink = sink
        self.accept_marker = accept_marker  # None: accept at once
        self.accepted = False
        self.flow = flow or FlowConfig()
        # Accounting and the hard bound apply whether or not we grant credit.
        self.credit = ReceiveCredit(self.flow.window)
        self.reorder = ReorderBuffer(
            max_pending=REORDER_MAX_PENDING,
            max_pending_bytes=self.credit.hard_limit,
            gap_timeout=GAP_TIMEOUT,
        )
        # Bounded by the credit accounting above and the budget lease below; the queue's own
        # bounds never bind.
        self.queue: BoundedQueue[Delivery | None] = BoundedQueue(1 << 30, 1 << 62, _delivery_size)
        # Our share of the client's memory budget (per peer and in total), charged for what
        # we hold; a session made on its own gets a budget of its own.
        self.lease = lease if lease is not None else MemoryBudget().open(peer)
        self.max_seq_seen = 0
        self.eof_seq: int | None = None
        self.eof_deadline: float | None = None
        self._eof_queued = False
        self.delivered_bytes = 0
        self._writer: AppWriter | None = None
        self._delivering = False
        self._abort_reason: str | None = None
        # Sealed frames that came before the opener's hello (a relay may reorder them),
        # charged to the lease; opened and received once the hello is here.
        self._early_sealed: list[Frame] = []
        self._early_bytes = 0
        self._early_since = 0.0
        self._plaintext_said = False

    # ------------------------------------------------------------ the receive path

    def receive(self, frame: Frame) -> None:
        """One frame from the WebSocket or a peer transport; both land in the same buffer.

        Never waits (the caller is a reader shared by every session)."""
        if not self.accepted or self.ended or self._abort_reason is not None:
            return
        if not path_within(frame.path, self.folder):
            log.warning(
                "hotlink session %s: dropping frame for %s outside the session folder %s",
                short_sid(self.sid),
                frame.path,
                self.folder,
            )
            return
        if self.reorder.has(frame.seq):
            self.reorder.duplicates += 1  # P2P and a resend over the WebSocket overlapped
            return
        item: bytes | None = None
        if self.e2e is not None:
            opened = self._open(frame)
            if opened is None:
                return
            frame, item = opened
        size = len(frame.payload)
        if not self.credit.admits(size):
            self._abort(
                f"receive buffer full ({self.credit.buffered} bytes held for the local app, "
                f"the bound is {self.credit.hard_limit}): the sender does not follow flow "
                "control"
            )
            return
        if item is None:
            item = frame.payload if self.kind == "tcp" else encode_frame(frame)
        cost = held_cost(len(item))
        try:
            self.lease.charge(cost)
        except BudgetExceeded as exc:
            # Other sessions (of this peer or others) hold the memory: this stream cannot be
            # kept whole, and nothing may wait here.
            self._abort(exc.reason)
            return
        self._log_received(frame)
        now = time.monotonic()
        self.max_seq_seen = max(self.max_seq_seen, frame.seq)
        try:
            ready = self.reorder.push(frame.seq, item, now)
        except ReorderOverflow as exc:
            self.lease.release(cost)
            self._abort(f"reorder overflow: {exc}")
            return
        self.credit.on_received(size)
        for data in ready:
            self._enqueue_or_write(Delivery(data, self._payload_len(data), now))
        self._maybe_eof()

    def _open(self, frame: Frame) -> tuple[Frame, bytes | None] | None:
        """Open a frame of an end-to-end session: the frame the app may see, and b"" for the
        sealed end (which fills its seq but carries nothing); None when it was held for the
        opener's hello or failed (the session is then aborted: nothing of it is delivered)."""
        assert self.e2e is not None
        if self.e2e.needs_keys(frame):
            self._hold_sealed(frame)
            return None
        try:
            opened = self.e2e.open(frame)
        except E2EError as exc:
            self._abort(self._e2e_failed(exc))
            return None
        self._note_plaintext()
        return opened.frame, (b"" if opened.fin else None)

    def _note_plaintext(self) -> None:
        """Tell the host (once) when the stream turned out plaintext."""
        if self.e2e is not None and self.e2e.state == "plaintext" and not self._plaintext_said:
            self._plaintext_said = True
            self.host.e2e_plaintext(self.e2e, self.sid, self.peer)

    def _hold_sealed(self, frame: Frame) -> None:
        cost = held_cost(len(frame.payload))
        if (
            len(self._early_sealed) >= REORDER_MAX_PENDING
            or self._early_bytes + len(frame.payload) > self.credit.hard_limit
        ):
            self._abort("e2e: sealed frames keep coming without the opener's key exchange")
            return
        try:
            self.lease.charge(cost)
        except BudgetExceeded as exc:
            self._abort(exc.reason)
            return
        if not self._early_sealed:
            self._early_since = time.monotonic()
        self._early_sealed.append(frame)
        self._early_bytes += len(frame.payload)

    def on_e2e_hello(self, token: str) -> None:
        """The opener's ``e2e_hello``: open what waited for it, or fail the session."""
        e2e = self.e2e
        if e2e is None or self.ended or self._abort_reason is not None:
            return
        try:
            if not e2e.on_hello(token):
                return
        except E2EError as exc:
            self._abort(self._e2e_failed(exc))
            return
        self.host.e2e_sealed(e2e)
        early, self._early_sealed, self._early_bytes = self._early_sealed, [], 0
        for frame in early:
            self.lease.release(held_cost(len(frame.payload)))
            self.receive(frame)

    def _log_received(self, frame: Frame) -> None:
        if log.isEnabledFor(logging.DEBUG) and (frame.seq <= 3 or frame.seq % 500 == 0):
            log.debug(
                "hotlink recv data: session=%s seq=%d bytes=%d path=%s",
                short_sid(self.sid),
                frame.seq,
                len(frame.payload),
                frame.path,
            )

    def _enqueue_or_write(self, item: Delivery) -> None:
        """Write straight to the app when the owner is idle, nothing is queued and the app's
        socket takes it at once; else queue it for the owner."""
        writer = self._writer
        if not item.data:
            # The sealed end carries no bytes: nothing to wait for.
            if not self._delivering and not len(self.queue):
                self._consumed(item, 0.0)
                return
        elif (
            writer is not None
            and not self._delivering
            and not len(self.queue)
            and writer.write_nowait(item.data)
        ):
            self._consumed(item, 0.0)
            return
        try:
            self.queue.put_final(item)
        except QueueClosed:
            pass

    def _payload_len(self, data: bytes) -> int:
        if self.kind == "tcp" or not data:
            return len(data)
        (length,) = struct.unpack_from(">I", data, 9)  # HLNK header: payload_len at offset 9
        return int(length)

    def _consumed(self, item: Delivery, write_ms: float) -> None:
        """The app took ``item``: count it, and grant more credit when enough room opened."""
        self.delivered_bytes += item.payload_len
        self.lease.release(held_cost(len(item.data)))
        self.host.telemetry.record_rx(item.payload_len, write_ms)
        credit = self.credit.on_consumed(item.payload_len)
        # After the peer's eof no more credit is needed (and the server has forgotten the
        # session, so a grant would only earn an "unknown session" reply).
        if credit is not None and self.eof_seq is None:
            self._grant(credit)

    def _grant(self, credit: Credit) -> None:
        if not self.flow.enabled:
            return
        try:
            self.host.send_control(HotlinkSignal(self.sid, FLOW_KIND, tok=credit_token(credit)))
        except NotConnected:
            pass  # the session ends with the connection

    def _maybe_eof(self) -> None:
        if self.eof_seq is not None and not self._eof_queued:
            if self.reorder.next_seq > self.eof_seq:
                self._eof_queued = True
                try:
                    self.queue.put_final(None)
                except QueueClosed:
                    pass

    def _abort(self, reason: str) -> None:
        """End the stream loudly from the receive path (which cannot wait): tell the opener
        and stop the owner wherever it waits; its cleanup resets the app's connection."""
        if self._abort_reason is not None or self.ended:
            return
        self._abort_reason = reason
        self._tell_peer(reason)
        self._requested_close = reason
        self.queue.close(reason)
        if self.task is not None:
            self.task.cancel()

    def peer_closed(self, reason: str) -> bool:
        """The opener sent Close: ``eof[:N]`` finishes after seq N (True), anything else
        aborts (False; the caller then closes the session)."""
        is_eof, last = parse_eof(reason)
        if not is_eof or not self.accepted:
            return False
        self.eof_seq = last if last is not None else self.max_seq_seen
        self.eof_deadline = time.monotonic() + EOF_WAIT
        self._maybe_eof()
        return True

    # ------------------------------------------------------------ the owner

    def _fail(self, reason: str) -> str:
        self._tell_peer(reason)
        return reason

    async def _main(self) -> str:
        log_state("in", self.sid, self.peer, self.host.local_email, "open", f"path={self.path}")
        if self.accept_marker is not None and not await self._wait_accept_marker():
            return "no stream.accept"
        self.host.send_control(HotlinkAccept(self.sid))
        if self.e2e is not None:
            # Right behind the Accept: the opener waits for it before its first frame.
            self.host.send_control(HotlinkSignal(self.sid, E2E_HELLO, tok=self.e2e.hello_token()))
        self._grant(self.credit.initial())
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
                return self._finish()
            self._delivering = True
            try:
                problem = await self._deliver(item)
            finally:
                self._delivering = False
            if problem:
                return self._fail(problem)

    def _finish(self) -> str:
        """Everything up to the peer's eof is written: end the app's stream cleanly (on a
        sealed session only at the sender's sealed end)."""
        if self.e2e is not None and self.eof_seq is not None:
            try:
                self.e2e.check_end(self.eof_seq)
            except E2EError as exc:
                reason = self._e2e_failed(exc)
                if self._writer is None and self.delivered_bytes == 0:
                    # The app this (empty) stream's end was for waits for it: a reset, not
                    # a hang (other failures leave a connection that got nothing alone).
                    waiting = self.sink.eof_writer()
                    if waiting is not None:
                        waiting.fail(reason)
                return self._fail(reason)
            self._note_plaintext()
        writer = self._writer
        if writer is None and self.delivered_bytes == 0:
            # An empty stream (the peer's app connected and left without writing): its EOF
            # goes to an app connection there now that it may belong to (see the sink);
            # none waits for one to come.
            writer = self.sink.eof_writer()
        if writer is not None:
            writer.finish()
        return EOF

    async def _wait_accept_marker(self) -> bool:
        assert self.accept_marker is not None
        deadline = time.monotonic() + ACCEPT_MARKER_WAIT
        # A link named stream.accept does not count: only a file the owner of the folder made.
        while not is_regular_file(self.accept_marker):
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
        if self._early_sealed and now - self._early_since >= GAP_TIMEOUT:
            return (
                f"e2e: sealed frames but no key exchange from the opener within {GAP_TIMEOUT:.0f} s"
            )
        if self.kind == "tcp" and self._writer is not None and self._writer.closed:
            # Tell the opener now rather than at its next frame.
            return "local app connection lost"
        return ""

    async def _deliver(self, item: Delivery) -> str:
        """Write one item to the app; returns a failure reason or ''."""
        if not item.data:
            self._consumed(item, 0.0)  # the sealed end: nothing to write
            return ""
        deadline = item.released + WRITER_WAIT
        while True:
            writer = self._writer
            if writer is None:
                writer = await self.sink.wait_writer(max(0.0, deadline - time.monotonic()))
                if writer is None:
                    return f"no local app connected within {WRITER_WAIT:.0f} s"
                self._writer = writer
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
        self._consumed(item, (time.monotonic() - item.released) * 1000.0)
        return ""

    async def _end(self, reason: str) -> None:
        self.close_reason = reason
        self.queue.close(reason)
        self.lease.close()  # what the queue and the reorder buffer held is dropped with them
        self._done.set()
        if self._writer is not None and reason != EOF:
            # Bytes may be missing: the app must see a reset (TCP) or a broken frame stream
            # (IPC), never a clean end.
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
        return self._snapshot(
            self.path, self.peer, held=self.credit.buffered, window=self.credit.window
        )
