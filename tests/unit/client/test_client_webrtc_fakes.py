"""Fakes for the WebRTC transport's unit tests: a scripted backend/peer and a transport host.

(No tests here; the module name only matches the test file pattern it lives among.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hotlink.client.p2p.session import WebRTCConfig
from hotlink.client.p2p.transport import SessionInfo
from hotlink.client.p2p.webrtc_transport import WebRTCPeerTransport
from hotlink.client.telemetry import Telemetry
from hotlink.protocol.e2e.session import E2ESession
from hotlink.protocol.frames import Frame, encode_frame
from hotlink.protocol.ice import IceCandidate, IceServer
from hotlink.protocol.messages import HotlinkSignal, Payload
from hotlink.settings import ClientSettings
from hotlink.webrtc import Backend, Peer, PeerEvents, WebRTCError

ALICE = "alice@example.com"
BOB = "bob@example.com"
SID = "0011223344556677"
SID2 = "8899aabbccddeeff"
PATH = f"{ALICE}/shared/flows/x/_mpc/0_to_1/stream.tcp.request"
OFFER_SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
ANSWER_SDP = OFFER_SDP.replace("o=- 1 1", "o=- 2 2")
CAND_1 = IceCandidate("1 1 udp 2122260223 192.0.2.1 50000 typ host", "0", 0)
CAND_2 = IceCandidate("2 1 udp 2122260222 192.0.2.2 50001 typ host", "0", 0)


class FakePeer(Peer):
    """A peer whose library events the test fires by hand (``peer.events.on_...()``)."""

    def __init__(self, events: PeerEvents, relay_only: bool) -> None:
        self.events = events
        self.relay_only = relay_only
        self.calls: list[str] = []
        self.remote_candidates: list[IceCandidate | None] = []
        self.sent: list[bytes] = []
        self.open = False
        self.closed = False
        self.close_calls = 0
        self.max_size = 65536
        self.buffered = 0
        self.send_error: Exception | None = None
        self.send_hook: Callable[[bytes], Any] | None = None
        self.types: tuple[str | None, str | None] = ("host", "host")
        self.ice_dtls_up = False  # what transport_connected reports

    @property
    def transport_connected(self) -> bool:
        return self.ice_dtls_up

    async def create_offer(self) -> str:
        self.calls.append("create_offer")
        return OFFER_SDP

    async def accept_offer(self, sdp: str) -> str:
        self.calls.append(f"accept_offer:{sdp == OFFER_SDP}")
        return ANSWER_SDP

    async def set_answer(self, sdp: str) -> None:
        self.calls.append(f"set_answer:{sdp == ANSWER_SDP}")

    async def add_remote_candidate(self, cand: IceCandidate | None) -> None:
        self.calls.append("candidate")
        self.remote_candidates.append(cand)

    async def send(self, data: bytes) -> None:
        if self.send_hook is not None:
            await self.send_hook(data)
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(data)

    @property
    def is_open(self) -> bool:
        return self.open and not self.closed

    @property
    def buffered_amount(self) -> int:
        return self.buffered

    @property
    def max_message_size(self) -> int:
        return self.max_size

    def selected_candidate_type(self) -> str | None:
        return self.types[0]

    def selected_candidate_types(self) -> tuple[str | None, str | None]:
        return self.types

    async def close(self) -> None:
        self.close_calls += 1
        self.closed = True

    # Test helpers: what the library would report.
    def fire_open(self) -> None:
        self.open = True
        self.events.on_channel_open()

    def fire_closed(self, reason: str = "remote closed") -> None:
        self.open = False
        self.events.on_channel_closed(reason)


class FakeBackend(Backend):
    name = "fake"

    def __init__(self) -> None:
        self.peers: list[FakePeer] = []
        self.ice_servers: list[list[IceServer]] = []
        self.fail_create: str | None = None
        self.mtus: list[int] = []  # the mtu each peer was created with

    def create_peer(
        self,
        ice_servers: list[IceServer],
        events: PeerEvents,
        *,
        relay_only: bool = False,
        buffered_high: int = 1024 * 1024,
        backpressure_wait: float = 1.5,
        mtu: int = 0,
    ) -> FakePeer:
        if self.fail_create:
            raise WebRTCError(self.fail_create)
        self.ice_servers.append(list(ice_servers))
        self.mtus.append(mtu)
        peer = FakePeer(events, relay_only)
        self.peers.append(peer)
        return peer


class FakeHost:
    """The manager as the transport sees it: records signals, deliveries, WS resends and
    end-to-end failures."""

    def __init__(self) -> None:
        self.telemetry = Telemetry(None)
        self.signals: list[HotlinkSignal] = []
        self.delivered: list[tuple[str, Frame]] = []
        self.ws: list[Payload] = []
        self.sessions: dict[str, SessionInfo] = {}
        self.e2e: dict[str, E2ESession] = {}  # a session's end-to-end state, when sealed
        self.e2e_failures: list[tuple[str, str]] = []

    async def send_signal(self, signal: HotlinkSignal) -> None:
        self.signals.append(signal)

    def deliver_frame(self, sid: str, frame: Frame) -> None:
        self.delivered.append((sid, frame))

    def session_info(self, sid: str) -> SessionInfo | None:
        return self.sessions.get(sid)

    async def send_in_order(self, payload: Payload) -> None:
        self.ws.append(payload)

    def e2e_session(self, sid: str) -> E2ESession | None:
        return self.e2e.get(sid)

    async def e2e_failed(self, sid: str, reason: str) -> None:
        self.e2e_failures.append((sid, reason))

    def kinds(self) -> list[str]:
        return [s.knd for s in self.signals]

    def add(self, sid: str, role: str) -> SessionInfo:
        info = SessionInfo(sid, PATH, role, ALICE, BOB)  # type: ignore[arg-type]
        self.sessions[sid] = info
        return info


def quick_config(**overrides: Any) -> WebRTCConfig:
    base: dict[str, Any] = {
        "grace": 0.3,
        "open_timeout": 5.0,
        "linger_drained": 0.05,
        "linger_max": 2.0,
        "p2p_only_wait": 0.3,
    }
    base.update(overrides)
    return WebRTCConfig(**base)


def make_transport(
    settings: ClientSettings | None = None, *, backend: FakeBackend | None = None, **overrides: Any
) -> tuple[WebRTCPeerTransport, FakeBackend, FakeHost]:
    backend = backend or FakeBackend()
    host = FakeHost()
    transport = WebRTCPeerTransport(
        settings or ClientSettings(ice_servers_raw="none"),
        backend=backend,
        config=quick_config(**overrides),
    )
    transport.bind(host)
    return transport, backend, host


def frame(seq: int, size: int = 100) -> Frame:
    return Frame(PATH, "", seq, bytes([seq & 0xFF]) * size)


def message(seq: int, size: int = 100) -> bytes:
    return encode_frame(frame(seq, size))


async def settle(rounds: int = 5) -> None:
    """Let queued callbacks and tasks run (no timing involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(check: Callable[[], bool], limit: float = 5.0) -> None:
    """Wait until ``check()`` holds; ``limit`` is only a failure guard."""
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 - polling a plain predicate is the point
            await asyncio.sleep(0.005)
