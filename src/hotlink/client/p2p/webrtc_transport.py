"""WebRTC as the hotlink manager's peer transport (issue 5; PROTOCOL.md §6; DECISIONS.md #1-4).

:class:`WebRTCPeerTransport` implements :class:`~.transport.PeerTransport` on top of the
layer-4 backends. Per session it keeps one :class:`~.p2p_session.P2PSession` (one peer
connection, one ordered ``syftbox-data`` channel); here live the parts shared by all of them:

* signal dispatch: ``sdp_offer``/``sdp_answer``/``ice_candidate`` and the end-to-end
  ``e2e_dtls`` binding go to their session;
  signals too large to be a real peer's are dropped at the door (:func:`~.signaling.oversized`);
  signals for a session we do not know yet are held (bounded, 30 s, DECISIONS.md #4);
  ``webrtc_error`` ends P2P for a session still negotiating; ``quic_*`` kinds are ignored;
* the ICE servers of each new peer: ours from the environment, else the server's advertised
  list and (short-lived) TURN credentials from the upgrade headers (DECISIONS.md #23, #24);
* one outgoing signal queue, so every session's SDP leaves before its candidates;
* the bound on live peer connections, and gauges for leak checks (``p2p_peers``,
  ``p2p_tasks`` in telemetry).

Resends after a mid-stream channel failure go through the host's ``send_in_order`` (the
manager's in-order WebSocket send).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any

from ...protocol.e2e.session import E2ESession
from ...protocol.errors import ProtocolError
from ...protocol.frames import Frame
from ...protocol.ice import (
    ICE_SERVERS_HEADER,
    TURN_PASS_HEADER,
    TURN_USER_HEADER,
    IceServer,
)
from ...protocol.locality import MtuPolicy
from ...protocol.messages import HotlinkSignal, Payload
from ...settings import ClientSettings
from ...webrtc import Backend, BackendUnavailableError, Peer, WebRTCError, load_backend
from ...webrtc.sctp_settings import CONGESTION_CONTROL, DEFAULT_SCTP_SETTINGS, SctpSettings
from ..telemetry import Telemetry
from .session import P2PPathInfo, P2PSession, WebRTCConfig, replay_window
from .signaling import (
    P2P_KINDS,
    WEBRTC_ERROR,
    PendingSignals,
    RecentSids,
    SignalQuota,
    is_legacy_kind,
    oversized,
)
from .stack_id import network_stack_id
from .transport import PeerSendError, SessionInfo, TransportHost
from .turn_diagnosis import TurnDiagnosis

log = logging.getLogger("hotlink.webrtc")

# Signals waiting for the WebSocket; the connection's own queue is the real buffer.
OUTBOX_SIZE = 4096

__all__ = ["WebRTCConfig", "WebRTCPeerTransport", "config_from_settings"]


def sctp_from_settings(settings: ClientSettings) -> SctpSettings:
    """The SCTP settings for libdatachannel: ``webrtc_sctp_buffer`` (0: our default) for both
    the send and the receive buffer, ``webrtc_sctp_cc`` for the congestion control, the rest
    as DEFAULT_SCTP_SETTINGS has it."""
    buffer = settings.webrtc_sctp_buffer
    return dataclasses.replace(
        DEFAULT_SCTP_SETTINGS,
        recv_buffer_size=buffer or DEFAULT_SCTP_SETTINGS.recv_buffer_size,
        send_buffer_size=buffer or DEFAULT_SCTP_SETTINGS.send_buffer_size,
        congestion_control_module=CONGESTION_CONTROL[settings.webrtc_sctp_cc],
    )


def config_from_settings(settings: ClientSettings) -> WebRTCConfig:
    buffered_high = max(1, settings.webrtc_buffered_high)
    sctp = sctp_from_settings(settings)
    return WebRTCConfig(
        backend=settings.webrtc_backend,
        relay_only=settings.relay_only,
        buffered_high=buffered_high,
        mtu=settings.webrtc_mtu,
        sctp=sctp,
        tuned=settings.webrtc_tuning,
        backpressure_wait=settings.webrtc_backpressure_wait_ms / 1000.0,
        grace=settings.ws_fallback_grace_ms / 1000.0,
        open_timeout=settings.webrtc_open_timeout_ms / 1000.0,
        p2p_only=settings.p2p_only,
        strict=settings.bench_strict,
        kill_after=settings.debug_p2p_kill_after,
        replay_window=replay_window(buffered_high, sctp),
        stack_id=network_stack_id(),
    )


def _header(headers: Mapping[str, str], name: str) -> str:
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value.strip()
    return ""


class WebRTCPeerTransport:
    """Hotlink frames over WebRTC data channels, the WebSocket while they are not open."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        backend: Backend | None = None,
        config: WebRTCConfig | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or config_from_settings(settings)
        self._backend = backend
        self._backend_error = ""
        self.host: TransportHost | None = None
        self._sessions: dict[str, P2PSession] = {}
        # Sessions that ended and are closing (a sender lingers until its frames are out).
        self._ending: dict[asyncio.Task[None], P2PSession] = {}
        self._pending = PendingSignals()
        self.signal_quota = SignalQuota()
        self.dropped_signals = 0  # too large to be a real peer's
        self._ended = RecentSids()
        self._outbox: deque[HotlinkSignal] = deque()
        self._outbox_ready: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._advertised: tuple[str | None, str, str] = (None, "", "")
        self._live_peers = 0
        self._gauges: dict[str, int] = {}
        self._closed = False
        self._capacity_logged = False
        self._turn = TurnDiagnosis(relay_only=self.config.relay_only)

    # ------------------------------------------------------------ SessionOwner

    @property
    def telemetry(self) -> Telemetry:
        assert self.host is not None, "bind() first"
        return self.host.telemetry

    @property
    def mtu_policy(self) -> MtuPolicy:
        return MtuPolicy(
            configured=self.config.mtu,
            same_host=self._backend.same_host_mtu if self._backend is not None else 0,
            stack_id=self.config.stack_id,
            relay_only=self.config.relay_only,
        )

    async def send_in_order(self, payload: Payload) -> None:
        assert self.host is not None, "bind() first"
        await self.host.send_in_order(payload)

    def new_peer(self, session: P2PSession, *, mtu: int = 0) -> Peer:
        if self._backend is None:
            raise WebRTCError(f"no WebRTC backend: {self._backend_error}")
        if self._live_peers >= self.config.max_peers:
            if not self._capacity_logged:
                self._capacity_logged = True
                log.warning(
                    "%d peer connections open: new sessions use the websocket until some close",
                    self._live_peers,
                )
            raise WebRTCError(f"too many peer connections ({self._live_peers})")
        peer = self._backend.create_peer(
            self._ice_servers(),
            session,
            relay_only=self.config.relay_only,
            buffered_high=self.config.buffered_high,
            backpressure_wait=self.config.backpressure_wait,
            mtu=mtu,
        )
        self._live_peers += 1
        self._gauge("p2p_peers", self._live_peers)
        return peer

    def peer_closed(self, session: P2PSession) -> None:
        self._live_peers -= 1
        self._gauge("p2p_peers", self._live_peers)
        if self._live_peers < self.config.max_peers:
            self._capacity_logged = False

    def queue_signal(self, signal: HotlinkSignal) -> None:
        if self._closed:
            return
        if len(self._outbox) >= OUTBOX_SIZE:
            log.warning("webrtc signal queue full; dropping %s for %s", signal.knd, signal.sid[:8])
            return
        self._outbox.append(signal)
        if self._outbox_ready is None:
            self._outbox_ready = asyncio.Event()
        self._outbox_ready.set()
        if self._sender is None or self._sender.done():
            self._sender = self.spawn(self._send_signals(), "hotlink-p2p-signals")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        self._gauge("p2p_tasks", len(self._tasks))
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._gauge("p2p_tasks", len(self._tasks))
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    def deliver_frame(self, sid: str, frame: Frame) -> None:
        if self.host is not None:
            self.host.deliver_frame(sid, frame)

    def e2e_session(self, sid: str) -> E2ESession | None:
        return self.host.e2e_session(sid) if self.host is not None else None

    def e2e_failed(self, sid: str, reason: str) -> None:
        if self.host is None or self._closed:
            return
        # Our task, not the session's: closing the hotlink session closes the P2P session,
        # which cancels its own tasks, and this one must not be among them.
        self.spawn(self.host.e2e_failed(sid, reason), f"hotlink-e2e-failed-{sid[:8]}")

    # ------------------------------------------------------------ PeerTransport

    def bind(self, host: TransportHost) -> None:
        self.host = host
        if self._backend is None and not self._backend_error:
            try:
                self._backend = load_backend(
                    self.config.backend,
                    mtu=self.config.mtu,
                    sctp=self.config.sctp,
                    tuned=self.config.tuned,
                )
            except (BackendUnavailableError, ValueError) as exc:
                self._backend_error = str(exc)
                log.error("hotlink webrtc unavailable, every frame uses the websocket: %s", exc)
        if self._backend is not None:
            log.info(
                "hotlink webrtc p2p on: backend %s%s",
                self._backend.name,
                ", relay candidates only" if self.config.relay_only else "",
            )

    def on_server_connected(self, headers: Mapping[str, str]) -> None:
        servers = _header(headers, ICE_SERVERS_HEADER) or None
        user = _header(headers, TURN_USER_HEADER)
        password = _header(headers, TURN_PASS_HEADER)
        self._advertised = (servers, user, password)
        own = self.settings.ice_servers_raw is not None or self.settings.stun_server_raw
        if servers and not own:
            log.info(
                "hotlink ICE servers from server: %s%s",
                servers,
                " (with TURN credentials)" if user else "",
            )
        if self._backend is not None and not self._closed:
            # A wrong TURN password otherwise shows only as channels that never open.
            self.spawn(self._diagnose_turn(), "hotlink-turn-check")

    async def _diagnose_turn(self) -> None:
        await self._turn.check(self._ice_servers())

    async def try_send(self, sid: str, frame: Frame) -> bool:
        session = self._sessions.get(sid)
        if session is None:
            info = self.host.session_info(sid) if self.host is not None else None
            if info is None or info.role != "outbound" or self._closed:
                if self.config.p2p_only or self.config.strict:
                    raise PeerSendError("hotlink p2p_only send failed: no webrtc session")
                return False
            session = self._start_session(info)
        elif session.role != "outbound":
            # Data flows opener -> acceptor; the acceptor's channel is only for receiving.
            return False
        return await session.try_send(frame)

    async def drain(self, sid: str) -> None:
        session = self._sessions.get(sid)
        if session is not None and session.role == "outbound":
            await session.drain()

    async def on_inbound_accepted(self, session: SessionInfo) -> None:
        if session.sid not in self._sessions and not self._closed:
            self._start_session(session)

    async def on_outbound_accepted(self, session: SessionInfo) -> None:
        if session.sid not in self._sessions and not self._closed:
            self._start_session(session)

    async def on_signal(self, signal: HotlinkSignal) -> None:
        if self._closed:
            return
        too_large = oversized(signal)
        if too_large:
            self._drop_oversized(signal, too_large)
            return
        kind = signal.knd
        if is_legacy_kind(kind):
            return
        if kind not in P2P_KINDS:
            log.debug("ignoring signal kind %r for %s", kind, signal.sid[:8])
            return
        session = self._sessions.get(signal.sid)
        if session is not None:
            session.push_signal(signal)
            return
        if signal.sid in self._ended:
            log.debug("late %s for ended session %s ignored", kind, signal.sid[:8])
            return
        if kind == WEBRTC_ERROR:
            log.info("hotlink webrtc error: session=%s error=%s", signal.sid[:8], signal.err or "-")
            return
        info = self.host.session_info(signal.sid) if self.host is not None else None
        if info is not None and info.role == "outbound":
            # The offer can be here before our accept hook ran: the session is ours already.
            self._start_session(info).push_signal(signal)
            return
        self._pending.add(signal, asyncio.get_running_loop().time())

    def _drop_oversized(self, signal: HotlinkSignal, why: str) -> None:
        # Before anything holds it: queued, such signals could cost megabytes each.
        self.dropped_signals += 1
        if self.dropped_signals == 1 or self.dropped_signals % 100 == 0:
            log.warning(
                "dropping a webrtc signal with %s for session %s: not a real peer's "
                "(%d dropped so far)",
                why,
                signal.sid[:8],
                self.dropped_signals,
            )

    def stream_ending(self, sid: str) -> None:
        session = self._sessions.get(sid)
        if session is not None:
            session.stream_ending()

    async def on_session_closed(self, sid: str) -> None:
        self._ended.add(sid)
        self._pending.discard(sid)
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        task = self.spawn(session.close(linger=True), f"hotlink-p2p-close-{sid[:8]}")
        self._ending[task] = session
        task.add_done_callback(self._forget_ending)

    def _forget_ending(self, task: asyncio.Task[None]) -> None:
        self._ending.pop(task, None)

    def transport_kind(self, sid: str) -> str:
        session = self._sessions.get(sid)
        return session.transport_kind() if session is not None else "ws"

    def path_info(self, sid: str) -> P2PPathInfo | None:
        """The peer connection of a live session, for the status document (None: it has none)."""
        session = self._sessions.get(sid)
        return session.path_info() if session is not None else None

    @property
    def backend_name(self) -> str | None:
        """The WebRTC library in use, or None when none loaded."""
        return self._backend.name if self._backend is not None else None

    async def close(self) -> None:
        """Close every peer connection (no lingering) and every task."""
        self._closed = True
        sessions = list(self._sessions.values())
        self._sessions.clear()
        ending = dict(self._ending)
        for task in ending:
            task.cancel()
        await asyncio.gather(*ending, return_exceptions=True)
        # Closing again is safe: it stops what is left and waits for the peer's teardown.
        sessions += ending.values()
        await asyncio.gather(*(s.close(linger=False) for s in sessions), return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ internals

    def _start_session(self, info: SessionInfo) -> P2PSession:
        session = P2PSession(self, info)
        self._sessions[info.sid] = session
        if self._backend is None:
            session.start_failed(f"no WebRTC backend: {self._backend_error}")
        else:
            session.start()
        for early in self._pending.take(info.sid, asyncio.get_running_loop().time()):
            session.push_signal(early)
        return session

    def _ice_servers(self) -> list[IceServer]:
        advertised, user, password = self._advertised
        try:
            return self.settings.ice_servers(advertised, user, password)
        except ProtocolError as exc:
            log.warning("ignoring the server's ICE servers %r: %s", advertised, exc)
            return self.settings.ice_servers()

    async def _send_signals(self) -> None:
        ready = self._outbox_ready
        assert ready is not None
        while True:
            while self._outbox:
                signal = self._outbox.popleft()
                if self.host is None:
                    continue
                try:
                    await self.host.send_signal(signal)
                except Exception as exc:
                    log.info(
                        "webrtc signal %s for %s not sent: %s", signal.knd, signal.sid[:8], exc
                    )
            ready.clear()
            await ready.wait()

    def _gauge(self, name: str, value: int) -> None:
        """Keep a telemetry counter equal to ``value`` (Telemetry only has increments)."""
        if self.host is None:
            return
        delta = value - self._gauges.get(name, 0)
        if delta:
            self._gauges[name] = value
            with contextlib.suppress(Exception):
                self.host.telemetry.incr(name, delta)
