"""A WebSocket man-in-the-middle between hotlink clients and the real relay that garbles the
timing of WebRTC signals, for signal-order tests.

    async with signal_shuffler(srv.url, offer_delay=1.0, candidate_hold=0.5) as mitm:
        client = await asyncio.to_thread(start_client, mitm.url, ALICE, tmp_path / "alice")
        ...
        mitm.stats.offers_delayed, mitm.stats.candidates_before_offer, ...

Clients connect to ``mitm.url`` as if it were the server. For each client connection the
proxy opens one connection to the real server (same query string and ``X-Syft-*`` /
``Authorization`` headers) and copies the server's upgrade headers (encoding, ICE hints) back.
Frames are forwarded byte for byte in both directions; only ``HotlinkSignal`` messages going
*to* a client are held back:

* ``sdp_offer`` for ``offer_delay`` seconds (``sdp_answer`` for ``answer_delay``);
* each ``ice_candidate``: with ``candidate_order="reverse"`` (the default) the n-th candidate
  of a session is held ``candidate_hold - n * 0.05`` s, so a session's candidates arrive in
  exactly the reverse order; with ``"random"`` each is held a random time in
  ``[0, candidate_hold)`` (``seed`` makes it repeatable). With an offer delay longer than the
  hold, candidates also arrive before the offer they belong to.

Everything else keeps its order. :class:`ShuffleStats` counts what happened, so a test can
assert that the disorder it wanted really occurred.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp
from aiohttp import web

from hotlink.protocol.codec import decode
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.messages import HotlinkSignal

EVENTS_PATH = "/api/v1/events"
MAX_MESSAGE = 16 * 1024 * 1024
# Upgrade headers worth copying back: encoding negotiation and the ICE advertisement.
_FORWARDED_PREFIXES = ("x-syft-",)
# "reverse" order: each later candidate of a session is held this much less.
_REVERSE_STEP = 0.05


@dataclass
class ShuffleStats:
    connections: int = 0
    offers_delayed: int = 0
    answers_delayed: int = 0
    candidates: int = 0
    # Delivered after a candidate that reached the proxy later than it did.
    candidates_reordered: int = 0
    # Delivered to a client before the sdp_offer of the same session reached that client.
    candidates_before_offer: int = 0
    signals_by_kind: dict[str, int] = field(default_factory=dict)


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, shuffler: SignalShuffler, client: web.WebSocketResponse) -> None:
        self.shuffler = shuffler
        self.client = client
        self.queue: asyncio.Queue[tuple[aiohttp.WSMsgType, Any] | None] = asyncio.Queue()
        self.arrived = 0  # candidates seen on this link, numbered in arrival order
        self.newest_delivered = -1
        self.offers_held: set[str] = set()  # offers on their way to this client, delayed
        self.per_sid: dict[str, int] = {}  # candidates seen per session on this link
        self.timers: set[asyncio.TimerHandle] = set()

    def forward(self, kind: aiohttp.WSMsgType, data: Any) -> None:
        signal = _signal(data)
        if signal is None:
            self.queue.put_nowait((kind, data))
            return
        stats = self.shuffler.stats
        stats.signals_by_kind[signal.knd] = stats.signals_by_kind.get(signal.knd, 0) + 1
        delay = 0.0
        order = -1
        if signal.knd == "sdp_offer":
            self.offers_held.add(signal.sid)
            if self.shuffler.offer_delay > 0:
                delay = self.shuffler.offer_delay
                stats.offers_delayed += 1
        elif signal.knd == "sdp_answer" and self.shuffler.answer_delay > 0:
            delay = self.shuffler.answer_delay
            stats.answers_delayed += 1
        elif signal.knd == "ice_candidate":
            stats.candidates += 1
            order = self.arrived
            self.arrived += 1
            nth = self.per_sid.get(signal.sid, 0)
            self.per_sid[signal.sid] = nth + 1
            hold = self.shuffler.candidate_hold
            if self.shuffler.candidate_order == "reverse":
                delay = max(0.0, hold - nth * _REVERSE_STEP)
            else:
                delay = self.shuffler.rng.uniform(0, hold)
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self._deliver, kind, data, signal, order)
        self.timers.add(handle)

    def _deliver(
        self, kind: aiohttp.WSMsgType, data: Any, signal: HotlinkSignal, order: int
    ) -> None:
        stats = self.shuffler.stats
        if signal.knd == "sdp_offer":
            self.offers_held.discard(signal.sid)
        elif signal.knd == "ice_candidate":
            if order < self.newest_delivered:
                stats.candidates_reordered += 1
            self.newest_delivered = max(self.newest_delivered, order)
            if signal.sid in self.offers_held:
                stats.candidates_before_offer += 1
        self.queue.put_nowait((kind, data))

    async def write_loop(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            kind, data = item
            if kind == aiohttp.WSMsgType.TEXT:
                await self.client.send_str(data)
            else:
                await self.client.send_bytes(data)

    def stop(self) -> None:
        for handle in self.timers:
            handle.cancel()
        self.queue.put_nowait(None)


def _signal(data: Any) -> HotlinkSignal | None:
    try:
        message = decode(data)
    except (ProtocolError, ValueError, TypeError):
        return None
    payload = message.payload
    return payload if isinstance(payload, HotlinkSignal) else None


class SignalShuffler:
    def __init__(
        self,
        upstream: str,
        *,
        offer_delay: float = 1.0,
        answer_delay: float = 0.0,
        candidate_hold: float = 0.5,
        candidate_order: Literal["reverse", "random"] = "reverse",
        seed: int | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.offer_delay = offer_delay
        self.answer_delay = answer_delay
        self.candidate_hold = candidate_hold
        self.candidate_order = candidate_order
        self.rng = random.Random(seed)
        self.stats = ShuffleStats()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._links: set[_Link] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(EVENTS_PATH, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        for link in list(self._links):
            link.stop()
            with contextlib.suppress(Exception):
                await link.client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        captured: dict[str, str] = {}

        async def on_end(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
            captured.update(params.response.headers)

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_end)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower().startswith(_FORWARDED_PREFIXES) or k.lower() == "authorization"
        }
        async with aiohttp.ClientSession(trace_configs=[trace]) as http:
            try:
                upstream = await http.ws_connect(
                    self.upstream + EVENTS_PATH,
                    params=dict(request.query),
                    headers=headers,
                    max_msg_size=MAX_MESSAGE,
                )
            except aiohttp.WSServerHandshakeError as exc:
                return web.Response(status=exc.status, text=exc.message)
            client = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
            for key, value in captured.items():
                if key.lower().startswith(_FORWARDED_PREFIXES):
                    client.headers[key] = value
            await client.prepare(request)
            self.stats.connections += 1
            link = _Link(self, client)
            self._links.add(link)
            writer = asyncio.create_task(link.write_loop())
            up = asyncio.create_task(self._client_to_server(client, upstream))
            try:
                async for msg in upstream:
                    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        link.forward(msg.type, msg.data)
                    else:
                        break
            finally:
                link.stop()
                self._links.discard(link)
                up.cancel()
                await asyncio.gather(up, writer, return_exceptions=True)
                await upstream.close()
                await client.close()
        return client

    async def _client_to_server(
        self, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
    ) -> None:
        async for msg in client:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
            else:
                break
        await upstream.close()


@contextlib.asynccontextmanager
async def signal_shuffler(upstream: str, **options: Any) -> AsyncIterator[SignalShuffler]:
    """A running :class:`SignalShuffler` in front of ``upstream`` (the relay's http URL)."""
    shuffler = SignalShuffler(upstream, **options)
    await shuffler.start()
    try:
        yield shuffler
    finally:
        await shuffler.stop()
