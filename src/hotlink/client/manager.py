"""The hotlink manager: the six hotlink messages, the session maps and the send paths.

Outbound sessions are keyed by their folder (PROTOCOL.md §4.2): the IPC path shares one
session per folder for all its files, while each TCP-proxy app connection opens its own
(``open_stream``), closing any older one for that folder. Inbound sessions are keyed by sid.
Every frame is offered to the peer transport first and goes over the WebSocket otherwise;
every received frame, whichever path it took, enters the session's one reorder buffer.
What inbound sessions hold is charged to one :class:`~.session.budget.MemoryBudget`, per peer
and in total; an Open past a peer's session cap is Rejected before anything is made for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..protocol.acl import short_path
from ..protocol.e2e.handshake import E2E_HELLO
from ..protocol.e2e.session import E2ESession
from ..protocol.errors import ProtocolError
from ..protocol.flow import FLOW_KIND, parse_credit_token
from ..protocol.frames import Frame
from ..protocol.markers import (
    ACCEPT_MARKER,
    is_hotlink_path,
    is_tcp_proxy_path,
    path_owner,
    session_dir,
)
from ..protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
    Message,
    Payload,
    new_session_id,
)
from .connection import NotConnected
from .e2e.context import E2EContext
from .p2p.transport import NullPeerTransport, PeerSendError, PeerTransport, SessionInfo
from .session.base import FlowConfig, SessionClosed, Sink, short_reason, short_sid
from .session.budget import BudgetExceeded, BudgetLease, BudgetLimits, MemoryBudget
from .session.hints import HINTS
from .session.inbound import InboundSession
from .session.outbound import ACCEPT_TIMEOUT, OutboundSession
from .telemetry import Telemetry

log = logging.getLogger("hotlink.manager")


class Wire(Protocol):
    """The server connection as the manager uses it."""

    @property
    def connected(self) -> bool: ...

    def send_control(self, message: Message) -> None: ...

    async def send(self, message: Message) -> None: ...

    async def wait_connected(self, within: float | None = None) -> bool: ...


class TunnelRegistry(Protocol):
    """The TCP proxy as the manager sees it: which local channel a tunnel path belongs to."""

    def sink_for(self, path: str, peer: str) -> Sink | None:
        """The channel whose writer keys include ``path`` and whose peer is ``peer``."""


class IpcSink(Sink, Protocol):
    """An inbound session's lease on the IPC endpoint of its folder."""

    def release(self) -> None:
        """The session ended: the endpoint may close once nothing else uses it."""


class IpcRegistry(Protocol):
    """The IPC hub as the manager sees it."""

    async def endpoint_for(self, folder: Path) -> IpcSink:
        """A lease on the IPC endpoint (listener + marker) of a session folder, which it
        creates inside the datasites without following links; raises OSError."""


@dataclass
class ManagerConfig:
    accept_timeout: float = ACCEPT_TIMEOUT
    debug: bool = False
    flow: FlowConfig = field(default_factory=FlowConfig)
    # What inbound sessions may hold, per peer and in total; None: the defaults for the flow
    # window (BudgetLimits.for_window).
    budget: BudgetLimits | None = None


# Waits up to ``within`` s until Opens may be sent; False if that did not happen in time.
ReadyGate = Callable[[float], Awaitable[bool]]


def local_path(datasites: Path, rel: str) -> Path | None:
    """``datasites/rel`` for a datasite-relative path from the network, or None if unsafe."""
    segments = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or "\x00" in rel
        or any(s in ("", ".", "..") for s in segments)
    ):
        return None
    return datasites.joinpath(*segments)


class HotlinkManager:
    def __init__(
        self,
        *,
        local_email: str,
        datasites: Path,
        wire: Wire,
        telemetry: Telemetry,
        transport: PeerTransport | None = None,
        config: ManagerConfig | None = None,
        ready: ReadyGate | None = None,
        e2e: E2EContext | None = None,
    ) -> None:
        self.local_email = local_email
        self.datasites = datasites
        self.wire = wire
        self.telemetry = telemetry
        self.transport: PeerTransport = transport or NullPeerTransport()
        self.config = config or ManagerConfig()
        # End-to-end sealing (None: off).
        self.e2e = e2e
        # The daemon's gate also waits for our ACLs to be re-published after a (re)connect.
        self._ready: ReadyGate = ready or wire.wait_connected
        self._bad_credit_logged = False
        # One ledger for the memory every inbound session holds (session/budget.py).
        self.budget = MemoryBudget(
            self.config.budget or BudgetLimits.for_window(self.config.flow.window)
        )
        self.tunnels: TunnelRegistry | None = None
        self.ipc: IpcRegistry | None = None
        self.outbound: dict[str, OutboundSession] = {}  # folder -> session
        self.outbound_by_sid: dict[str, OutboundSession] = {}
        self.inbound: dict[str, InboundSession] = {}  # sid -> session
        # Live outbound sessions the peer sent P2P frames on (dropped, logged once each).
        self._reverse_logged: set[str] = set()
        self._ipc_sinks: dict[str, IpcSink] = {}  # inbound sid -> its IPC endpoint lease
        self._ipc_refused = 0
        self._open_lock = asyncio.Lock()
        self._closing = False
        # Told of each session as it ends, before the transport forgets it (the status
        # document keeps the recent ones with their close reason and path).
        self.ended_hook: Callable[[OutboundSession | InboundSession], None] | None = None
        self.transport.bind(self)
        telemetry.sessions_source = self._telemetry_sessions

    # ------------------------------------------------------------ SessionHost / TransportHost

    def send_control(self, payload: Payload) -> None:
        self.wire.send_control(Message.new(payload))

    async def send_in_order(self, payload: Payload) -> None:
        await self.wire.send(Message.new(payload))

    async def wait_ready(self, within: float) -> bool:
        return await self._ready(within)

    async def transmit(self, sid: str, frame: Frame, app_bytes: int | None = None) -> None:
        started = time.monotonic()
        try:
            sent_p2p = await self.transport.try_send(sid, frame)
        except PeerSendError:
            raise  # the session fails; no WebSocket fallback in this mode
        except Exception:
            log.exception("peer transport failed to send; using the websocket")
            sent_p2p = False
        if not sent_p2p:
            await self.wire.send(
                Message.new(HotlinkData(sid, frame.seq, frame.path, frame.etag, frame.payload))
            )
        via = "p2p" if sent_p2p else "ws"
        nbytes = len(frame.payload) if app_bytes is None else app_bytes
        if nbytes:  # not a sealed end, which carries nothing of the app's
            self.telemetry.record_tx(nbytes, (time.monotonic() - started) * 1000.0, via)
        if self.config.debug and (frame.seq <= 3 or frame.seq % 500 == 0):
            log.debug(
                "hotlink send data: session=%s seq=%d bytes=%d via=%s path=%s",
                short_sid(sid),
                frame.seq,
                len(frame.payload),
                via,
                frame.path,
            )

    async def drain(self, sid: str) -> None:
        # No fallback on failure here: an eof that promises lost seqs is worse than an error.
        await self.transport.drain(sid)

    async def outbound_accepted(self, session: OutboundSession) -> None:
        self.telemetry.changed()
        await self._hook(
            self.transport.on_outbound_accepted,
            SessionInfo(session.sid, session.path, "outbound", self.local_email, session.to),
        )

    async def inbound_accepted(self, session: InboundSession) -> None:
        self.telemetry.changed()
        await self._hook(
            self.transport.on_inbound_accepted,
            SessionInfo(session.sid, session.path, "inbound", self.local_email, session.peer),
        )

    async def session_ended(self, session: OutboundSession | InboundSession) -> None:
        if self.ended_hook is not None:
            try:
                self.ended_hook(session)
            except Exception:
                log.exception("session end hook failed")
        if isinstance(session, OutboundSession):
            if self.outbound.get(session.key) is session:
                del self.outbound[session.key]
            if self.outbound_by_sid.get(session.sid) is session:
                del self.outbound_by_sid[session.sid]
            self._reverse_logged.discard(session.sid)
        elif self.inbound.get(session.sid) is session:
            del self.inbound[session.sid]
            ipc_sink = self._ipc_sinks.pop(session.sid, None)
            if ipc_sink is not None:
                ipc_sink.release()
        self.telemetry.changed()
        await self._hook(self.transport.on_session_closed, session.sid)

    def transport_kind(self, sid: str) -> str:
        try:
            return self.transport.transport_kind(sid)
        except Exception:
            return "ws"

    def e2e_sealed(self, e2e: E2ESession) -> None:
        if self.e2e is not None:
            self.e2e.sealed(e2e)
        self.telemetry.changed()

    def e2e_plaintext(self, e2e: E2ESession | None, sid: str, peer: str) -> None:
        if self.e2e is None:
            return  # off by the user's choice: said once at start
        why = e2e.plaintext_reason if e2e is not None else "the session names no peer"
        self.e2e.warn_plaintext(peer, sid, why)
        self.telemetry.changed()

    def e2e_session(self, sid: str) -> E2ESession | None:
        """The end-to-end state of a live session (for the peer transport's DTLS binding)."""
        session = self.inbound.get(sid) or self.outbound_by_sid.get(sid)
        return session.e2e if session is not None and not session.ended else None

    async def e2e_failed(self, sid: str, reason: str) -> None:
        """End-to-end protection failed outside the session's own path (the data channel's
        DTLS binding): close the session loudly, the app sees a reset."""
        session = self.inbound.get(sid) or self.outbound_by_sid.get(sid)
        if session is None or session.ended:
            return
        log.error("hotlink session %s closed: e2e: %s", short_sid(sid), reason)
        await session.close(f"e2e: {reason}", notify=True)

    async def send_signal(self, signal: HotlinkSignal) -> None:
        try:
            self.wire.send_control(Message.new(signal))
        except NotConnected:
            log.debug("signal for %s dropped: not connected", short_sid(signal.sid))

    def deliver_frame(self, sid: str, frame: Frame) -> None:
        """The receive path for frames from a peer transport (same as WebSocket data).

        Never waits: the data channel's reader must not stop for one slow app."""
        session = self.inbound.get(sid)
        if session is not None:
            self.telemetry.record_received(len(frame.payload), "p2p")
            session.receive(frame)
            return
        outbound = self.outbound_by_sid.get(sid)
        if outbound is None:
            log.debug("frame for unknown inbound session %s dropped", short_sid(sid))
        elif sid not in self._reverse_logged:
            # A reference Rust client in P2P-only mode may adopt the session we opened and send
            # its own stream back over our channel, under our sid; PROTOCOL.md §6.8 routes such
            # TCP-proxy frames by path. We do not: that stream has no Open, Accept or Close of
            # its own (nothing would end it cleanly) and would die with our session. Outside
            # P2P-only mode the Rust client opens a session per direction, which works. Said
            # once per session, so the loss is never silent.
            self._reverse_logged.add(sid)
            log.warning(
                "hotlink session %s: dropping p2p frames the peer sent on our outbound session "
                "(path %s, seq %d): a peer in p2p-only mode reusing it for its own stream is "
                "not supported; it must open its own session",
                short_sid(sid),
                frame.path,
                frame.seq,
            )

    def session_info(self, sid: str) -> SessionInfo | None:
        inbound = self.inbound.get(sid)
        if inbound is not None and not inbound.ended:
            return SessionInfo(sid, inbound.path, "inbound", self.local_email, inbound.peer)
        outbound = self.outbound_by_sid.get(sid)
        if outbound is not None and not outbound.ended:
            return SessionInfo(sid, outbound.path, "outbound", self.local_email, outbound.to)
        return None

    async def _hook(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("peer transport hook %s failed", getattr(fn, "__name__", fn))

    # ------------------------------------------------------------ sending (apps -> peer)

    async def open_stream(self, path: str, to: str = "") -> OutboundSession:
        """A new outbound session for a TCP tunnel stream (one per app connection)."""
        key = session_dir(path)
        async with self._open_lock:
            old = self.outbound.get(key)
            if old is not None:
                await old.close("superseded", notify=True)
            return self._start_outbound(key, path, to)

    async def send(self, path: str, payload: bytes, etag: str = "") -> OutboundSession:
        """Send one IPC frame on the shared session of its folder (opened on first use);
        the session it went out on. Raises SessionClosed."""
        if not payload or not path.strip():
            # The IPC edge drops these: an empty payload would leave a hole in the seqs.
            raise ValueError("an IPC frame needs a path and a payload")
        if not etag:
            etag = hashlib.md5(payload).hexdigest()
        key = session_dir(path)
        for _ in range(2):
            async with self._open_lock:
                session = self.outbound.get(key)
                if session is None or session.ended:
                    session = self._start_outbound(key, path, self._peer_for_folder(key))
            try:
                await session.send(path, payload, etag)
                return session
            except SessionClosed:
                continue  # it ended between lookup and send: open a fresh one once
        raise SessionClosed("session closed")

    def _peer_for_folder(self, key: str) -> str:
        # Rust's rule: answer the user whose inbound session uses this folder.
        for session in self.inbound.values():
            if session.folder == key and session.peer and session.peer != self.local_email:
                return session.peer
        return ""

    def _start_outbound(self, key: str, path: str, to: str) -> OutboundSession:
        if self._closing:
            raise SessionClosed("shutting down")
        sid = new_session_id()
        e2e = None
        if self.e2e is not None:
            e2e = self.e2e.outbound(sid, path, self.local_email, to)
            if e2e is None and self.e2e.required:
                raise SessionClosed(
                    f"end-to-end encryption is required, but a session for {short_path(path)} "
                    "names no peer (the relay would send it to everyone who may read the path)"
                )
        session = OutboundSession(
            self,
            sid=sid,
            key=key,
            path=path,
            to=to,
            accept_timeout=self.config.accept_timeout,
            flow=self.config.flow,
            e2e=e2e,
            hello_wait=self.e2e.hello_wait if self.e2e is not None else 0.0,
        )
        self.outbound[key] = session
        self.outbound_by_sid[session.sid] = session
        session.start()
        self.telemetry.changed()
        return session

    # ------------------------------------------------------------ messages from the server

    async def handle_message(self, message: Message) -> None:
        payload = message.payload
        if isinstance(payload, HotlinkOpen):
            await self._on_open(payload)
        elif isinstance(payload, HotlinkAccept):
            self._on_accept(payload)
        elif isinstance(payload, HotlinkReject):
            await self._on_reject(payload)
        elif isinstance(payload, HotlinkData):
            await self._on_data(payload)
        elif isinstance(payload, HotlinkClose):
            await self._on_close(payload)
        elif isinstance(payload, HotlinkSignal):
            if payload.knd == FLOW_KIND:
                self._on_credit(payload)
            elif payload.knd == E2E_HELLO:
                self._on_hello(payload)
            else:
                await self._hook(self.transport.on_signal, payload)

    async def _on_open(self, msg: HotlinkOpen) -> None:
        if self._closing or msg.sid in self.inbound or msg.sid in self.outbound_by_sid:
            return
        if not msg.sid or not msg.pth:
            log.warning("ignoring HotlinkOpen without sid or path")
            return
        folder = session_dir(msg.pth)
        if local_path(self.datasites, folder) is None or path_owner(msg.pth) == "":
            HINTS.ignored_open(msg.frm, short_sid(msg.sid), repr(msg.pth), "unsafe path")
            return
        if is_tcp_proxy_path(msg.pth):
            sink = self.tunnels.sink_for(msg.pth, msg.frm) if self.tunnels else None
            if sink is None:
                # Not our tunnel: stay silent, a Reject would fail the opener's session.
                HINTS.ignored_open(msg.frm, short_sid(msg.sid), msg.pth, "no local tcp proxy for")
                return
            lease = self._lease(msg)
            if lease is not None:
                self._start_inbound(msg, folder, "tcp", sink, None, lease)
            return
        if not is_hotlink_path(msg.pth):
            HINTS.ignored_open(msg.frm, short_sid(msg.sid), msg.pth, "not a request path:")
            return
        folder_abs = local_path(self.datasites, folder)
        assert folder_abs is not None
        # Refused before anything is made on disk for it.
        lease = self._lease(msg)
        if lease is None:
            return
        try:
            if self.ipc is None:
                raise OSError("ipc is off")
            # Makes the folder one segment at a time, refusing links out of the datasites.
            sink = await self.ipc.endpoint_for(folder_abs)
        except OSError as exc:
            lease.close()
            self._ipc_refused += 1
            # An Open per refusal could fill the log: the first and every 100th.
            if self._ipc_refused == 1 or self._ipc_refused % 100 == 0:
                log.warning(
                    "ipc unavailable for %s: %s (%d refused so far)",
                    short_path(folder),
                    short_path(str(exc), 300),
                    self._ipc_refused,
                )
            self._reject(msg.sid, "ipc unavailable")
            return
        except BaseException:
            lease.close()  # no session will own it
            raise
        self._ipc_sinks[msg.sid] = sink
        self._start_inbound(msg, folder, "ipc", sink, folder_abs / ACCEPT_MARKER, lease)

    def _lease(self, msg: HotlinkOpen) -> BudgetLease | None:
        """The new session's share of the memory budget, or None: Rejected (too many sessions
        from this peer, or in all). Other sessions are not touched."""
        try:
            return self.budget.open(msg.frm)
        except BudgetExceeded as exc:
            refused = self.budget.refused_opens
            # A peer that keeps opening could fill the log: the first and every 100th.
            if refused == 1 or refused % 100 == 0:
                log.warning(
                    "refusing hotlink open %s from %s: %s (%d refused so far)",
                    short_sid(msg.sid),
                    msg.frm,
                    exc.reason,
                    refused,
                )
            self._reject(msg.sid, exc.reason)
            return None

    def _reject(self, sid: str, reason: str) -> None:
        try:
            self.send_control(HotlinkReject(sid, reason))
        except NotConnected:
            pass

    def _start_inbound(
        self,
        msg: HotlinkOpen,
        folder: str,
        kind: str,
        sink: Sink,
        accept_marker: Path | None,
        lease: BudgetLease,
    ) -> None:
        session = InboundSession(
            self,
            sid=msg.sid,
            path=msg.pth,
            peer=msg.frm,
            folder=folder,
            kind="tcp" if kind == "tcp" else "ipc",
            sink=sink,
            accept_marker=accept_marker,
            flow=self.config.flow,
            lease=lease,
            e2e=(
                self.e2e.inbound(msg.sid, msg.pth, msg.frm, msg.to, self.local_email)
                if self.e2e is not None
                else None
            ),
        )
        self.inbound[msg.sid] = session
        session.start()
        self.telemetry.changed()

    def _on_accept(self, msg: HotlinkAccept) -> None:
        session = self.outbound_by_sid.get(msg.sid)
        if session is None:
            log.debug("accept for unknown session %s", short_sid(msg.sid))
            return
        session.on_accept()

    async def _on_reject(self, msg: HotlinkReject) -> None:
        outbound = self.outbound_by_sid.get(msg.sid)
        if outbound is not None:
            reason = short_reason(msg.rsn)
            log.info("hotlink session %s rejected: %s", short_sid(msg.sid), reason or "-")
            outbound.on_reject(reason)
            return
        inbound = self.inbound.get(msg.sid)
        if inbound is not None:
            # The server refused our Accept (permission denied, already accepted, ...).
            await inbound.close(f"rejected: {short_reason(msg.rsn) or '-'}", notify=False)

    async def _on_data(self, msg: HotlinkData) -> None:
        session = self.inbound.get(msg.sid)
        if session is None or not msg.pay:
            return
        self.telemetry.record_received(len(msg.pay), "ws")
        session.receive(Frame(msg.pth or session.path, msg.etg, msg.seq, msg.pay))

    def _on_hello(self, msg: HotlinkSignal) -> None:
        session = self.outbound_by_sid.get(msg.sid) or self.inbound.get(msg.sid)
        if session is not None:
            session.on_e2e_hello(msg.tok)

    def _on_credit(self, msg: HotlinkSignal) -> None:
        session = self.outbound_by_sid.get(msg.sid)
        if session is None:
            return  # a late grant for a session that ended
        try:
            credit = parse_credit_token(msg.tok)
        except ProtocolError as exc:
            if not self._bad_credit_logged:
                self._bad_credit_logged = True
                log.warning(
                    "ignoring a bad flow credit for %s from %s: %s (logged once)",
                    short_sid(msg.sid),
                    session.to or "the receiver",
                    exc,
                )
            return
        session.on_credit(credit)

    async def _on_close(self, msg: HotlinkClose) -> None:
        outbound = self.outbound_by_sid.get(msg.sid)
        if outbound is not None:
            await outbound.close(f"closed by peer: {short_reason(msg.rsn) or '-'}", notify=False)
            return
        inbound = self.inbound.get(msg.sid)
        if inbound is None:
            return
        if inbound.peer_closed(msg.rsn):
            # The stream ends cleanly: its channel closing from now on is not a failure.
            self.transport.stream_ending(msg.sid)
        else:
            await inbound.close(short_reason(msg.rsn) or "closed by peer", notify=False)

    # ------------------------------------------------------------ lifecycle

    async def on_disconnected(self) -> None:
        """The server forgot every session: end ours (apps bound to them are closed)."""
        await self._close_all("disconnected", notify=False)

    async def close(self) -> None:
        """Shutdown: tell peers (best effort) and end every session."""
        self._closing = True
        await self._close_all("shutdown", notify=True)

    async def _close_all(self, reason: str, *, notify: bool) -> None:
        sessions: list[OutboundSession | InboundSession] = [
            *self.outbound_by_sid.values(),
            *self.inbound.values(),
        ]
        await asyncio.gather(*(s.close(reason, notify=notify) for s in sessions))

    def _telemetry_sessions(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return (
            [s.snapshot() for s in self.inbound.values()],
            [s.snapshot() for s in self.outbound_by_sid.values()],
        )
