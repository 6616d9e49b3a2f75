"""The relay's write paths over real sockets, in this process: a stream to a receiver that
stops reading for a while, and a burst of ACL files published by many clients at once.

What users care about: a stream arrives whole and in order (the very frames, or the same
messages re-encoded for a JSON reader) whether the relay wrote it directly or through its
writer task while the reader was behind; every client gets every other client's ACL file
once, and none of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from hotlink.protocol.codec import decode, encode_msgpack
from hotlink.protocol.messages import (
    Ack,
    FileWrite,
    HotlinkAccept,
    HotlinkData,
    HotlinkOpen,
    Message,
    Payload,
    System,
    new_message_id,
)
from hotlink.server import hub
from hotlink.server.app import Relay, RelayConfig

GUARD = 60.0
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
FOLDER = f"{ALICE}/app"
PATH = f"{FOLDER}/stream.request"
SID = "0123456789abcdef"


@pytest.fixture
async def relay_url() -> AsyncIterator[tuple[Relay, str]]:
    relay = Relay(RelayConfig(heartbeat=None))
    runner = web.AppRunner(relay.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield relay, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, user: str) -> None:
        self.ws = ws
        self.user = user

    async def send(self, payload: Payload) -> Message:
        message = Message(new_message_id(), payload)
        await self.ws.send_bytes(encode_msgpack(message))
        return message

    async def recv(self) -> tuple[bytes | str, Message]:
        raw = await self.ws.receive(GUARD)
        assert raw.type in (WSMsgType.BINARY, WSMsgType.TEXT), raw
        return raw.data, decode(raw.data)

    async def expect(self, kind: type[Payload]) -> Message:
        while True:
            _, message = await self.recv()
            if isinstance(message.payload, kind):
                return message


async def connect(
    http: aiohttp.ClientSession, url: str, user: str, encoding: str = "msgpack"
) -> Client:
    ws = await http.ws_connect(
        f"{url}/api/v1/events",
        params={"user": user},
        headers={"X-Syft-WS-Encodings": encoding},
        max_msg_size=0,
    )
    client = Client(ws, user)
    assert isinstance((await client.recv())[1].payload, System)
    return client


def acl_file(owner: str, folder: str, read: list[str]) -> FileWrite:
    rule = {"pattern": "**", "access": {"admin": [], "write": [], "read": read}}
    content = json.dumps({"rules": [rule]}).encode()
    return FileWrite(pth=f"{owner}/{folder}/syft.pub.yaml", con=content, len=len(content))


async def publish(client: Client, acl: FileWrite) -> None:
    sent = await client.send(acl)
    assert (await client.expect(Ack)).payload == Ack(oid=sent.id)


async def test_a_stream_to_a_reader_that_stops_for_a_while_arrives_whole(relay_url, monkeypatch):
    relay, url = relay_url
    slow_paths = 0
    real_slow_path = hub.Connection._slow_path

    async def counting(self: hub.Connection) -> None:
        nonlocal slow_paths
        slow_paths += 1
        await real_slow_path(self)

    monkeypatch.setattr(hub.Connection, "_slow_path", counting)
    rng = random.Random(7)
    async with aiohttp.ClientSession() as http:
        alice = await connect(http, url, ALICE)
        await publish(alice, acl_file(ALICE, "app", [BOB, CAROL]))
        bob = await connect(http, url, BOB)
        carol = await connect(http, url, CAROL, "json")
        await alice.send(HotlinkOpen(sid=SID, pth=PATH))
        for reader in (bob, carol):
            await reader.expect(HotlinkOpen)
            await reader.send(HotlinkAccept(sid=SID))
            await alice.expect(HotlinkAccept)

        # bob's client stops reading its socket: the relay's buffer for him grows past
        # its high-water mark and his frames go through the writer task for a while.
        bob_transport = bob.ws._response.connection.transport  # type: ignore[union-attr]
        assert bob_transport is not None
        bob_transport.pause_reading()
        sent: list[bytes] = []
        digest = hashlib.sha256()
        for seq in range(1, 801):
            pay = os.urandom(rng.choice([1, 100, 4096, 20_000, 40_000]))
            digest.update(pay)
            f = encode_msgpack(
                Message(f"d{seq:05d}", HotlinkData(sid=SID, seq=seq, pth=PATH, pay=pay))
            )
            sent.append(f)
            await alice.ws.send_bytes(f)

        async def carol_reads() -> str:
            got = hashlib.sha256()
            for seq in range(1, len(sent) + 1):
                _, message = await carol.recv()
                assert isinstance(message.payload, HotlinkData) and message.payload.seq == seq
                got.update(message.payload.pay)
            return got.hexdigest()

        carol_done = asyncio.create_task(carol_reads())
        for _ in range(200):  # until the relay has handed bob's frames to his writer task
            if slow_paths:
                break
            await asyncio.sleep(0.02)
        bob_transport.resume_reading()
        for expected in sent:
            raw, _ = await bob.recv()
            assert raw == expected  # the very frame alice sent
        assert await asyncio.wait_for(carol_done, GUARD) == digest.hexdigest()
        for client in (alice, bob, carol):
            await client.ws.close()
    assert slow_paths >= 1, "the reader never fell behind: the test did not test the handover"
    assert relay.metrics.registry.get_sample_value("hotlink_slow_reader_disconnects_total") == 0


async def test_many_clients_publishing_at_once_each_get_every_other_acl_file_once(relay_url):
    _relay, url = relay_url
    users = [f"user{i}@example.com" for i in range(40)]
    async with aiohttp.ClientSession() as http:
        clients = [
            await connect(http, url, u, "json" if i % 4 == 0 else "msgpack")
            for i, u in enumerate(users)
        ]
        files = {u: acl_file(u, "app", [users[(i + 1) % len(users)]]) for i, u in enumerate(users)}
        sent = await asyncio.gather(*(c.send(files[c.user]) for c in clients))

        async def everything_for(client: Client, own: Message) -> list[str]:
            seen: list[str] = []
            acked = False
            while not acked or len(seen) < len(users) - 1:
                _, message = await client.recv()
                if isinstance(message.payload, Ack):
                    assert message.payload.oid == own.id
                    acked = True
                elif isinstance(message.payload, FileWrite):
                    seen.append(message.payload.pth)
            return seen

        results = await asyncio.wait_for(
            asyncio.gather(*(everything_for(c, m) for c, m in zip(clients, sent, strict=True))),
            GUARD,
        )
        for client, seen in zip(clients, results, strict=True):
            others = {files[u].pth for u in users if u != client.user}
            assert sorted(seen) == sorted(others)  # each once, none of its own
        for client in clients:
            await client.ws.close()
