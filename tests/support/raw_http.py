"""Raw TCP clients for hostile-peer tests: what no well-behaved WebSocket library would do.

    conn = await raw_upgrade(srv.host, srv.port, "r1@example.com", encoding="json", rcvbuf=4096)
    # conn.status == 101; from here on, never read: the relay's frames pile up
    idle = await open_raw(srv.host, srv.port)              # a TCP connection, nothing sent
    half = await open_raw(srv.host, srv.port, send=partial_upgrade(srv.host, srv.port, user))
    await wait_closed_by_peer(half.reader, timeout=15)      # True once the relay closed it
    conn.close()

``rcvbuf`` shrinks the socket's receive buffer before it connects, so the kernel holds
little of what the relay sends to a client that does not read: what the relay cannot send
stays in its own memory, where the test can see it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlencode

EVENTS_PATH = "/api/v1/events"


@dataclass
class RawConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0  # the HTTP status of the upgrade answer, when one was read

    def close(self) -> None:
        self.writer.transport.abort()


def upgrade_request(host: str, port: int, user: str, encoding: str = "msgpack") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    encodings = "msgpack,json" if encoding == "msgpack" else "json"
    return (
        f"GET {EVENTS_PATH}?{urlencode({'user': user})} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"X-Syft-WS-Encodings: {encodings}\r\n"
        "\r\n"
    ).encode()


def partial_upgrade(host: str, port: int, user: str) -> bytes:
    """An upgrade request cut before the blank line that ends its headers."""
    request = upgrade_request(host, port, user)
    return request[: request.index(b"Sec-WebSocket-Version")]


async def open_raw(
    host: str, port: int, *, send: bytes = b"", rcvbuf: int | None = None
) -> RawConnection:
    """A TCP connection that sends ``send`` (maybe nothing) and reads nothing."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    if send:
        writer.write(send)
        await writer.drain()
    return RawConnection(reader, writer)


async def raw_upgrade(
    host: str,
    port: int,
    user: str,
    *,
    encoding: str = "msgpack",
    rcvbuf: int | None = None,
    timeout: float = 10.0,
) -> RawConnection:
    """Send a WebSocket upgrade and read the answer's head; the body is left unread."""
    conn = await open_raw(
        host, port, send=upgrade_request(host, port, user, encoding), rcvbuf=rcvbuf
    )
    try:
        async with asyncio.timeout(timeout):
            head = await conn.reader.readuntil(b"\r\n\r\n")
    except BaseException:
        conn.close()
        raise
    conn.status = int(head.split(b" ", 2)[1])
    return conn


async def wait_closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Read (and drop) until the peer closes; False if it is still open after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True
