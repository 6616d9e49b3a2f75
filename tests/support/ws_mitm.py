"""A WebSocket man-in-the-middle between hotlink clients and the real relay: the connection
plumbing the test proxies share (:mod:`support.signal_shuffler`, :mod:`support.sdp_tamper`,
:mod:`support.tamper_relay`).

Clients connect to ``mitm.url`` as if it were the server. For each client connection the
proxy opens one connection to the real server (same query string, ``X-Syft-*`` and
``Authorization`` headers) and copies the server's ``X-Syft-*`` upgrade headers (encoding,
ICE hints) back. A subclass decides what each frame becomes on its way: ``toward_client``
for the server's frames (in order), ``from_client`` to look at what a client sends (which
goes to the server unchanged), or ``serve`` for the whole connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

EVENTS_PATH = "/api/v1/events"
MAX_MESSAGE = 16 * 1024 * 1024
# Upgrade headers worth copying back: encoding negotiation and the ICE advertisement.
_FORWARDED_PREFIXES = ("x-syft-",)

WsFrame = tuple[aiohttp.WSMsgType, Any]


@dataclass
class Link:
    """One client connection and its upstream twin."""

    number: int  # 1, 2, ... in the order clients connected
    email: str  # the user the client says it is (query ``user`` or ``X-Syft-User``)
    client: web.WebSocketResponse
    upstream: aiohttp.ClientWebSocketResponse


async def send(ws: web.WebSocketResponse, kind: aiohttp.WSMsgType, data: Any) -> None:
    if kind == aiohttp.WSMsgType.TEXT or isinstance(data, str):
        await ws.send_str(data)
    else:
        await ws.send_bytes(data)


class WsMitm:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = 0
        self.connections = 0
        self._runner: web.AppRunner | None = None
        self._clients: set[web.WebSocketResponse] = set()

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
        self.port = int(self._runner.addresses[0][1])  # port 0: the one the kernel gave

    async def stop(self) -> None:
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------ what subclasses change

    def toward_client(self, link: Link, kind: aiohttp.WSMsgType, data: Any) -> list[WsFrame]:
        """What goes to the client for one frame from the server (default: the frame)."""
        return [(kind, data)]

    def from_client(self, link: Link, data: Any) -> None:
        """A frame a client sent (it goes to the server unchanged)."""

    async def serve(self, link: Link) -> None:
        """Carry one connection until either side leaves."""
        up = asyncio.create_task(self._client_to_server(link))
        try:
            async for msg in link.upstream:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                for kind, data in self.toward_client(link, msg.type, msg.data):
                    await send(link.client, kind, data)
        except ConnectionError:
            pass  # the client left
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)

    # ------------------------------------------------------------ the plumbing

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
            self.connections += 1
            email = request.query.get("user", "") or request.headers.get("X-Syft-User", "")
            link = Link(self.connections, email.strip().lower(), client, upstream)
            self._clients.add(client)
            try:
                await self.serve(link)
            finally:
                self._clients.discard(client)
                await upstream.close()
                await client.close()
        return client

    async def _client_to_server(self, link: Link) -> None:
        async for msg in link.client:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.from_client(link, msg.data)
                await link.upstream.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.from_client(link, msg.data)
                await link.upstream.send_bytes(msg.data)
            else:
                break
        await link.upstream.close()
