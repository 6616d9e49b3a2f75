"""The hotlink manager: message dispatch, session maps, and the peer-transport seam."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest

from hotlink.client.manager import HotlinkManager, ManagerConfig, local_path
from hotlink.client.session.budget import BudgetLimits
from hotlink.client.session.outbound import OutboundSession
from hotlink.protocol.flow import FLOW_KIND, Credit, credit_token
from hotlink.protocol.frames import Frame
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
    Message,
)
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

TUNNEL = f"{ALICE}/shared/flows/x/_mpc/0_to_1/stream.tcp.request"
SID = "00112233445566778899"


class Tunnels:
    def __init__(self, sink: FakeSink, path: str = TUNNEL, peer: str = ALICE) -> None:
        self.sink, self.path, self.peer = sink, path, peer

    def sink_for(self, path: str, peer: str) -> FakeSink | None:
        return self.sink if (path, peer) == (self.path, self.peer) else None


class Ipc:
    """The IPC hub: makes the folder (as the real one does, safely) and leases its sink."""

    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink
        self.folders: list[Path] = []
        self.released = 0

    async def endpoint_for(self, folder: Path) -> Ipc:
        self.folders.append(folder)
        folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test fake
        return self

    async def wait_writer(self, within: float) -> FakeWriter | None:
        return await self.sink.wait_writer(within)

    def eof_writer(self) -> FakeWriter | None:
        return self.sink.eof_writer()

    def release(self) -> None:
        self.released += 1


def _manager(
    tmp_path: Path,
    transport: FakeTransport | None = None,
    email: str = BOB,
    config: ManagerConfig | None = None,
) -> tuple[HotlinkManager, FakeWire]:
    return fake_manager(tmp_path, email, transport=transport or FakeTransport(), config=config)


def msg(payload: object) -> Message:
    return Message.new(payload)  # type: ignore[arg-type]


def test_local_path_refuses_escapes(tmp_path: Path) -> None:
    assert local_path(tmp_path, "a@x.com/b/c") == tmp_path / "a@x.com" / "b" / "c"
    for bad in ("", "/etc/passwd", "a/../../etc", "a//b", "a/./b", "a\\b", "a\x00b"):
        assert local_path(tmp_path, bad) is None


async def test_tunnel_open_is_accepted_and_ws_and_p2p_frames_merge_in_order(
    tmp_path: Path,
) -> None:
    transport = FakeTransport()
    manager, wire = _manager(tmp_path, transport)
    writer = FakeWriter()
    manager.tunnels = Tunnels(FakeSink(writer))
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: wire.payloads(HotlinkAccept))
    assert wire.payloads(HotlinkAccept) == [HotlinkAccept(SID)]
    await until(lambda: any(e[0] == "inbound_accepted" for e in transport.events))
    # seq 2 over P2P, 3 and 1 over the WebSocket, 2 again over the WebSocket (duplicate).
    manager.deliver_frame(SID, Frame(TUNNEL, "", 2, b"-two-"))
    await manager.handle_message(msg(HotlinkData(SID, 3, TUNNEL, "", b"-three")))
    await manager.handle_message(msg(HotlinkData(SID, 1, TUNNEL, "", b"one")))
    await manager.handle_message(msg(HotlinkData(SID, 2, TUNNEL, "", b"-two-")))
    await manager.handle_message(msg(HotlinkClose(SID, "eof:3")))
    await until(lambda: SID not in manager.inbound)
    assert bytes(writer.data) == b"one-two--three"
    assert writer.finished
    assert ("closed", SID) in transport.events


async def test_open_for_a_tunnel_we_do_not_have_is_ignored_silently(tmp_path: Path) -> None:
    manager, wire = _manager(tmp_path)
    manager.tunnels = Tunnels(FakeSink(), peer="carol@example.com")  # not alice's tunnel
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    assert manager.inbound == {}
    assert wire.control == []  # no Reject: it would fail the opener's session for others


async def test_open_with_an_unsafe_path_is_ignored(tmp_path: Path) -> None:
    manager, wire = _manager(tmp_path)
    manager.ipc = Ipc(FakeSink())
    await manager.handle_message(msg(HotlinkOpen(SID, f"{ALICE}/../../etc/x.request", frm=ALICE)))
    assert manager.inbound == {}
    assert wire.control == []


async def test_ipc_open_creates_the_folder_and_waits_for_stream_accept(tmp_path: Path) -> None:
    manager, wire = _manager(tmp_path)
    ipc = Ipc(FakeSink(FakeWriter()))
    manager.ipc = ipc
    folder = f"{ALICE}/app_data/app/rpc/ep"
    accept = tmp_path / "datasites" / folder / "stream.accept"
    await manager.handle_message(msg(HotlinkOpen(SID, f"{folder}/x.request", frm=ALICE)))
    assert ipc.folders == [tmp_path / "datasites" / folder]
    assert SID in manager.inbound and wire.payloads(HotlinkAccept) == []
    accept.write_text("1")
    await until(lambda: wire.payloads(HotlinkAccept), timeout=5)
    await manager.close()
    assert ipc.released == 1  # the session's end gives its endpoint lease back


async def test_ipc_open_without_ipc_is_rejected(tmp_path: Path) -> None:
    manager, wire = _manager(tmp_path)
    await manager.handle_message(msg(HotlinkOpen(SID, f"{ALICE}/app_data/a/x.request", frm=ALICE)))
    assert wire.payloads(HotlinkReject) == [HotlinkReject(SID, "ipc unavailable")]


async def test_sending_uses_the_peer_transport_first_with_the_same_seq(tmp_path: Path) -> None:
    transport = FakeTransport(carry=lambda seq: seq % 2 == 0)
    manager, wire = _manager(tmp_path, transport, email=ALICE)
    stream = await manager.open_stream(TUNNEL, BOB)
    await until(lambda: wire.payloads(HotlinkOpen))
    opened = wire.payloads(HotlinkOpen)[0]
    assert opened == HotlinkOpen(stream.sid, TUNNEL, to=BOB)
    await manager.handle_message(msg(HotlinkAccept(stream.sid)))
    for i in range(1, 5):
        await stream.send(TUNNEL, f"chunk{i}".encode())
    stream.finish()
    await stream.wait_closed()
    ws = wire.payloads(HotlinkData)
    assert [d.seq for d in ws] == [1, 3]
    assert [f.seq for _, f in transport.sent] == [2, 4]
    assert wire.payloads(HotlinkClose) == [HotlinkClose(stream.sid, "eof:4")]
    t = manager.telemetry
    assert (t.tx_packets, t.tx_ws_packets, t.tx_p2p_packets) == (4, 2, 2)
    assert t.tx_bytes == 4 * len(b"chunk1")
    kinds = [e[0] for e in transport.events]
    assert kinds.index("outbound_accepted") < kinds.index("closed")


async def test_the_eof_close_leaves_after_the_transport_drained(tmp_path: Path) -> None:
    closes_seen_at_drain: list[int] = []

    class Draining(FakeTransport):
        async def drain(self, sid: str) -> None:
            closes_seen_at_drain.append(len(wire.payloads(HotlinkClose)))

    transport = Draining(carry=lambda seq: True)
    manager, wire = _manager(tmp_path, transport, email=ALICE)
    stream = await manager.open_stream(TUNNEL, BOB)
    await until(lambda: wire.payloads(HotlinkOpen))
    await manager.handle_message(msg(HotlinkAccept(stream.sid)))
    await stream.send(TUNNEL, b"only p2p")
    stream.finish()
    assert await stream.wait_closed() == "eof"
    assert closes_seen_at_drain == [0]
    assert wire.payloads(HotlinkClose) == [HotlinkClose(stream.sid, "eof:1")]


async def test_p2p_frames_on_our_outbound_session_are_dropped_loudly_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Rust client in P2P-only mode may send its own stream back on our session's channel.
    transport = FakeTransport(carry=lambda seq: True)
    manager, wire = _manager(tmp_path, transport, email=ALICE)
    stream = await manager.open_stream(TUNNEL, BOB)
    await until(lambda: wire.payloads(HotlinkOpen))
    with caplog.at_level(logging.WARNING, logger="hotlink.manager"):
        for seq in (1, 2, 3):
            manager.deliver_frame(stream.sid, Frame(TUNNEL, "", seq, b"reverse"))
    warnings = [r for r in caplog.records if "on our outbound session" in r.getMessage()]
    assert len(warnings) == 1
    assert not stream.ended  # our own direction carries on
    await manager.close()


async def test_signals_go_to_the_transport_and_back_out(tmp_path: Path) -> None:
    transport = FakeTransport()
    manager, wire = _manager(tmp_path, transport)
    signal = HotlinkSignal(SID, "sdp_offer", tok='{"type":"offer","sdp":"v=0"}')
    await manager.handle_message(msg(signal))
    assert ("signal", signal) in transport.events
    assert transport.host is manager
    await manager.send_signal(HotlinkSignal(SID, "sdp_answer", tok="x"))
    assert wire.payloads(HotlinkSignal) == [HotlinkSignal(SID, "sdp_answer", tok="x")]


async def test_ipc_send_shares_one_session_per_folder_and_fills_the_etag(tmp_path: Path) -> None:
    manager, wire = _manager(tmp_path, email=ALICE)
    folder = f"{ALICE}/app_data/app/rpc/ep"
    await manager.send(f"{folder}/a.request", b"first")
    await until(lambda: wire.payloads(HotlinkOpen))
    (session,) = manager.outbound.values()
    await manager.handle_message(msg(HotlinkAccept(session.sid)))
    await manager.send(f"{folder}/b.request", b"second")
    await until(lambda: len(wire.payloads(HotlinkData)) == 2)
    data = wire.payloads(HotlinkData)
    assert [(d.seq, d.pth.rsplit("/", 1)[1]) for d in data] == [(1, "a.request"), (2, "b.request")]
    assert data[0].etg == hashlib.md5(b"first").hexdigest()
    assert len(wire.payloads(HotlinkOpen)) == 1
    await manager.close()


async def test_new_stream_on_a_folder_supersedes_the_old_one(tmp_path: Path) -> None:
    manager, wire = _manager(tmp_path, email=ALICE)
    first = await manager.open_stream(TUNNEL, BOB)
    second = await manager.open_stream(TUNNEL, BOB)
    assert first.ended and first.close_reason == "superseded"
    assert HotlinkClose(first.sid, "superseded") in wire.payloads(HotlinkClose)
    assert manager.outbound[second.key] is second
    await manager.close()


async def test_peer_close_and_reject_end_outbound_sessions(tmp_path: Path) -> None:
    manager, _wire = _manager(tmp_path, email=ALICE)
    s: OutboundSession = await manager.open_stream(TUNNEL, BOB)
    await manager.handle_message(msg(HotlinkAccept(s.sid)))
    await manager.handle_message(msg(HotlinkClose(s.sid, "local app connection lost")))
    assert s.ended and s.close_reason == "closed by peer: local app connection lost"
    assert manager.outbound == {} and manager.outbound_by_sid == {}
    r = await manager.open_stream(TUNNEL, BOB)
    await manager.handle_message(msg(HotlinkReject(r.sid, "permission denied")))
    assert await r.wait_closed() == "rejected: permission denied"


async def test_disconnect_ends_every_session_without_sending(tmp_path: Path) -> None:
    manager, wire = _manager(tmp_path)
    writer = FakeWriter()
    manager.tunnels = Tunnels(FakeSink(writer))
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    out = await manager.open_stream(TUNNEL, ALICE)
    await until(lambda: wire.payloads(HotlinkOpen))
    sent_before = len(wire.control)
    wire.connected = False
    await manager.on_disconnected()
    assert manager.inbound == {} and manager.outbound == {}
    assert out.close_reason == "disconnected"
    assert len(wire.control) == sent_before


async def test_telemetry_lists_live_sessions_with_their_transport(tmp_path: Path) -> None:
    manager, _wire = _manager(tmp_path)
    manager.tunnels = Tunnels(FakeSink(FakeWriter()))
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: manager.inbound[SID].accepted)
    doc = manager.telemetry.snapshot()
    (entry,) = doc["live"]["sessions_in"]
    assert entry == {
        "sid": SID[:8],
        "peer": ALICE,
        "channel": "0_to_1",
        "held": 0,
        "window": 8 * 1024 * 1024,
        "webrtc": "none",
        "transport": "ws",
        "e2e": False,
        "e2e_state": "off",
        "peer_key": "",
    }
    await manager.close()


async def test_peer_send_error_fails_the_session_without_ws_fallback(tmp_path: Path) -> None:
    from hotlink.client.p2p.transport import PeerSendError

    class P2POnly(FakeTransport):
        async def try_send(self, sid: str, frame: Frame) -> bool:
            raise PeerSendError("webrtc not ready after wait")

    manager, wire = _manager(tmp_path, P2POnly(), email=ALICE)
    s = await manager.open_stream(TUNNEL, BOB)
    await manager.handle_message(msg(HotlinkAccept(s.sid)))
    await s.send(TUNNEL, b"x")
    # A regression fails here in seconds, not at pytest-timeout's limit.
    async with asyncio.timeout(10):
        reason = await s.wait_closed()
    assert reason.startswith("error: webrtc not ready")
    assert wire.payloads(HotlinkData) == []
    assert HotlinkClose(s.sid, "error") in wire.payloads(HotlinkClose)
    await manager.close()


async def test_flow_credit_reaches_the_outbound_session_not_the_transport(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transport = FakeTransport()
    manager, _wire = _manager(tmp_path, transport, email=ALICE)
    s = await manager.open_stream(TUNNEL, BOB)
    await manager.handle_message(msg(HotlinkAccept(s.sid)))
    tok = credit_token(Credit(123_456, 65_536))
    await manager.handle_message(msg(HotlinkSignal(s.sid, FLOW_KIND, tok=tok)))
    assert s.credit.limit == 123_456
    assert not [e for e in transport.events if e[0] == "signal"]
    # A bad token is logged once and changes nothing; a grant for no session is ignored.
    with caplog.at_level(logging.WARNING, logger="hotlink.manager"):
        for _ in range(3):
            await manager.handle_message(msg(HotlinkSignal(s.sid, FLOW_KIND, tok="{bad")))
        await manager.handle_message(msg(HotlinkSignal("nosuchsid0000000", FLOW_KIND, tok=tok)))
    assert len([r for r in caplog.records if "bad flow credit" in r.getMessage()]) == 1
    assert s.credit.limit == 123_456
    await manager.close()


async def test_opens_wait_for_the_ready_gate(tmp_path: Path) -> None:
    # After a reconnect our ACLs must be on the server before our Open (a restarted server
    # would refuse it): the daemon's gate holds Opens until they are published.
    gate = asyncio.Event()

    async def ready(within: float) -> bool:
        await gate.wait()
        return True

    manager, wire = fake_manager(tmp_path, ALICE, ready=ready)
    await manager.open_stream(TUNNEL, BOB)
    await asyncio.sleep(0.05)
    assert wire.payloads(HotlinkOpen) == []
    gate.set()
    await until(lambda: wire.payloads(HotlinkOpen))
    await manager.close()


async def test_an_eof_close_tells_the_transport_the_stream_is_ending(tmp_path: Path) -> None:
    transport = FakeTransport()
    manager, _wire = _manager(tmp_path, transport)
    manager.tunnels = Tunnels(FakeSink(FakeWriter()))
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: manager.inbound[SID].accepted)
    await manager.handle_message(msg(HotlinkClose(SID, "eof:0")))
    assert ("ending", SID) in transport.events
    await manager.close()


# ---------------------------------------------------------------- memory bounds

CAROL = "carol@example.com"
MIB = 1024 * 1024


def tunnel_path(owner: str, i: int) -> str:
    return f"{owner}/shared/flows/x/_mpc/{i}_to_1/stream.tcp.request"


class AllTunnels:
    """Every tunnel path has a channel, with its own app connection."""

    def __init__(self) -> None:
        self.writers: dict[str, FakeWriter] = {}

    def sink_for(self, path: str, peer: str) -> FakeSink:
        return FakeSink(self.writers.setdefault(path, FakeWriter()))


async def test_opens_past_a_peers_session_cap_are_rejected_and_others_still_get_in(
    tmp_path: Path,
) -> None:
    manager, wire = _manager(tmp_path)
    manager.tunnels = AllTunnels()
    for i in range(64):
        await manager.handle_message(msg(HotlinkOpen(f"a{i:015d}", tunnel_path(ALICE, i), ALICE)))
    assert len(manager.inbound) == 64
    await manager.handle_message(
        msg(HotlinkOpen("a-one-too-many00", tunnel_path(ALICE, 64), ALICE))
    )
    assert "a-one-too-many00" not in manager.inbound
    (reject,) = wire.payloads(HotlinkReject)
    assert reject == HotlinkReject(
        "a-one-too-many00", f"too many sessions from {ALICE} (at most 64 at once)"
    )
    # Another peer is not affected, and neither are alice's live sessions.
    await manager.handle_message(msg(HotlinkOpen("c000000000000000", tunnel_path(CAROL, 0), CAROL)))
    assert "c000000000000000" in manager.inbound
    assert not any(s.ended for s in manager.inbound.values())
    # A session that ends frees its slot.
    await manager.handle_message(msg(HotlinkClose(f"a{0:015d}", "error")))
    await manager.handle_message(
        msg(HotlinkOpen("a-next0000000000", tunnel_path(ALICE, 65), ALICE))
    )
    assert "a-next0000000000" in manager.inbound
    await manager.close()
    assert (manager.budget.sessions, manager.budget.held) == (0, 0)


async def test_a_refused_ipc_open_makes_nothing_on_disk(tmp_path: Path) -> None:
    config = ManagerConfig(budget=BudgetLimits(sessions_per_peer=1))
    manager, wire = _manager(tmp_path, config=config)
    ipc = Ipc(FakeSink())
    manager.ipc = ipc
    first, second = (f"{ALICE}/app_data/app/rpc/ep{i}" for i in range(2))
    await manager.handle_message(msg(HotlinkOpen(SID, f"{first}/x.request", frm=ALICE)))
    await manager.handle_message(msg(HotlinkOpen("1" * 16, f"{second}/x.request", frm=ALICE)))
    assert wire.payloads(HotlinkReject) == [
        HotlinkReject("1" * 16, f"too many sessions from {ALICE} (at most 1 at once)")
    ]
    assert ipc.folders == [tmp_path / "datasites" / first]
    assert not (tmp_path / "datasites" / second).exists()
    await manager.close()


async def test_a_failed_ipc_endpoint_gives_its_session_slot_back(tmp_path: Path) -> None:
    manager, wire = _manager(
        tmp_path, config=ManagerConfig(budget=BudgetLimits(sessions_per_peer=1))
    )

    class Broken(Ipc):
        async def endpoint_for(self, folder: Path) -> FakeSink:
            raise OSError("no room")

    manager.ipc = Broken(FakeSink())
    for sid in ("1" * 16, "2" * 16):
        await manager.handle_message(
            msg(HotlinkOpen(sid, f"{ALICE}/app_data/a/x.request", frm=ALICE))
        )
    assert [r.rsn for r in wire.payloads(HotlinkReject)] == ["ipc unavailable"] * 2
    assert manager.budget.sessions == 0


async def test_a_peer_holding_frames_behind_holes_in_many_sessions_is_bounded(
    tmp_path: Path,
) -> None:
    # A sender that ignores credit opens 12 sessions and sends 20 MiB to each behind a
    # missing seq 1 (within each session's own 24 MiB bound): alice's sessions together
    # never hold more than her budget, the sessions past it are closed loudly, and another
    # peer's stream is delivered whole meanwhile.
    manager, wire = _manager(tmp_path)
    tunnels = AllTunnels()
    manager.tunnels = tunnels
    limit = manager.budget.limits.bytes_per_peer
    sids = [f"h{i:015d}" for i in range(12)]
    for i, sid in enumerate(sids):
        await manager.handle_message(msg(HotlinkOpen(sid, tunnel_path(ALICE, i), ALICE)))
    await until(lambda: all(manager.inbound[sid].accepted for sid in sids))
    await manager.handle_message(msg(HotlinkOpen(SID, tunnel_path(CAROL, 0), CAROL)))
    await until(lambda: manager.inbound[SID].accepted)
    payload = b"h" * MIB  # one object: the test itself holds 1 MiB, the ledger counts all
    peak = 0
    for i, sid in enumerate(sids):
        for seq in range(2, 22):
            await manager.handle_message(
                msg(HotlinkData(sid, seq, tunnel_path(ALICE, i), "", payload))
            )
            peak = max(peak, manager.budget.held_by(ALICE))
            await asyncio.sleep(0)
        good = f"carol's chunk {i}".encode()
        await manager.handle_message(msg(HotlinkData(SID, i + 1, tunnel_path(CAROL, 0), "", good)))
    assert peak <= limit
    await until(lambda: sum(sid in manager.inbound for sid in sids) <= limit // (20 * MIB))
    closes = [c for c in wire.payloads(HotlinkClose) if c.sid in sids]
    assert len(closes) >= 12 - limit // (20 * MIB)
    assert all(c.rsn.startswith(f"memory budget of {ALICE} reached") for c in closes)
    # The first sessions, which fit, are untouched.
    assert all(sid in manager.inbound for sid in sids[:5])
    await manager.handle_message(msg(HotlinkClose(SID, "eof:12")))
    await until(lambda: SID not in manager.inbound)
    writer = tunnels.writers[tunnel_path(CAROL, 0)]
    assert bytes(writer.data) == b"".join(f"carol's chunk {i}".encode() for i in range(12))
    assert writer.finished and writer.failed is None
    await manager.close()
    assert (manager.budget.sessions, manager.budget.held) == (0, 0)


async def test_a_close_with_an_absurd_eof_seq_ends_the_stream_loudly(tmp_path: Path) -> None:
    manager, _wire = _manager(tmp_path)
    writer = FakeWriter()
    manager.tunnels = Tunnels(FakeSink(writer))
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: manager.inbound[SID].accepted)
    await manager.handle_message(msg(HotlinkData(SID, 1, TUNNEL, "", b"one")))
    await until(lambda: writer.data)
    await manager.handle_message(msg(HotlinkClose(SID, "eof:" + "9" * 5000)))
    assert SID not in manager.inbound
    assert writer.failed is not None and not writer.finished  # a reset, not a clean end
    assert len(writer.failed) < 300  # the peer's text is cut short in our logs
