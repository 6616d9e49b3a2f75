"""The tunnel contract with real processes: an app sees every byte and a clean EOF, or a reset.

Never a short clean EOF: when hotlink gives up a stream, even by the death of a client, the
app's connection is reset. A half-closed app still gets its answer, on that connection and
not the next one. Short connections leave nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.client_proc import (
    REFERENCE_CHUNK,
    ClientProcess,
    Tunnel,
    await_telemetry,
    check_reference_chunks,
    dial,
    read_to_eof,
    reference_chunk,
    start_tunnel,
)
from support.server_proc import ServerProcess

from .conftest import DEBUG_ENV

STREAM_CHUNKS = 16 * 1024  # 64 MiB of reference chunks: far more than is in flight at a kill
KILL_AFTER = 2 * 1024 * 1024  # bytes the receiving app reads before a client is killed


@pytest.fixture
def tunnel(relay: ServerProcess, tmp_path: Path) -> Iterator[Tunnel]:
    """A tunnel of its own for each test (some kill a client)."""
    t = start_tunnel(relay.url, tmp_path, env=DEBUG_ENV)
    try:
        yield t
    finally:
        t.stop()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _send_chunks(writer: asyncio.StreamWriter) -> None:
    """Reference chunks until the connection is reset (by a dead client or by the proxy)."""
    with contextlib.suppress(ConnectionError):
        for i in range(STREAM_CHUNKS):
            writer.write(reference_chunk(i))
            await writer.drain()


async def _read_until_reset(reader: asyncio.StreamReader, got: bytearray) -> None:
    """Read into ``got`` until the connection ends: it must end with a reset, and what
    arrived before it must be the stream's correct prefix."""
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(60):
            while data := await reader.read(1024 * 1024):
                got += data
    whole = len(got) // REFERENCE_CHUNK
    check_reference_chunks(bytes(got[: whole * REFERENCE_CHUNK]), whole)


@pytest.mark.parametrize("killed", ["receiver", "sender"])
async def test_kill_9_of_a_client_mid_stream_resets_both_apps(tunnel: Tunnel, killed: str) -> None:
    t = tunnel
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.2)  # bob's connection is the newest before alice writes
    alice_r, alice_w = await dial(t.alice_port)
    sender = asyncio.create_task(_send_chunks(alice_w))
    got = bytearray()
    try:
        async with asyncio.timeout(60):
            while len(got) < KILL_AFTER:
                data = await bob_r.read(1024 * 1024)
                assert data, f"the stream ended after {len(got)} bytes, before the kill"
                got += data
        (t.bob if killed == "receiver" else t.alice).signal(signal.SIGKILL)
        # The killed client's app: its socket was set to reset on close right at accept, so
        # the kernel resets it when the process dies. The surviving client's app: its
        # client gives the stream up (the relay reports the peer gone) and resets it.
        await _read_until_reset(bob_r, got)
        with pytest.raises(ConnectionResetError):
            await read_to_eof(alice_r)
        async with asyncio.timeout(60):
            await sender
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await _close(alice_w)
        await _close(bob_w)


async def test_half_closed_app_gets_the_whole_answer_on_its_own_connection(
    tunnel: Tunnel,
) -> None:
    t = tunnel
    request, reply = os.urandom(100_000), os.urandom(1024 * 1024)
    alice_r, alice_w = await dial(t.alice_port)
    await asyncio.sleep(0.2)  # alice's app is there before bob's request arrives
    bob_r, bob_w = await dial(t.bob_port)
    try:
        # Bob's app sends its request and half-closes before any reply exists.
        bob_w.write(request)
        bob_w.write_eof()
        # Alice's app reads the whole request, then answers.
        got = await read_to_eof(alice_r)
        assert hashlib.sha256(got).digest() == hashlib.sha256(request).digest()
        alice_w.write(reply)
        alice_w.write_eof()
        # The reply reaches the half-closed connection whole, then a clean EOF.
        answer = await read_to_eof(bob_r)
        assert hashlib.sha256(answer).digest() == hashlib.sha256(reply).digest()
    finally:
        await _close(alice_w)
        await _close(bob_w)
    # Bob's next connection carries the next stream and nothing of the first.
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.2)
    _alice_r, alice_w = await dial(t.alice_port)
    try:
        alice_w.write(b"second stream")
        alice_w.write_eof()
        assert await read_to_eof(bob_r) == b"second stream"
    finally:
        await _close(alice_w)
        await _close(bob_w)


def _app_sockets(client: ClientProcess, port: int) -> int:
    """Connected TCP sockets of the client's process on its proxy port (its app connections),
    from ``/proc``: the sockets on that local port whose inode is one of the process's fds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{client.pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{client.pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{client.pid}/net/{table}") as f:
            next(f)  # the header line
            for line in f:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                listening = fields[3] == "0A"
                if local_port == port and not listening and fields[9] in inodes:
                    count += 1
    return count


@pytest.mark.slow
async def test_many_short_connections_leave_few_live_ones(ws_tunnel: Tunnel) -> None:
    t = ws_tunnel
    apps = [(t.alice, t.alice_port), (t.bob, t.bob_port)]
    most = [0, 0]
    for i in range(200):
        bob_r, bob_w = await dial(t.bob_port)
        _alice_r, alice_w = await dial(t.alice_port)
        alice_w.write(reference_chunk(i))
        await _close(alice_w)
        assert await read_to_eof(bob_r) == reference_chunk(i)
        await _close(bob_w)
        most = [max(n, _app_sockets(c, p)) for n, (c, p) in zip(most, apps, strict=True)]
    # A connection lives until both of its directions ended or a newer one replaced it.
    assert max(most) <= 3, most
    for client, _ in apps:
        await await_telemetry(
            client,
            lambda d: (
                d["live"]["inbound"] == 0
                and d["live"]["outbound_accepted"] == 0
                and d["live"]["outbound_pending"] == 0
            ),
        )
    # Both directions of the last connections ended (bob's app left without writing: alice's
    # connection gets that empty stream's EOF), so none is left.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while any(_app_sockets(c, p) for c, p in apps) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    assert [_app_sockets(c, p) for c, p in apps] == [0, 0]
