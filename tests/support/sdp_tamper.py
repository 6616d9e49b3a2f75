"""A WebSocket man-in-the-middle between hotlink clients and the real relay that puts another
DTLS certificate's fingerprint into every SDP it relays, as a relay would that wants to sit
on the peer-to-peer path too (it would then relay the DTLS handshakes with its own
certificates; this one only rewrites the SDPs, which is what the end-to-end binding checks).

    async with sdp_tamper(srv.url) as mitm:
        client = await asyncio.to_thread(start_client, mitm.url, ALICE, tmp_path / "alice")
        ...
        mitm.stats.tampered["sdp_offer"], mitm.stats.seen["e2e_dtls"], ...

Clients connect to ``mitm.url`` as if it were the server. For each client connection the
proxy opens one connection to the real server (same query string and ``X-Syft-*`` /
``Authorization`` headers) and copies the server's upgrade headers back. Every frame is
forwarded in order, byte for byte, except the ``HotlinkSignal``\\ s of the ``kinds`` given
(``sdp_offer`` and ``sdp_answer`` by default) going *to* a client: in their SDP the first
octet of every ``a=fingerprint:`` value is changed, and the message is encoded again in the
form it came in (JSON text or the msgpack envelope).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from hotlink.protocol.codec import decode, encode, peek_data
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.messages import HotlinkSignal, Message

EVENTS_PATH = "/api/v1/events"
MAX_MESSAGE = 16 * 1024 * 1024
_FORWARDED_PREFIXES = ("x-syft-",)
_FINGERPRINT = re.compile(r"(a=fingerprint:\S+[ \t]+)([0-9A-Fa-f]{2})")


@dataclass
class TamperStats:
    connections: int = 0
    # Signals that reached a client, by kind, and those whose SDP was rewritten.
    seen: Counter[str] = field(default_factory=Counter)
    tampered: Counter[str] = field(default_factory=Counter)


def forge_fingerprints(sdp: str) -> str:
    """``sdp`` with the first octet of each ``a=fingerprint:`` value changed."""

    def other(match: re.Match[str]) -> str:
        octet = (int(match.group(2), 16) + 0x5A) % 256
        return f"{match.group(1)}{octet:02X}"

    return _FINGERPRINT.sub(other, sdp)


def _tampered(signal: HotlinkSignal) -> HotlinkSignal | None:
    try:
        token = json.loads(signal.tok)
    except ValueError:
        return None
    if not isinstance(token, dict) or not isinstance(token.get("sdp"), str):
        return None
    forged = forge_fingerprints(token["sdp"])
    if forged == token["sdp"]:
        return None
    token["sdp"] = forged
    return HotlinkSignal(sid=signal.sid, knd=signal.knd, tok=json.dumps(token), err=signal.err)


class SdpTamper:
    def __init__(
        self, upstream: str, *, kinds: Iterable[str] = ("sdp_offer", "sdp_answer")
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.kinds = frozenset(kinds)
        self.stats = TamperStats()
        self.port = 0
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
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def rewrite(self, kind: aiohttp.WSMsgType, data: Any) -> Any:
        """What goes to the client in place of ``data``."""
        if isinstance(data, bytes) and peek_data(data) is not None:
            return data  # stream data: forwarded without decoding it
        try:
            message = decode(data)
        except (ProtocolError, ValueError, TypeError):
            return data
        signal = message.payload
        if not isinstance(signal, HotlinkSignal):
            return data
        self.stats.seen[signal.knd] += 1
        if signal.knd not in self.kinds:
            return data
        forged = _tampered(signal)
        if forged is None:
            return data
        self.stats.tampered[signal.knd] += 1
        encoding = "json" if kind == aiohttp.WSMsgType.TEXT else "msgpack"
        return encode(Message(message.id, forged), encoding)

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
            self._clients.add(client)
            up = asyncio.create_task(self._client_to_server(client, upstream))
            try:
                async for msg in upstream:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await client.send_str(self.rewrite(msg.type, msg.data))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        out = self.rewrite(msg.type, msg.data)
                        if isinstance(out, str):
                            await client.send_str(out)
                        else:
                            await client.send_bytes(out)
                    else:
                        break
            finally:
                self._clients.discard(client)
                up.cancel()
                await asyncio.gather(up, return_exceptions=True)
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
async def sdp_tamper(upstream: str, **options: Any) -> AsyncIterator[SdpTamper]:
    """A running :class:`SdpTamper` in front of ``upstream`` (the relay's http URL)."""
    tamper = SdpTamper(upstream, **options)
    await tamper.start()
    try:
        yield tamper
    finally:
        await tamper.stop()
