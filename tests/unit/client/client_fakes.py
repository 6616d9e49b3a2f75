"""Fakes for the client's unit tests: a session host, sinks, a wire and a peer transport."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hotlink.client.connection import NotConnected
from hotlink.client.manager import HotlinkManager
from hotlink.client.p2p.transport import SessionInfo, TransportHost
from hotlink.client.session.inbound import InboundSession
from hotlink.client.session.outbound import OutboundSession
from hotlink.client.telemetry import Telemetry
from hotlink.protocol.e2e.session import E2ESession
from hotlink.protocol.frames import Frame
from hotlink.protocol.messages import HotlinkSignal, Message, Payload

ALICE = "alice@example.com"
BOB = "bob@example.com"


class FakeHost:
    """A SessionHost that records what sessions send."""

    local_email = ALICE

    def __init__(self) -> None:
        self.telemetry = Telemetry(None)
        self.control: list[Payload] = []
        self.ordered: list[Payload] = []
        self.frames: list[Frame] = []
        self.drained: list[str] = []
        self.connected = True
        self.ended: list[OutboundSession | InboundSession] = []
        self.accepted: list[Any] = []
        self.sealed: list[E2ESession] = []
        self.plaintext: list[tuple[str, str]] = []  # (sid, peer)

    def e2e_sealed(self, e2e: E2ESession) -> None:
        self.sealed.append(e2e)

    def e2e_plaintext(self, e2e: E2ESession | None, sid: str, peer: str) -> None:
        self.plaintext.append((sid, peer))

    def send_control(self, payload: Payload) -> None:
        if not self.connected:
            raise NotConnected("down")
        self.control.append(payload)

    async def send_in_order(self, payload: Payload) -> None:
        if not self.connected:
            raise NotConnected("down")
        self.ordered.append(payload)

    async def wait_ready(self, within: float) -> bool:
        return self.connected

    async def transmit(self, sid: str, frame: Frame, app_bytes: int | None = None) -> None:
        if not self.connected:
            raise NotConnected("down")
        self.frames.append(frame)

    async def drain(self, sid: str) -> None:
        self.drained.append(sid)

    async def outbound_accepted(self, session: OutboundSession) -> None:
        self.accepted.append(session)

    async def inbound_accepted(self, session: InboundSession) -> None:
        self.accepted.append(session)

    async def session_ended(self, session: OutboundSession | InboundSession) -> None:
        self.ended.append(session)

    def transport_kind(self, sid: str) -> str:
        return "ws"


class FakeWriter:
    """An app connection: collects bytes; can be told to fail."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.finished = False
        self.failed: str | None = None
        self.broken = False

    @property
    def closed(self) -> bool:
        return self.broken or self.failed is not None

    async def write(self, data: bytes) -> None:
        if self.broken or self.failed is not None:
            raise ConnectionResetError("gone")
        self.data += data

    def write_nowait(self, data: bytes) -> bool:
        if self.closed:
            return False
        self.data += data
        return True

    def finish(self) -> None:
        self.finished = True

    def fail(self, reason: str) -> None:
        self.failed = reason


class FakeSink:
    """A sink whose app connects when the test says so."""

    def __init__(self, writer: FakeWriter | None = None) -> None:
        self.writer = writer
        self._arrived = asyncio.Event()
        if writer is not None:
            self._arrived.set()

    def connect(self, writer: FakeWriter) -> None:
        self.writer = writer
        self._arrived.set()

    def eof_writer(self) -> FakeWriter | None:
        return self.writer

    async def wait_writer(self, within: float) -> FakeWriter | None:
        try:
            async with asyncio.timeout(within):
                await self._arrived.wait()
        except TimeoutError:
            return None
        return self.writer


class FakeWire:
    """The server connection as the manager sees it."""

    def __init__(self) -> None:
        self.connected = True
        self.control: list[Message] = []
        self.data: list[Message] = []

    def send_control(self, message: Message) -> None:
        if not self.connected:
            raise NotConnected("down")
        self.control.append(message)

    async def send(self, message: Message) -> None:
        if not self.connected:
            raise NotConnected("down")
        self.data.append(message)

    async def wait_connected(self, within: float | None = None) -> bool:
        return self.connected

    def payloads(self, kind: type) -> list[Any]:
        return [m.payload for m in (*self.control, *self.data) if isinstance(m.payload, kind)]


class FakeTransport:
    """A peer transport that carries the frames ``carry(seq)`` allows and records hooks."""

    def __init__(self, carry: Any = lambda seq: False) -> None:
        self.carry = carry
        self.host: TransportHost | None = None
        self.sent: list[tuple[str, Frame]] = []
        self.events: list[tuple[str, Any]] = []

    def bind(self, host: TransportHost) -> None:
        self.host = host

    def on_server_connected(self, headers: Mapping[str, str]) -> None:
        self.events.append(("connected", dict(headers)))

    async def try_send(self, sid: str, frame: Frame) -> bool:
        if self.carry(frame.seq):
            self.sent.append((sid, frame))
            return True
        return False

    async def drain(self, sid: str) -> None:
        self.events.append(("drain", sid))

    async def on_inbound_accepted(self, session: SessionInfo) -> None:
        self.events.append(("inbound_accepted", session))

    async def on_outbound_accepted(self, session: SessionInfo) -> None:
        self.events.append(("outbound_accepted", session))

    async def on_signal(self, signal: HotlinkSignal) -> None:
        self.events.append(("signal", signal))

    def stream_ending(self, sid: str) -> None:
        self.events.append(("ending", sid))

    async def on_session_closed(self, sid: str) -> None:
        self.events.append(("closed", sid))

    def transport_kind(self, sid: str) -> str:
        return "p2p-host" if any(s == sid for s, _ in self.sent) else "ws"

    async def close(self) -> None:
        self.events.append(("transport_closed", None))


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Wait (as a failure guard only) until ``predicate()`` is true."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling a plain predicate is the point
            await asyncio.sleep(0.005)


def fake_manager(tmp_path: Path, email: str, **options: Any) -> tuple[HotlinkManager, FakeWire]:
    """``email``'s manager on a :class:`FakeWire`, with a :class:`FakeTransport` unless
    ``options`` name the transport (``transport=None``: the manager's own, WebSocket only);
    the other ``options`` go to :class:`HotlinkManager` as they are."""
    wire = FakeWire()
    options.setdefault("transport", FakeTransport())
    manager = HotlinkManager(
        local_email=email,
        datasites=tmp_path / "datasites",
        wire=wire,
        telemetry=Telemetry(None),
        **options,
    )
    return manager, wire
