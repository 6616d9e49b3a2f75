"""The relay server: aiohttp routes, the WebSocket read loop, delivery and start/stop.

One handler per WebSocket reads frames in order, decodes each, asks the sans-I/O router or
file handler what to do, and puts the resulting frames on the receivers' bounded queues.
Handling a frame never awaits anything: the only wait in a read loop is for the next frame
of its own socket, so no connection waits on another, and aiohttp (which answers pings
only while the handler reads) keeps answering the sender's pings. Pacing is the clients'
job (per-session credit windows); a receiver whose queue overflows anyway is not reading
at all and is disconnected (see ``Relay.deliver``). Because a connection's frames are
handled one after another, its messages are forwarded in order.

Limits against hostile or broken peers (all in :class:`RelayConfig`): a connection must
send its HTTP request within ``header_timeout``; WebSocket connections are capped in total
and per user (refused before the upgrade with 503 or 429 and a JSON body); a user may hold
``max_sessions_per_user`` open sessions over all its connections; all connections together
hold at most ``max_queued_bytes`` for their peers (see ``Relay.deliver``); a failed
``accept()`` (out of file descriptors) is logged once per interval while asyncio retries
every second.

Log lines anyone can cause (bad input, refused upgrades, connections opened and closed) are
budgeted per user and relay-wide (:mod:`.logbudget`), with a summary of what was left out;
text from the network in them, and in Error replies, is clipped and escaped.

What it costs: a msgpack HotlinkData frame, the bulk of the traffic, takes a short way
(``Relay._forward_data``): its header is read without building the payload, the router
names the receivers from the session id, and the very frame is queued for each; metrics are
plain counters read at scrape time; connections write what a turn of the loop queued with
one ``send`` (see :mod:`.hub`). An ACL file's broadcast to everyone is queued once for all
and written to idle connections in batches (:mod:`.fanout`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from .. import __version__
from ..event_loop import loop_name
from ..event_loop import run as run_on_loop
from ..loop_errors import LIMIT_LOG_INTERVAL, Throttle, accept_error_handler
from ..protocol.codec import choose_encoding, decode, peek_data
from ..protocol.errors import ProtocolError
from ..protocol.messages import (
    HOTLINK_TYPES,
    FileDelete,
    HotlinkOpen,
    HotlinkReject,
    Message,
    MsgType,
    System,
)
from ..settings import ServerSettings
from .acl_store import ACLStore, normalize_path
from .auth import MIN_SECRET_BYTES, AuthError, dev_identity, token_identity, weak_secret
from .cluster import records as rec
from .cluster.bridge import ClusterBridge, RemoteConn
from .cluster.node import ClusterNode
from .decisions import ConnectionTable, FanOut, Outcome, Send, clip_text, error_reply
from .fanout import COALESCE_INTERVAL, DRAIN_PAUSE_FACTOR, Batch, Broadcast, join
from .files import ACLUpload, FileHandler
from .frames import COALESCE_MAX_FRAME, encode_frame
from .hub import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_USER,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_QUEUE_BYTES,
    DEFAULT_QUEUE_MESSAGES,
    DEFAULT_WRITE_TIMEOUT,
    Admission,
    Connection,
    Frame,
    Hub,
    Refusal,
    TextFrame,
    new_conn_id,
)
from .ice_headers import advertised_ice_servers, ice_headers, static_turn_password_ignored
from .logbudget import LogBudget, summarize
from .metrics import CONTENT_TYPE_LATEST, RelayMetrics
from .router import IGNORED, TOO_MANY_SESSIONS, UNKNOWN_SESSION, HotlinkRouter
from .sessions import SessionStore

log = logging.getLogger("hotlink.server")

MAX_MESSAGE_SIZE = 8 * 1024 * 1024  # PROTOCOL.md §1.10
EVENTS_PATH = "/api/v1/events"
FILE_TYPES = frozenset({MsgType.FILE_WRITE, MsgType.FILE_DELETE, MsgType.ACL_MANIFEST})
# Log lines per minute (the rest are counted and reported in summary lines).
BAD_INPUT_LOG_BURST = 20  # bad-input lines per user
BAD_INPUT_LOG_TOTAL = 200  # bad-input lines of all users together
CONNECTION_LOG_BURST = 5  # connections per user logged as "connected" and "disconnected"
CONNECTION_LOG_TOTAL = 300  # connections of all users together
AUTH_LOG_BURST = 5  # refused (401/403) upgrades per remote address
AUTH_LOG_TOTAL = 60  # refused upgrades of all addresses together
LOG_REPORT_INTERVAL = 10.0  # how often the summaries of left-out lines are written
CLIENT_VERSION_CHARS = 60  # of the X-Syft-Version header, in the "connected" line
# A slow or silent client may hold a socket this long before its HTTP request is complete
# (and an idle keep-alive HTTP connection as long between requests).
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_SESSIONS_PER_USER = 4096
# Descriptors the relay needs besides its WebSocket connections (listener, log, HTTP
# probes, upgrades in flight); below cap + this, ``ulimit -n`` binds before the cap does.
FD_HEADROOM = 100


@dataclass(frozen=True)
class RelayConfig:
    settings: ServerSettings = field(default_factory=ServerSettings)
    acl_dir: Path | None = None
    queue_messages: int = DEFAULT_QUEUE_MESSAGES
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    max_sessions_per_conn: int = 1024
    max_sessions_per_user: int = DEFAULT_MAX_SESSIONS_PER_USER
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_user: int = DEFAULT_MAX_CONNECTIONS_PER_USER
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    # Pings find dead peers so their sessions are cleaned up (the reference never pings).
    heartbeat: float | None = 30.0
    max_message_size: int = MAX_MESSAGE_SIZE


class Relay:
    """Everything one running relay holds; ``app`` is its aiohttp application."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.settings = config.settings
        self.metrics = RelayMetrics()
        self.connections = ConnectionTable()
        self.acls = ACLStore()
        # Cluster mode: the table above also holds other replicas' connections (so the
        # router offers Opens to them), and sessions homed here are claimed in Redis.
        self.bridge: ClusterBridge | None = None
        self.cluster: ClusterNode | None = None
        sessions = None
        if self.settings.redis_url:
            self.bridge = ClusterBridge(self)
            self.cluster = self.bridge.node
            sessions = SessionStore(on_removed=self.cluster.release)
            self.metrics.add_cluster(self.cluster.stats)
        debug_log = log.info if self.settings.debug else None
        self.router = HotlinkRouter(
            self.acls,
            self.connections,
            max_sessions_per_conn=config.max_sessions_per_conn,
            data_relay_log=debug_log,
            acl_epoch=self.acls.epoch,
            readers_of=self.acls.readers_of,
            sessions=sessions,
        )
        self.files = FileHandler(self.acls, self.connections)
        self.hub = Hub(config.max_queued_bytes)
        self.broadcasts = self.hub.broadcasts
        self._drain: asyncio.TimerHandle | None = None
        self._next_drain = float("-inf")
        self.admission = Admission(config.max_connections, config.max_connections_per_user)
        self._refusal_log = Throttle(LIMIT_LOG_INTERVAL)
        # Keyed by user (a reconnect does not start afresh), and by remote address for
        # upgrades refused before there is a user.
        self.bad_input_log = LogBudget(BAD_INPUT_LOG_BURST, BAD_INPUT_LOG_TOTAL)
        self.connection_log = LogBudget(CONNECTION_LOG_BURST, CONNECTION_LOG_TOTAL)
        self.auth_log = LogBudget(AUTH_LOG_BURST, AUTH_LOG_TOTAL)
        self._reporter: asyncio.Task[None] | None = None
        self.app = web.Application()
        self.app[RELAY_KEY] = self
        self.app.router.add_get("/", self._root)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get(EVENTS_PATH, self._events)
        self.app.on_startup.append(self._start_reports)
        self.app.on_shutdown.append(self._on_shutdown)
        self.app.on_cleanup.append(self._stop_reports)
        if self.cluster is not None:
            self.app.on_startup.append(self._start_cluster)
            self.app.on_cleanup.append(self._stop_cluster)
        if config.acl_dir is not None:
            self.preload_acls(config.acl_dir)

    # ------------------------------------------------------------ start-up

    def preload_acls(self, directory: Path) -> None:
        result = self.acls.preload(directory)
        for error in result.errors:
            log.warning("ACL preload: skipped %s", error)
        log.info("ACL preload: loaded %d ACL file(s) from %s", len(result.loaded), directory)
        self.metrics.acl_files.set(len(self.acls))

    # ------------------------------------------------------------ plain HTTP routes

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text=f"SyftBox hotlink relay {__version__}\n")

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.cluster is None:
            return web.json_response({"status": "ok"})
        health = self.cluster.health()
        return web.json_response(health, status=200 if health["status"] == "ok" else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.sessions.set(len(self.router.sessions))
        self.metrics.queued_bytes.set(self.hub.ledger.total)
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # ------------------------------------------------------------ the WebSocket

    def _identify(self, request: web.Request) -> str:
        if self.settings.auth_enabled:
            return token_identity(request.headers, self.settings.access_token_secret)
        return dev_identity(request.query)

    @staticmethod
    def _origin_allowed(request: web.Request) -> bool:
        """Gorilla's default: no Origin is fine; otherwise its host must be the request's."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc.lower() == (request.host or "").lower()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        try:
            user = self._identify(request)
        except AuthError as exc:
            self.metrics.auth_failures.labels(exc.code).inc()
            if self.auth_log.allow(request.remote or ""):
                log.warning(
                    "refused WebSocket from %s: 401 %s", request.remote, clip_text(exc.message)
                )
            return web.json_response(exc.body(), status=401)
        if not self._origin_allowed(request):
            self.metrics.auth_failures.labels("origin").inc()
            if self.auth_log.allow(request.remote or ""):
                log.warning(
                    "refused WebSocket from %s (%s): origin %s is not this host",
                    request.remote,
                    user,
                    clip_text(request.headers.get("Origin", ""), 100),
                )
            return web.Response(status=403, text="request origin not allowed\n")
        elsewhere = 0
        if self.cluster is not None:
            if not self.cluster.redis_up:
                return self._refuse(request, user, CLUSTER_UNAVAILABLE)
            elsewhere = self.cluster.remote_count(user)
        refusal = self.admission.admit(user, elsewhere)
        if refusal is not None:
            return self._refuse(request, user, refusal)
        try:
            return await self._upgrade(request, user)
        finally:
            self.admission.release(user)

    def _refuse(self, request: web.Request, user: str, refusal: Refusal) -> web.Response:
        self.metrics.connections_refused.labels(refusal.code).inc()
        skipped = self._refusal_log.ready()
        if skipped is not None:
            log.warning(
                "refused WebSocket from %s (%s): %d %s%s",
                request.remote,
                user,
                refusal.status,
                refusal.message,
                f" ({skipped} more upgrades refused since the last report)" if skipped else "",
            )
        return web.json_response(refusal.body(), status=refusal.status)

    async def _upgrade(self, request: web.Request, user: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            # aiohttp refuses a frame of exactly its limit; the reference allows 8 MiB itself.
            max_msg_size=self.config.max_message_size + 1,
            heartbeat=self.config.heartbeat,
            compress=False,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade\n")
        encoding = choose_encoding(request.headers.get("X-Syft-WS-Encodings"))
        ws.headers["X-Syft-WS-Encoding"] = encoding
        ws.headers.update(ice_headers(self.settings, user, time.time()))
        await ws.prepare(request)

        conn_id = new_conn_id()
        if self.cluster is not None:
            conn_id = f"{self.cluster.ref}/{conn_id}"
        conn = Connection(
            conn_id,
            user,
            encoding,
            ws,
            queue_messages=self.config.queue_messages,
            queue_bytes=self.config.queue_bytes,
            write_timeout=self.config.write_timeout,
            client_version=request.headers.get("X-Syft-Version", ""),
            remote=request.remote or "",
            transport=request.transport,
            ledger=self.hub.ledger,
            busy=self.hub.busy,
        )
        self.hub.add(conn)
        self.connections.add(conn.id, user)
        if self.cluster is not None:
            self.cluster.conn_up(rec.ConnInfo(conn.id, user, encoding))
        conn.start()
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        # A connection's two lines are logged together or not at all: the first few of a
        # user per minute, so churn (connect, close, repeat) cannot fill the log.
        announced = self.connection_log.allow(user)
        if announced:
            version = clip_text(conn.client_version, CLIENT_VERSION_CHARS)
            log.info(
                "%r connected from %s (encoding %s%s)",
                conn,
                conn.remote,
                encoding,
                f", client version {version}" if version else "",
            )
        self.deliver([Send(conn.id, Message.new(System(ver=__version__, msg="ok")))])
        try:
            await self._read_loop(conn)
        finally:
            await self._disconnect(conn, announced)
        return ws

    async def _read_loop(self, conn: Connection) -> None:
        # Handling a frame is synchronous by design; the only other await is this
        # connection's own ACL upload, parsed on a worker thread (no other connection waits).
        async for item in conn.ws:
            if item.type is WSMsgType.TEXT or item.type is WSMsgType.BINARY:
                pending = self._handle_frame(conn, item.data)
                if isinstance(pending, ACLUpload):
                    await self._load_acl(conn, pending, item.data)
                elif pending is not None and self.bridge is not None:
                    await self.bridge.open_claimed(conn, pending, item.data)
            elif item.type is WSMsgType.ERROR:
                exc = item.data
                if getattr(exc, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                    self.metrics.bad_input.labels("oversize").inc()
                    self._log_bad(
                        conn,
                        f"frame larger than {self.config.max_message_size} bytes; "
                        "closed with 1009 (message too big)",
                    )
                else:
                    self._log_bad(conn, f"WebSocket error: {exc}", logging.INFO)
                return

    def _handle_frame(self, conn: Connection, frame: bytes | str) -> ACLUpload | Message | None:
        """Handle one frame now; an ACL FileWrite to parse, or (cluster mode) an Open whose
        session id must be claimed first, is returned for the read loop."""
        if type(frame) is bytes and self._forward_data(conn, frame):
            return None
        kind = "text" if isinstance(frame, str) else "binary"
        try:
            message = decode(frame)
        except ProtocolError as exc:
            self.metrics.bad_input.labels("decode").inc()
            # The codec's message names the field, never the input; both are clipped anyway.
            self._log_bad(conn, f"dropped undecodable {kind} frame ({len(frame)} bytes): {exc}")
            self.deliver([error_reply(conn.id, 400, f"bad message: {exc}")])
            return None
        except Exception as exc:  # e.g. RecursionError from absurdly nested JSON
            self.metrics.bad_input.labels("decode").inc()
            self._log_bad(
                conn, f"dropped undecodable {kind} frame ({len(frame)} bytes): {type(exc).__name__}"
            )
            self.deliver([error_reply(conn.id, 400, "bad message: cannot decode")])
            return None
        self.metrics.received(message.typ, len(frame))
        if self.bridge is not None and message.typ in HOTLINK_TYPES:
            if isinstance(message.payload, HotlinkOpen):
                if message.payload.sid not in self.router.sessions:
                    return message
            elif self.bridge.forward_home(conn.id, message, frame):
                return None
        try:
            outcome = self.route(conn, message)
        except Exception:
            self.metrics.internal_errors.inc()
            log.exception(
                "%r: internal error handling %s %s",
                conn,
                message.typ.name,
                clip_text(message.id, 60),
            )
            self.deliver([error_reply(conn.id, 500, "internal server error")])
            return None
        if isinstance(outcome, ACLUpload):
            return outcome
        self.report(conn, message, outcome)
        if outcome.sends:
            self.deliver(outcome.sends, received=(message, frame))
        self.metrics.sessions.set(len(self.router.sessions))
        return None

    async def _load_acl(self, conn: Connection, upload: ACLUpload, frame: bytes | str) -> None:
        """Parse an ACL FileWrite off the loop, then answer it as :meth:`_handle_frame` would."""
        try:
            outcome = await self.files.load_acl(upload)
        except Exception:
            self.metrics.internal_errors.inc()
            log.exception("%r: internal error loading ACL file %s", conn, upload.message.id)
            self.deliver([error_reply(conn.id, 500, "internal server error")])
            return
        self.metrics.acl_files.set(len(self.acls))
        self.report(conn, upload.message, outcome)
        if outcome.sends:
            self.deliver(outcome.sends, received=(upload.message, frame))
        if outcome.fan_out is not None:
            self.fan_out(outcome.fan_out, received=(upload.message, frame))
            if self.bridge is not None:
                self.bridge.publish_acl(upload.path, upload.text, upload.user, frame)

    def _forward_data(self, conn: Connection, frame: bytes) -> bool:
        """Forward a msgpack Data frame as is when that is all there is to do.

        The relay's main work, so it takes the short way: the header is read without
        building the payload (:func:`peek_data`), the router names the receivers from the
        session id (:meth:`HotlinkRouter.data_targets`), and the very frame is queued for
        each. False leaves the frame to the full path (decode, route, answer): another
        message or form, a refusal to answer, a receiver that needs it re-encoded.
        """
        try:
            head = peek_data(frame)
            if head is None:
                return False
            targets = self.router.data_targets(conn.id, head.sid)
        except Exception:  # the full path reports it
            return False
        if targets is None:
            return False
        receivers = [self.hub.get(peer) for peer in targets]
        for peer, target in zip(targets, receivers, strict=True):
            if target is None:
                if self._remote_encoding(peer) == "json":
                    return False
            elif target.encoding != "msgpack" and not target.closing:
                return False
        self.metrics.received_by_type.count(MsgType.HOTLINK_DATA, len(frame))
        for peer, target in zip(targets, receivers, strict=True):
            if target is not None:
                if not target.closing:
                    self.put(target, frame, MsgType.HOTLINK_DATA, head.id, broadcast=False)
            elif self.bridge is not None and self._remote_encoding(peer) is not None:
                self.bridge.deliver_data(peer, frame, head.id, head.sid)
        return True

    def _remote_encoding(self, peer: str) -> str | None:
        """The encoding of a connection on another replica (None: not one we know)."""
        return self.cluster.encoding_of(peer) if self.cluster is not None else None

    def route(self, conn: Connection, message: Message) -> Outcome | ACLUpload:
        if message.typ in HOTLINK_TYPES:
            return self._over_session_cap(conn, message) or self.router.handle(conn.id, message)
        if message.typ in FILE_TYPES:
            epoch = self.acls.epoch()
            outcome = self.files.handle(conn.id, message)
            self.metrics.acl_files.set(len(self.acls))
            p = message.payload
            if (
                self.cluster is not None
                and isinstance(p, FileDelete)
                and self.acls.epoch() != epoch
            ):
                self.cluster.publish_acl_delete(normalize_path(p.pth))
            return outcome
        return Outcome().refuse(
            IGNORED, f"ignored {message.typ.name} message (clients do not send it to the server)"
        )

    def _over_session_cap(self, conn: Connection, message: Message) -> Outcome | None:
        """Reject an Open of a new session from a user who holds the most it may.

        The router caps sessions per connection; this cap spans all of a user's
        connections, which the per-user connection cap alone would multiply.
        """
        p = message.payload
        if not isinstance(p, HotlinkOpen) or p.sid in self.router.sessions:
            return None
        cap = self.config.max_sessions_per_user
        if self.router.sessions.count_opened_by_user(conn.user) < cap:
            return None
        out = Outcome()
        out.send(conn.id, Message.new(HotlinkReject(sid=p.sid, rsn=TOO_MANY_SESSIONS)))
        return out.refuse(
            TOO_MANY_SESSIONS, f"open {p.sid}: {conn.user} already has {cap} open sessions"
        )

    def report(self, conn: Connection | RemoteConn, message: Message, outcome: Outcome) -> None:
        if outcome.refusal is None:
            if outcome.detail and log.isEnabledFor(logging.DEBUG):
                log.debug("%r: %s", conn, clip_text(outcome.detail))
            return
        self.metrics.rejects.labels(outcome.refusal).inc()
        if outcome.refusal == IGNORED:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%r: %s", conn, clip_text(outcome.detail))
            return
        # A message for a session that just ended is a normal race, not a misbehaving client.
        level = logging.INFO if outcome.refusal == UNKNOWN_SESSION else logging.WARNING
        self._log_bad(conn, f"{message.typ.name} {message.id}: {outcome.detail}", level)

    def _log_bad(
        self, conn: Connection | RemoteConn, text: str, level: int = logging.WARNING
    ) -> None:
        """One line about bad input from (or a dropped message for) ``conn``, within the
        user's and the relay's budget; the text is clipped (it quotes the network)."""
        if self.bad_input_log.allow(conn.user):
            log.log(level, "%r: %s", conn, clip_text(text))

    def deliver(
        self, sends: list[Send], received: tuple[Message, bytes | str] | None = None
    ) -> None:
        """Queue each message on its connection, encoded once per encoding; never waits.

        "Fits" means the receiver's queued bytes, the bytes still in its socket's write
        buffer and this frame stay under its byte bound (and its queue under the message
        bound). A direct send (forwarded Accept, Data, Close, Signal, a reply) that does not
        fit means its receiver is not reading at all (clients never have more than their
        sessions' windows in flight and never stop reading): that receiver is disconnected
        with 1013 and the frame dropped. Waiting for room instead would stop this read loop,
        stalling the sender's other sessions and leaving its pings unanswered. A broadcast
        (Open fan-out, FileWrite, ACL manifest) that does not fit is dropped, as in the
        reference (PROTOCOL.md §1.10), and the receiver kept: it says nothing about the
        receiver's sessions, whose direct traffic must not be cut by a third party.

        Beyond each receiver's own bound, all connections together hold at most
        ``max_queued_bytes`` (queued plus socket buffers, see ``hub.QueuedBytes``). A
        broadcast that would go over it is dropped; a direct send that would go over it
        disconnects its receiver if that one holds more than its fair share (the bound over
        the number of connections, at least ``hub.FAIR_SHARE_FLOOR``), and is queued
        otherwise, so a stream that keeps within its window is never cut for the relay's
        total while the readers that hoard are.

        Every receiver of one encoding gets the same bytes object (see ``hub``), and a
        forwarded message goes out as the very frame it came in as when the receiver uses
        that form (msgpack envelope or JSON text): it decoded cleanly, and re-encoding a
        large Data payload is the relay's main cost.
        """
        frames: dict[tuple[int, str], Frame] = {}
        if received is not None:
            form = _frame_form(received[1])
            if form is not None:
                raw = received[1]
                frames[(id(received[0]), form)] = (
                    TextFrame(raw, "utf-8") if isinstance(raw, str) else raw
                )
        for send in sends:
            target = self.hub.get(send.conn)
            if target is None:
                if self.bridge is not None:
                    self.bridge.deliver_remote(send, frames)
                continue
            if target.closing:
                continue
            key = (id(send.message), target.encoding)
            frame = frames.get(key)
            if frame is None:
                try:
                    frame = encode_frame(send.message, target.encoding)
                except Exception:
                    # Decoding refuses what cannot be encoded; if something slips through,
                    # it costs this one message, not the sender's read loop.
                    self.metrics.internal_errors.inc()
                    log.exception("%r: cannot encode %s", target, send.message.typ.name)
                    continue
                frames[key] = frame
            self.put(target, frame, send.message.typ, send.message.id, send.broadcast)

    def put(
        self, target: Connection, frame: Frame, typ: MsgType, msg_id: str, broadcast: bool
    ) -> None:
        """Queue one frame for ``target`` by the rules of :meth:`deliver`."""
        if target.log_seen != self.broadcasts.head:
            self._catch_up(target)  # what it missed goes first (see .fanout)
        # A frame some connection holds already costs nothing more (see hub.QueuedBytes).
        hub = self.hub
        cost = hub.ledger.cost(frame)
        if cost and hub.over_budget(cost):
            if broadcast:
                self.metrics.budget_drops.inc()
                self._drop_broadcast(target, typ, msg_id, "the relay's queued bytes")
                return
            if target.backlog + len(frame) > self.hub.fair_share():
                self.metrics.budget_disconnects.inc()
                self._drop_slow_reader(target, typ, "relay over its queued bytes")
                return
            # The receiver keeps within its share, yet all together are over the bound
            # (many connections, each within its share): the one holding the most goes,
            # so the bound holds however many connections there are.
            hoarder = hub.largest_holder()
            if hoarder is not None and hoarder.backlog > target.backlog + len(frame):
                self.metrics.budget_disconnects.inc()
                self._drop_slow_reader(
                    hoarder, typ, "relay over its queued bytes; it held the most"
                )
        if target.try_put(frame):
            self.metrics.relayed_by_type.count(typ, len(frame))
        elif broadcast:
            self._drop_broadcast(target, typ, msg_id, "send queue")
        else:
            self._drop_slow_reader(target, typ, "send queue full")

    # ------------------------------------------------------------ broadcasts to everyone

    def fan_out(self, fan: FanOut, received: tuple[Message, bytes | str] | None) -> None:
        """Broadcast ``fan.message`` to every connection but its sender's user's, queued once
        for all (see :mod:`.fanout`); a large one, or one over the relay's queued bytes,
        goes the way of any broadcast (:meth:`deliver`)."""
        message = fan.message
        frames: dict[str, Frame] = {}
        if received is not None and received[0] is message:
            form, raw = _frame_form(received[1]), received[1]
            if form is not None:
                frames[form] = TextFrame(raw, "utf-8") if isinstance(raw, str) else raw
        encoded = True
        for encoding in ("msgpack", "json"):
            if encoding in frames or not self.hub.by_encoding[encoding]:
                continue  # the frame as it came, or nobody to send it to
            try:
                frames[encoding] = encode_frame(message, encoding)
            except Exception:
                encoded = False  # deliver reports it for each receiver, as for any send
                break
        size = sum(len(frame) for frame in frames.values())
        if (
            not encoded
            or not frames
            or max(len(frame) for frame in frames.values()) > COALESCE_MAX_FRAME
            or self.hub.over_budget(size)
        ):
            # This replica's connections: other replicas fan out to theirs.
            self.deliver(
                [
                    Send(conn.id, message, broadcast=True)
                    for conn in list(self.hub)
                    if conn.user != fan.exclude_user
                ],
                received,
            )
            return
        self.broadcasts.append(Broadcast.of(frames, fan.exclude_user, message.typ, message.id))
        # Connections with something queued or unsent get it now, by the usual rules (a
        # full one drops it now); idle ones catch up together (_drain_broadcasts).
        for conn in list(self.hub.busy):
            if conn.user == fan.exclude_user:
                continue
            if conn.idle:
                conn.settle()  # listed as busy, but it can wait for the others after all
            else:
                self._catch_up(conn)
        if self._drain is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._next_drain - loop.time())
            self._drain = loop.call_later(delay, self._drain_broadcasts)

    def _catch_up(self, conn: Connection, batches: dict[str, Batch] | None = None) -> None:
        """Give ``conn`` the broadcasts it has not had: written in one go when it is idle
        and they fit, else queued one by one (those that do not fit are dropped).

        ``batches``: the whole log joined per encoding, for a connection that missed all of
        it and sent none of it (see :meth:`_drain_broadcasts`).
        """
        seen, conn.log_seen = conn.log_seen, self.broadcasts.head
        if conn.closing:
            return
        encoding = conn.encoding
        batch = batches.get(encoding) if batches is not None else None
        if batch is None:
            user = conn.user
            pending = self.broadcasts.since(seen)
            batch = join([b for b in pending if b.exclude_user != user], encoding)
        count = len(batch.broadcasts)
        if not count:
            return
        queue = conn.queue
        # Idle: nothing queued and nothing of ours left in the socket, so the batch fits
        # when it is within the byte bound (or is a single frame, which always fits).
        if (
            conn.idle
            and count <= queue.max_messages
            and (count == 1 or batch.size <= queue.max_bytes)
        ):
            conn.write_batch(batch.data)
            for typ, size, messages in batch.by_type:
                self.metrics.relayed_by_type.count(typ, size, messages)
            return
        for b in batch.broadcasts:
            self.put(conn, b.frames[encoding], b.typ, b.msg_id, broadcast=True)

    def _drain_broadcasts(self) -> None:
        """Catch every connection up with the broadcast log, then empty it.

        Most connections missed the whole log and sent none of it: they all get the same
        joined bytes (one object, whatever the number of receivers)."""
        self._drain = None
        loop = asyncio.get_running_loop()
        started = loop.time()
        log_ = self.broadcasts
        base, head = log_.base, log_.head
        senders = log_.senders()
        batches = {encoding: log_.batch(encoding) for encoding in ("msgpack", "json")}
        try:
            for conn in self.hub:
                if conn.log_seen == head:
                    continue
                whole = conn.log_seen <= base and conn.user not in senders
                self._catch_up(conn, batches if whole else None)
        except Exception:
            self.metrics.internal_errors.inc()
            log.exception("internal error while writing broadcasts")
        for conn in self.hub:
            conn.log_seen = head
        log_.clear()
        took = loop.time() - started
        self._next_drain = started + max(COALESCE_INTERVAL, took * (1 + DRAIN_PAUSE_FACTOR))

    def _drop_broadcast(self, target: Connection, typ: MsgType, msg_id: str, full: str) -> None:
        self.metrics.queue_drops.inc()
        self.metrics.broadcast_drops.inc()
        self._log_bad(
            target,
            f"{full} full ({len(target.queue)} messages, {target.backlog} bytes queued here, "
            f"{self.hub.ledger.total} in all); dropped broadcast {typ.name} "
            f"{clip_text(msg_id, 40)}",
        )

    def _drop_slow_reader(self, target: Connection, typ: MsgType, reason: str) -> None:
        self.metrics.queue_drops.inc()
        self.metrics.slow_disconnects.inc()
        log.warning(
            "%r: %s (%d messages, %d bytes queued here, %d in all) for %s; "
            "disconnecting the slow reader",
            target,
            reason,
            len(target.queue),
            target.backlog,
            self.hub.ledger.total,
            typ.name,
        )
        # kill only starts the close (in its own task); this read loop goes on at once.
        target.kill(reason)

    async def _disconnect(self, conn: Connection, announced: bool = True) -> None:
        self.hub.remove(conn.id)
        self.connections.remove(conn.id)
        self.metrics.connections.dec()
        if self.cluster is not None:
            self.cluster.conn_down(conn.id)
        try:
            # Peers hear of their ended sessions before this connection's own close, which
            # may take up to CLOSE_TIMEOUT when its peer is not reading.
            outcome = self.router.disconnect(conn.id)
            self.deliver(outcome.sends)
        except Exception:
            self.metrics.internal_errors.inc()
            log.exception("%r: internal error during clean-up", conn)
            outcome = Outcome()
        await conn.finish()
        self.metrics.sessions.set(len(self.router.sessions))
        if not announced:
            return
        reason = conn.close_reason or f"close code {conn.ws.close_code}"
        log.info(
            "%r disconnected (%s); %d session message(s) sent to peers",
            conn,
            clip_text(reason),
            len(outcome.sends),
        )

    async def _on_shutdown(self, app: web.Application) -> None:
        self.hub.kill_all("server shutdown", WSCloseCode.GOING_AWAY)

    # ------------------------------------------------------------ cluster mode (--redis)
    # Sessions are decided on their home replica, the one their Open arrived on; the
    # methods below carry frames to and from the other replicas (see .cluster).

    async def _start_cluster(self, app: web.Application) -> None:
        assert self.cluster is not None
        await self.cluster.start()

    async def _stop_cluster(self, app: web.Application) -> None:
        assert self.cluster is not None
        await self.cluster.stop()

    # ------------------------------------------------------------ log summaries

    def report_skipped_lines(self, *, everything: bool = False) -> None:
        """Write how many log lines each budget left out (windows that ended, or all)."""
        for budget, what in (
            (self.connection_log, "connections"),
            (self.bad_input_log, "bad-input lines"),
            (self.auth_log, "refused upgrades"),
        ):
            skipped = budget.flush() if everything else budget.due()
            for line in summarize(skipped, what):
                log.info("%s", clip_text(line, 400))

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(LOG_REPORT_INTERVAL)
            self.report_skipped_lines()
            self.hub.refresh()

    async def _start_reports(self, app: web.Application) -> None:
        self._reporter = asyncio.create_task(self._report_loop(), name="relay-log-reports")

    async def _stop_reports(self, app: web.Application) -> None:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        # After every handler ended (aiohttp's cleanup order), so their lines are counted.
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
            self._reporter = None
        self.report_skipped_lines(everything=True)


CLUSTER_UNAVAILABLE = Refusal(
    503, "cluster_unavailable", "the relay cannot reach its cluster's Redis; try again soon"
)


def _frame_form(frame: bytes | str) -> str | None:
    """The encoding a received frame can be forwarded in as is, if any."""
    if isinstance(frame, str):
        return "json"
    if frame[:4] == b"SB\x01\x01":
        return "msgpack"
    return None  # JSON inside an envelope: re-encode for everyone


RELAY_KEY = web.AppKey("relay", Relay)


def build_app(config: RelayConfig | None = None) -> web.Application:
    """The aiohttp application of a new relay (``app[RELAY_KEY]`` is the :class:`Relay`)."""
    return Relay(config or RelayConfig()).app


def _write_ready_file(path: Path, host: str, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}))
    tmp.replace(path)


async def serve(
    config: RelayConfig, *, ready_file: Path | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the relay until ``stop`` is set (or SIGTERM/SIGINT when no event is given)."""
    relay = Relay(config)
    settings = config.settings
    if static_turn_password_ignored(settings):
        log.warning(
            "SYFTBOX_HOTLINK_TURN_USER/PASS are set but static TURN passwords are never "
            "advertised to clients (DECISIONS.md #23); use --turn-secret for REST credentials"
        )
    if settings.auth_enabled and weak_secret(settings.access_token_secret):
        log.warning("the access-token secret is shorter than %d bytes", MIN_SECRET_BYTES)
    _warn_if_fd_limit_binds(config.max_connections)
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(accept_error_handler(log, relay.metrics.accept_errors.inc))
    # aiohttp closes a connection that has not sent a complete request within its
    # keep-alive timeout, from the connection's start (and between keep-alive requests).
    runner = web.AppRunner(
        relay.app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=config.header_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=5.0)
    try:
        await site.start()
    except BaseException:
        loop.set_exception_handler(previous_handler)
        await runner.cleanup()
        raise
    addresses = runner.addresses
    port = addresses[0][1] if addresses else settings.port
    ice = advertised_ice_servers(settings)
    log.info(
        "hotlink relay %s listening on http://%s:%d (%s mode; ICE advertisement: %s%s; %s loop)",
        __version__,
        settings.host,
        port,
        "token" if settings.auth_enabled else "dev",
        ice or "none",
        ", TURN REST credentials" if ice and settings.turn_secret else "",
        loop_name(loop),
    )
    if ready_file is not None:
        _write_ready_file(ready_file, settings.host, port)
    own_stop = stop is None
    stop = stop or asyncio.Event()
    if own_stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: closing %d connection(s)", len(relay.hub))
    finally:
        if own_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await runner.cleanup()
        if not own_stop:
            # Embedded (tests): the caller's loop gets its handler back. A process of its
            # own keeps ours to its end: a retry of a listener that failed an accept may
            # still fire after the listener closed (see loop_errors).
            loop.set_exception_handler(previous_handler)
    log.info("stopped")


def _warn_if_fd_limit_binds(max_connections: int) -> None:
    """Say so when ``ulimit -n`` is reached before the connection cap: accept() then fails
    (logged once per interval) instead of upgrades being refused with 503."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_connections + FD_HEADROOM:
        log.warning(
            "the file descriptor limit (%d) is below the connection cap (%d) plus %d; "
            "raise ulimit -n or lower --max-connections",
            soft,
            max_connections,
            FD_HEADROOM,
        )


def run(config: RelayConfig, *, ready_file: Path | None = None) -> None:
    run_on_loop(serve(config, ready_file=ready_file), config.settings.event_loop)
