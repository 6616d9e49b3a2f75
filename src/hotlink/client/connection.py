"""The client's WebSocket to the relay server (PROTOCOL.md §1).

One :class:`ServerConnection` owns the socket across reconnects: it negotiates the encoding,
sends through a bounded outbox (control messages first and never blocking, data with
backpressure), reads and dispatches every message in arrival order, and reconnects with a
jittered exponential backoff. Each connection gets a fresh outbox, so nothing queued for a
dead socket leaks into the next one; waiting producers get :class:`NotConnected`.

A relay that refuses *who we are* (HTTP 401 or 403 on the upgrade: invalid email, token
missing, expired or badly signed, foreign origin) will refuse every retry too, so
:meth:`ServerConnection.run` raises :class:`RelayRefused` with the relay's own reason (the
``error`` of its JSON body). Everything else (relay down, 5xx, 429 too many connections) is
retried with backoff and logged once per change of state, not once per attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .. import __version__
from ..protocol.codec import Encoding, decode, encode
from ..protocol.errors import ProtocolError
from ..protocol.messages import Message

log = logging.getLogger("hotlink.connection")

EVENTS_PATH = "/api/v1/events"
MAX_MESSAGE = 8 * 1024 * 1024
# Refusals that name who we are: retrying with the same identity cannot succeed.
FATAL_STATUSES = frozenset({401, 403})
# How much of a refusal's body is read for its reason, and for how long.
REASON_BYTES = 4096
REASON_TIMEOUT = 2.0


class NotConnected(Exception):
    """The WebSocket is down (or went down while the message waited)."""


class RelayRefused(Exception):
    """The relay refused our identity (HTTP 401/403); ``reason`` is the relay's own words."""

    def __init__(self, email: str, status: int, reason: str) -> None:
        super().__init__(f"the relay refused {email}: {reason}")
        self.email = email
        self.status = status
        self.reason = reason


def refusal_reason(status: int, body: bytes, fallback: str) -> str:
    """The reason in a refusal's body: the relay's JSON ``error`` (``{"code", "error"}``),
    else the first line of a text body, else ``fallback``; at most 300 characters."""
    text = body.decode("utf-8", "replace").strip()
    reason = ""
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        reason = doc["error"].strip()
    elif doc is None and text and not text.startswith("<"):  # not an HTML error page
        reason = text.splitlines()[0].strip()
    reason = reason or fallback or f"HTTP {status}"
    return reason if len(reason) <= 300 else reason[:297] + "..."


def events_url(server_url: str) -> str:
    """``http(s)://host[:port][/prefix]`` to the ``ws(s)://`` events endpoint."""
    parts = urlsplit(server_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"server URL must be http(s)://host[:port], got {server_url!r}")
    path = parts.path.rstrip("/") + EVENTS_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass
class Backoff:
    """Exponential backoff with jitter x[0.75, 1.25] (the Go client's jitter, Rust's range)."""

    initial: float = 0.25
    maximum: float = 5.0
    factor: float = 2.0
    rng: Callable[[], float] = random.random
    _current: float = field(default=0.0, init=False)

    def next(self) -> float:
        self._current = (
            self.initial if self._current == 0 else min(self.maximum, self._current * self.factor)
        )
        return self._current * (0.75 + 0.5 * self.rng())

    def reset(self) -> None:
        self._current = 0.0


@dataclass(frozen=True)
class ConnectOptions:
    server_url: str
    email: str
    token: str = ""
    heartbeat: float = 15.0
    connect_timeout: float = 10.0
    # A write that cannot finish in this time means the server is gone.
    write_timeout: float = 60.0
    data_queue: int = 128
    control_queue: int = 1024
    device_id: str = field(default_factory=lambda: secrets.token_hex(8))


class _Outbox:
    """The frames waiting for one socket: control (small, never blocks) before data."""

    def __init__(self, data_max: int, control_max: int) -> None:
        self.data_max = data_max
        self.control_max = control_max
        self._control: list[bytes | str] = []
        self._data: list[bytes | str] = []
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.closed = False

    def put_control(self, frame: bytes | str) -> bool:
        if self.closed:
            raise NotConnected("connection closed")
        if len(self._control) >= self.control_max:
            return False
        self._control.append(frame)
        self._ready.set()
        return True

    async def put_data(self, frame: bytes | str) -> None:
        while len(self._data) >= self.data_max and not self.closed:
            self._space.clear()
            await self._space.wait()
        if self.closed:
            raise NotConnected("connection closed")
        self._data.append(frame)
        self._ready.set()

    async def get(self) -> bytes | str:
        while not self._control and not self._data:
            if self.closed:
                raise NotConnected("connection closed")
            self._ready.clear()
            await self._ready.wait()
        if self._control:
            return self._control.pop(0)
        frame = self._data.pop(0)
        self._space.set()
        return frame

    def close(self) -> None:
        self.closed = True
        self._control.clear()
        self._data.clear()
        self._ready.set()
        self._space.set()


MessageHandler = Callable[[Message], Awaitable[None]]
ConnectedHandler = Callable[[Mapping[str, str]], Awaitable[None]]
DisconnectedHandler = Callable[[], Awaitable[None]]


async def _noop_connected(headers: Mapping[str, str]) -> None:
    return None


async def _noop() -> None:
    return None


class ServerConnection:
    def __init__(
        self,
        options: ConnectOptions,
        *,
        on_message: MessageHandler,
        on_connected: ConnectedHandler = _noop_connected,
        on_disconnected: DisconnectedHandler = _noop,
        backoff: Backoff | None = None,
    ) -> None:
        self.options = options
        self.url = events_url(options.server_url)
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.backoff = backoff or Backoff()
        self.encoding: Encoding = "json"
        self.response_headers: Mapping[str, str] = {}
        self.connects = 0
        self._outbox: _Outbox | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._last_headers: Mapping[str, str] = {}
        self._closer: asyncio.Task[bool] | None = None
        self._stop_event = asyncio.Event()
        self._last_body = b""
        # Why the last attempt failed; a new reason is logged, a repeated one is not.
        self._failure: str | None = None

    # ------------------------------------------------------------ sending

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, within: float | None = None) -> bool:
        try:
            async with asyncio.timeout(within):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    def send_control(self, message: Message) -> None:
        """Queue a small control message without waiting (Accept, Close, Signal, ...).

        Never blocks, so message handlers may call it while the reader waits on them. A full
        control queue means the socket is stuck: the connection is dropped and re-made.
        """
        outbox = self._outbox
        if outbox is None or not self.connected:
            raise NotConnected("not connected to the server")
        if not outbox.put_control(encode(message, self.encoding)):
            log.error("control queue full (%d); reconnecting", outbox.control_max)
            self._drop_connection()
            raise NotConnected("control queue full")

    async def send(self, message: Message) -> None:
        """Queue a data message, waiting while the outbox is full (backpressure)."""
        outbox = self._outbox
        if outbox is None or not self.connected:
            raise NotConnected("not connected to the server")
        await outbox.put_data(encode(message, self.encoding))

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Connect, serve, reconnect until :meth:`stop`. The daemon owns this task.

        Raises :class:`RelayRefused` when the relay refuses our identity (401/403)."""
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._capture_headers)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.connect_timeout)
        async with aiohttp.ClientSession(trace_configs=[trace], timeout=timeout) as http:
            while not self._stopping:
                ws = await self._connect(http)
                if ws is not None:
                    self.backoff.reset()
                    await self._serve(ws)
                if self._stopping:
                    break
                delay = self.backoff.next()
                log.debug("reconnecting in %.2f s", delay)
                try:
                    await asyncio.wait_for(self._stop_event.wait(), delay)
                except TimeoutError:
                    pass

    async def _capture_headers(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        # The upgrade response headers (encoding, ICE hints) are not public on the ws object.
        response: aiohttp.ClientResponse = params.response
        self._last_headers = dict(response.headers)
        if response.status != 101:
            # ws_connect drops a refusal's body; the relay's reason is in it, so read a
            # little of it here, while the response is still open.
            self._last_body = await _read_some(response, REASON_BYTES, REASON_TIMEOUT)

    def _headers(self) -> dict[str, str]:
        headers = {
            "X-Syft-WS-Encodings": "msgpack,json",
            "X-Syft-Version": __version__,
            "X-Syft-Device-Id": self.options.device_id,
            "X-Syft-User": self.options.email,
        }
        if self.options.token:
            headers["Authorization"] = f"Bearer {self.options.token}"
        return headers

    async def _connect(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse | None:
        self._last_headers = {}
        self._last_body = b""
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                ws = await http.ws_connect(
                    self.url,
                    params={"user": self.options.email},
                    headers=self._headers(),
                    heartbeat=self.options.heartbeat,
                    max_msg_size=MAX_MESSAGE,
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            self._refused(exc.status, exc.message)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._failed(
                logging.INFO,
                f"cannot reach server {self.url}: {exc or type(exc).__name__}",
            )
        else:
            self._failure = None
            return ws
        return None

    def _refused(self, status: int, message: str) -> None:
        reason = refusal_reason(status, self._last_body, message)
        if status in FATAL_STATUSES:
            wants_token = "token" in reason.lower() or "authorization" in reason.lower()
            if status == 401 and not self.options.token and wants_token:
                reason += " (no access token given: use --token or SYFTBOX_ACCESS_TOKEN)"
            log.warning(
                "server %s refused the connection: HTTP %d (%s); not retrying",
                self.url,
                status,
                reason,
            )
            raise RelayRefused(self.options.email, status, reason)
        self._failed(
            logging.WARNING,
            f"server {self.url} refused the connection: HTTP {status} ({reason}); retrying",
        )

    def _failed(self, level: int, text: str) -> None:
        """Log a failed attempt once per change of reason (the backoff retries quietly)."""
        if text != self._failure:
            log.log(level, "%s", text)
            self._failure = text
        else:
            log.debug("%s", text)

    def _negotiated(self, headers: Mapping[str, str]) -> Encoding:
        value = ""
        for key, val in headers.items():
            if key.lower() == "x-syft-ws-encoding":
                value = val.strip().lower()
        return "msgpack" if value == "msgpack" else "json"

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.response_headers = self._last_headers
        self.encoding = self._negotiated(self.response_headers)
        outbox = _Outbox(self.options.data_queue, self.options.control_queue)
        self._outbox = outbox
        writer = asyncio.create_task(self._write_loop(ws, outbox), name="ws-writer")
        self._connected.set()
        self.connects += 1
        log.info(
            "connected to %s as %s (encoding %s)",
            self.options.server_url,
            self.options.email,
            self.encoding,
        )
        try:
            try:
                await self.on_connected(self.response_headers)
            except Exception:
                log.exception("connect handler failed")
            await self._read_loop(ws)
        finally:
            self._connected.clear()
            outbox.close()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if self._closer is not None:
                await asyncio.gather(self._closer, return_exceptions=True)
                self._closer = None
            await ws.close()
            self._ws = None
            if not self._stopping:
                log.warning("disconnected from %s", self.options.server_url)
            try:
                await self.on_disconnected()
            except Exception:
                log.exception("disconnect handler failed")

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for raw in ws:
            if raw.type == aiohttp.WSMsgType.BINARY:
                frame: bytes | str = raw.data
            elif raw.type == aiohttp.WSMsgType.TEXT:
                frame = raw.data
            elif raw.type == aiohttp.WSMsgType.ERROR:
                log.warning("websocket error: %s", ws.exception())
                return
            else:
                continue
            try:
                message = decode(frame)
            except ProtocolError as exc:
                log.warning("dropping undecodable message from server: %s", exc)
                continue
            try:
                await self.on_message(message)
            except Exception:
                # One bad message must not take the connection (and every session) down.
                log.exception("handling %s from server failed", message.typ.name)

    async def _write_loop(self, ws: aiohttp.ClientWebSocketResponse, outbox: _Outbox) -> None:
        try:
            while True:
                frame = await outbox.get()
                async with asyncio.timeout(self.options.write_timeout):
                    if isinstance(frame, str):
                        await ws.send_str(frame)
                    else:
                        await ws.send_bytes(frame)
        except NotConnected:
            return
        except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
            log.warning("websocket write failed: %s", exc or type(exc).__name__)
            self._drop_connection()

    def _drop_connection(self) -> None:
        ws = self._ws
        if ws is not None and not ws.closed and self._closer is None:
            # Closing makes the reader's iteration end, which runs the normal teardown;
            # _serve awaits this task.
            self._closer = asyncio.get_running_loop().create_task(ws.close())

    async def stop(self) -> None:
        """Stop reconnecting and close the socket; :meth:`run` then returns."""
        self._stopping = True
        self._stop_event.set()
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close()


async def _read_some(response: aiohttp.ClientResponse, limit: int, within: float) -> bytes:
    """Up to ``limit`` bytes of ``response``'s body, whatever arrived within ``within`` s."""
    data = bytearray()
    try:
        async with asyncio.timeout(within):
            while len(data) < limit:
                chunk = await response.content.read(limit - len(data))
                if not chunk:
                    break
                data += chunk
    except (aiohttp.ClientError, OSError, TimeoutError):
        pass
    return bytes(data)
