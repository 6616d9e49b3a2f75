"""Sealed sessions against fake hosts: the opener waits for the acceptor's hello, seals every
frame and ends with the sealed fin; the acceptor holds sealed frames until the opener's
hello, delivers only what opens, and resets the app (never a clean EOF) when a frame fails,
the end is cut short, or plaintext arrives where sealing was promised."""

from __future__ import annotations

import dataclasses

from hotlink.client.session.inbound import InboundSession
from hotlink.client.session.outbound import OutboundSession
from hotlink.protocol.e2e.handshake import E2E_HELLO, SessionParams
from hotlink.protocol.e2e.identity import Identity
from hotlink.protocol.e2e.pins import PinBook
from hotlink.protocol.e2e.seal import is_sealed
from hotlink.protocol.e2e.session import E2ESession
from hotlink.protocol.frames import Frame
from hotlink.protocol.messages import HotlinkClose, HotlinkSignal
from unit.client.client_fakes import ALICE, BOB, FakeHost, FakeSink, FakeWriter, until

SID = "0123456789abcdef"
TUNNEL = "bob@example.com/shared/flows/x/_mpc/0_to_1/stream.tcp.request"
FOLDER = "bob@example.com/shared/flows/x/_mpc/0_to_1"
PARAMS = SessionParams(SID, TUNNEL, ALICE, BOB)
ALICE_ID, BOB_ID = Identity.generate(), Identity.generate()


def _e2e(role: str, *, refuse: bool = False) -> E2ESession:
    return E2ESession(
        role="opener" if role == "opener" else "acceptor",
        params=PARAMS,
        identity=ALICE_ID if role == "opener" else BOB_ID,
        pins=PinBook(),
        refuse_plaintext=refuse,
    )


def _outbound(host: FakeHost, e2e: E2ESession | None, hello_wait: float = 5.0) -> OutboundSession:
    return OutboundSession(
        host, sid=SID, key=FOLDER, path=TUNNEL, to=BOB, e2e=e2e, hello_wait=hello_wait
    )


def _inbound(host: FakeHost, writer: FakeWriter, e2e: E2ESession | None) -> InboundSession:
    return InboundSession(
        host, sid=SID, path=TUNNEL, peer=ALICE, folder=FOLDER, kind="tcp",
        sink=FakeSink(writer), e2e=e2e,  # type: ignore[arg-type]
    )  # fmt: skip


def _hello(host: FakeHost) -> str:
    (signal,) = [p for p in host.control if isinstance(p, HotlinkSignal) and p.knd == E2E_HELLO]
    return signal.tok


async def _sealed_stream(
    chunks: list[bytes],
) -> tuple[OutboundSession, FakeHost, InboundSession, FakeHost, FakeWriter]:
    """An opener that sent ``chunks`` and finished, and an acceptor that has its hello."""
    ha, hb, writer = FakeHost(), FakeHost(), FakeWriter()
    b = _inbound(hb, writer, _e2e("acceptor"))
    b.start()
    await until(lambda: b.accepted)
    a = _outbound(ha, _e2e("opener"))
    a.on_accept()
    a.start()
    await until(lambda: any(getattr(p, "knd", "") == E2E_HELLO for p in ha.control))
    a.on_e2e_hello(_hello(hb))
    b.on_e2e_hello(_hello(ha))
    for chunk in chunks:
        await a.send(TUNNEL, chunk)
    a.finish()
    assert await a.wait_closed() == "eof"
    return a, ha, b, hb, writer


async def test_a_sealed_stream_reaches_the_app_whole_and_ends_cleanly() -> None:
    chunks = [b"secret share %d " % i * 50 for i in range(5)]
    a, ha, b, _hb, writer = await _sealed_stream(chunks)
    assert all(is_sealed(f) for f in ha.frames)
    assert all(chunks[0][:12] not in f.payload for f in ha.frames)
    assert len(ha.frames) == len(chunks) + 1  # and the sealed end
    (close,) = ha.ordered
    assert close == HotlinkClose(SID, f"eof:{len(chunks) + 1}")
    assert a.e2e is not None and a.e2e.sealed and a.e2e.peer_fingerprint == BOB_ID.fingerprint
    for frame in reversed(ha.frames):  # any order: the reorder buffer sorts them
        b.receive(frame)
    assert b.peer_closed(close.rsn)
    assert await b.wait_closed() == "eof"
    assert bytes(writer.data) == b"".join(chunks)
    assert writer.finished and writer.failed is None
    assert b.snapshot()["e2e"] is True and b.snapshot()["peer_key"] == ALICE_ID.fingerprint


async def test_sealed_frames_before_the_openers_hello_wait_for_it() -> None:
    ha, hb, writer = FakeHost(), FakeHost(), FakeWriter()
    b = _inbound(hb, writer, _e2e("acceptor"))
    b.start()
    await until(lambda: b.accepted)
    a = _outbound(ha, _e2e("opener"))
    a.on_accept()
    a.start()
    await until(lambda: bool(ha.control[1:]))
    a.on_e2e_hello(_hello(hb))
    await a.send(TUNNEL, b"early")
    await until(lambda: bool(ha.frames))
    b.receive(ha.frames[0])  # the relay let the frame overtake the hello
    assert not writer.data and b.lease.held > 0
    b.on_e2e_hello(_hello(ha))
    await until(lambda: bytes(writer.data) == b"early")
    await a.close("test", notify=False)
    await b.close("test", notify=False)


async def test_a_flipped_bit_resets_the_app_and_tells_the_opener() -> None:
    _a, ha, b, hb, writer = await _sealed_stream([b"first", b"second", b"third"])
    b.receive(ha.frames[0])
    await until(lambda: bytes(writer.data) == b"first")
    forged = bytearray(ha.frames[1].payload)
    forged[7] ^= 0x10
    b.receive(dataclasses.replace(ha.frames[1], payload=bytes(forged)))
    reason = await b.wait_closed()
    assert reason.startswith("e2e:") and "failed authentication" in reason
    assert bytes(writer.data) == b"first"  # nothing of the forged frame
    assert writer.failed is not None and not writer.finished
    assert any(isinstance(p, HotlinkClose) and p.rsn.startswith("e2e:") for p in hb.control)


async def test_an_eof_that_cuts_the_stream_short_resets_the_app() -> None:
    _a, ha, b, _hb, writer = await _sealed_stream([b"one", b"two", b"three"])
    b.receive(ha.frames[0])
    b.receive(ha.frames[1])
    assert b.peer_closed("eof:2")  # forged: the sender's end is at seq 4
    reason = await b.wait_closed()
    assert reason.startswith("e2e:") and "cut short" in reason
    assert bytes(writer.data) == b"onetwo" and writer.failed is not None and not writer.finished


async def test_a_plaintext_frame_on_a_sealed_session_resets_the_app() -> None:
    _a, _ha, b, _hb, writer = await _sealed_stream([b"one"])
    b.receive(Frame(TUNNEL, "", 1, b"injected"))
    assert (await b.wait_closed()).startswith("e2e:")
    assert not writer.data and not writer.finished


async def test_an_acceptor_without_hello_gets_plaintext_said_once() -> None:
    ha = FakeHost()
    a = _outbound(ha, _e2e("opener"), hello_wait=0.05)
    a.on_accept()
    a.start()
    await a.send(TUNNEL, b"plain")
    a.finish()
    assert await a.wait_closed() == "eof"
    assert [f.payload for f in ha.frames] == [b"plain"] and not is_sealed(ha.frames[0])
    assert ha.plaintext == [(SID, BOB)]
    assert a.snapshot()["e2e"] is False and a.snapshot()["e2e_state"] == "plaintext"


async def test_an_opener_refusing_plaintext_closes_loudly_and_sends_nothing() -> None:
    ha = FakeHost()
    a = _outbound(ha, _e2e("opener", refuse=True), hello_wait=0.05)
    a.on_accept()
    a.start()
    reason = await a.wait_closed()
    assert reason.startswith("e2e:") and "required" in reason
    assert not ha.frames
    assert any(isinstance(p, HotlinkClose) and p.rsn == reason for p in ha.control)


async def test_an_acceptor_refusing_plaintext_resets_the_app() -> None:
    hb, writer = FakeHost(), FakeWriter()
    b = _inbound(hb, writer, _e2e("acceptor", refuse=True))
    b.start()
    await until(lambda: b.accepted)
    b.receive(Frame(TUNNEL, "", 1, b"plain"))
    assert (await b.wait_closed()).startswith("e2e:")
    assert not writer.data and not writer.finished


async def test_a_bad_hello_closes_the_opener_loudly() -> None:
    ha = FakeHost()
    a = _outbound(ha, _e2e("opener"))
    a.on_accept()
    a.start()
    await until(lambda: bool(ha.control[1:]))
    a.on_e2e_hello(_e2e("opener").hello_token())  # a reflected opener's hello
    reason = await a.wait_closed()
    assert reason.startswith("e2e:") and not ha.frames
