"""The client's status document: what is up, built in one place from the daemon's parts.

``GET /status`` on the control socket (:mod:`.control`) serves it and ``hotlink status``
prints it. It reads the live objects (the connection, the ACL publisher, the manager's
sessions, the peer transport's channels, the TCP proxy's tunnels) at the moment it is asked,
so it never goes stale; the only state of its own is what the live objects forget:

* rates: a sampler (the control server's task, once a second) keeps a few byte-count samples
  per live session, and a rate is the change over the last :data:`RATE_WINDOW` seconds;
* the sessions that ended recently, with their close reason (the last :data:`RECENT_MAX`),
  and the bytes ended sessions carried per tunnel;
* the connection's history: connected since, the last error it logged.

Bytes are payload bytes. A session carries one direction (the opener sends, the acceptor
receives), so an outbound session has ``tx_bytes`` and an inbound one ``rx_bytes``; a tunnel
has one of each per app connection. Round trips are measured values only (``rtt_ms`` None
where nothing measured one): for an open data channel, what the WebRTC library measured
(aiortc's SCTP; libdatachannel exposes none); for the WebSocket, the kernel's RTT of the TCP
connection to the relay (Linux ``TCP_INFO``), the hop a relayed frame takes first.

End-to-end encryption (docs/SECURITY.md): the top-level ``e2e`` says the mode and this
client's identity key fingerprint; each session, live or ended, says whether it is sealed
(``e2e``), its state (``e2e_state``: off, pending, sealed, plaintext) and the fingerprint of
the key its peer proved (``peer_key``), for comparing with the peer out of band.

Times are Unix seconds (``*_at``, ``*_since``) or seconds (``*_s``).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .. import __version__
from ..protocol.markers import is_tcp_proxy_path
from ..settings import ClientSettings
from .session.base import EOF, channel_name
from .session.inbound import InboundSession
from .session.outbound import OutboundSession
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .acl_publisher import AclPublisher
    from .e2e.context import E2EContext
    from .edges.tcp_proxy import TcpProxy, TunnelChannel
    from .manager import HotlinkManager
    from .p2p.session import P2PPathInfo

SCHEMA = 1
# Ended sessions kept for the document.
RECENT_MAX = 32
# A rate is the change over about this many seconds.
RATE_WINDOW = 5.0
# Samples kept per session: one a second covers the window.
RATE_SAMPLES = 8
# Younger than this, a session has no rate yet (a few bytes over a few ms say nothing).
RATE_MIN_SPAN = 0.25
# The logger whose warnings are the connection's errors (``hotlink.client.connection``).
CONNECTION_LOGGER = "hotlink.connection"

Session = OutboundSession | InboundSession


# ---------------------------------------------------------------- the document's parts


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    state: str  # "connected" or "disconnected" (which includes "connecting")
    server_url: str
    connected_since: float | None
    disconnected_since: float | None
    connects: int
    reconnects: int
    last_error: str
    last_error_at: float | None
    encoding: str
    # Our TCP connection to the relay, as the kernel measured it.
    rtt_ms: float | None
    # This connection's first ACL publish round is over (Opens wait for it).
    acls_published: bool


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    key: str  # the canonical key both parties send on
    local_key: str
    peer: str
    bind: str
    port: int
    listening: bool
    app_connections: int
    sessions: int  # live sessions on this tunnel (one per direction per app connection)
    # Since the daemon started (live and ended sessions).
    tx_bytes: int
    rx_bytes: int
    # Of the live sessions, bytes/s.
    tx_rate: float | None
    rx_rate: float | None


@dataclass(frozen=True, slots=True)
class SessionStatus:
    sid: str
    direction: str  # "out": we opened and send; "in": we accepted and receive
    peer: str  # "*" for an outbound session to whoever may read
    path: str
    channel: str
    kind: str  # "tcp" (tunnel) or "ipc"
    state: str  # out: pending/accepted/rejected/closed; in: accepting/accepted
    transport: str  # ws, p2p-host, p2p-srflx, p2p-relay
    p2p: str  # the peer connection: off/new/negotiating/open/failed/closed
    tx_bytes: int
    rx_bytes: int
    held_bytes: int  # received, not yet taken by the app (inbound)
    tx_rate: float | None
    rx_rate: float | None
    rtt_ms: float | None
    rtt_source: str | None  # "sctp" (the data channel) or "relay-tcp" (the WebSocket's hop)
    opened_at: float
    uptime_s: float
    last_error: str
    e2e: bool  # sealed end to end
    e2e_state: str  # off, pending, sealed or plaintext
    peer_key: str  # the peer's identity key fingerprint, once its key exchange verified


@dataclass(frozen=True, slots=True)
class EndedSession:
    sid: str
    direction: str
    peer: str
    path: str
    channel: str
    kind: str
    transport: str  # the path it used last
    tx_bytes: int
    rx_bytes: int
    opened_at: float
    ended_at: float
    duration_s: float
    reason: str
    clean: bool  # ended with the stream's eof
    e2e: bool
    e2e_state: str
    peer_key: str


# ---------------------------------------------------------------- small measures


class RateMeter:
    """Bytes/s of one session from samples of its counters (times passed in, monotonic)."""

    def __init__(self, created: float, window: float = RATE_WINDOW) -> None:
        self.created = created
        self.window = window
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=RATE_SAMPLES)

    def add(self, now: float, tx: int, rx: int) -> None:
        self._samples.append((now, tx, rx))

    def rates(self, now: float, tx: int, rx: int) -> tuple[float | None, float | None]:
        """``(tx, rx)`` bytes/s over the window; None when nothing can say (too young, or
        no sample within the window of an older session)."""
        # Oldest first, so the longest span within the window wins; the counters start at
        # zero when the session is made, which is the first sample of all.
        base: tuple[float, int, int] | None = None
        for sample in ((self.created, 0, 0), *self._samples):
            if RATE_MIN_SPAN <= now - sample[0] <= self.window:
                base = sample
                break
        if base is None:
            return None, None
        span = now - base[0]
        return max(0, tx - base[1]) / span, max(0, rx - base[2]) / span


# Offsets in Linux's struct tcp_info (include/uapi/linux/tcp.h): eight one-byte fields, then
# u32s; tcpi_rtt (smoothed) since 2.6, tcpi_min_rtt (windowed minimum) since 4.6.
_TCPI_RTT = 68
_TCPI_MIN_RTT = 148
_TCP_INFO_LEN = 232


def tcp_rtt(sock: Any) -> float | None:
    """The round trip of a connected TCP socket as the kernel measured it, in seconds (Linux).

    The kernel's windowed minimum RTT when it keeps one, else its smoothed RTT. The minimum is
    the path's round trip: the smoothed value of a connection that mostly sends one way (as
    a hotlink sender's connection to the relay does) also counts the receiver's delayed ACKs,
    which make even loopback look like milliseconds."""
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_LEN)
    except (OSError, AttributeError, TypeError):
        return None
    if len(info) >= _TCPI_MIN_RTT + 4:
        (min_us,) = struct.unpack_from("=I", info, _TCPI_MIN_RTT)
        if 0 < min_us < 0xFFFFFFFF:  # ~0U: no sample yet
            return min_us / 1e6
    if len(info) < _TCPI_RTT + 4:
        return None
    (rtt_us,) = struct.unpack_from("=I", info, _TCPI_RTT)
    return rtt_us / 1e6 if rtt_us else None


class ConnectionView(Protocol):
    """The server connection as the status reads it (``client.connection.ServerConnection``)."""

    @property
    def connected(self) -> bool: ...

    @property
    def connects(self) -> int: ...

    @property
    def encoding(self) -> str: ...


@runtime_checkable
class PathReporter(Protocol):
    """A peer transport that can describe a session's peer connection (WebRTC's can)."""

    def path_info(self, sid: str) -> P2PPathInfo | None: ...


def relay_rtt(connection: ConnectionView) -> float | None:
    """The round trip of our TCP connection to the relay, in seconds, or None."""
    # ServerConnection keeps its socket private; its transport's socket is all we read.
    ws = getattr(connection, "_ws", None)
    if ws is None:
        return None
    try:
        return tcp_rtt(ws.get_extra_info("socket"))
    except Exception:
        return None


class ConnectionTracker:
    """What the connection itself does not keep: since when it is up (or down), and the last
    error it reported. The daemon tells it of (dis)connects; errors come from the warnings
    the connection logs (refused upgrades, unreachable server, failed writes), caught by a
    logging handler for as long as the tracker is open."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.connected_since: float | None = None
        self.disconnected_since: float | None = clock()
        self.last_error = ""
        self.last_error_at: float | None = None
        self._handler: _ErrorCatcher | None = None

    def on_connected(self) -> None:
        self.connected_since = self._clock()
        self.disconnected_since = None

    def on_disconnected(self) -> None:
        if self.disconnected_since is None:
            self.disconnected_since = self._clock()
        self.connected_since = None

    def note_error(self, text: str) -> None:
        self.last_error = text
        self.last_error_at = self._clock()

    def watch(self, logger_name: str = CONNECTION_LOGGER) -> None:
        if self._handler is None:
            self._handler = _ErrorCatcher(self)
            logging.getLogger(logger_name).addHandler(self._handler)

    def close(self, logger_name: str = CONNECTION_LOGGER) -> None:
        if self._handler is not None:
            logging.getLogger(logger_name).removeHandler(self._handler)
            self._handler = None


class _ErrorCatcher(logging.Handler):
    def __init__(self, tracker: ConnectionTracker) -> None:
        super().__init__(logging.WARNING)
        self.tracker = tracker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            return
        # The disconnect itself is in disconnected_since; its cause was logged before it.
        if not text.startswith("disconnected from"):
            self.tracker.note_error(text[:300])


def acls_published(acl: AclPublisher | None) -> bool:
    """Whether this connection's first ACL publish round is over."""
    if acl is None:
        return False
    # The publisher has no public flag; the event Opens wait on is that flag.
    return acl._first_round.is_set()


# ---------------------------------------------------------------- the builder


class StatusBuilder:
    """Builds the document; owns the recent-sessions ring, the rate samples and the tracker.

    Give it the daemon's parts; it registers itself with the manager for ended sessions.
    :meth:`sample` should run about once a second (the control server does it);
    :meth:`close` unhooks it."""

    def __init__(
        self,
        *,
        settings: ClientSettings,
        connection: ConnectionView,
        telemetry: Telemetry,
        manager: HotlinkManager | None = None,
        transport: object | None = None,
        proxy: TcpProxy | None = None,
        acl: AclPublisher | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.connection = connection
        self.telemetry = telemetry
        self.manager = manager
        self.transport = transport
        self.proxy = proxy
        self.acl = acl
        self._clock = clock
        self._monotonic = monotonic
        self.started_at = clock()
        self._started_mono = monotonic()
        self.tracker = ConnectionTracker(clock)
        self.recent: deque[EndedSession] = deque(maxlen=RECENT_MAX)
        self._meters: dict[str, RateMeter] = {}
        # Bytes of ended sessions per tunnel key: [tx, rx]; pruned to the running tunnels.
        self._tunnel_bytes: dict[str, list[int]] = {}
        if manager is not None:
            manager.ended_hook = self.session_ended

    def close(self) -> None:
        self.tracker.close()
        if self.manager is not None and self.manager.ended_hook == self.session_ended:
            self.manager.ended_hook = None

    # ------------------------------------------------------------ feeding

    def _live(self) -> list[Session]:
        if self.manager is None:
            return []
        sessions: list[Session] = [*self.manager.outbound_by_sid.values()]
        sessions.extend(self.manager.inbound.values())
        return [s for s in sessions if not s.ended]

    def sample(self) -> None:
        """Record every live session's byte counts (for rates); forget ended sessions."""
        self._poll_connection_error()
        now = self._monotonic()
        live = self._live()
        for session in live:
            tx, rx = _bytes(session)
            self._meter(session).add(now, tx, rx)
        alive = {s.sid for s in live}
        for sid in [sid for sid in self._meters if sid not in alive]:
            del self._meters[sid]

    def _meter(self, session: Session) -> RateMeter:
        meter = self._meters.get(session.sid)
        if meter is None:
            meter = self._meters[session.sid] = RateMeter(session.created)
        return meter

    def session_ended(self, session: Session) -> None:
        """The manager's hook: called once per session as it ends, while the peer transport
        still knows its channel."""
        self._meters.pop(session.sid, None)
        now = self._clock()
        duration = max(0.0, self._monotonic() - session.created)
        info = self._path_info(session.sid)
        tx, rx = _bytes(session)
        reason = session.close_reason
        sealed, e2e_state, peer_key = session_e2e(session)
        self.recent.append(
            EndedSession(
                sid=session.sid,
                direction=_direction(session),
                peer=_peer(session),
                path=session.path,
                channel=channel_name(session.path),
                kind=_kind(session),
                transport=info.carried if info is not None else "ws",
                tx_bytes=tx,
                rx_bytes=rx,
                opened_at=now - duration,
                ended_at=now,
                duration_s=round(duration, 3),
                reason=reason,
                clean=reason == EOF,
                e2e=sealed,
                e2e_state=e2e_state,
                peer_key=peer_key,
            )
        )
        key = self._tunnel_key(session)
        if key is not None:
            totals = self._tunnel_bytes.setdefault(key, [0, 0])
            totals[0] += tx
            totals[1] += rx

    # ------------------------------------------------------------ reading

    def _path_info(self, sid: str) -> P2PPathInfo | None:
        transport = self.transport
        if not isinstance(transport, PathReporter):
            return None
        try:
            return transport.path_info(sid)
        except Exception:
            return None

    def _channels(self) -> list[TunnelChannel]:
        return list(self.proxy.channels.values()) if self.proxy is not None else []

    def _tunnel_key(self, session: Session) -> str | None:
        for channel in self._channels():
            if isinstance(session, InboundSession):
                if session.sink is channel:
                    return channel.info.canonical_key
            elif session.path == channel.info.canonical_key:
                return channel.info.canonical_key
        return None

    def connection_status(self, relay_rtt_s: float | None) -> ConnectionStatus:
        conn = self.connection
        tracker = self.tracker
        connected = conn.connected
        self._poll_connection_error()
        return ConnectionStatus(
            state="connected" if connected else "disconnected",
            server_url=self.settings.server_url,
            connected_since=tracker.connected_since if connected else None,
            disconnected_since=None if connected else tracker.disconnected_since,
            connects=conn.connects,
            reconnects=max(0, conn.connects - 1),
            last_error=tracker.last_error,
            last_error_at=tracker.last_error_at,
            encoding=conn.encoding,
            rtt_ms=_ms(relay_rtt_s) if connected else None,
            acls_published=connected and acls_published(self.acl),
        )

    def _poll_connection_error(self) -> None:
        """Take the connection's own reason for its last failed attempt, when it keeps one:
        it knows best, and it logs an unreachable relay at INFO, below what the tracker
        catches. (Public ``last_error`` if it has one; else the attribute it keeps today.)"""
        own = getattr(self.connection, "last_error", None)
        if not isinstance(own, str) or not own:
            own = getattr(self.connection, "_failure", None)
        if isinstance(own, str) and own and own != self.tracker.last_error:
            self.tracker.note_error(own[:300])

    def session_status(
        self, session: Session, now: float, wall: float, relay_rtt_s: float | None
    ) -> SessionStatus:
        info = self._path_info(session.sid)
        transport = info.transport if info is not None else self._transport_kind(session.sid)
        tx, rx = _bytes(session)
        tx_rate, rx_rate = self._meter(session).rates(now, tx, rx)
        rtt_ms: float | None = None
        rtt_source: str | None = None
        if transport.startswith("p2p"):
            if info is not None and info.rtt is not None:
                rtt_ms, rtt_source = _ms(info.rtt), "sctp"
        elif relay_rtt_s is not None:
            rtt_ms, rtt_source = _ms(relay_rtt_s), "relay-tcp"
        errors = []
        if isinstance(session, OutboundSession) and session.reject_reason:
            errors.append(f"rejected: {session.reject_reason}")
        if info is not None and info.error:
            errors.append(f"p2p: {info.error}")
        uptime = max(0.0, now - session.created)
        sealed, e2e_state, peer_key = session_e2e(session)
        return SessionStatus(
            sid=session.sid,
            direction=_direction(session),
            peer=_peer(session),
            path=session.path,
            channel=channel_name(session.path),
            kind=_kind(session),
            state=(
                session.state
                if isinstance(session, OutboundSession)
                else "accepted"
                if session.accepted
                else "accepting"
            ),
            transport=transport,
            p2p=info.state if info is not None else "off",
            tx_bytes=tx,
            rx_bytes=rx,
            held_bytes=session.credit.buffered if isinstance(session, InboundSession) else 0,
            tx_rate=_round(tx_rate),
            rx_rate=_round(rx_rate),
            rtt_ms=rtt_ms,
            rtt_source=rtt_source,
            opened_at=round(wall - uptime, 3),
            uptime_s=round(uptime, 3),
            last_error="; ".join(errors),
            e2e=sealed,
            e2e_state=e2e_state,
            peer_key=peer_key,
        )

    def _e2e_context(self) -> E2EContext | None:
        # The manager seals the sessions, so its context is the daemon's (None: off).
        return self.manager.e2e if self.manager is not None else None

    def _transport_kind(self, sid: str) -> str:
        if self.manager is None:
            return "ws"
        return self.manager.transport_kind(sid)

    def tunnel_status(
        self, channel: TunnelChannel, sessions: list[tuple[Session, SessionStatus]]
    ) -> TunnelStatus:
        info = channel.info
        mine = [
            st
            for s, st in sessions
            if (
                s.sink is channel if isinstance(s, InboundSession) else s.path == info.canonical_key
            )
        ]
        ended_tx, ended_rx = self._tunnel_bytes.get(info.canonical_key, (0, 0))
        server = channel.server
        return TunnelStatus(
            key=info.canonical_key,
            local_key=info.local_key,
            peer=info.peer_email,
            bind=channel.bind_host,
            port=info.listen_port,
            listening=server is not None and server.is_serving(),
            app_connections=sum(1 for c in channel.connections if not c.closed),
            sessions=len(mine),
            tx_bytes=ended_tx + sum(st.tx_bytes for st in mine),
            rx_bytes=ended_rx + sum(st.rx_bytes for st in mine),
            tx_rate=_sum_rates([st.tx_rate for st in mine]),
            rx_rate=_sum_rates([st.rx_rate for st in mine]),
        )

    def build(self) -> dict[str, Any]:
        """The whole document, as JSON-ready dicts and lists."""
        now = self._monotonic()
        wall = self._clock()
        rtt = relay_rtt(self.connection) if self.connection.connected else None
        live = self._live()
        statuses = [(s, self.session_status(s, now, wall, rtt)) for s in live]
        statuses.sort(key=lambda pair: pair[1].uptime_s, reverse=True)  # oldest first
        channels = self._channels()
        running = {c.info.canonical_key for c in channels}
        for key in [k for k in self._tunnel_bytes if k not in running]:
            del self._tunnel_bytes[key]
        backend = getattr(self.transport, "backend_name", None)
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "version": __version__,
            "pid": os.getpid(),
            "email": self.settings.email,
            "data_dir": self.settings.data_dir,
            "server_url": self.settings.server_url,
            "started_at": round(self.started_at, 3),
            "uptime_s": round(now - self._started_mono, 3),
            "hotlink": self.settings.hotlink,
            "webrtc": {
                "enabled": self.settings.hotlink and self.settings.webrtc,
                "backend": backend if isinstance(backend, str) else None,
            },
            "e2e": e2e_status(self._e2e_context()),
            "connection": asdict(self.connection_status(rtt)),
            "tunnels": [asdict(self.tunnel_status(c, statuses)) for c in channels],
            "sessions": [asdict(st) for _, st in statuses],
            "recent": [asdict(e) for e in reversed(self.recent)],  # newest first
            "totals": totals(self.telemetry),
        }
        return doc


def e2e_status(context: E2EContext | None) -> dict[str, Any]:
    """The top-level ``e2e``: the mode and this client's identity fingerprint (None when
    sealing is off, or hotlink is: then no key was loaded)."""
    if context is None:
        return {"mode": "off", "fingerprint": None}
    return {"mode": context.mode, "fingerprint": context.identity.fingerprint}


def session_e2e(session: Session) -> tuple[bool, str, str]:
    """A session's ``(e2e, e2e_state, peer_key)``, as its telemetry row has them."""
    e2e = session.e2e
    if e2e is None:
        return False, "off", ""
    return e2e.sealed, e2e.state, e2e.peer_fingerprint


def totals(telemetry: Telemetry) -> dict[str, Any]:
    """The daemon's counters since it started (what the telemetry file and /metrics count)."""
    t = telemetry
    return {
        "tx_frames": t.tx_packets,
        "tx_bytes": t.tx_bytes,
        "tx_p2p_frames": t.tx_p2p_packets,
        "tx_p2p_bytes": t.tx_p2p_bytes,
        "tx_ws_frames": t.tx_ws_packets,
        "tx_ws_bytes": t.tx_ws_bytes,
        "rx_frames": t.rx_packets,
        "rx_bytes": t.rx_bytes,
        "arrived_frames": dict(t.arrived_frames),
        "arrived_bytes": dict(t.arrived_bytes),
        "events": dict(t.events),
    }


# ---------------------------------------------------------------- helpers


def _bytes(session: Session) -> tuple[int, int]:
    """(tx, rx) payload bytes: an outbound session sends, an inbound one receives."""
    if isinstance(session, OutboundSession):
        return session.credit.sent, 0
    return 0, session.credit.received


def _direction(session: Session) -> str:
    return "out" if isinstance(session, OutboundSession) else "in"


def _peer(session: Session) -> str:
    if isinstance(session, OutboundSession):
        return session.to or "*"
    return session.peer


def _kind(session: Session) -> str:
    if isinstance(session, InboundSession):
        return session.kind
    return "tcp" if is_tcp_proxy_path(session.path) else "ipc"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _round(rate: float | None) -> float | None:
    return None if rate is None else round(rate, 1)


def _sum_rates(rates: list[float | None]) -> float | None:
    known = [r for r in rates if r is not None]
    return round(sum(known), 1) if known else None


def summary_line(doc: Mapping[str, Any]) -> str:
    """One line for logs and the watch view's title."""
    conn = doc.get("connection", {})
    return (
        f"{doc.get('email', '?')} {conn.get('state', '?')} to {doc.get('server_url', '?')}: "
        f"{len(doc.get('tunnels', []))} tunnels, {len(doc.get('sessions', []))} sessions"
    )
