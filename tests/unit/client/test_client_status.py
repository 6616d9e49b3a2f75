"""The status document: sessions, tunnels, ended sessions, rates, the connection, metrics."""

from __future__ import annotations

import json
import logging
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hotlink.client.control import client_registry
from hotlink.client.manager import HotlinkManager
from hotlink.client.p2p.session import P2PPathInfo
from hotlink.client.status import RECENT_MAX, RateMeter, StatusBuilder, tcp_rtt
from hotlink.protocol.markers import ProxyChannel
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    Message,
)
from hotlink.settings import ClientSettings
from unit.client.client_fakes import (
    ALICE,
    BOB,
    FakeSink,
    FakeTransport,
    FakeWire,
    FakeWriter,
    fake_manager,
    until,
)
from unit.client.test_client_webrtc_fakes import SID as P2P_SID
from unit.client.test_client_webrtc_fakes import frame as p2p_frame
from unit.client.test_client_webrtc_fakes import make_transport
from unit.client.test_client_webrtc_transport import offer_signal

TUNNEL = f"{ALICE}/shared/flows/x/_mpc/0_to_1/stream.tcp.request"
SID = "00112233445566778899"


def msg(payload: object) -> Message:
    return Message.new(payload)  # type: ignore[arg-type]


class Clock:
    """Wall and monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    def mono(self) -> float:
        return self.now


@dataclass
class FakeConnection:
    connected: bool = True
    connects: int = 1
    encoding: str = "msgpack"
    last_error: str = ""


@dataclass
class FakeApp:
    closed: bool = False


class FakeServer:
    def is_serving(self) -> bool:
        return True


class FakeChannel(FakeSink):
    """A tunnel as the proxy keeps it; also the sink its inbound sessions write into."""

    def __init__(self, writer: FakeWriter) -> None:
        super().__init__(writer)
        self.info = ProxyChannel(
            marker_path=TUNNEL.replace("stream.tcp.request", "stream.tcp"),
            canonical_key=TUNNEL,
            local_key=TUNNEL,
            local_email=BOB,
            peer_email=ALICE,
            listen_port=40001,
            from_id=0,
            to_id=1,
        )
        self.bind_host = "127.0.0.1"
        self.server = FakeServer()
        self.connections = [FakeApp(), FakeApp(closed=True)]


@dataclass
class FakeProxy:
    channels: dict[str, Any] = field(default_factory=dict)

    def sink_for(self, path: str, peer: str) -> Any:
        for channel in self.channels.values():
            if path == channel.info.canonical_key and peer == channel.info.peer_email:
                return channel
        return None


def setup(
    tmp_path: Path, transport: Any = None, clock: Clock | None = None
) -> tuple[StatusBuilder, HotlinkManager, FakeWire, FakeChannel, Clock]:
    clock = clock or Clock()
    manager, wire = fake_manager(tmp_path, BOB, transport=transport or FakeTransport())
    channel = FakeChannel(FakeWriter())
    proxy = FakeProxy({TUNNEL: channel})
    manager.tunnels = proxy
    builder = StatusBuilder(
        settings=ClientSettings(
            email=BOB, data_dir=str(tmp_path), server_url="http://relay", hotlink=True
        ),
        connection=FakeConnection(),
        telemetry=manager.telemetry,
        manager=manager,
        transport=manager.transport,
        proxy=proxy,  # type: ignore[arg-type]
        clock=clock.wall,
        monotonic=clock.mono,
    )
    return builder, manager, wire, channel, clock


async def test_live_sessions_and_their_tunnel_in_the_document(tmp_path: Path) -> None:
    builder, manager, wire, _channel, _clock = setup(tmp_path)
    # Inbound: alice opens on the tunnel, we accept, 300 bytes arrive.
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: wire.payloads(HotlinkAccept))
    await manager.handle_message(msg(HotlinkData(SID, 1, TUNNEL, "", b"a" * 100)))
    await manager.handle_message(msg(HotlinkData(SID, 2, TUNNEL, "", b"b" * 200)))
    # Outbound: our app's stream to alice, accepted, 50 bytes sent.
    out = await manager.open_stream(TUNNEL, ALICE)
    await until(lambda: wire.payloads(HotlinkOpen))
    await manager.handle_message(msg(HotlinkAccept(out.sid)))
    await out.send(TUNNEL, b"x" * 50)
    await until(lambda: out.credit.sent == 50)

    doc = builder.build()
    json.dumps(doc)  # JSON as it is served
    by_dir = {s["direction"]: s for s in doc["sessions"]}
    inbound, outbound = by_dir["in"], by_dir["out"]
    assert (inbound["peer"], inbound["kind"], inbound["state"]) == (ALICE, "tcp", "accepted")
    assert (inbound["rx_bytes"], inbound["tx_bytes"], inbound["sid"]) == (300, 0, SID)
    assert inbound["transport"] == "ws" and inbound["p2p"] == "off"
    assert (outbound["peer"], outbound["tx_bytes"], outbound["rx_bytes"]) == (ALICE, 50, 0)
    assert outbound["channel"] == "0_to_1" and outbound["last_error"] == ""
    (tunnel,) = doc["tunnels"]
    assert tunnel["key"] == TUNNEL and tunnel["peer"] == ALICE and tunnel["listening"]
    assert (tunnel["port"], tunnel["app_connections"], tunnel["sessions"]) == (40001, 1, 2)
    assert (tunnel["tx_bytes"], tunnel["rx_bytes"]) == (50, 300)
    assert doc["connection"]["state"] == "connected" and doc["email"] == BOB
    assert doc["totals"]["arrived_bytes"]["ws"] == 300
    await manager.close()


async def test_ended_sessions_keep_reason_bytes_and_path_newest_first(tmp_path: Path) -> None:
    builder, manager, wire, _channel, _clock = setup(tmp_path)
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: wire.payloads(HotlinkAccept))
    await manager.handle_message(msg(HotlinkData(SID, 1, TUNNEL, "", b"z" * 70)))
    await manager.handle_message(msg(HotlinkClose(SID, "eof:1")))
    await until(lambda: SID not in manager.inbound)
    refused = await manager.open_stream(TUNNEL, ALICE)
    await until(lambda: wire.payloads(HotlinkOpen))
    await manager.handle_message(msg(HotlinkReject(refused.sid, "permission denied")))
    await until(lambda: refused.ended)

    doc = builder.build()
    assert doc["sessions"] == []
    newest, first = doc["recent"]
    assert (first["sid"], first["direction"], first["peer"]) == (SID, "in", ALICE)
    assert (first["rx_bytes"], first["reason"], first["clean"]) == (70, "eof", True)
    assert first["transport"] == "ws" and first["path"] == TUNNEL
    assert newest["sid"] == refused.sid and not newest["clean"]
    assert newest["reason"] == "rejected: permission denied"
    # The tunnel still counts what its ended sessions carried.
    assert doc["tunnels"][0]["rx_bytes"] == 70 and doc["tunnels"][0]["sessions"] == 0
    await manager.close()


async def test_the_ring_of_ended_sessions_is_bounded(tmp_path: Path) -> None:
    builder, manager, _wire, _channel, _clock = setup(tmp_path)
    sids = []
    for i in range(RECENT_MAX + 8):
        sid = f"{i:020d}"
        sids.append(sid)
        await manager.handle_message(msg(HotlinkOpen(sid, TUNNEL, frm=ALICE)))
        await until(lambda sid=sid: sid in manager.inbound)
        await manager.handle_message(msg(HotlinkClose(sid, "error")))
        await until(lambda sid=sid: sid not in manager.inbound)
    recent = builder.build()["recent"]
    assert [e["sid"] for e in recent] == sids[::-1][:RECENT_MAX]
    assert all(e["reason"] == "error" and not e["clean"] for e in recent)
    await manager.close()


def test_rates_cover_the_last_seconds_and_say_nothing_when_they_cannot() -> None:
    meter = RateMeter(created=100.0, window=5.0)
    assert meter.rates(100.1, 10, 0) == (None, None)  # too young to say
    assert meter.rates(102.0, 2000, 0) == (1000.0, 0.0)  # since it was made
    for t, tx in ((101.0, 1000), (102.0, 2000), (103.0, 3000), (104.0, 3000), (105.0, 3000)):
        meter.add(t, tx, 0)
    # At 108: the 103 sample is the oldest within 5 s; nothing moved since.
    assert meter.rates(108.0, 3000, 0) == (0.0, 0.0)
    # At 106: the made-at baseline is out of the window, the 101 sample is in.
    assert meter.rates(106.0, 3000, 500) == (400.0, 100.0)
    assert meter.rates(200.0, 3000, 0) == (None, None)  # no sample within the window


async def test_sampler_rates_reach_the_document(tmp_path: Path) -> None:
    builder, manager, wire, _channel, clock = setup(tmp_path)
    out = await manager.open_stream(TUNNEL, ALICE)
    await until(lambda: wire.payloads(HotlinkOpen))
    await manager.handle_message(msg(HotlinkAccept(out.sid)))
    out.created = clock.now  # the session's clock is the test's
    clock.now += 10.0
    builder.sample()
    await out.send(TUNNEL, b"x" * 4000)
    await until(lambda: out.credit.sent == 4000)
    clock.now += 2.0
    (session,) = builder.build()["sessions"]
    assert session["tx_rate"] == 2000.0 and session["rx_rate"] == 0.0
    assert session["uptime_s"] == 12.0
    assert builder.build()["tunnels"][0]["tx_rate"] == 2000.0
    await manager.close()
    builder.sample()
    assert not builder._meters  # ended sessions are forgotten


@dataclass
class PathTransport(FakeTransport):
    """A transport that knows its sessions' peer connections."""

    infos: dict[str, P2PPathInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()

    def path_info(self, sid: str) -> P2PPathInfo | None:
        return self.infos.get(sid)

    def transport_kind(self, sid: str) -> str:
        info = self.infos.get(sid)
        return info.transport if info is not None else "ws"


async def test_p2p_sessions_show_path_round_trip_and_failure(tmp_path: Path) -> None:
    transport = PathTransport()
    builder, manager, _wire, _channel, _clock = setup(tmp_path, transport)
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: SID in manager.inbound)
    transport.infos[SID] = P2PPathInfo("open", "p2p-relay", "p2p-relay", "", 0.0125)
    (session,) = builder.build()["sessions"]
    assert session["transport"] == "p2p-relay" and session["p2p"] == "open"
    assert (session["rtt_ms"], session["rtt_source"]) == (12.5, "sctp")
    transport.infos[SID] = P2PPathInfo("failed", "ws", "ws", "send stalled: stuck", None)
    (session,) = builder.build()["sessions"]
    assert session["transport"] == "ws" and session["last_error"] == "p2p: send stalled: stuck"
    # On the WebSocket, the round trip is the relay hop (none measured by a fake connection).
    assert session["rtt_ms"] is None
    transport.infos[SID] = P2PPathInfo("closed", "ws", "p2p-host", "", None)
    await manager.handle_message(msg(HotlinkClose(SID, "eof:0")))
    await until(lambda: SID not in manager.inbound)
    (ended,) = builder.build()["recent"]
    assert ended["transport"] == "p2p-host"  # what carried the stream, not the closed channel
    await manager.close()


async def test_connection_state_and_the_last_error_it_logged(tmp_path: Path) -> None:
    builder, manager, _wire, _channel, clock = setup(tmp_path)
    conn = builder.connection
    assert isinstance(conn, FakeConnection)
    builder.tracker.watch()
    try:
        builder.tracker.on_connected()
        up = builder.build()["connection"]
        assert up["state"] == "connected" and up["connected_since"] == clock.wall()
        assert up["reconnects"] == 0 and up["last_error"] == ""
        clock.now += 5
        conn.connected = False
        builder.tracker.on_disconnected()
        logging.getLogger("hotlink.connection").warning(
            "server %s refused the connection: HTTP %s %s", "ws://relay", 401, "invalid email"
        )
        logging.getLogger("hotlink.connection").warning("disconnected from %s", "ws://relay")
        down = builder.build()["connection"]
        assert down["state"] == "disconnected" and down["connected_since"] is None
        assert down["disconnected_since"] == clock.wall()
        assert (
            down["last_error"] == "server ws://relay refused the connection: HTTP 401 invalid email"
        )
        assert not down["acls_published"]
        conn.connected, conn.connects = True, 3
        builder.tracker.on_connected()
        assert builder.build()["connection"]["reconnects"] == 2
    finally:
        builder.close()
    logging.getLogger("hotlink.connection").warning("after close")
    assert builder.tracker.last_error != "after close"
    assert manager.ended_hook is None
    await manager.close()


async def test_the_connections_own_reason_for_a_failed_attempt_is_shown(tmp_path: Path) -> None:
    builder, manager, _wire, _channel, clock = setup(tmp_path)
    conn = builder.connection
    assert isinstance(conn, FakeConnection)
    conn.connected = False
    # An unreachable relay is logged at INFO; the connection keeps the reason itself.
    conn.last_error = "cannot reach server ws://relay/api/v1/events: Connection refused"
    builder.sample()
    down = builder.build()["connection"]
    assert down["last_error"] == conn.last_error and down["last_error_at"] == clock.wall()
    await manager.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's")
def test_tcp_rtt_reads_the_kernels_measure() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        for _ in range(3):
            client.sendall(b"ping")
            peer.recv(16)
            peer.sendall(b"pong")
            client.recv(16)
        rtt = tcp_rtt(client)
        assert rtt is not None and 0 < rtt < 1.0
    finally:
        for s in (client, peer, server):
            s.close()
    assert tcp_rtt(None) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert tcp_rtt(unix) is None


async def test_metrics_are_prometheus_text_from_the_same_counters(tmp_path: Path) -> None:
    builder, manager, _wire, _channel, _clock = setup(tmp_path)
    telemetry = builder.telemetry
    telemetry.record_tx(1000, 0.1, "p2p")
    telemetry.record_tx(24, 0.1, "ws")
    telemetry.record_received(500, "p2p")
    telemetry.record_rx(500, 0.2)
    telemetry.incr("flow_waits", 2)
    telemetry.incr("p2p_failed")
    telemetry.incr("p2p_peers", 3)
    telemetry.incr("p2p_resent_frames", 7)
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: SID in manager.inbound)

    text = generate_latest(client_registry(builder)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("hotlink_client_sent_bytes_total", (("path", "p2p"),))] == 1000
    assert samples[("hotlink_client_sent_bytes_total", (("path", "ws"),))] == 24
    assert samples[("hotlink_client_sent_frames_total", (("path", "ws"),))] == 1
    assert samples[("hotlink_client_received_bytes_total", (("path", "p2p"),))] == 500
    assert samples[("hotlink_client_delivered_bytes_total", ())] == 500
    assert samples[("hotlink_client_flow_waits_total", ())] == 2
    assert samples[("hotlink_client_p2p_failed_total", ())] == 1
    assert samples[("hotlink_client_ws_fallbacks_total", ())] == 0
    assert samples[("hotlink_client_p2p_peers", ())] == 3
    assert samples[("hotlink_client_events_total", (("event", "p2p_resent_frames"),))] == 7
    assert samples[("hotlink_client_connected", ())] == 1
    key = ("hotlink_client_sessions", (("direction", "in"), ("transport", "ws")))
    assert samples[key] == 1
    assert samples[("hotlink_client_tunnels", ())] == 1
    await manager.close()


# ---------------------------------------------------------------- the WebRTC transport's side


async def test_p2p_path_info_follows_the_channel() -> None:
    transport, backend, host = make_transport()
    info = host.add(P2P_SID, "outbound")
    await transport.on_outbound_accepted(info)
    await transport.on_signal(offer_signal())
    await until(lambda: bool(backend.peers))
    peer = backend.peers[0]
    before = transport.path_info(P2P_SID)
    assert before is not None and before.state != "open" and before.carried == "ws"
    peer.types = ("relay", "host")
    peer.round_trip_time = lambda: 0.02  # type: ignore[method-assign]
    peer.fire_open()
    opened = transport.path_info(P2P_SID)
    assert opened == P2PPathInfo("open", "p2p-relay", "p2p-relay", "", 0.02)
    assert await transport.try_send(P2P_SID, p2p_frame(1))
    peer.fire_closed("remote went away")  # mid-stream: the rest goes over the WebSocket
    await until(lambda: transport.path_info(P2P_SID).state == "failed")  # type: ignore[union-attr]
    failed = transport.path_info(P2P_SID)
    assert failed is not None and failed.transport == "ws" and failed.carried == "ws"
    assert "remote went away" in failed.error
    assert transport.path_info("unknown") is None
    assert transport.backend_name == "fake"
    await transport.close()


async def test_a_channel_closing_with_the_streams_end_is_no_error() -> None:
    transport, backend, host = make_transport()
    await transport.on_inbound_accepted(host.add(P2P_SID, "inbound"))
    await until(lambda: bool(backend.peers))
    peer = backend.peers[0]
    peer.fire_open()
    transport.stream_ending(P2P_SID)
    peer.fire_closed()
    info = transport.path_info(P2P_SID)
    assert info is not None and info.error == "" and info.carried == "p2p-host"
    await transport.close()
