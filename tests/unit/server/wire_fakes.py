"""Stand-ins for a relay connection's socket that record the bytes written to them, so tests
read the very WebSocket frames a client would; and a relay connection built on one."""

from __future__ import annotations

import asyncio
import struct

from aiohttp import WSCloseCode

from hotlink.protocol.codec import Encoding, decode
from hotlink.protocol.messages import Message
from hotlink.server.app import Relay
from hotlink.server.cluster import records as rec
from hotlink.server.frames import TextFrame, frame_header
from hotlink.server.hub import Connection

HIGH_WATER = 65536
OPCODE_TEXT, OPCODE_BINARY = 0x1, 0x2


class Wire(asyncio.Transport):
    """A socket that records what is written to it; ``held`` is what it has not sent yet."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.writes = 0
        self.held = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return self.held

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (HIGH_WATER // 4, HIGH_WATER)

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True


class WireSocket:
    """What a Connection touches of aiohttp's WebSocket. Like aiohttp (no compression), a
    send writes its frame onto the same wire at once, then waits while the peer is behind
    (``drained`` cleared)."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.closed = False
        self.close_code: int | None = None
        self.aiohttp_sends = 0
        self.drained = asyncio.Event()
        self.drained.set()

    async def send_bytes(self, data: bytes) -> None:
        self.aiohttp_sends += 1
        self.wire.write(frame_header(data) + data)
        await self.drained.wait()

    async def send_frame(self, data: bytes, opcode: int) -> None:
        self.aiohttp_sends += 1
        self.wire.write(frame_header(TextFrame(data)) + data)
        await self.drained.wait()

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        self.closed = True
        self.close_code = code
        return True


def frames_on(wire: Wire) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of every whole WebSocket frame on ``wire``."""
    data, pos, out = bytes(wire.data), 0, []
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert first & 0x80 and not second & 0x80, "final and unmasked, as from a server"
        size, pos = second & 0x7F, pos + 2
        if size == 126:
            (size,) = struct.unpack_from(">H", data, pos)
            pos += 2
        elif size == 127:
            (size,) = struct.unpack_from(">Q", data, pos)
            pos += 8
        out.append((first & 0x0F, data[pos : pos + size]))
        pos += size
    assert pos == len(data), "no frame cut short"
    return out


def messages_on(wire: Wire) -> list[Message]:
    return [
        decode(payload.decode() if op == OPCODE_TEXT else payload)
        for op, payload in frames_on(wire)
    ]


def wire_of(conn: Connection) -> Wire:
    assert isinstance(conn.transport, Wire)
    return conn.transport


def connect(relay: Relay, user: str, encoding: Encoding = "msgpack", name: str = "") -> Connection:
    """A connection of ``user`` on ``relay`` over a :class:`Wire` (announced to the cluster
    when the relay is a replica)."""
    wire = Wire()
    conn_id = f"c-{name or user.split('@')[0]}"
    if relay.cluster is not None:
        conn_id = f"{relay.cluster.ref}/{conn_id}"
    conn = Connection(
        conn_id,
        user,
        encoding,
        WireSocket(wire),  # type: ignore[arg-type]
        queue_messages=relay.config.queue_messages,
        queue_bytes=relay.config.queue_bytes,
        transport=wire,
        ledger=relay.hub.ledger,
        busy=relay.hub.busy,
    )
    relay.hub.add(conn)
    relay.connections.add(conn.id, user)
    if relay.cluster is not None:
        relay.cluster.conn_up(rec.ConnInfo(conn.id, user, encoding))
    conn.start()
    return conn
