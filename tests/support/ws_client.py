"""A raw WebSocket client for tests: connect as a user, send and receive protocol Messages.

    async with connect(srv.url, "alice@example.com", encoding="json") as alice:
        alice.greeting                # the System{ver, msg:"ok"} the server sent first
        alice.headers                 # the 101 response headers (encoding, ICE, ...)
        await alice.send(HotlinkOpen(sid=..., pth=...))   # a Payload or a whole Message
        msg = await alice.recv(timeout=10)               # next Message (any type)
        acc = await alice.expect(HotlinkAccept)          # next message must be this type
        got = await alice.barrier()   # everything the server queued for alice so far

``encoding`` is what the client asks for (``msgpack`` sends ``msgpack,json`` like the real
clients, ``json`` sends ``json``); it sends in the encoding the server announced, as the
reference clients do, unless ``send(..., encoding=...)`` says otherwise. ``recv`` decodes
text frames as JSON and binary frames as the SB envelope whatever was negotiated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp

from hotlink.protocol.codec import Encoding, decode, encode
from hotlink.protocol.messages import Ack, FileWrite, HotlinkSignal, Message, Payload

P = TypeVar("P", bound=Payload)

EVENTS_PATH = "/api/v1/events"
BARRIER_KIND = "test_barrier"


class ConnectionClosed(Exception):
    """The server closed the WebSocket; ``code`` is its close code (None if unknown)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"WebSocket closed by the server (code {code}) {reason}".strip())
        self.code = code
        self.reason = reason


class WSClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        user: str,
        encoding: Encoding,
        headers: Mapping[str, str],
    ) -> None:
        self.session = session
        self.ws = ws
        self.user = user
        self.encoding: Encoding = encoding  # what the server announced
        self.headers = headers
        self.greeting: Message | None = None

    # ------------------------------------------------------------ sending

    async def send(self, item: Payload | Message, *, encoding: Encoding | None = None) -> Message:
        """Send a Message (a bare Payload gets a fresh id); returns what was sent."""
        message = item if isinstance(item, Message) else Message.new(item)
        frame = encode(message, encoding or self.encoding)
        await self.send_raw(frame)
        return message

    async def send_raw(self, frame: bytes | str) -> None:
        """Send a frame as is: bytes as a binary frame, str as a text frame."""
        if isinstance(frame, str):
            await self.ws.send_str(frame)
        else:
            await self.ws.send_bytes(frame)

    # ------------------------------------------------------------ receiving

    async def recv(self, timeout: float = 10.0) -> Message:
        """The next message; raises TimeoutError or :class:`ConnectionClosed`."""
        while True:
            item = await self.ws.receive(timeout=timeout)
            if item.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return decode(item.data)
            if item.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                raise ConnectionClosed(self.ws.close_code, str(item.extra or ""))

    async def expect(self, payload_type: type[P], timeout: float = 10.0) -> P:
        """The next message, which must carry ``payload_type``; returns its payload."""
        message = await self.recv(timeout)
        if not isinstance(message.payload, payload_type):
            raise AssertionError(
                f"{self.user}: expected {payload_type.__name__}, got {message.payload!r}"
            )
        return message.payload

    async def expect_message(self, payload_type: type[Payload], timeout: float = 10.0) -> Message:
        """Like :meth:`expect` but returns the whole Message (to check its id)."""
        message = await self.recv(timeout)
        if not isinstance(message.payload, payload_type):
            raise AssertionError(
                f"{self.user}: expected {payload_type.__name__}, got {message.payload!r}"
            )
        return message

    async def barrier(self, timeout: float = 20.0) -> list[Message]:
        """Every message the server had queued for us before this call, in order.

        Sends a Signal for a session that does not exist; the server answers it on our own
        queue, behind everything already there. Since the server handles a connection's
        messages in order, calling ``barrier`` on a *sender* first also proves that all
        the sender's earlier messages have been routed.
        """
        sid = "barrier-" + secrets.token_hex(8)
        await self.send(HotlinkSignal(sid=sid, knd=BARRIER_KIND))
        seen: list[Message] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - loop.time()))
            p = message.payload
            if isinstance(p, HotlinkSignal) and p.sid == sid:
                return seen
            seen.append(message)

    async def publish_acl(
        self, directory: str, *, read: Sequence[str] = (), write: Sequence[str] = ()
    ) -> None:
        """Write ``<directory>/syft.pub.yaml`` (rule ``**``) and wait for the server's Ack.

        Call it before other clients connect, or they receive the ACL FileWrite broadcast.
        """
        content = acl_yaml(read=read, write=write)
        sent = await self.send(
            FileWrite(pth=f"{directory}/syft.pub.yaml", con=content, len=len(content))
        )
        ack = await self.expect(Ack)
        assert ack.oid == sent.id, (ack, sent)

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Read (and discard) until the server closes; returns the close code."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.recv(timeout)
        return self.ws.close_code

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def acl_yaml(*, read: Sequence[str] = (), write: Sequence[str] = ()) -> bytes:
    """A ``syft.pub.yaml`` with one ``**`` rule granting ``read`` and ``write``."""
    return json.dumps(
        {
            "rules": [
                {"pattern": "**", "access": {"admin": [], "write": list(write), "read": list(read)}}
            ]
        }
    ).encode()  # JSON is YAML


def _request_headers(
    encoding: Encoding, token: str | None, extra: Mapping[str, str] | None
) -> dict[str, str]:
    headers = {"X-Syft-WS-Encodings": "msgpack,json" if encoding == "msgpack" else "json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra or {})
    return headers


async def open_client(
    base_url: str,
    user: str | None,
    *,
    encoding: Encoding = "msgpack",
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    expect_greeting: bool = True,
    timeout: float = 10.0,
) -> WSClient:
    """Connect (the caller closes). ``base_url`` is ``http://host:port``.

    A refused upgrade raises ``aiohttp.WSServerHandshakeError`` (``.status`` is the HTTP
    status); use :func:`handshake` to see the body.
    """
    params: dict[str, str] = {}
    if user is not None:
        params["user"] = user
    params.update(query or {})
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout))
    try:
        ws = await session.ws_connect(
            base_url.rstrip("/") + EVENTS_PATH,
            params=params,
            headers=_request_headers(encoding, token, headers),
            max_msg_size=16 * 1024 * 1024,
            autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
    except BaseException:
        await session.close()
        raise
    response_headers = dict(ws._response.headers)  # aiohttp keeps the 101 response here
    announced = response_headers.get("X-Syft-WS-Encoding", "json").strip().lower()
    client = WSClient(
        session, ws, user or "", "msgpack" if announced == "msgpack" else "json", response_headers
    )
    if expect_greeting:
        try:
            client.greeting = await client.recv(timeout)
        except BaseException:
            await client.close()
            raise
    return client


@contextlib.asynccontextmanager
async def connect(base_url: str, user: str | None, **kwargs: Any) -> AsyncIterator[WSClient]:
    """:func:`open_client` as a context manager that always closes the client."""
    client = await open_client(base_url, user, **kwargs)
    try:
        yield client
    finally:
        await client.close()


async def handshake(
    base_url: str,
    *,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """Attempt an upgrade and return (HTTP status, JSON body or text) without keeping it."""
    ws_headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    ws_headers.update(headers or {})
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            base_url.rstrip("/") + EVENTS_PATH, params=dict(query or {}), headers=ws_headers
        ) as response,
    ):
        if response.status == 101:
            return 101, None
        text = await response.text()
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, text
