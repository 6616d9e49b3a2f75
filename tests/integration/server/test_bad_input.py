"""Bad input from the network: each case gets a clear answer, is logged once, and the server
and every other connection keep working."""

from __future__ import annotations

import json
import re
import struct

import aiohttp
import msgpack
import pytest

from hotlink.protocol.codec import encode_msgpack
from hotlink.protocol.messages import (
    Ack,
    Error,
    FileWrite,
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
    Message,
    Nack,
    new_session_id,
)
from support.fixtures import unique_email
from support.server_proc import ServerProcess, running_server
from support.ws_client import WSClient, connect, open_client


@pytest.fixture
def srv(relay_server_module: ServerProcess) -> ServerProcess:
    return relay_server_module


async def still_serving(srv: ServerProcess, client: WSClient | None = None) -> None:
    """The offending connection (if open) still answers, and a new one works end to end."""
    if client is not None:
        assert await client.barrier() == []
    async with connect(srv.url, unique_email("witness"), encoding="json") as witness:
        assert await witness.barrier() == []


def logged_once(srv: ServerProcess, pattern: str) -> None:
    hits = [line for line in srv.log_text().splitlines() if re.search(pattern, line)]
    assert len(hits) == 1, hits


# ---------------------------------------------------------------- undecodable frames

VALID = encode_msgpack(Message("abc123", HotlinkSignal(sid="x" * 16, knd="k")))

BAD_FRAMES = [
    pytest.param(b"\x00\x01garbage-binary-frame", "missing SB envelope", id="garbage-binary"),
    pytest.param(b"SB\x02\x01" + VALID[4:], "unsupported ws envelope version 2", id="version"),
    pytest.param(b"SB\x01\x07" + VALID[4:], "unknown ws encoding 7", id="encoding-byte"),
    pytest.param(VALID[:-5], "malformed msgpack", id="truncated-msgpack"),
    pytest.param(
        b"SB\x01\x01" + msgpack.packb({"id": "q", "typ": 99, "dat": b"\x80"}),
        "unknown message type 99",
        id="unknown-typ-msgpack",
    ),
    pytest.param("{not json", "malformed JSON", id="bad-json"),
    pytest.param(
        json.dumps({"id": "q1", "typ": "9", "dat": {}}), "typ must be a JSON number", id="typ-str"
    ),
    pytest.param(
        json.dumps({"id": "q2", "typ": 12, "dat": {"sid": "s", "seq": "one"}}),
        "expected an integer",
        id="json-wrong-type",
    ),
    pytest.param(
        json.dumps({"id": "q3", "typ": 42, "dat": {}}), "unknown message type 42", id="typ-json"
    ),
    pytest.param(
        json.dumps({"id": "q4", "typ": 12, "dat": {"sid": "s", "pay": "***"}}),
        "not valid base64",
        id="json-bad-base64",
    ),
    pytest.param(json.dumps([1, 2, 3]), "expected a map", id="json-not-object"),
    pytest.param("[" * 200_000 + "]" * 200_000, "malformed JSON", id="json-nested-deep"),
]


@pytest.mark.parametrize(("frame", "why"), BAD_FRAMES)
async def test_undecodable_frame_gets_an_error_and_the_connection_stays(srv, frame, why):
    user = unique_email("garbage")
    async with connect(srv.url, user) as client:
        await client.send_raw(frame)
        error = await client.expect(Error)
        assert error.cod == 400 and why in error.msg
        await still_serving(srv, client)
    logged_once(srv, rf"{re.escape(user)}.*undecodable.*{re.escape(why)}")


async def test_frame_over_8_mib_closes_with_message_too_big(srv):
    """The server refuses the frame from its header, before buffering its payload."""
    async with (
        connect(srv.url, unique_email("bystander")) as bystander,
        connect(srv.url, unique_email("huge")) as client,
    ):
        # Only the header and a little payload go out, so the close frame is not lost to
        # a TCP reset caused by megabytes the server never reads.
        length = 8 * 1024 * 1024 + 1
        header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", length) + b"\x00\x00\x00\x00"
        client.ws._response.connection.transport.write(header + b"SB\x01\x01" + b"\x00" * 1000)
        assert await client.wait_closed() == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        assert await bystander.barrier() == []
        await still_serving(srv)
    logged_once(srv, rf"{re.escape(client.user)}.*1009")


async def test_whole_frame_over_8_mib_disconnects_only_its_sender(srv):
    async with (
        connect(srv.url, unique_email("bystander")) as bystander,
        connect(srv.url, unique_email("huge")) as client,
    ):
        try:
            await client.send_raw(b"SB\x01\x01" + b"\x00" * (8 * 1024 * 1024))
            code = await client.wait_closed()
        except ConnectionError:
            code = None  # the server closed while we were still sending: also fine
        assert code in (
            aiohttp.WSCloseCode.MESSAGE_TOO_BIG,
            aiohttp.WSCloseCode.ABNORMAL_CLOSURE,
            None,
        )
        assert await bystander.barrier() == []
        await still_serving(srv)


async def test_frame_of_exactly_8_mib_is_accepted(srv):
    user = unique_email("big")
    async with connect(srv.url, user) as client:
        # An 8 MiB text frame that is valid JSON but not a message: decoded, then refused.
        await client.send_raw(" " * (8 * 1024 * 1024 - 2) + "[]")
        assert (await client.expect(Error)).cod == 400
        await still_serving(srv, client)


# ---------------------------------------------------------------- sessions one is not part of


async def _session(srv: ServerProcess) -> tuple[WSClient, WSClient, WSClient, str, str]:
    alice, bob, mallory = unique_email("alice"), unique_email("bob"), unique_email("mallory")
    a = await open_client(srv.url, alice)
    await a.publish_acl(f"{alice}/app", read=[bob])
    b = await open_client(srv.url, bob, encoding="json")
    m = await open_client(srv.url, mallory)
    sid = new_session_id()
    path = f"{alice}/app/x.request"
    await a.send(HotlinkOpen(sid=sid, pth=path, to=bob))
    await b.expect(HotlinkOpen)
    await b.send(HotlinkAccept(sid=sid))
    await a.expect(HotlinkAccept)
    return a, b, m, sid, path


@pytest.mark.parametrize("kind", ["data", "signal", "close", "reject"])
async def test_message_for_a_session_the_sender_is_not_part_of(srv, kind):
    a, b, m, sid, path = await _session(srv)
    try:
        payload = {
            "data": HotlinkData(sid=sid, seq=1, pth=path, pay=b"evil"),
            "signal": HotlinkSignal(sid=sid, knd="sdp_offer", tok="{}"),
            "close": HotlinkClose(sid=sid, rsn="hijack"),
            "reject": HotlinkReject(sid=sid, rsn="hijack"),
        }[kind]
        await m.send(payload)
        error = await m.expect(Error)
        assert error.cod == 403 and sid in error.msg and error.pth == ""
        # Nothing reached the participants, and their session still works.
        assert await a.barrier() == [] and await b.barrier() == []
        await a.send(HotlinkData(sid=sid, seq=1, pth=path, pay=b"fine"))
        assert (await b.expect(HotlinkData)).pay == b"fine"
        await still_serving(srv, m)
    finally:
        for client in (a, b, m):
            await client.close()
    logged_once(srv, rf"{re.escape(m.user)}.*not part of that session")


async def test_open_for_a_path_the_sender_may_not_write(srv):
    alice, mallory = unique_email("alice"), unique_email("mallory")
    async with connect(srv.url, alice) as a, connect(srv.url, mallory) as m:
        sid = new_session_id()
        await m.send(HotlinkOpen(sid=sid, pth=f"{alice}/app/x.request"))
        assert await m.expect(HotlinkReject) == HotlinkReject(sid=sid, rsn="permission denied")
        assert await a.barrier() == []
        await still_serving(srv, m)
    logged_once(srv, rf"{re.escape(mallory)}.*may not write")


async def test_file_write_of_another_users_acl(srv):
    alice, mallory = unique_email("alice"), unique_email("mallory")
    async with connect(srv.url, alice) as a, connect(srv.url, mallory) as m:
        content = b"rules: [{pattern: '**', access: {write: ['*']}}]"
        sent = await m.send(FileWrite(pth=f"{alice}/syft.pub.yaml", con=content, len=len(content)))
        error = await m.expect(Error)
        assert error.cod == 403 and error.pth == f"{alice}/syft.pub.yaml"
        nack = await m.expect(Nack)
        assert nack.oid == sent.id and alice in nack.err
        # The ACL was not loaded: mallory still may not open in alice's datasite.
        await m.send(HotlinkOpen(sid=new_session_id(), pth=f"{alice}/x.request"))
        assert (await m.expect(HotlinkReject)).rsn == "permission denied"
        assert await a.barrier() == []
        await still_serving(srv, m)
    logged_once(srv, rf"{re.escape(mallory)}.*may not change ACL files of")


async def test_invalid_own_acl_gets_a_nack_with_the_reason(srv):
    alice = unique_email("alice")
    async with connect(srv.url, alice) as a:
        bad = b"rules:\n  - pattern: '**'\n"  # no access
        sent = await a.send(FileWrite(pth=f"{alice}/syft.pub.yaml", con=bad, len=len(bad)))
        nack = await a.expect(Nack)
        assert nack.oid == sent.id and "access" in nack.err
        good = b"rules: [{pattern: '**', access: {read: ['*']}}]"
        sent = await a.send(FileWrite(pth=f"{alice}/syft.pub.yaml", con=good, len=len(good)))
        assert (await a.expect(Ack)).oid == sent.id


# ---------------------------------------------------------------- slow readers


@pytest.mark.slow
async def test_slow_reader_is_disconnected_and_the_sender_keeps_working(tmp_path):
    async with running_server(tmp_path, args=["--send-timeout", "1", "--queue-size", "8"]) as srv:
        alice, bob = unique_email("alice"), unique_email("bob")
        a = await open_client(srv.url, alice)
        await a.publish_acl(f"{alice}/app", read=[bob])
        b = await open_client(srv.url, bob)
        try:
            sid = new_session_id()
            path = f"{alice}/app/big.request"
            await a.send(HotlinkOpen(sid=sid, pth=path, to=bob))
            await b.expect(HotlinkOpen)
            await b.send(HotlinkAccept(sid=sid))
            await a.expect(HotlinkAccept)
            rss_before = srv.rss_kib()
            # bob stops reading; alice pushes 1 MiB frames until the server gives up on bob.
            chunk = b"\xab" * (1024 * 1024)
            seq = 0
            seen = []
            while "hotlink_slow_reader_disconnects_total 1.0" not in await _metrics(srv):
                assert seq < 2000, "the slow reader was never disconnected"
                for _ in range(8):
                    seq += 1
                    await a.send(HotlinkData(sid=sid, seq=seq, pth=path, pay=chunk))
                seen += await a.barrier()
            # The server's memory did not grow with everything alice sent.
            assert srv.rss_kib() - rss_before < 200 * 1024
            # bob's clean-up tells alice her acceptor is gone, and nothing else reaches her.
            if not seen:
                seen.append(await a.recv(timeout=30))
            assert [m.payload for m in seen] == [HotlinkClose(sid=sid, rsn="disconnected")]
            # 1013 if bob reads his backlog in time to see the close frame, else the server
            # has aborted the connection (1006): either way bob is out.
            assert await b.wait_closed(timeout=30) in (
                aiohttp.WSCloseCode.TRY_AGAIN_LATER,
                aiohttp.WSCloseCode.ABNORMAL_CLOSURE,
            )
            assert await a.barrier() == []
        finally:
            await a.close()
            await b.close()
        logged_once(srv, rf"{re.escape(bob)}.*send queue full \(")


async def _metrics(srv: ServerProcess) -> str:
    async with aiohttp.ClientSession() as session, session.get(srv.url + "/metrics") as r:
        return await r.text()
