"""Outbound and inbound sessions against a fake host: the state machine and the byte stream."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.client.p2p.transport import PeerSendError
from hotlink.client.session import inbound
from hotlink.client.session.base import (
    FlowConfig,
    SessionClosed,
    eof_reason,
    parse_eof,
    short_reason,
)
from hotlink.client.session.budget import BudgetLimits, MemoryBudget, held_cost
from hotlink.client.session.inbound import InboundSession, path_within
from hotlink.client.session.outbound import OutboundSession
from hotlink.protocol.flow import DEFAULT_WINDOW as WINDOW
from hotlink.protocol.flow import FLOW_KIND, Credit, credit_token, parse_credit_token
from hotlink.protocol.frames import Frame, FrameDecoder
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkSignal,
)
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
    flow: FlowConfig | None = None,
    budget: MemoryBudget | None = None,
    sid: str = "fedcba9876543210",
) -> InboundSession:
    return InboundSession(
        host,
        sid=sid,
        path=path,
        peer=BOB,
        folder=folder,
        kind=kind,  # type: ignore[arg-type]
        sink=sink,  # type: ignore[arg-type]
        accept_marker=accept_marker,
        flow=flow,
        lease=budget.open(BOB) if budget is not None else None,
    )


def _frame(seq: int, payload: bytes, path: str = TUNNEL) -> Frame:
    return Frame(path, "", seq, payload)


# ---------------------------------------------------------------- helpers


def test_eof_reason_round_trip() -> None:
    assert parse_eof(eof_reason(42)) == (True, 42)
    assert parse_eof("eof") == (True, None)
    assert parse_eof("eof:x") == (False, None)
    assert parse_eof("fallback") == (False, None)
    assert parse_eof(f"eof:{2**64 - 1}") == (True, 2**64 - 1)


@pytest.mark.parametrize(
    "reason",
    [
        "eof:" + "9" * 5000,  # int() refuses more than 4300 digits with a ValueError
        "eof:" + "1" * 21,
        f"eof:{2**64}",
        "eof:",
        "eof:-1",
        "eof:\u0663",  # an Arabic-Indic 3: str.isdigit() says yes
        "eof:\u00b2",  # a superscript 2: isdigit() yes, int() raises
    ],
)
def test_an_absurd_eof_seq_is_not_an_eof(reason: str) -> None:
    assert parse_eof(reason) == (False, None)


async def test_a_close_with_an_absurd_eof_seq_ends_the_stream_loudly() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    s.receive(_frame(1, b"a"))
    await until(lambda: writer.data)
    reason = "eof:" + "7" * 5000
    assert not s.peer_closed(reason)  # no traceback; the manager then closes it
    await s.close(short_reason(reason), notify=False)
    assert not writer.finished and writer.failed is not None  # a reset, not a clean end
    assert len(s.close_reason) < 300


def test_short_reason_keeps_log_lines_readable() -> None:
    assert short_reason("eof") == "eof"
    long = short_reason("x" * 10_000)
    assert long.startswith("x" * 200) and long.endswith("(10000 characters)")
    assert short_reason("bad\nline\x00") == "bad\\nline\\x00"


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
    # The Accept, then the first credit grant (a window) right behind it.
    assert host.control == [
        HotlinkAccept("fedcba9876543210"),
        HotlinkSignal("fedcba9876543210", FLOW_KIND, tok=credit_token(Credit(WINDOW, WINDOW))),
    ]
    for seq in (3, 1, 2, 2, 1):  # duplicates, as P2P and WS may both deliver
        s.receive(_frame(seq, f"<{seq}>".encode()))
    await until(lambda: len(writer.data) == 9)
    assert bytes(writer.data) == b"<1><2><3>"
    assert s.peer_closed(eof_reason(3))
    assert await s.wait_closed() == "eof"
    assert writer.finished and writer.failed is None
    assert host.telemetry.rx_bytes == 9


async def test_eof_waits_for_frames_that_are_still_in_flight() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    s.receive(_frame(1, b"a"))
    assert s.peer_closed("eof:3")  # the Close overtook frames 2 and 3
    s.receive(_frame(3, b"c"))
    assert not s.ended
    s.receive(_frame(2, b"b"))
    assert await s.wait_closed() == "eof"
    assert bytes(writer.data) == b"abc"


async def test_app_connecting_late_gets_everything() -> None:
    host, sink = FakeHost(), FakeSink()
    s = _inbound(host, sink)
    s.start()
    await until(lambda: s.accepted)
    for seq in range(1, 6):
        s.receive(_frame(seq, bytes([seq])))
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
    s.receive(_frame(1, b"x"))
    reason = await s.wait_closed()
    assert reason.startswith("no local app connected")
    assert host.control[-1] == HotlinkClose("fedcba9876543210", reason)


async def test_app_write_failure_closes_the_stream_and_tells_the_opener() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    s.receive(_frame(1, b"a"))
    await until(lambda: writer.data)
    writer.broken = True
    s.receive(_frame(2, b"b"))
    reason = await s.wait_closed()
    assert reason.startswith("local app connection lost")
    assert isinstance(host.control[-1], HotlinkClose)
    assert writer.failed == reason  # a TCP stream with a hole is aborted


async def test_frames_outside_the_session_folder_are_dropped() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    s.receive(_frame(1, b"evil", path="bob@example.com/elsewhere/stream.tcp.request"))
    s.receive(_frame(1, b"good"))
    await until(lambda: writer.data)
    assert bytes(writer.data) == b"good"
    await s.close("done", notify=False)


async def test_non_eof_close_aborts_the_app_connection() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    s.receive(_frame(1, b"a"))
    await until(lambda: writer.data)
    assert not s.peer_closed("disconnected")  # not an eof: the manager closes the session
    await s.close("disconnected", notify=False)
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
    s.receive(_frame(2, b"b"))  # seq 1 never comes
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
    s.receive(Frame(f"{folder}/a.request", "", 1, b"early"))  # not accepted: ignored
    assert host.control == []
    (tmp_path / "stream.accept").write_text("1")
    await until(lambda: s.accepted)
    assert host.control[0] == HotlinkAccept("fedcba9876543210")
    # IPC sessions hand the app whole HLNK frames, with their own paths, in seq order.
    s.receive(Frame(f"{folder}/b.request", "e2", 2, b"second"))
    s.receive(Frame(f"{folder}/a.request", "e1", 1, b"first"))
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
    s.receive(_frame(1, b"a"))
    await until(lambda: writer.data)
    writer.broken = True  # the app closed its socket; no frame is in flight
    assert await s.wait_closed() == "local app connection lost"
    assert host.control[-1] == HotlinkClose("fedcba9876543210", "local app connection lost")


# ---------------------------------------------------------------- flow control

SMALL = 64 * 1024  # the smallest window, so a few frames use it up


def _grants(host: FakeHost) -> list[Credit]:
    return [
        parse_credit_token(p.tok)
        for p in host.control
        if isinstance(p, HotlinkSignal) and p.knd == FLOW_KIND
    ]


async def test_sender_waits_for_credit_then_goes_on_when_more_is_granted() -> None:
    host = FakeHost()
    s = _outbound(host)
    s.on_accept()
    s.start()
    s.on_credit(Credit(SMALL, SMALL))
    chunk = b"x" * (SMALL // 2)
    for _ in range(4):  # twice the window
        await s.send(TUNNEL, chunk)
    await until(lambda: len(host.frames) == 2)
    await asyncio.sleep(0.05)
    assert len(host.frames) == 2  # no credit left: nothing more leaves
    assert host.telemetry.events["flow_waits"] == 1
    s.on_credit(Credit(SMALL + SMALL // 4, SMALL))  # the app took a quarter window
    await until(lambda: len(host.frames) == 3)  # a frame may start below the limit
    s.on_credit(Credit(2 * SMALL, SMALL))
    s.finish()
    assert await s.wait_closed() == "eof"
    assert [f.seq for f in host.frames] == [1, 2, 3, 4]


async def test_a_frame_written_as_credit_arrives_does_not_overtake_the_one_waiting() -> None:
    # The owner holds a frame while it waits for credit; the grant wakes it, but the app's
    # next write may run first. It must queue behind the held frame, not take its seq.
    host = FakeHost()
    s = _outbound(host)
    s.on_accept()
    s.start()
    s.on_credit(Credit(SMALL, SMALL))
    await s.send(TUNNEL, b"a" * SMALL)  # the whole window
    await s.send(TUNNEL, b"b" * 10)  # the owner takes it and waits for credit
    await until(lambda: host.telemetry.events["flow_waits"] == 1)
    s.on_credit(Credit(2 * SMALL, SMALL))
    await s.send(TUNNEL, b"c" * 10)  # before the owner runs again
    s.finish()
    assert await s.wait_closed() == "eof"
    assert [(f.seq, f.payload[:1]) for f in host.frames] == [(1, b"a"), (2, b"b"), (3, b"c")]


Step = tuple[str, int]  # ("write", bytes) from the app, ("grant", bytes) credit, ("run", ticks)


async def _interleave(steps: list[Step]) -> tuple[list[bytes], list[Frame]]:
    host = FakeHost()
    s = _outbound(host)
    s.on_accept()
    s.start()
    granted = SMALL
    s.on_credit(Credit(granted, SMALL))
    writes: list[bytes] = []
    for kind, n in steps:
        if kind == "write":
            writes.append(len(writes).to_bytes(4, "big") + b"w" * n)
            await s.send(TUNNEL, writes[-1])
        elif kind == "grant":
            granted += n
            s.on_credit(Credit(granted, SMALL))
        else:
            for _ in range(n):
                await asyncio.sleep(0)
    s.on_credit(Credit(granted + (1 << 40), SMALL))
    s.finish()
    assert await s.wait_closed() == "eof"
    return writes, host.frames


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            # Sizes near the window, so the credit runs out and comes back often.
            st.tuples(st.just("write"), st.sampled_from([0, 100, SMALL // 2, SMALL])),
            st.tuples(st.just("grant"), st.sampled_from([1, SMALL // 2, SMALL])),
            st.tuples(st.just("run"), st.integers(0, 3)),
        ),
        max_size=40,
    )
)
def test_frames_leave_in_the_order_the_app_wrote_them_whatever_the_grants(
    steps: list[Step],
) -> None:
    writes, frames = asyncio.run(_interleave(steps))
    assert [f.seq for f in frames] == list(range(1, len(writes) + 1))
    assert [f.payload for f in frames] == writes


class PacedWriter(FakeWriter):
    """An app connection whose socket is sometimes full: ``write_nowait`` then refuses and
    ``write`` takes a few scheduling ticks, as when the app reads slowly."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def write_nowait(self, data: bytes) -> bool:
        return not self.full and super().write_nowait(data)

    async def write(self, data: bytes) -> None:
        await super().write(data)
        for _ in range(3 if self.full else 0):
            await asyncio.sleep(0)


@settings(max_examples=150, deadline=None)
@given(
    st.permutations(range(1, 13)),
    st.lists(st.sampled_from(["again", "full", "free", "run"]), min_size=12, max_size=12),
)
def test_the_app_gets_frames_in_seq_order_whatever_the_arrival_and_its_pace(
    order: list[int], between: list[str]
) -> None:
    async def run() -> bytes:
        writer = PacedWriter()
        s = _inbound(FakeHost(), FakeSink(writer))
        s.start()
        await until(lambda: s.accepted)
        for seq, step in zip(order, between, strict=True):
            s.receive(_frame(seq, seq.to_bytes(2, "big")))
            if step == "again":  # the same frame over the other path
                s.receive(_frame(seq, seq.to_bytes(2, "big")))
            elif step in ("full", "free"):
                writer.full = step == "full"
            else:
                await asyncio.sleep(0)
        writer.full = False
        assert s.peer_closed("eof:12")
        assert await s.wait_closed() == "eof"
        return bytes(writer.data)

    assert asyncio.run(run()) == b"".join(i.to_bytes(2, "big") for i in range(1, 13))


async def test_sender_without_grants_sends_freely_as_today() -> None:
    host = FakeHost()
    s = _outbound(host)
    s.on_accept()
    s.start()
    for _ in range(64):  # far past any window: a reference receiver never grants
        await s.send(TUNNEL, b"y" * 60_000)
    s.finish()
    assert await s.wait_closed() == "eof"
    assert len(host.frames) == 64
    assert host.telemetry.events["flow_waits"] == 0


async def test_sender_with_flow_control_off_ignores_grants() -> None:
    host = FakeHost()
    s = OutboundSession(
        host, sid="0123456789abcdef", key=FOLDER, path=TUNNEL, to=BOB,
        flow=FlowConfig(enabled=False),
    )  # fmt: skip
    s.on_accept()
    s.start()
    s.on_credit(Credit(1, SMALL))
    for _ in range(3):
        await s.send(TUNNEL, b"z" * SMALL)
    s.finish()
    assert await s.wait_closed() == "eof"
    assert len(host.frames) == 3


async def test_receiver_grants_more_only_as_its_app_consumes() -> None:
    host, sink = FakeHost(), FakeSink()
    s = _inbound(host, sink, flow=FlowConfig(window=SMALL))
    s.start()
    await until(lambda: s.accepted)
    assert _grants(host) == [Credit(SMALL, SMALL)]
    for seq in range(1, 5):
        s.receive(_frame(seq, b"a" * (SMALL // 4)))
    await asyncio.sleep(0.05)
    assert _grants(host) == [Credit(SMALL, SMALL)]  # no app yet: nothing consumed
    writer = FakeWriter()
    sink.connect(writer)
    await until(lambda: len(writer.data) == SMALL)
    # A new grant every quarter window the app took; the last one opens a whole window.
    assert _grants(host)[-1] == Credit(2 * SMALL, SMALL)
    assert s.peer_closed(eof_reason(4))
    assert await s.wait_closed() == "eof"


async def test_receiver_stops_a_sender_that_ignores_the_window_loudly() -> None:
    host, sink = FakeHost(), FakeSink()  # no app: nothing is consumed
    s = _inbound(host, sink, flow=FlowConfig(window=SMALL))
    s.start()
    await until(lambda: s.accepted)
    seq = 0
    while not s.ended and seq < 400:  # the bound is 2 windows + one 8 MiB frame
        seq += 1
        s.receive(_frame(seq, b"b" * 60_000))
        await asyncio.sleep(0)
    reason = await s.wait_closed()
    assert reason.startswith("receive buffer full")
    assert s.credit.buffered <= s.credit.hard_limit
    assert host.control[-1] == HotlinkClose("fedcba9876543210", reason)


async def test_receiver_with_flow_control_off_grants_nothing_but_stays_bounded() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer), flow=FlowConfig(enabled=False, window=SMALL))
    s.start()
    await until(lambda: s.accepted)
    s.receive(_frame(1, b"c" * SMALL))
    await until(lambda: len(writer.data) == SMALL)
    assert _grants(host) == []
    await s.close("done", notify=False)


async def test_no_grants_after_the_peers_eof() -> None:
    host, sink = FakeHost(), FakeSink()
    s = _inbound(host, sink, flow=FlowConfig(window=SMALL))
    s.start()
    await until(lambda: s.accepted)
    for seq in range(1, 5):
        s.receive(_frame(seq, b"d" * (SMALL // 4)))
    assert s.peer_closed(eof_reason(4))
    granted = len(_grants(host))
    writer = FakeWriter()
    sink.connect(writer)
    assert await s.wait_closed() == "eof"
    assert bytes(writer.data) == b"d" * SMALL and writer.finished
    assert len(_grants(host)) == granted  # the server forgot the session at the eof


async def test_an_empty_stream_ends_the_app_connection_that_is_there() -> None:
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    assert s.peer_closed(eof_reason(0))
    assert await s.wait_closed() == "eof"
    assert writer.finished and writer.data == b""


async def test_an_empty_stream_waits_for_no_app() -> None:
    host = FakeHost()
    s = _inbound(host, FakeSink())
    s.start()
    await until(lambda: s.accepted)
    assert s.peer_closed(eof_reason(0))
    assert await s.wait_closed() == "eof"


async def test_receive_never_waits_even_for_an_app_that_does_not_read() -> None:
    host = FakeHost()
    writer = FakeWriter()
    stuck = asyncio.Event()

    async def never(data: bytes) -> None:
        await stuck.wait()

    writer.write = never  # type: ignore[method-assign]
    writer.write_nowait = lambda data: False  # type: ignore[method-assign]
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    for seq in range(1, 101):
        s.receive(_frame(seq, b"e" * 60_000))  # a plain call: it cannot block
    assert s.credit.buffered == 100 * 60_000
    assert not s.ended
    await s.close("done", notify=False)


# ---------------------------------------------------------------- what a session holds


def _chunk(seq: int, size: int = 8 * 1024) -> bytes:
    return seq.to_bytes(4, "big") * (size // 4)


async def test_frames_that_fit_the_budget_before_seq_1_all_reach_a_connected_app() -> None:
    # 2,900 x 8 KiB (23 MiB, within the 24 MiB a session may hold with the default window)
    # arrive before seq 1 while an app is connected: the reorder buffer and the delivery
    # queue share one bound, so what was taken in is delivered, in order, without a close.
    host, writer = FakeHost(), FakeWriter()
    s = _inbound(host, FakeSink(writer))
    s.start()
    await until(lambda: s.accepted)
    last = 2901
    for seq in range(2, last + 1):
        s.receive(_frame(seq, _chunk(seq)))
    assert s.credit.buffered <= s.credit.hard_limit
    s.receive(_frame(1, _chunk(1)))
    assert s.peer_closed(eof_reason(last))
    assert await s.wait_closed() == "eof"
    expected = hashlib.sha256(b"".join(_chunk(seq) for seq in range(1, last + 1))).hexdigest()
    assert hashlib.sha256(writer.data).hexdigest() == expected
    assert writer.finished and writer.failed is None
    assert not any(isinstance(p, HotlinkClose) for p in host.control)


async def test_a_session_charges_what_it_holds_and_gives_it_back_as_the_app_reads() -> None:
    budget = MemoryBudget()
    host, sink = FakeHost(), FakeSink()
    s = _inbound(host, sink, budget=budget)
    s.start()
    await until(lambda: s.accepted)
    for seq in (3, 2, 1):
        s.receive(_frame(seq, b"x" * 1000))
    s.receive(_frame(2, b"x" * 1000))  # a duplicate costs nothing
    assert budget.held_by(BOB) == 3 * held_cost(1000)
    writer = FakeWriter()
    sink.connect(writer)
    await until(lambda: len(writer.data) == 3000)
    assert budget.held_by(BOB) == 0
    s.receive(_frame(5, b"y" * 10))  # held behind the missing seq 4 ...
    assert budget.held == held_cost(10)
    await s.close("done", notify=False)
    assert (budget.held, budget.sessions) == (0, 0)  # ... and given back when it ends


async def test_a_frame_past_the_peers_budget_closes_only_that_session_loudly() -> None:
    # Two sessions of one peer hold frames behind a hole (a sender that ignores credit);
    # the frame that would take the peer past its budget closes the session it was for.
    budget = MemoryBudget(BudgetLimits(bytes_per_peer=320_000, bytes_total=10**9))
    host = FakeHost()
    writers = [FakeWriter(), FakeWriter()]
    first, second = (
        _inbound(host, FakeSink(w), budget=budget, sid=f"{i}" * 16) for i, w in enumerate(writers)
    )
    for s in (first, second):
        s.start()
    await until(lambda: first.accepted and second.accepted)
    for seq in range(2, 4):
        first.receive(_frame(seq, b"a" * 100_000))
    second.receive(_frame(2, b"b" * 60_000))
    assert not second.ended
    second.receive(_frame(3, b"b" * 60_000))  # 320 KB + overheads: past the budget
    reason = await second.wait_closed()
    assert reason.startswith("memory budget of bob@example.com reached")
    assert HotlinkClose("1" * 16, reason) in host.control
    assert not writers[1].finished  # never a clean end
    assert not first.ended  # the other session keeps its frames and its stream
    assert budget.held_by(BOB) == 2 * held_cost(100_000)
    first.receive(_frame(1, b"a" * 100_000))
    assert first.peer_closed(eof_reason(3))
    assert await first.wait_closed() == "eof"
    assert bytes(writers[0].data) == b"a" * 300_000
    assert (budget.held, budget.sessions) == (0, 0)


async def test_tiny_frames_are_charged_for_the_memory_they_really_cost() -> None:
    # A flood of 1-byte frames to an app that does not read: the flow-control bound counts
    # payload bytes only, the budget also the objects each frame needs.
    budget = MemoryBudget(BudgetLimits(bytes_per_peer=100 * held_cost(1)))
    host = FakeHost()
    s = _inbound(host, FakeSink(), budget=budget)
    s.start()
    await until(lambda: s.accepted)
    for seq in range(1, 102):
        s.receive(_frame(seq, b"z"))
    reason = await s.wait_closed()
    assert reason.startswith("memory budget of bob@example.com reached")
    assert s.credit.buffered == 100
