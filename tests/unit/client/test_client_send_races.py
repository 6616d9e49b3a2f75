"""The client's send path under adverse scheduling: every byte the app wrote reaches the
other side once, under its own seq, before the Close ``eof`` that promises it, or the app
learns that the stream failed.

The whole sending stack runs here (OutboundSession, HotlinkManager, the WebRTC transport with
a scripted peer, and a wire that keeps the relay connection's queue discipline), so the
direct paths (the session's lock-free send, the data channel's) and the queued ones (the
session's owner, the replay after a channel failure, the eof Close) meet as they do in the
client."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.client.manager import HotlinkManager, ManagerConfig
from hotlink.client.p2p.webrtc_transport import WebRTCPeerTransport
from hotlink.client.session.outbound import OutboundSession
from hotlink.client.telemetry import Telemetry
from hotlink.protocol.e2e.handshake import E2E_HELLO, Role, SessionParams
from hotlink.protocol.e2e.identity import Identity
from hotlink.protocol.e2e.pins import PinBook
from hotlink.protocol.e2e.seal import is_sealed
from hotlink.protocol.e2e.session import E2ESession
from hotlink.protocol.flow import Credit
from hotlink.protocol.frames import decode_frame
from hotlink.protocol.ice import sdp_token
from hotlink.protocol.markers import session_dir
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkSignal,
    Message,
)
from hotlink.settings import ClientSettings
from hotlink.webrtc import ChannelNotOpenError
from unit.client.client_fakes import ALICE, BOB, FakeHost, FakeWire, until
from unit.client.test_client_webrtc_fakes import OFFER_SDP, FakeBackend, FakePeer, quick_config

TUNNEL = f"{ALICE}/shared/flows/x/_mpc/0_to_1/stream.tcp.request"
WINDOW = 4096  # the receiver's flow window in these tests: small, so credit runs out often


class OrderedWire(FakeWire):
    """The relay connection with the real outbox's discipline: control messages (never
    blocking) go ahead of the data still queued, data keeps its order. ``on_the_wire`` is
    the order the relay gets when the writer falls behind, the worst case for anything that
    must follow data (the eof Close, the resends)."""

    def on_the_wire(self) -> list[object]:
        return [m.payload for m in (*self.control, *self.data)]


@dataclass
class Stack:
    """One outbound tunnel stream through the whole sending side of a client."""

    manager: HotlinkManager
    wire: OrderedWire
    transport: WebRTCPeerTransport
    backend: FakeBackend
    stream: OutboundSession
    writes: list[bytes] = field(default_factory=list)
    # Frames the data channel may have lost: it failed, or was stalled at the end.
    p2p_lossy: bool = False

    @property
    def peer(self) -> FakePeer:
        return self.backend.peers[0]


async def _stack(tmp_path: Path, **p2p: object) -> Stack:
    backend = FakeBackend()
    config = quick_config(grace=0.0, drain_wait=0.02, **p2p)
    transport = WebRTCPeerTransport(
        ClientSettings(ice_servers_raw="none"), backend=backend, config=config
    )
    wire = OrderedWire()
    manager = HotlinkManager(
        local_email=ALICE,
        datasites=tmp_path,
        wire=wire,
        telemetry=Telemetry(None),
        transport=transport,
        config=ManagerConfig(),
    )
    stream = await manager.open_stream(TUNNEL, BOB)
    await until(lambda: any(isinstance(p, HotlinkOpen) for p in wire.on_the_wire()))
    await manager.handle_message(Message.new(HotlinkAccept(stream.sid)))
    # The acceptor offers right after its Accept; we answer (the peer exists from now on).
    offer = HotlinkSignal(sid=stream.sid, knd="sdp_offer", tok=sdp_token("offer", OFFER_SDP))
    await manager.handle_message(Message.new(offer))
    await until(lambda: bool(backend.peers) and stream.state == "accepted")
    return Stack(manager, wire, transport, backend, stream)


def _what_the_receiver_can_have(stack: Stack) -> tuple[dict[int, bytes], list[object]]:
    """The frames that reach the receiver before the eof Close (seq -> payload), and what
    the relay got after that Close. Frames on a channel that failed count as lost: only
    what the WebSocket carried before the Close is sure to arrive then."""
    got: dict[int, bytes] = {}
    wire = stack.wire.on_the_wire()
    closes = [i for i, p in enumerate(wire) if isinstance(p, HotlinkClose)]
    assert closes, "no Close at all"
    end = closes[0]
    for p in wire[:end]:
        if isinstance(p, HotlinkData):
            assert got.setdefault(p.seq, p.pay) == p.pay, f"seq {p.seq} sent with two payloads"
    if not stack.p2p_lossy:
        for data in stack.peer.sent if stack.backend.peers else []:
            f = decode_frame(data)
            assert got.setdefault(f.seq, f.payload) == f.payload, f"seq {f.seq}: two payloads"
    return got, wire[end:]


def _assert_whole_stream(stack: Stack) -> None:
    got, rest = _what_the_receiver_can_have(stack)
    n = len(stack.writes)
    close = rest[0]
    assert close == HotlinkClose(stack.stream.sid, f"eof:{n}"), close
    missing = [seq for seq in range(1, n + 1) if seq not in got]
    assert not missing, f"the eof Close promises seqs the receiver cannot have: {missing}"
    wrong = [seq for seq in range(1, n + 1) if got[seq] != stack.writes[seq - 1]]
    assert not wrong, f"seqs carrying another write's bytes: {wrong}"
    assert set(got) <= set(range(1, n + 1)), f"seqs past the end: {sorted(got)}"


# ---------------------------------------------------------------- the whole send path

Step = tuple[str, int]


async def _run(tmp_path: Path, steps: list[Step]) -> Stack:
    stack = await _stack(tmp_path)
    stream, peer = stack.stream, stack.peer
    granted = 0

    async def refused(data: bytes) -> None:
        if peer.send_error is not None:
            stack.p2p_lossy = True  # from here on the channel may have lost anything

    peer.send_hook = refused
    try:
        for kind, n in steps:
            if kind == "write":
                data = len(stack.writes).to_bytes(4, "big") + b"w" * n
                stack.writes.append(data)
                await stream.send(TUNNEL, data)
            elif kind == "grant":
                granted += n
                stream.on_credit(Credit(granted, WINDOW))
            elif kind == "open":
                if not peer.closed and not peer.open:
                    peer.fire_open()
            elif kind == "close":
                if peer.open and not peer.closed:
                    stack.p2p_lossy = True
                    peer.fire_closed("ice failed")
            elif kind == "refuse":
                # The library refuses the next send (its association is going down).
                peer.send_error = ChannelNotOpenError("refused")
            elif kind == "stall":
                peer.buffered = 4096  # the far end stopped reading
            else:
                for _ in range(n):
                    await asyncio.sleep(0)
        if peer.buffered and peer.open and not peer.closed:
            stack.p2p_lossy = True  # drain gives the channel up and resends
        stream.on_credit(Credit(granted + (1 << 40), WINDOW))
        stream.finish()
        async with asyncio.timeout(5):
            assert await stream.wait_closed() == "eof"
    finally:
        await stack.manager.close()
        await stack.transport.close()
    return stack


_writes = st.tuples(st.just("write"), st.sampled_from([0, 100, WINDOW // 2, WINDOW]))
_grants = st.tuples(st.just("grant"), st.sampled_from([1, WINDOW // 2, WINDOW]))
_steps = st.lists(
    st.one_of(
        # Writes and grants weigh most: the credit runs out and comes back often.
        _writes,
        _writes,
        _grants,
        _grants,
        st.tuples(st.just("run"), st.integers(0, 4)),
        st.tuples(st.sampled_from(["open", "close", "refuse", "stall"]), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(steps=_steps)
def test_every_write_reaches_the_receiver_under_its_seq_before_the_eof_whatever_happens(
    steps: list[Step],
) -> None:
    # Writes, credit grants, scheduling, and the data channel opening, failing, refusing a
    # send or stalling at the end, in any order: the Close eof:N leaves only when seqs 1..N
    # are each on a path that still delivers (or resent over the WebSocket ahead of it), and
    # seq k carries the app's k-th write.
    root = Path(tempfile.mkdtemp(prefix="hl-races-"))
    try:
        stack = asyncio.run(_run(root, steps))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _assert_whole_stream(stack)


@pytest.mark.parametrize("order", ["lost, then the app's eof", "the app's eof, then lost"])
async def test_a_channel_lost_after_the_last_frame_is_resent_ahead_of_the_eof(
    tmp_path: Path, order: str
) -> None:
    # The app's last writes went over the channel; the channel dies just as the app's EOF
    # arrives. Whichever runs first, the failure's own resend task or the owner's drain,
    # the resend must be on the WebSocket before the Close the owner queues after drain.
    stack = await _stack(tmp_path)
    stack.peer.fire_open()
    try:
        for i in range(3):
            stack.writes.append(b"%d" % i * 100)
            await stack.stream.send(TUNNEL, stack.writes[-1])
        assert len(stack.peer.sent) == 3
        stack.p2p_lossy = True
        if order.startswith("lost"):
            stack.peer.fire_closed("ice failed")
            stack.stream.finish()
        else:
            stack.stream.finish()
            stack.peer.fire_closed("ice failed")
        assert await stack.stream.wait_closed() == "eof"
    finally:
        await stack.manager.close()
        await stack.transport.close()
    _assert_whole_stream(stack)


# ---------------------------------------------------------------- sealing


async def test_a_write_during_the_key_exchange_is_sealed_like_the_rest() -> None:
    # After the Accept the opener waits for the acceptor's hello before it streams. A write
    # in that wait must not take the direct path: unsealed, it would be the one plaintext
    # frame of a sealed stream (the receiver then resets a stream that was fine).
    sid = "0123456789abcdef"
    params = SessionParams(sid, TUNNEL, ALICE, BOB)

    def e2e(role: Role) -> E2ESession:
        return E2ESession(
            role=role, params=params, identity=Identity.generate(), pins=PinBook(),
            refuse_plaintext=False,
        )  # fmt: skip

    opener, acceptor = e2e("opener"), e2e("acceptor")
    host = FakeHost()
    s = OutboundSession(
        host, sid=sid, key=session_dir(TUNNEL), path=TUNNEL, to=BOB, e2e=opener, hello_wait=5.0
    )
    s.on_accept()
    s.start()
    await until(lambda: any(getattr(p, "knd", "") == E2E_HELLO for p in host.control))
    await s.send(TUNNEL, b"written while the keys are exchanged")
    s.on_e2e_hello(acceptor.hello_token())
    await s.send(TUNNEL, b"written once sealed")
    s.finish()
    assert await s.wait_closed() == "eof"
    assert opener.sealed
    assert [f.seq for f in host.frames] == [1, 2, 3]  # two writes and the sealed end
    plain = [f.seq for f in host.frames if not is_sealed(f)]
    assert not plain, f"frames sent unsealed on a sealed stream: seqs {plain}"
