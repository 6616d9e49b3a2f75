"""What both kinds of hotlink session share: limits, helpers, and the interfaces they use.

A session is one stream: an :class:`~.outbound.OutboundSession` (we send) or an
:class:`~.inbound.InboundSession` (we receive). Each has exactly one owner task;
closing a session cancels its owner and awaits it, and the owner's ``finally`` does all the
cleanup, so every way out (eof, peer close, local error, disconnect, shutdown) runs the same
code. Sessions reach the outside world only through :class:`SessionHost` (the manager) and,
on the receiving side, a :class:`Sink` of :class:`AppWriter` connections (the TCP proxy or IPC).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from ...protocol.e2e.errors import E2EError
from ...protocol.e2e.session import E2ESession
from ...protocol.flow import DEFAULT_WINDOW
from ...protocol.frames import Frame
from ...protocol.messages import HotlinkClose, Payload
from ..connection import NotConnected
from ..telemetry import Telemetry

if TYPE_CHECKING:
    from .inbound import InboundSession
    from .outbound import OutboundSession

log = logging.getLogger("hotlink.session")

EOF = "eof"


def eof_reason(last_seq: int) -> str:
    """The Close reason that ends a stream cleanly after ``last_seq`` (DECISIONS.md, EOF)."""
    return f"{EOF}:{last_seq}"


# A seq is a uint64 on the wire (PROTOCOL.md): at most 20 decimal digits.
_MAX_SEQ_DIGITS = 20
_MAX_SEQ = (1 << 64) - 1
# Reasons from the network end up in log lines and close reasons: keep them readable.
REASON_MAX = 200


def parse_eof(reason: str) -> tuple[bool, int | None]:
    """``(is_eof, last_seq)``; a bare ``eof`` (no seq) gives ``(True, None)``.

    ``eof:`` with anything but a u64 in ASCII digits is not an eof (so the stream ends
    loudly): ``str.isdigit`` also takes other scripts' digits, and ``int()`` refuses
    strings of more than 4300 digits with an error."""
    if reason == EOF:
        return True, None
    head, sep, tail = reason.partition(":")
    if (
        head == EOF
        and sep
        and 0 < len(tail) <= _MAX_SEQ_DIGITS
        and tail.isascii()
        and tail.isdigit()
    ):
        seq = int(tail)
        if seq <= _MAX_SEQ:
            return True, seq
    return False, None


def short_reason(reason: str, limit: int = REASON_MAX) -> str:
    """A peer's reason as we log and keep it: at most ``limit`` characters, printable."""
    text = reason if reason.isprintable() else reason.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}… ({len(reason)} characters)"


def short_sid(sid: str) -> str:
    return f"{sid[:8]}…" if len(sid) > 8 else sid


def who(email: str) -> str:
    """The readable part of an email for log lines: ``alice`` for alice@example.com.

    An outbound session without a ``to`` goes to everyone who may read: ``*``."""
    return email.split("@", 1)[0] if email else "*"


def channel_name(path: str) -> str:
    """Telemetry's ``channel``: the segment after ``_mpc``, else the last segment."""
    segments = path.split("/")
    if "_mpc" in segments:
        i = segments.index("_mpc")
        if i + 1 < len(segments):
            return segments[i + 1]
    return segments[-1]


@dataclass(frozen=True)
class FlowConfig:
    """Per-session flow control (:mod:`hotlink.protocol.flow`).

    ``enabled`` False makes this client behave as a reference client does: it grants no
    credit and ignores grants. Receivers bound what they hold either way.
    """

    enabled: bool = True
    window: int = DEFAULT_WINDOW


class SessionClosed(Exception):
    """Sending on a session that has ended; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionHost(Protocol):
    """What sessions need from the manager."""

    local_email: str
    telemetry: Telemetry

    def send_control(self, payload: Payload) -> None:
        """Queue a control message to the server; raises NotConnected."""

    async def send_in_order(self, payload: Payload) -> None:
        """Queue a message behind the data already queued (the eof Close must not overtake
        the frames it ends); waits for room; raises NotConnected."""

    async def wait_ready(self, within: float) -> bool:
        """Wait until Opens may be sent: connected, and our ACLs published to this server
        connection (a server that restarted must know them before it can allow our Open)."""

    async def transmit(self, sid: str, frame: Frame, app_bytes: int | None = None) -> None:
        """Send one numbered frame (P2P if the transport can, else WebSocket). ``app_bytes``:
        what of it the app sent, when sealing changed its size (None: the payload)."""

    async def drain(self, sid: str) -> None:
        """Before Close eof: every frame sent P2P is delivered or queued again on the WebSocket
        (after the Close the server refuses resends); raises PeerSendError if it cannot be."""

    async def outbound_accepted(self, session: OutboundSession) -> None: ...

    async def inbound_accepted(self, session: InboundSession) -> None: ...

    async def session_ended(self, session: OutboundSession | InboundSession) -> None:
        """Remove the session from the manager's maps (called once, by its owner)."""

    def transport_kind(self, sid: str) -> str: ...

    def e2e_sealed(self, e2e: E2ESession) -> None:
        """A session completed its key exchange (the peer's key may be new: keep its pin)."""

    def e2e_plaintext(self, e2e: E2ESession | None, sid: str, peer: str) -> None:
        """A session goes without end-to-end encryption (said once per peer)."""


class AppWriter(Protocol):
    """One local app connection, as an inbound session writes into it."""

    @property
    def closed(self) -> bool:
        """The connection is gone (the app left, or we aborted it)."""

    async def write(self, data: bytes) -> None:
        """Write and drain; raises ConnectionError/OSError when the app is gone."""

    def write_nowait(self, data: bytes) -> bool:
        """Write now if that needs no waiting (nothing buffered); False: nothing written."""

    def finish(self) -> None:
        """End of stream: half-close our sending side (the app reads EOF)."""

    def fail(self, reason: str) -> None:
        """Abort the connection (the app sees a reset, not a clean EOF)."""


class Sink(Protocol):
    """Where an inbound session's bytes go: a TCP-proxy channel or an IPC endpoint."""

    async def wait_writer(self, within: float) -> AppWriter | None:
        """The newest app connection able to take data, waiting up to ``within`` s."""

    def eof_writer(self) -> AppWriter | None:
        """The app connection an empty stream's end belongs to now, without waiting (or
        None: then nobody is told)."""


def log_state(direction: str, sid: str, src: str, dst: str, state: str, detail: str = "") -> None:
    log.info(
        "hotlink session %s %s %s→%s %s%s",
        short_sid(sid),
        direction,
        who(src),
        who(dst),
        state,
        f" {detail}" if detail else "",
    )


class OwnedSession:
    """The lifecycle both kinds of session share: one owner task runs :meth:`_main` and,
    however it ends, :meth:`_end`; anything else ends the session through :meth:`close`."""

    direction: ClassVar[str]  # "in" or "out", for task names

    def __init__(self, host: SessionHost, sid: str, e2e: E2ESession | None = None) -> None:
        self.host = host
        self.sid = sid
        # End-to-end state (None: this session is not sealed, by setting or for lack of a
        # named peer); see protocol/e2e/session.py.
        self.e2e = e2e
        self.close_reason = ""
        self.created = time.monotonic()  # for uptime in the status document
        self._requested_close: str | None = None
        self._done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"hotlink-{self.direction}-{self.sid}"
        )

    @property
    def ended(self) -> bool:
        return self._done.is_set()

    async def wait_closed(self) -> str:
        await self._done.wait()
        return self.close_reason

    async def close(self, reason: str, *, notify: bool) -> None:
        """End the session from outside its owner; ``notify`` tells the peer."""
        if self.ended:
            return
        if notify:
            self._tell_peer(reason)
        self._requested_close = reason
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if not self.ended:
            # Cancelled before its first step, the owner never ran its cleanup.
            await self._end(reason)

    def _tell_peer(self, reason: str) -> None:
        try:
            self.host.send_control(HotlinkClose(self.sid, reason))
        except NotConnected:
            pass

    async def _run(self) -> None:
        reason = "closed"
        try:
            reason = await self._main()
        except asyncio.CancelledError:
            reason = self._requested_close or "cancelled"
        except NotConnected:
            reason = "disconnected"
        except E2EError as exc:
            reason = self._e2e_failed(exc)
            self._tell_peer(reason)
        except Exception as exc:
            reason = self._failure_reason(exc)
            self._tell_peer("error")
        finally:
            await self._end(reason)

    def _failure_reason(self, exc: Exception) -> str:
        """The close reason for an exception out of :meth:`_main` (the peer gets ``error``).

        Unexpected here; a subclass passes the failures it expects without a traceback."""
        log.exception("hotlink session %s failed", short_sid(self.sid))
        return f"error: {exc}"

    def _e2e_failed(self, exc: E2EError) -> str:
        """The close reason for end-to-end protection that failed, said loudly."""
        reason = f"e2e: {exc.reason}"
        log.error("hotlink session %s closed: %s", short_sid(self.sid), reason)
        return reason

    def _snapshot(self, path: str, peer: str, **extra: object) -> dict[str, object]:
        """The session's entry in telemetry (``peer`` defaults to the path's owner)."""
        kind = self.host.transport_kind(self.sid)
        e2e = self.e2e
        return {
            "sid": self.sid[:8],
            "peer": peer or path.split("/", 1)[0],
            "channel": channel_name(path),
            **extra,
            "webrtc": "connected" if kind.startswith("p2p") else "none",
            "transport": kind,
            "e2e": e2e is not None and e2e.sealed,
            "e2e_state": e2e.state if e2e is not None else "off",
            "peer_key": e2e.peer_fingerprint if e2e is not None else "",
        }

    async def _main(self) -> str:
        """The session's work; returns the close reason."""
        raise NotImplementedError

    async def _end(self, reason: str) -> None:
        """Cleanup, run exactly once: set ``close_reason`` and ``_done``, tell the host."""
        raise NotImplementedError
