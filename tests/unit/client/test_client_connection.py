"""The client's WebSocket against a tiny in-process aiohttp server (a fake, not the relay)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from hotlink.client.connection import (
    Backoff,
    ConnectOptions,
    NotConnected,
    RelayRefused,
    ServerConnection,
    events_url,
    refusal_reason,
)
from hotlink.protocol.codec import decode, encode
from hotlink.protocol.messages import HotlinkAccept, HotlinkData, Message, System
from unit.client.client_fakes import until


def test_events_url() -> None:
    assert events_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/api/v1/events"
    assert events_url("https://syftbox.net/") == "wss://syftbox.net/api/v1/events"
    with pytest.raises(ValueError):
        events_url("ftp://x")


def test_backoff_doubles_with_jitter_and_resets() -> None:
    b = Backoff(initial=1.0, maximum=4.0, rng=lambda: 1.0)
    assert [round(b.next(), 2) for _ in range(4)] == [1.25, 2.5, 5.0, 5.0]
    b.reset()
    low = Backoff(initial=1.0, maximum=4.0, rng=lambda: 0.0)
    assert low.next() == 0.75


@dataclass
class FakeServer:
    url: str = ""
    encoding: str = "msgpack"
    status: int = 101
    # The refusal's body: a dict is sent as JSON, a str as text.
    body: dict[str, str] | str = field(default_factory=lambda: {"error": "nope"})
    received: list[Message] = field(default_factory=list)
    requests: list[Mapping[str, str]] = field(default_factory=list)
    queries: list[Mapping[str, str]] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeServer]:
    state = FakeServer()

    async def events(request: web.Request) -> web.StreamResponse:
        state.requests.append(dict(request.headers))
        state.queries.append(dict(request.query))
        if state.status != 101:
            if isinstance(state.body, str):
                return web.Response(status=state.status, text=state.body)
            return web.json_response(state.body, status=state.status)
        ws = web.WebSocketResponse()
        ws.headers["X-Syft-WS-Encoding"] = state.encoding
        await ws.prepare(request)
        state.sockets.append(ws)
        greeting = encode(Message.new(System("9.9", "ok")), state.encoding)  # type: ignore[arg-type]
        if isinstance(greeting, str):
            await ws.send_str(greeting)
        else:
            await ws.send_bytes(greeting)
        async for raw in ws:
            state.received.append(decode(raw.data))
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@dataclass
class Events:
    messages: list[Message] = field(default_factory=list)
    connects: list[Mapping[str, str]] = field(default_factory=list)
    disconnects: int = 0


def _client(url: str, events: Events, token: str = "") -> ServerConnection:
    async def on_message(m: Message) -> None:
        events.messages.append(m)

    async def on_connected(headers: Mapping[str, str]) -> None:
        events.connects.append(headers)

    async def on_disconnected() -> None:
        events.disconnects += 1

    return ServerConnection(
        ConnectOptions(server_url=url, email="alice@example.com", token=token),
        on_message=on_message,
        on_connected=on_connected,
        on_disconnected=on_disconnected,
        backoff=Backoff(initial=0.02, maximum=0.05),
    )


async def _stop(conn: ServerConnection, task: asyncio.Task[None]) -> None:
    await conn.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_negotiates_encoding_and_exchanges_messages(
    fake_server: FakeServer, encoding: str
) -> None:
    fake_server.encoding = encoding
    events = Events()
    conn = _client(fake_server.url, events, token="tok")
    task = asyncio.create_task(conn.run())
    try:
        assert await conn.wait_connected(5)
        await until(lambda: events.messages)
        assert isinstance(events.messages[0].payload, System)
        assert conn.encoding == encoding
        headers = fake_server.requests[0]
        assert headers["X-Syft-WS-Encodings"] == "msgpack,json"
        assert headers["Authorization"] == "Bearer tok"
        assert fake_server.queries[0] == {"user": "alice@example.com"}
        assert events.connects[0]["X-Syft-WS-Encoding"] == encoding

        conn.send_control(Message.new(HotlinkAccept("0123456789abcdef")))
        await conn.send(Message.new(HotlinkData("0123456789abcdef", 1, "a/b.request", "", b"x")))
        await until(lambda: len(fake_server.received) == 2)
        assert [type(m.payload) for m in fake_server.received] == [HotlinkAccept, HotlinkData]
    finally:
        await _stop(conn, task)


async def test_reconnects_after_the_server_drops_it(fake_server: FakeServer) -> None:
    events = Events()
    conn = _client(fake_server.url, events)
    task = asyncio.create_task(conn.run())
    try:
        await until(lambda: len(fake_server.sockets) == 1)
        await fake_server.sockets[0].close()
        await until(lambda: events.disconnects == 1)
        with pytest.raises(NotConnected):
            conn.send_control(Message.new(HotlinkAccept("0123456789abcdef")))
        await until(lambda: len(events.connects) == 2)
        assert conn.connects == 2
    finally:
        await _stop(conn, task)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_busy_or_failing_relay_is_retried_and_logged_once(
    fake_server: FakeServer, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    fake_server.status = status
    fake_server.body = {"code": "E_BUSY", "error": "too many connections for alice"}
    events = Events()
    conn = _client(fake_server.url, events)
    task = asyncio.create_task(conn.run())
    try:
        with caplog.at_level(logging.INFO, logger="hotlink.connection"):
            await until(lambda: len(fake_server.requests) >= 4)
        assert not conn.connected
        fake_server.status = 101
        assert await conn.wait_connected(5)
    finally:
        await _stop(conn, task)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    # One line for the state, not one per attempt; it carries the relay's reason.
    assert len(refusals) == 1, refusals
    assert f"HTTP {status} (too many connections for alice); retrying" in refusals[0]


@pytest.mark.parametrize(
    "status,body,token,reason",
    [
        (401, {"code": "E_INVALID_REQUEST", "error": "invalid email"}, "", "invalid email"),
        (
            401,
            {"code": "E_AUTH_INVALID_CREDENTIALS", "error": "invalid token: token is expired"},
            "tok",
            "invalid token: token is expired",
        ),
        (
            401,
            {"code": "E_AUTH_INVALID_CREDENTIALS", "error": "authorization header required"},
            "",
            "authorization header required (no access token given: use --token or "
            "SYFTBOX_ACCESS_TOKEN)",
        ),
        (403, "request origin not allowed\n", "", "request origin not allowed"),
    ],
)
async def test_identity_refusal_ends_run_with_the_relays_reason(
    fake_server: FakeServer, status: int, body: dict[str, str] | str, token: str, reason: str
) -> None:
    fake_server.status = status
    fake_server.body = body
    conn = _client(fake_server.url, Events(), token=token)
    with pytest.raises(RelayRefused) as info:
        await asyncio.wait_for(conn.run(), 10)
    assert len(fake_server.requests) == 1  # never retried: the answer would not change
    assert info.value.status == status
    assert info.value.reason == reason
    assert str(info.value) == f"the relay refused alice@example.com: {reason}"


def test_refusal_reason_reads_json_text_or_falls_back() -> None:
    assert refusal_reason(401, b'{"code": "X", "error": "bad"}', "Invalid") == "bad"
    assert refusal_reason(403, b"origin not allowed\nmore", "Invalid") == "origin not allowed"
    assert refusal_reason(502, b"<html>bad gateway</html>", "Invalid status") == "Invalid status"
    assert refusal_reason(500, b"", "") == "HTTP 500"
    assert refusal_reason(500, b'{"error": 5}', "fallback") == "fallback"
    assert len(refusal_reason(401, b"x" * 5000, "")) == 300


async def test_data_send_waits_for_room_and_fails_when_the_socket_goes(
    fake_server: FakeServer,
) -> None:
    events = Events()
    conn = _client(fake_server.url, events)
    task = asyncio.create_task(conn.run())
    try:
        assert await conn.wait_connected(5)
        message = Message.new(HotlinkData("0123456789abcdef", 1, "a/b.request", "", b"x" * 10))
        for _ in range(20):
            await conn.send(message)
        await until(lambda: len(fake_server.received) == 20)
    finally:
        await _stop(conn, task)
    with pytest.raises(NotConnected):
        await conn.send(message)


async def test_unreachable_server_keeps_retrying() -> None:
    events = Events()
    conn = _client("http://127.0.0.1:9", events)  # discard port: nothing listens
    task = asyncio.create_task(conn.run())
    try:
        assert not await conn.wait_connected(0.2)
    finally:
        await _stop(conn, task)
    assert events.connects == []


async def test_header_capture_uses_a_real_aiohttp_session(fake_server: FakeServer) -> None:
    # The negotiated encoding comes from the 101 response headers (captured via tracing).
    fake_server.encoding = "json"
    events = Events()
    conn = _client(fake_server.url, events)
    task = asyncio.create_task(conn.run())
    try:
        assert await conn.wait_connected(5)
        assert conn.response_headers.get("X-Syft-WS-Encoding") == "json"
    finally:
        await _stop(conn, task)
    assert aiohttp.__version__
