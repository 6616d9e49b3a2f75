"""200 clients, 100 sessions, data flowing while some clients disconnect.

Every message each client receives is checked: it must belong to that client's own session
(right sid, payload addressed to that user, seqs in order), so nothing reaches the wrong
user. The server's resident memory is measured before and after and must stay bounded, and
every connection and session is gone at the end.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest

from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    new_session_id,
)
from support.server_proc import ServerProcess, running_server
from support.ws_client import WSClient, open_client

PAIRS = 100
FRAMES = 60
PAYLOAD = 16 * 1024
# (opener, acceptor): same-encoding pairs get the sender's frame as is, mixed ones re-encoded.
ENCODINGS = [("msgpack", "msgpack"), ("json", "json"), ("msgpack", "json"), ("json", "msgpack")]
OPENER_LEAVES = range(0, 10)  # opener disconnects after half its frames
ACCEPTOR_LEAVES = range(10, 20)  # acceptor disconnects after a quarter of the frames


def opener(i: int) -> str:
    return f"opener{i:03d}@load.example.com"


def acceptor(i: int) -> str:
    return f"acceptor{i:03d}@load.example.com"


def payload(sid: str, seq: int, to: str) -> bytes:
    head = f"{sid}:{seq}:{to}:".encode()
    return head + bytes([seq % 256]) * (PAYLOAD - len(head))


def write_acls(root: Path) -> None:
    for i in range(PAIRS):
        folder = root / opener(i) / "app"
        folder.mkdir(parents=True)
        (folder / "syft.pub.yaml").write_text(
            f"rules:\n  - pattern: '**'\n    access:\n      read: ['{acceptor(i)}']\n"
        )


async def run_pair(i: int, o: WSClient, a: WSClient) -> None:
    sid = new_session_id()
    path = f"{opener(i)}/app/load/stream.request"
    await o.send(HotlinkOpen(sid=sid, pth=path, to=acceptor(i) if i % 2 else ""))
    offered = await a.expect(HotlinkOpen)
    assert (offered.sid, offered.frm) == (sid, opener(i))
    await a.send(HotlinkAccept(sid=sid))
    assert await o.expect(HotlinkAccept) == HotlinkAccept(sid=sid)

    async def send_frames(count: int) -> None:
        for seq in range(1, count + 1):
            await o.send(HotlinkData(sid=sid, seq=seq, pth=path, pay=payload(sid, seq, a.user)))

    async def receive_frames(count: int) -> None:
        for seq in range(1, count + 1):
            data = await a.expect(HotlinkData, timeout=60)
            assert (data.sid, data.seq) == (sid, seq)
            assert data.pay == payload(sid, seq, a.user)

    if i in OPENER_LEAVES:
        await send_frames(FRAMES // 2)
        await o.close()
        await receive_frames(FRAMES // 2)
        close = await a.expect(HotlinkClose, timeout=60)
        assert close == HotlinkClose(sid=sid, rsn="disconnected")
        assert await a.barrier() == []
    elif i in ACCEPTOR_LEAVES:
        sender = asyncio.create_task(send_frames(FRAMES))
        await receive_frames(FRAMES // 4)
        await a.close()
        await sender
        # Everything alice receives from now on is the one Close for her session.
        close = await o.expect(HotlinkClose, timeout=60)
        assert close == HotlinkClose(sid=sid, rsn="disconnected")
        assert await o.barrier() == []
    else:
        sender = asyncio.create_task(send_frames(FRAMES))
        await receive_frames(FRAMES)
        await sender
        await o.send(HotlinkClose(sid=sid, rsn="eof"))
        assert await a.expect(HotlinkClose, timeout=60) == HotlinkClose(sid=sid, rsn="eof")
        assert await a.barrier() == []
        assert await o.barrier() == []


async def metric(srv: ServerProcess, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(srv.url + "/metrics") as r:
        text = await r.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


@pytest.mark.slow
async def test_200_clients_100_sessions_with_disconnects(tmp_path):
    acl_root = tmp_path / "acls"
    write_acls(acl_root)
    async with running_server(tmp_path, args=["--acl-dir", str(acl_root)]) as srv:
        rss_before = srv.rss_kib()
        openers = await asyncio.gather(
            *(open_client(srv.url, opener(i), encoding=ENCODINGS[i % 4][0]) for i in range(PAIRS))
        )
        acceptors = await asyncio.gather(
            *(open_client(srv.url, acceptor(i), encoding=ENCODINGS[i % 4][1]) for i in range(PAIRS))
        )
        try:
            assert await metric(srv, "hotlink_connections") == 2 * PAIRS
            await asyncio.gather(*(run_pair(i, openers[i], acceptors[i]) for i in range(PAIRS)))
            rss_busy = srv.rss_kib()
        finally:
            await asyncio.gather(*(c.close() for c in openers + acceptors))

        # Every connection and session is cleaned up (a failure guard, not a timing check).
        for _ in range(300):
            if (
                await metric(srv, "hotlink_connections") == 0
                and await metric(srv, "hotlink_sessions") == 0
            ):
                break
            await asyncio.sleep(0.1)
        assert await metric(srv, "hotlink_connections") == 0
        assert await metric(srv, "hotlink_sessions") == 0
        assert await metric(srv, "hotlink_queue_drops_total") == 0

        # About 80 MiB of payload went through; the server keeps none of it around.
        assert rss_busy - rss_before < 150 * 1024, (rss_before, rss_busy)
        assert srv.rss_kib() - rss_before < 150 * 1024
        assert "Traceback" not in srv.log_text()
