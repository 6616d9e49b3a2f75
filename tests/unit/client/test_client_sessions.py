"""Outbound and inbound sessions against a fake host: the state machine and the byte stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hotlink.client.p2p.transport import PeerSendError
from hotlink.client.session import inbound
from hotlink.client.session.base import SessionClosed, eof_reason, parse_eof
from hotlink.client.session.inbound import InboundSession, path_within
from hotlink.client.session.outbound import OutboundSession
from hotlink.protocol.frames import Frame, FrameDecoder
from hotlink.protocol.messages import HotlinkAccept, HotlinkClose, HotlinkData, HotlinkOpen
from unit.client.client_fakes import BOB, FakeHost, FakeSink, FakeWriter, until

TUNNEL = "alice@example.com/shared/flows/x/_mpc/0_to_1/stream.tcp.request"
FOLDER = "alice@example.com/shared/flows/x/_mpc/0_to_1"


def _outbound(host: FakeHost, accept_timeout: float = 5.0) -> OutboundSession:
    return OutboundSession(
        host, sid="0123456789abcdef", key=FOLDER, path=TUNNEL, to=BOB,
        accept_timeout=accept_timeout,
    )  # fmt: skip


def _inbound(
    host: FakeHost,
    sink: FakeSink,
    *,
    kind: str = "tcp",
    folder: str = FOLDER,
    path: str = TUNNEL,
    accept_marker: Path | None = None,
) -> InboundSession:
    return InboundSession(
        host,
        sid="fedcba9876543210",
        path=path,
        peer=BOB,
        folder=folder,
        kind=kind,  # type: ignore[arg-type]
        sink=sink,  # type: ignore[arg-type]
        accept_marker=accept_marker,
    )


def _frame(seq: int, payload: bytes, path: str = TUNNEL) -> Frame:
    return Frame(path, "", seq, payload)


# ---------------------------------------------------------------- helpers


def test_eof_reason_round_trip() -> None:
    assert parse_eof(eof_reason(42)) == (True, 42)
    assert parse_eof("eof") == (True, None)
    assert parse_eof("eof:x") == (False, None)
    assert parse_eof("fallback") == (False, None)


def test_path_within_folder() -> None:
    assert path_within(f"{FOLDER}/a.request", FOLDER)
    assert path_within(FOLDER, FOLDER)
    assert not path_within(f"{FOLDER}x/a.request", FOLDER)
    assert not path_within(f"{FOLDER}/../other/a.request", FOLDER)
    assert not path_within("anything", "")


# ---------------------------------------------------------------- outbound


async def test_accept_before_the_wait_is_not_lost_and_seq_starts_at_1() -> None:
    host = FakeHost()
    s = _outbound(host)
    s.on_accept()  # arrives before the owner even starts waiting
    s.start()
    await s.send(TUNNEL, b"one")
    await s.send(TUNNEL, b"two")
    s.finish()
    assert await s.wait_closed() == "eof"
    assert [(f.seq, f.payload) for f in host.frames] == [(1, b"one"), (2, b"two")]
    assert host.control == [HotlinkOpen("0123456789abcdef", TUNNEL, to=BOB)]
    # The eof Close queues behind the data and names the last seq.
    assert host.ordered == [HotlinkClose("0123456789abcdef", "eof:2")]
    assert host.ended == [s]


async def test_accept_timeout_closes_with_fallback_and_fails_sends() -> None:
    host = FakeHost()
    s = _outbound(host, accept_timeout=0.05)
    s.start()
    await s.send(TUNNEL, b"queued while waiting")
    assert await s.wait_closed() == "accept timeout"
    assert host.control[-1] == HotlinkClose("0123456789abcdef", "fallback")
    assert host.frames == []
    with pytest.raises(SessionClosed, match="accept timeout"):
        await s.send(TUNNEL, b"more")


async def test_reject_closes_with_fallback() -> None:
    host = FakeHost()
    s = _outbound(host)
    s.start()
    await until(lambda: host.control)
    s.on_reject("permission denied")
    assert await s.wait_closed() == "rejected: permission denied"
    assert host.control[-1] == HotlinkClose("0123456789abcdef", "fallback")


async def test_peer_close_ends_the_session_and_runs_callbacks_once() -> None:
    host = FakeHost()
    s = _outbound(host)
    seen: list[str] = []
    s.add_done_callback(seen.append)
    s.start()
    s.on_accept()
    await s.send(TUNNEL, b"x")
    await until(lambda: host.frames)
    await s.close("closed by peer: gone", notify=False)
    assert seen == ["closed by peer: gone"]
    late: list[str] = []
    s.add_done_callback(late.append)
    assert late == ["closed by peer: gone"]
    assert not any(isinstance(p, HotlinkClose) for p in host.control)


async def test_reject_after_accept_closes() -> None:
    host = FakeHost()
    s = _outbound(host)
    s.start()
    s.on_accept()
    await until(lambda: host.accepted)
    s.on_reject("unknown session")
    assert await s.wait_closed() == "rejected: unknown session"


async def test_disconnect_while_sending_ends_the_session() -> None:
    host = FakeHost()
    s = _outbound(host)
    s.start()
    s.on_accept()
    await until(lambda: host.accepted)
    host.connected = False
    await s.send(TUNNEL, b"x")
    assert await s.wait_closed() == "disconnected"


async def test_the_eof_close_waits_for_the_transport_to_drain() -> None:
    # The server forgets the session at the Close: frames a dying channel may have lost must
    # be resent before it, so the Close waits for drain() and goes out after its resends.
    host = FakeHost()
    s = _outbound(host)
    release = asyncio.Event()

    async def drain(sid: str) -> None:
        host.drained.append(sid)
        await release.wait()
        host.ordered.append(HotlinkData(sid, 1, TUNNEL, "", b"resent"))

    host.drain = drain  # type: ignore[method-assign]
    s.on_accept()
    s.start()
    await s.send(TUNNEL, b"one")
    s.finish()
    await until(lambda: host.drained)
    assert host.ordered == []  # no Close while draining
    release.set()
    assert await s.wait_closed() == "eof"
    assert host.ordered == [
        HotlinkData("0123456789abcdef", 1, TUNNEL, "", b"resent"),
        HotlinkClose("0123456789abcdef", "eof:1"),
    ]


async def test_a_drain_that_cannot_vouch_for_the_frames_ends_with_error_not_eof() -> None:
    host = FakeHost()
    s = _outbound(host)

    async def drain(sid: str) -> None:
        raise PeerSendError("channel lost, p2p only")

    host.drain = drain  # type: ignore[method-assign]
    s.on_accept()
    s.start()
    await s.send(TUNNEL, b"one")
    s.finish()
    assert await s.wait_closed() == "error: channel lost, p2p only"
    assert host.ordered == []  # never an eof that promises seq 1
    assert host.control[-1] == HotlinkClose("0123456789abcdef", "error")


# ---------------------------------------------------------------- inbound


async def test_out_of_order_frames_reach_the_app_in_order() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    assert host.control == [HotlinkAccept("fedcba9876543210")]
    for seq in (3, 1, 2, 2, 1):  # duplicates, as P2P and WS may both deliver
        await s.receive(_frame(seq, f"<{seq}>".encode()))
    await until(lambda: len(writer.data) == 9)
    assert bytes(writer.data) == b"<1><2><3>"
    await s.peer_closed(eof_reason(3))
    assert await s.wait_closed() == "eof"
    assert writer.finished and writer.failed is None
    assert host.telemetry.rx_bytes == 9


async def test_eof_waits_for_frames_that_are_still_in_flight() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    await s.receive(_frame(1, b"a"))
    await s.peer_closed("eof:3")  # the Close overtook frames 2 and 3
    await s.receive(_frame(3, b"c"))
    assert not s.ended
    await s.receive(_frame(2, b"b"))
    assert await s.wait_closed() == "eof"
    assert bytes(writer.data) == b"abc"


async def test_app_connecting_late_gets_everything() -> None:
    host, sink = FakeHost(), FakeSink()
    s = _inbound(host, sink)
    s.start()
    await until(lambda: s.accepted)
    for seq in range(1, 6):
        await s.receive(_frame(seq, bytes([seq])))
    writer = FakeWriter()
    sink.connect(writer)
    await until(lambda: len(writer.data) == 5)
    assert bytes(writer.data) == bytes(range(1, 6))
    await s.close("test over", notify=False)


async def test_no_app_within_the_wait_closes_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbound, "WRITER_WAIT", 0.05)
    host = FakeHost()
    s = _inbound(host, FakeSink())
    s.start()
    await until(lambda: s.accepted)
    await s.receive(_frame(1, b"x"))
    reason = await s.wait_closed()
    assert reason.startswith("no local app connected")
    assert host.control[-1] == HotlinkClose("fedcba9876543210", reason)


async def test_app_write_failure_closes_the_stream_and_tells_the_opener() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    await s.receive(_frame(1, b"a"))
    await until(lambda: writer.data)
    writer.broken = True
    await s.receive(_frame(2, b"b"))
    reason = await s.wait_closed()
    assert reason.startswith("local app connection lost")
    assert isinstance(host.control[-1], HotlinkClose)
    assert writer.failed == reason  # a TCP stream with a hole is aborted


async def test_frames_outside_the_session_folder_are_dropped() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    await s.receive(_frame(1, b"evil", path="bob@example.com/elsewhere/stream.tcp.request"))
    await s.receive(_frame(1, b"good"))
    await until(lambda: writer.data)
    assert bytes(writer.data) == b"good"
    await s.close("done", notify=False)


async def test_non_eof_close_aborts_the_app_connection() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    await s.receive(_frame(1, b"a"))
    await until(lambda: writer.data)
    await s.peer_closed("disconnected")
    assert s.close_reason == "disconnected"
    assert writer.failed == "disconnected"
    assert not any(isinstance(p, HotlinkClose) for p in host.control)


async def test_gap_that_never_fills_closes_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbound, "GAP_TIMEOUT", 0.05)
    monkeypatch.setattr(inbound, "STALL_CHECK", 0.02)
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    await s.receive(_frame(2, b"b"))  # seq 1 never comes
    reason = await s.wait_closed()
    assert reason.startswith("gap timeout")
    assert writer.data == b""


async def test_ipc_session_accepts_only_once_stream_accept_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbound, "ACCEPT_POLL", 0.01)
    host, writer = FakeHost(), FakeWriter()
    folder = "alice@example.com/app_data/app/rpc/ep"
    s = _inbound(
        host,
        FakeSink(writer),
        kind="ipc",
        folder=folder,
        path=f"{folder}/a.request",
        accept_marker=tmp_path / "stream.accept",
    )
    s.start()
    await s.receive(Frame(f"{folder}/a.request", "", 1, b"early"))  # not accepted: ignored
    assert host.control == []
    (tmp_path / "stream.accept").write_text("1")
    await until(lambda: s.accepted)
    assert host.control == [HotlinkAccept("fedcba9876543210")]
    # IPC sessions hand the app whole HLNK frames, with their own paths, in seq order.
    await s.receive(Frame(f"{folder}/b.request", "e2", 2, b"second"))
    await s.receive(Frame(f"{folder}/a.request", "e1", 1, b"first"))
    await until(lambda: len(FrameDecoder().feed(bytes(writer.data))) == 2)
    frames = FrameDecoder().feed(bytes(writer.data))
    assert [(f.path.rsplit("/", 1)[1], f.etag, f.seq, f.payload) for f in frames] == [
        ("a.request", "e1", 1, b"first"),
        ("b.request", "e2", 2, b"second"),
    ]
    assert host.telemetry.rx_bytes == len(b"first") + len(b"second")
    await s.close("done", notify=False)


async def test_ipc_session_gives_up_without_stream_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbound, "ACCEPT_POLL", 0.01)
    monkeypatch.setattr(inbound, "ACCEPT_MARKER_WAIT", 0.05)
    host = FakeHost()
    s = _inbound(host, FakeSink(), kind="ipc", accept_marker=tmp_path / "stream.accept")
    s.start()
    assert await s.wait_closed() == "no stream.accept"
    assert host.control == []


async def test_app_leaving_while_idle_is_noticed_without_more_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inbound, "STALL_CHECK", 0.02)
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    await s.receive(_frame(1, b"a"))
    await until(lambda: writer.data)
    writer.broken = True  # the app closed its socket; no frame is in flight
    assert await s.wait_closed() == "local app connection lost"
    assert host.control[-1] == HotlinkClose("fedcba9876543210", "local app connection lost")
