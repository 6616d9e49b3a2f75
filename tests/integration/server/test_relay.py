"""The real relay on loopback with raw WebSocket clients in msgpack and JSON."""

from __future__ import annotations

import aiohttp
import pytest

from hotlink import __version__
from hotlink.protocol.codec import decode
from hotlink.protocol.messages import (
    Error,
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
    System,
    new_session_id,
)
from support.fixtures import unique_email
from support.server_proc import ServerProcess
from support.ws_client import WSClient, connect, open_client


@pytest.fixture
def srv(relay_server_module: ServerProcess) -> ServerProcess:
    return relay_server_module


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


# ---------------------------------------------------------------- HTTP routes


async def test_healthz_root_and_metrics(srv):
    status, _, body = await _get(srv.url + "/healthz")
    assert status == 200 and body.strip() == '{"status": "ok"}'
    status, _, body = await _get(srv.url + "/")
    assert status == 200 and "Syft" in body and __version__ in body
    status, ctype, body = await _get(srv.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    for name in (
        "hotlink_connections ",
        "hotlink_sessions ",
        "hotlink_queue_drops_total",
        "hotlink_slow_reader_disconnects_total",
    ):
        assert name in body


# ---------------------------------------------------------------- greeting and encodings


@pytest.mark.parametrize(
    ("offer", "chosen", "frame_type"),
    [
        ("msgpack,json", "msgpack", aiohttp.WSMsgType.BINARY),
        ("json", "json", aiohttp.WSMsgType.TEXT),
        (" JSON , msgpack", "json", aiohttp.WSMsgType.TEXT),
        ("cbor, MsgPack", "msgpack", aiohttp.WSMsgType.BINARY),
        ("cbor", "json", aiohttp.WSMsgType.TEXT),
    ],
)
async def test_greeting_in_the_negotiated_encoding(srv, offer, chosen, frame_type):
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            srv.ws_url,
            params={"user": unique_email("greet")},
            headers={"X-Syft-WS-Encodings": offer},
        ) as ws,
    ):
        assert ws._response.headers["X-Syft-WS-Encoding"] == chosen
        frame = await ws.receive(timeout=10)
        assert frame.type == frame_type
        greeting = decode(frame.data)
        assert greeting.payload == System(ver=__version__, msg="ok")


async def test_no_encoding_header_means_json(srv):
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(srv.ws_url, params={"user": unique_email("plain")}) as ws,
    ):
        assert ws._response.headers["X-Syft-WS-Encoding"] == "json"
        assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT


async def test_no_ice_headers_when_none_are_configured(srv):
    async with connect(srv.url, unique_email("ice")) as client:
        assert not any(h.lower().startswith("x-syft-hotlink") for h in client.headers)


async def test_server_accepts_either_frame_form_from_any_client(srv):
    """A msgpack-negotiated client may still send JSON text frames, and vice versa."""
    alice = unique_email("alice")
    async with connect(srv.url, alice, encoding="msgpack") as a:
        for form in ("json", "msgpack"):
            got = await a.send(HotlinkSignal(sid="nope-" + form, knd="x"), encoding=form)
            reply = await a.expect(HotlinkSignal)
            assert reply.sid == got.payload.sid and reply.err == "unknown session"


# ---------------------------------------------------------------- the session flow


class Trio:
    """alice opens (msgpack), bob (JSON) and carol (msgpack) may read alice's app folder."""

    def __init__(self, a: WSClient, b: WSClient, c: WSClient, folder: str) -> None:
        self.a, self.b, self.c, self.folder = a, b, c, folder


async def _trio(srv: ServerProcess, *, tcp: bool = False) -> Trio:
    alice, bob, carol = unique_email("alice"), unique_email("bob"), unique_email("carol")
    folder = f"{alice}/app_data/test/rpc/hotlink"
    a = await open_client(srv.url, alice, encoding="msgpack")
    await a.publish_acl(f"{alice}/app_data", read=[bob, carol])
    b = await open_client(srv.url, bob, encoding="json")
    c = await open_client(srv.url, carol, encoding="msgpack")
    return Trio(a, b, c, folder)


async def _close_all(trio: Trio) -> None:
    for client in (trio.a, trio.b, trio.c):
        await client.close()


async def test_open_accept_data_reaches_only_accepted_connections(srv):
    t = await _trio(srv)
    try:
        sid = new_session_id()
        path = f"{t.folder}/chat.request"
        sent_open = await t.a.send(HotlinkOpen(sid=sid, pth=path))
        for receiver in (t.b, t.c):
            got = await receiver.expect_message(HotlinkOpen)
            assert got.id == sent_open.id
            assert got.payload == HotlinkOpen(sid=sid, pth=path, frm=t.a.user, to="")
        await t.b.send(HotlinkAccept(sid=sid))
        assert await t.a.expect(HotlinkAccept) == HotlinkAccept(sid=sid)

        chunks = [bytes([i]) * (1000 + i) for i in range(50)]
        for seq, chunk in enumerate(chunks, start=1):
            await t.a.send(HotlinkData(sid=sid, seq=seq, pth=path, pay=chunk))
        received = [await t.b.expect(HotlinkData) for _ in chunks]
        assert [d.seq for d in received] == list(range(1, 51))
        assert b"".join(d.pay for d in received) == b"".join(chunks)

        # carol saw the Open but never accepted: no data for her, and alice got nothing more.
        assert await t.a.barrier() == []
        assert await t.c.barrier() == []
    finally:
        await _close_all(t)


async def test_open_with_to_is_offered_only_to_the_target(srv):
    t = await _trio(srv)
    try:
        sid = new_session_id()
        await t.a.send(HotlinkOpen(sid=sid, pth=f"{t.folder}/x.request", to=t.b.user))
        got = await t.b.expect(HotlinkOpen)
        assert got.to == t.b.user and got.frm == t.a.user
        assert await t.a.barrier() == []
        assert await t.c.barrier() == []
        # carol cannot accept a session meant for bob.
        await t.c.send(HotlinkAccept(sid=sid))
        assert await t.c.expect(HotlinkReject) == HotlinkReject(sid=sid, rsn="permission denied")
    finally:
        await _close_all(t)


async def test_tcp_request_path_allows_one_accepting_user(srv):
    t = await _trio(srv)
    try:
        sid = new_session_id()
        path = f"{t.folder}/_mpc/0_to_1/stream.tcp.request"
        await t.a.send(HotlinkOpen(sid=sid, pth=path))
        await t.b.expect(HotlinkOpen)
        await t.c.expect(HotlinkOpen)
        await t.b.send(HotlinkAccept(sid=sid))
        await t.a.expect(HotlinkAccept)
        await t.c.send(HotlinkAccept(sid=sid))
        assert await t.c.expect(HotlinkReject) == HotlinkReject(sid=sid, rsn="already accepted")
        await t.a.send(HotlinkData(sid=sid, seq=1, pth=path, pay=b"only bob"))
        assert (await t.b.expect(HotlinkData)).pay == b"only bob"
        assert await t.c.barrier() == []
    finally:
        await _close_all(t)


async def test_signals_are_relayed_both_ways(srv):
    t = await _trio(srv)
    try:
        sid = new_session_id()
        await t.a.send(HotlinkOpen(sid=sid, pth=f"{t.folder}/s.request", to=t.b.user))
        await t.b.expect(HotlinkOpen)
        await t.b.send(HotlinkAccept(sid=sid))
        await t.a.expect(HotlinkAccept)
        # The acceptor offers, the opener answers (DECISIONS.md #1); candidates both ways.
        offer = await t.b.send(HotlinkSignal(sid=sid, knd="sdp_offer", tok='{"sdp":"o"}'))
        got = await t.a.expect_message(HotlinkSignal)
        assert got == offer
        answer = await t.a.send(HotlinkSignal(sid=sid, knd="sdp_answer", tok='{"sdp":"a"}'))
        assert await t.b.expect_message(HotlinkSignal) == answer
        cand = await t.a.send(HotlinkSignal(sid=sid, knd="ice_candidate", tok='{"candidate":""}'))
        assert await t.b.expect_message(HotlinkSignal) == cand
        # carol is not part of it: her signal is refused and reaches nobody.
        await t.c.send(HotlinkSignal(sid=sid, knd="sdp_offer"))
        assert (await t.c.expect(Error)).cod == 403
        assert await t.a.barrier() == [] and await t.b.barrier() == []
    finally:
        await _close_all(t)


async def test_unknown_session_signal_gets_webrtc_error(srv):
    async with connect(srv.url, unique_email("lost"), encoding="json") as client:
        await client.send(HotlinkSignal(sid="ffffffffffffffff", knd="sdp_offer", tok="{}"))
        reply = await client.expect(HotlinkSignal)
        assert reply == HotlinkSignal(
            sid="ffffffffffffffff", knd="webrtc_error", err="unknown session"
        )


async def test_close_from_acceptor_then_from_opener(srv):
    t = await _trio(srv)
    try:
        sid = new_session_id()
        path = f"{t.folder}/c.request"
        await t.a.send(HotlinkOpen(sid=sid, pth=path))
        await t.b.expect(HotlinkOpen)
        await t.c.expect(HotlinkOpen)
        await t.b.send(HotlinkAccept(sid=sid))
        await t.c.send(HotlinkAccept(sid=sid))
        await t.a.expect(HotlinkAccept)
        await t.a.expect(HotlinkAccept)

        # bob leaves: data now goes to carol only, and alice hears nothing yet (carol still
        # reads; a Close would end the stream for her too).
        await t.b.send(HotlinkClose(sid=sid, rsn="done"))
        await t.a.send(HotlinkData(sid=sid, seq=1, pth=path, pay=b"x"))
        assert (await t.c.expect(HotlinkData)).seq == 1
        assert await t.b.barrier() == []
        assert await t.a.barrier() == []

        # alice closes: carol hears it and the session is gone.
        await t.a.send(HotlinkClose(sid=sid, rsn="eof"))
        assert await t.c.expect(HotlinkClose) == HotlinkClose(sid=sid, rsn="eof")
        await t.a.send(HotlinkData(sid=sid, seq=2, pth=path, pay=b"y"))
        assert await t.a.expect(HotlinkReject) == HotlinkReject(sid=sid, rsn="unknown session")
    finally:
        await _close_all(t)


async def test_opener_disconnect_closes_its_sessions_for_the_acceptors(srv):
    t = await _trio(srv)
    try:
        sid = new_session_id()
        await t.a.send(HotlinkOpen(sid=sid, pth=f"{t.folder}/d.request", to=t.b.user))
        await t.b.expect(HotlinkOpen)
        await t.b.send(HotlinkAccept(sid=sid))
        await t.a.expect(HotlinkAccept)
        await t.a.close()
        assert await t.b.expect(HotlinkClose) == HotlinkClose(sid=sid, rsn="disconnected")
        # The session is gone: a late signal gets the unknown-session answer.
        await t.b.send(HotlinkSignal(sid=sid, knd="ice_candidate"))
        assert (await t.b.expect(HotlinkSignal)).knd == "webrtc_error"
    finally:
        await _close_all(t)


async def test_acceptor_disconnect_tells_the_opener(srv):
    t = await _trio(srv)
    try:
        sid = new_session_id()
        await t.a.send(HotlinkOpen(sid=sid, pth=f"{t.folder}/e.request", to=t.c.user))
        await t.c.expect(HotlinkOpen)
        await t.c.send(HotlinkAccept(sid=sid))
        await t.a.expect(HotlinkAccept)
        await t.c.close()
        assert await t.a.expect(HotlinkClose) == HotlinkClose(sid=sid, rsn="disconnected")
    finally:
        await _close_all(t)
