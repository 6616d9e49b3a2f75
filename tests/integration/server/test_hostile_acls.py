"""Hostile ACL files over the WebSocket, against the real relay: a "billion laughs" YAML and a
7 MB ACL get a short Nack, cost the relay little memory, and never stop it from answering
another connection meanwhile."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

from hotlink.protocol.acl import MAX_ACL_BYTES, MAX_ERROR_CHARS
from hotlink.protocol.messages import Ack, FileWrite, HotlinkOpen, Nack, new_session_id
from support.fixtures import unique_email
from support.server_proc import ServerProcess
from support.ws_client import WSClient, acl_yaml, connect, open_client

# A failure guard, not a measurement: a barrier round trip takes milliseconds, and a relay
# that parses on its event loop froze for 7-15 s on these files.
ROUND_TRIP_GUARD = 5.0
# Peak resident memory the relay may gain while refusing a file (it read a 7 MB frame, so
# some copies of it are expected); expanding the laughs took 1.6 GB.
MEMORY_GUARD_KIB = 100 * 1024
LONGEST_LOG_LINE = 2000


def laughs() -> bytes:
    """Nine levels of nine aliases each: 364 bytes that expand to 9**9 strings."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghi"
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    lines.append("rules: [{pattern: '**', access: {read: [*i]}}]")
    return ("\n".join(lines) + "\n").encode()


def big_valid_acl(size: int = 7 * 1024 * 1024) -> bytes:
    """A well-formed ACL (JSON is YAML) of about ``size`` bytes: many rules."""
    rule = {"pattern": "app_data/x/**/*.request", "access": {"read": ["*"], "write": []}}
    one = len(json.dumps(rule)) + 2
    text = json.dumps({"rules": [rule] * (size // one)}).encode()
    assert size * 0.9 < len(text) < 8 * 1024 * 1024 - 1024  # fits one frame
    return text


def peak_rss_kib(pid: int) -> int:
    """The process's resident-memory high-water mark (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


async def round_trips_meanwhile(client: WSClient, count: int = 3) -> None:
    for _ in range(count):
        assert await client.barrier(timeout=ROUND_TRIP_GUARD) == []


async def upload_and_expect_nack(srv: ServerProcess, content: bytes) -> str:
    """alice uploads ``content`` as her ACL while bob keeps talking to the relay; returns
    the Nack's text after checking the relay stayed responsive and small."""
    alice, bob = unique_email("alice"), unique_email("bob")
    before = peak_rss_kib(srv.pid)
    async with connect(srv.url, alice) as a, connect(srv.url, bob, encoding="json") as b:
        path = f"{alice}/syft.pub.yaml"
        sent = await a.send(FileWrite(pth=path, con=content, len=len(content)))
        # The relay answers bob while alice's file is in its hands.
        await round_trips_meanwhile(b)
        nack = await a.expect_message(Nack, timeout=60)
        assert nack.payload.oid == sent.id  # type: ignore[attr-defined]
        # Nothing was loaded or broadcast, and alice can go on.
        assert await b.barrier() == []
        await assert_still_private(a, b, alice)
        good = acl_yaml(read=[bob])
        sent = await a.send(FileWrite(pth=path, con=good, len=len(good)))
        assert (await a.expect(Ack, timeout=30)).oid == sent.id
    assert srv.alive()
    gained = peak_rss_kib(srv.pid) - before
    assert gained < MEMORY_GUARD_KIB, f"relay peak memory grew by {gained} KiB"
    longest = max(len(line) for line in srv.log_text().splitlines())
    assert longest < LONGEST_LOG_LINE, f"a {longest}-character log line"
    return nack.payload.err  # type: ignore[attr-defined]


async def assert_still_private(a: WSClient, b: WSClient, alice: str) -> None:
    """alice's datasite has no rules for bob: her Open is offered to nobody."""
    await a.send(HotlinkOpen(sid=new_session_id(), pth=f"{alice}/x.request"))
    assert await a.barrier() == []
    assert await b.barrier() == []


async def test_a_billion_laughs_acl_gets_a_short_nack(relay_server):
    text = laughs()
    assert len(text) < 400
    err = await upload_and_expect_nack(relay_server, text)
    assert len(err) <= MAX_ERROR_CHARS and "lol" not in err
    assert "alias" in err


async def test_a_7mb_acl_gets_a_short_nack(relay_server):
    err = await upload_and_expect_nack(relay_server, big_valid_acl())
    assert len(err) <= MAX_ERROR_CHARS and "app_data" not in err
    assert f"larger than {MAX_ACL_BYTES} bytes" in err


async def test_many_uploads_at_once_leave_other_connections_answered(relay_server):
    """Several users upload their largest allowed ACLs over and over; a bystander's round
    trips are answered throughout, and every upload gets its answer."""
    srv = relay_server
    rule = {"pattern": "app_data/x/**/*.request", "access": {"read": ["*"], "write": []}}
    content = json.dumps({"rules": [rule] * 100}).encode()
    assert len(content) < MAX_ACL_BYTES
    users = [unique_email(f"up{i}") for i in range(4)]
    async with connect(srv.url, unique_email("bystander"), encoding="json") as bystander:
        clients = [await open_client(srv.url, user) for user in users]
        try:

            async def upload(client: WSClient) -> None:
                for _ in range(5):
                    sent = await client.send(
                        FileWrite(pth=f"{client.user}/syft.pub.yaml", con=content)
                    )
                    while True:  # other uploaders' ACL broadcasts arrive too
                        message = await client.recv(timeout=60)
                        if isinstance(message.payload, Ack | Nack):
                            assert message.payload == Ack(oid=sent.id)
                            break

            uploads = asyncio.gather(*(upload(c) for c in clients))
            for _ in range(10):
                await bystander.send(HotlinkOpen(sid=new_session_id(), pth="nobody/x.request"))
                await bystander.barrier(timeout=ROUND_TRIP_GUARD)  # may hold ACL broadcasts
            await uploads
        finally:
            for client in clients:
                await client.close()
    assert srv.alive()
