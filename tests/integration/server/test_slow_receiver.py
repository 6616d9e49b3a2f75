"""A receiver that stops reading its WebSocket costs only itself, never its sender.

alice opens two sessions: one to bob, who accepts and then stops reading his socket
entirely, and one to carol, who keeps reading. alice keeps pushing Data to bob (ignoring any
window, as a frozen receiver's peer might) and streams to carol with a small window of
frames in flight. alice's client pings with aiohttp's heartbeat and closes its own
connection if a pong is late, as the real client does: the relay must keep reading alice's
frames (and so answering her pings) while bob's queue is full. bob is disconnected as a
slow reader once his queue overflows; alice stays connected throughout and carol's stream
arrives complete and in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re

import aiohttp
import pytest

from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    Message,
    new_session_id,
)
from support.fixtures import unique_email
from support.server_proc import ServerProcess, running_server
from support.ws_client import EVENTS_PATH, WSClient, open_client

# alice pings after this many quiet seconds and gives up on a pong after half of it; the
# relay in the old design held her read loop up to 20 s on bob's full queue.
HEARTBEAT = 5.0
# Stream to carol for at least this long, so alice's heartbeat fires while bob is stalled.
MIN_STREAM_SECONDS = 2 * HEARTBEAT
QUEUE_MESSAGES = 32  # bob's relay queue: 32 frames of BOB_FRAME bytes
BOB_FRAME = 256 * 1024
CAROL_FRAME = 64 * 1024
CAROL_WINDOW = 8  # frames in flight to carol: a flow-controlled sender never has more
CAROL_PACE = 0.01  # seconds between carol's frames once bob is gone (spares the CPU)
GUARD = 25.0  # failure guard for every wait below


async def open_with_heartbeat(url: str, user: str) -> WSClient:
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(
            url.rstrip("/") + EVENTS_PATH,
            params={"user": user},
            headers={"X-Syft-WS-Encodings": "msgpack,json"},
            max_msg_size=16 * 1024 * 1024,
            heartbeat=HEARTBEAT,
        )
    except BaseException:
        await session.close()
        raise
    client = WSClient(session, ws, user, "msgpack", {})
    client.greeting = await client.recv(GUARD)
    return client


async def metric(srv: ServerProcess, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(srv.url + "/metrics") as r:
        text = await r.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


async def open_session(opener: WSClient, acceptor: WSClient, path: str) -> str:
    sid = new_session_id()
    await opener.send(HotlinkOpen(sid=sid, pth=path, to=acceptor.user))
    assert (await acceptor.expect(HotlinkOpen, GUARD)).sid == sid
    await acceptor.send(HotlinkAccept(sid=sid))
    assert await opener.expect(HotlinkAccept, GUARD) == HotlinkAccept(sid=sid)
    return sid


class CarolReader:
    """Reads carol's stream to the end, hashing it and counting frames for alice's window."""

    def __init__(self, carol: WSClient, sid: str) -> None:
        self.carol = carol
        self.sid = sid
        self.digest = hashlib.sha256()
        self.received = 0
        self.progress = asyncio.Event()

    async def run(self) -> str:
        while True:
            message = await self.carol.recv(GUARD)
            p = message.payload
            if isinstance(p, HotlinkClose):
                assert p == HotlinkClose(sid=self.sid, rsn=f"eof:{self.received}")
                return self.digest.hexdigest()
            assert isinstance(p, HotlinkData), p
            assert (p.sid, p.seq) == (self.sid, self.received + 1)
            self.digest.update(p.pay)
            self.received += 1
            self.progress.set()


async def until_closed(alice: WSClient, sid: str) -> list[Message]:
    """alice's messages up to and including the Close of session ``sid``."""
    seen: list[Message] = []
    while True:
        message = await alice.recv(GUARD)
        seen.append(message)
        if isinstance(message.payload, HotlinkClose) and message.payload.sid == sid:
            return seen


@pytest.mark.slow
async def test_stalled_receiver_is_dropped_and_its_sender_keeps_answering_pings(tmp_path):
    async with running_server(tmp_path, args=["--queue-size", str(QUEUE_MESSAGES)]) as srv:
        alice, bob, carol = unique_email("alice"), unique_email("bob"), unique_email("carol")
        a = await open_with_heartbeat(srv.url, alice)
        await a.publish_acl(f"{alice}/app", read=[bob, carol])
        b = await open_client(srv.url, bob)
        c = await open_client(srv.url, carol)
        try:
            to_bob = await open_session(a, b, f"{alice}/app/bob.request")
            to_carol = await open_session(a, c, f"{alice}/app/carol.request")
            # From here on bob never reads his WebSocket (until the very end).
            carol_reader = CarolReader(c, to_carol)
            carol_done = asyncio.create_task(carol_reader.run())
            bob_closed = asyncio.create_task(until_closed(a, to_bob))

            loop = asyncio.get_running_loop()
            started = loop.time()
            bob_frame = b"\xab" * BOB_FRAME
            sent_to_bob = sent_to_carol = 0
            sent_digest = hashlib.sha256()
            try:
                while not bob_closed.done() or loop.time() - started < MIN_STREAM_SECONDS:
                    assert loop.time() - started < GUARD, "bob was never disconnected"
                    if carol_done.done():
                        await carol_done  # carol's reader failed: its error is the story
                    # Let alice's reader see bob's Close as soon as it arrives.
                    await asyncio.sleep(0 if not bob_closed.done() else CAROL_PACE)
                    if not bob_closed.done():
                        sent_to_bob += 1
                        await a.send(
                            HotlinkData(sid=to_bob, seq=sent_to_bob, pth="x", pay=bob_frame)
                        )
                    if sent_to_carol - carol_reader.received < CAROL_WINDOW:
                        sent_to_carol += 1
                        chunk = os.urandom(CAROL_FRAME)
                        sent_digest.update(chunk)
                        await a.send(
                            HotlinkData(sid=to_carol, seq=sent_to_carol, pth="y", pay=chunk)
                        )
                    elif bob_closed.done():
                        carol_reader.progress.clear()
                        async with asyncio.timeout(GUARD):
                            await carol_reader.progress.wait()
            except (aiohttp.ClientError, ConnectionError) as exc:
                pytest.fail(f"alice's connection failed: {exc!r}; {a.ws.exception()!r}")
            assert not a.closed, f"alice's connection closed: {a.ws.exception()!r}"

            # bob's overflow ended his session: alice heard Close once, about nothing else.
            seen = await bob_closed
            assert [m.payload for m in seen] == [HotlinkClose(sid=to_bob, rsn="disconnected")]
            # Data she sent before she knew is refused as for any session that just ended.
            late = await a.barrier(GUARD)
            assert all(
                m.payload == HotlinkReject(sid=to_bob, rsn="unknown session") for m in late
            ), late

            # carol's stream is intact and in order.
            await a.send(HotlinkClose(sid=to_carol, rsn=f"eof:{sent_to_carol}"))
            async with asyncio.timeout(GUARD):
                assert await carol_done == sent_digest.hexdigest()
            assert carol_reader.received == sent_to_carol > CAROL_WINDOW
            assert await c.barrier(GUARD) == []

            # The relay closed bob with 1013; if it had to abort the socket (bob was not
            # reading the close frame either), bob sees an abnormal closure.
            assert await b.wait_closed(GUARD) in (
                aiohttp.WSCloseCode.TRY_AGAIN_LATER,
                aiohttp.WSCloseCode.ABNORMAL_CLOSURE,
            )
            assert not a.closed and await a.barrier(GUARD) == []
        finally:
            await a.close()
            await b.close()
            await c.close()
        assert await metric(srv, "hotlink_slow_reader_disconnects_total") == 1
    log = srv.log_text()
    assert re.search(rf"{re.escape(bob)}.*send queue full \(", log), log[-3000:]
    assert re.search(rf"{re.escape(bob)}\) disconnected \(send queue full\)", log)
    assert "Traceback" not in log
