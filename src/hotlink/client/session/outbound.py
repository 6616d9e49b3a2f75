"""Outbound sessions: we open, wait for the Accept, then send numbered frames.

The owner sends HotlinkOpen, waits up to 1.5 s for the Accept (DECISIONS.md #14; the wait is
level-triggered, so an Accept that arrives before the wait starts is not lost), then numbers
the queued frames from seq 1 and hands each to the host, which tries the peer transport and
falls back to the WebSocket with the same seq. When the producer finishes, the owner lets the
host drain the peer transport (frames a dying channel may have lost are resent first), then
queues Close ``eof:<last seq>`` behind the data. On accept timeout or reject it sends Close
``fallback`` and the producer's next send fails.

Flow control (:mod:`hotlink.protocol.flow`): once the receiver has granted credit, a frame
leaves only while the bytes sent are below the granted limit. Without credit the owner waits,
its queue fills, the producer's ``send`` waits, and the producer (the TCP proxy or IPC
reader) stops reading its app's socket: the sending app feels the receiving app's pace as
TCP backpressure. A receiver that never grants (a reference client) gets today's behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ...protocol.e2e.errors import E2EError
from ...protocol.e2e.handshake import E2E_HELLO
from ...protocol.e2e.session import E2ESession
from ...protocol.flow import Credit, SendCredit
from ...protocol.frames import Frame
from ...protocol.messages import HotlinkClose, HotlinkOpen, HotlinkSignal
from ..p2p.transport import PeerSendError
from .base import (
    EOF,
    FlowConfig,
    OwnedSession,
    SessionClosed,
    SessionHost,
    eof_reason,
    log_state,
)
from .hints import BEHIND_AFTER, HINTS
from .queues import BoundedQueue, QueueClosed

log = logging.getLogger("hotlink.session")

ACCEPT_TIMEOUT = 1.5  # sender's wait for HotlinkAccept (DECISIONS.md #14)
CONNECT_WAIT = 5.0  # how long an Open waits for a reconnecting WebSocket
# How long, after the Accept, the opener waits for the acceptor's e2e_hello (sent right
# behind the Accept): past it, the acceptor is taken for one that does not seal.
HELLO_WAIT = 1.0
OUT_QUEUE_BYTES = 4 * 1024 * 1024
OUT_QUEUE_ITEMS = 1024


@dataclass(frozen=True, slots=True)
class SendItem:
    path: str
    etag: str
    payload: bytes


def _item_size(item: SendItem | None) -> int:
    return len(item.payload) + 64 if isinstance(item, SendItem) else 0


OutState = Literal["pending", "accepted", "rejected", "closed"]


@dataclass(frozen=True, slots=True)
class _TransmitFailed:
    error: Exception


class OutboundSession(OwnedSession):
    """We send: Open, wait for Accept, then seq 1, 2, ... and Close ``eof:N`` at the end."""

    direction = "out"

    def __init__(
        self,
        host: SessionHost,
        *,
        sid: str,
        key: str,
        path: str,
        to: str = "",
        accept_timeout: float = ACCEPT_TIMEOUT,
        flow: FlowConfig | None = None,
        e2e: E2ESession | None = None,
        hello_wait: float = HELLO_WAIT,
    ) -> None:
        super().__init__(host, sid, e2e)
        self.hello_wait = hello_wait
        self._hello_seen = asyncio.Event()
        self.flow = flow or FlowConfig()
        self.credit = SendCredit()
        self._credit_changed = asyncio.Event()
        self.key = key  # the session folder (outbound sessions are keyed by it)
        self.path = path  # the Open path
        self.to = to
        self.accept_timeout = accept_timeout
        self.state: OutState = "pending"
        self.seq = 0
        self.reject_reason = ""
        self.queue: BoundedQueue[SendItem | None] = BoundedQueue(
            OUT_QUEUE_ITEMS, OUT_QUEUE_BYTES, _item_size
        )
        self._decided = asyncio.Event()  # accepted or rejected; level-triggered, never lost
        self._callbacks: list[Callable[[str], None]] = []
        self._streaming = False
        self._tx_lock = asyncio.Lock()

    # ------------------------------------------------------------ producer side

    async def send(self, path: str, payload: bytes, etag: str = "") -> None:
        """Queue one frame (waits while the queue is full). Raises SessionClosed."""
        if (
            self._streaming
            and not len(self.queue)
            and not self._tx_lock.locked()
            and not self.queue.closed
            and self.credit.can_send()
        ):
            async with self._tx_lock:
                try:
                    await self._transmit(path, etag, payload)
                except Exception as exc:
                    # The owner ends the session with it, as if its own transmit had raised.
                    try:
                        self.queue.put_final(_TransmitFailed(exc))  # type: ignore[arg-type]
                    except QueueClosed as closed:  # the session ended meanwhile
                        raise SessionClosed(closed.reason) from None
            return
        try:
            await self.queue.put(SendItem(path, etag, payload))
        except QueueClosed as exc:
            raise SessionClosed(exc.reason) from None

    def finish(self) -> None:
        """No more frames: after the queued ones, Close ``eof:<last seq>``."""
        try:
            self.queue.put_final(None)
        except QueueClosed as exc:
            raise SessionClosed(exc.reason) from None

    def add_done_callback(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once the session ended (now, if it already has)."""
        if self.ended:
            callback(self.close_reason)
        else:
            self._callbacks.append(callback)

    def remove_done_callback(self, callback: Callable[[str], None]) -> None:
        """Forget ``callback`` (its owner went away before the session ended)."""
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    # ------------------------------------------------------------ messages from the peer

    def on_credit(self, credit: Credit) -> None:
        """A ``flow_credit`` grant from the receiver."""
        if not self.flow.enabled:
            return  # we behave as a reference client: grants are not ours to follow
        first = not self.credit.controlled
        if self.credit.on_credit(credit) or first:
            self._credit_changed.set()
        if first:
            log.debug(
                "hotlink session %s: receiver grants credit (window %d bytes)",
                self.sid[:8],
                credit.window,
            )

    def on_e2e_hello(self, token: str) -> None:
        """The acceptor's ``e2e_hello``: the session is sealed from now on, or it fails."""
        e2e = self.e2e
        if e2e is None or self.ended:
            return
        try:
            if e2e.on_hello(token):
                self.host.e2e_sealed(e2e)
        except E2EError as exc:
            reason = self._e2e_failed(exc)
            self._tell_peer(reason)
            self._requested_close = reason
            if self.task is not None:
                self.task.cancel()
        self._hello_seen.set()

    def on_accept(self) -> None:
        if self.state == "pending":
            self.state = "accepted"
        self._decided.set()

    def on_reject(self, reason: str) -> None:
        self.reject_reason = reason or "rejected"
        if self.state == "pending":
            self.state = "rejected"
            self._decided.set()
        elif self.state == "accepted" and self.task is not None:
            # e.g. "unknown session" for Data after the server lost the session.
            self._requested_close = f"rejected: {self.reject_reason}"
            self.task.cancel()

    # ------------------------------------------------------------ the owner

    def _failure_reason(self, exc: Exception) -> str:
        if isinstance(exc, PeerSendError):
            return f"error: {exc}"  # P2P-only or strict mode refused the WebSocket: expected
        return super()._failure_reason(exc)

    async def _main(self) -> str:
        if not await self.host.wait_ready(CONNECT_WAIT):
            return "not connected"
        self.host.send_control(HotlinkOpen(self.sid, self.path, to=self.to))
        log_state("out", self.sid, self.host.local_email, self.to, "open", f"path={self.path}")
        try:
            async with asyncio.timeout(self.accept_timeout):
                await self._decided.wait()
        except TimeoutError:
            self._tell_peer("fallback")
            HINTS.not_accepted(self.path, self.host.local_email, self.to, self.accept_timeout)
            return "accept timeout"
        if self.state != "accepted":
            self._tell_peer("fallback")
            HINTS.refused(self.path, self.reject_reason, self.host.local_email, self.to)
            return f"rejected: {self.reject_reason}"
        log_state("out", self.sid, self.host.local_email, self.to, "accepted")
        await self._exchange_keys()
        await self.host.outbound_accepted(self)
        self._streaming = True
        while True:
            try:
                item = await self.queue.get()
            except QueueClosed as exc:
                return exc.reason
            if isinstance(item, _TransmitFailed):
                raise item.error
            # Held from taking the item until it is sent, the wait for credit included: the
            # grant that wakes us may let the producer run first, and its direct path must
            # not give a later write this item's seq.
            async with self._tx_lock:
                if item is not None:
                    await self._wait_credit()
                if item is None:
                    if self.e2e is not None and self.e2e.sealed:
                        # The sealed end: a relay cannot pass off a cut stream as complete.
                        self.seq += 1
                        await self.host.transmit(self.sid, self.e2e.fin(self.seq, self.path), 0)
                    await self.host.drain(self.sid)
                    await self.host.send_in_order(HotlinkClose(self.sid, eof_reason(self.seq)))
                    return EOF
                await self._transmit(item.path, item.etag, item.payload)

    async def _exchange_keys(self) -> None:
        """Send our hello and wait (briefly) for the acceptor's: sealed, or plaintext when
        the acceptor does not seal and may not have to. Raises E2EError."""
        e2e = self.e2e
        if e2e is None:
            self.host.e2e_plaintext(None, self.sid, self.to)
            return
        self.host.send_control(HotlinkSignal(self.sid, E2E_HELLO, tok=e2e.hello_token()))
        if e2e.state == "pending":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.hello_wait):
                    await self._hello_seen.wait()
        if e2e.state == "pending":
            e2e.go_plaintext(
                f"{self.to} sent no key exchange within {self.hello_wait:g} s after accepting "
                "(a reference client, or SYFTBOX_HOTLINK_E2E=0 there)"
            )
            self.host.e2e_plaintext(e2e, self.sid, self.to)

    async def _transmit(self, path: str, etag: str, payload: bytes) -> None:
        """Number one frame, seal it, and hand it to the host (call with the send lock held).

        Sealed once: a resend over the other path is the same bytes."""
        self.seq += 1
        self.credit.on_sent(len(payload))
        frame = Frame(path, etag, self.seq, payload)
        if self.e2e is not None:
            frame = self.e2e.seal(frame)
        await self.host.transmit(self.sid, frame, len(payload))

    async def _wait_credit(self) -> None:
        """Wait, as long as it takes, until the receiver's grants allow another frame.

        No timeout: a paused app is not an error (TCP waits on a zero window forever too);
        the session still ends at once if the peer or either connection goes away."""
        if self.credit.can_send():
            return
        self.host.telemetry.incr("flow_waits")
        started = time.monotonic()
        while not self.credit.can_send():
            self._credit_changed.clear()
            try:
                async with asyncio.timeout(BEHIND_AFTER):
                    await self._credit_changed.wait()
            except TimeoutError:
                HINTS.receiver_behind(self.path, self.to, time.monotonic() - started)

    async def _end(self, reason: str) -> None:
        self.close_reason = reason
        self.state = "closed"
        self.queue.close(reason)
        self._decided.set()
        self._done.set()
        detail = f"after seq {self.seq}" if self.seq else ""
        log_state("out", self.sid, self.host.local_email, self.to, f"closed({reason})", detail)
        for callback in self._callbacks:
            try:
                callback(reason)
            except Exception:
                log.exception("session close callback failed")
        self._callbacks.clear()
        await self.host.session_ended(self)

    def snapshot(self) -> dict[str, object]:
        status = self.state if self.state in ("accepted", "rejected") else "pending"
        flow = "credit" if self.credit.controlled else "none"
        return self._snapshot(self.path, self.to, status=status, seq=self.seq, flow=flow)
