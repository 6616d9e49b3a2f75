"""The batched UDP reader and the DTLS shortcut: every datagram delivered once, in order, DTLS
records to the ICE connection's queue and everything else (STUN) to aioice's own handler."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from hotlink.webrtc.aiortc_udp import DtlsShortcut, raise_receive_buffer, tune_socket


@dataclass
class Candidate:
    component: int = 1


@dataclass
class Connection:
    """aioice's Connection, as far as the reader uses it."""

    data: list[tuple[bytes, int]] = field(default_factory=list)

    def data_received(self, data: bytes, component: int) -> None:
        self.data.append((data, component))


class Protocol(asyncio.DatagramProtocol):
    """Shaped like aioice's StunProtocol: ``receiver``, ``local_candidate``, ``transport``."""

    def __init__(self) -> None:
        self.receiver = Connection()
        self.local_candidate = Candidate()
        self.transport: Any = None
        self.stun: list[bytes] = []
        self.arrived = asyncio.Event()
        self.expect = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.stun.append(data)
        self._check()

    def _check(self) -> None:
        if len(self.stun) + len(self.receiver.data) >= self.expect:
            self.arrived.set()


def datagrams(count: int) -> list[bytes]:
    """Alternating DTLS records (first byte 23) and STUN-like messages (first byte 0/1)."""
    out = []
    for i in range(count):
        first = 23 if i % 3 else i % 2
        out.append(bytes([first]) + i.to_bytes(4, "big") + bytes(100))
    return out


async def test_batched_reader_delivers_every_datagram_to_the_right_place_in_order() -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
    try:
        await asyncio.sleep(0)  # the transport registers its own reader first
        assert tune_socket(protocol, batch=8, recv_buffer=1 << 20) == "batched"

        # A DTLS record reaching the connection must also reach the test's completion check.
        real = protocol.receiver.data_received

        def data_received(data: bytes, component: int) -> None:
            real(data, component)
            protocol._check()

        protocol.receiver.data_received = data_received  # type: ignore[method-assign]
        sent = datagrams(300)
        protocol.expect = len(sent)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for data in sent:
                sender.sendto(data, transport.get_extra_info("sockname"))
            await asyncio.wait_for(protocol.arrived.wait(), 10)
        finally:
            sender.close()
        assert [d for d, _ in protocol.receiver.data] == [d for d in sent if d[0] == 23]
        assert {c for _, c in protocol.receiver.data} == {1}
        assert protocol.stun == [d for d in sent if d[0] != 23]
    finally:
        transport.close()


async def test_dtls_shortcut_passes_everything_else_to_the_stock_handler() -> None:
    protocol = Protocol()
    protocol.datagram_received = DtlsShortcut(protocol)  # type: ignore[method-assign]
    for data in datagrams(9):
        protocol.datagram_received(data, ("127.0.0.1", 9))
    assert [d[0] for d, _ in protocol.receiver.data] == [23] * 6
    assert [d[0] for d in protocol.stun] == [0, 1, 0]


def test_receive_buffer_is_raised_never_lowered() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert raise_receive_buffer(sock, 1024) == before
        assert raise_receive_buffer(sock, 2 * before) >= before
    finally:
        sock.close()
