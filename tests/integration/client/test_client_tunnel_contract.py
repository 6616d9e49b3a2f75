"""The tunnel contract with real processes: an app sees every byte and a clean EOF, or a reset.

Never a short clean EOF: when hotlink gives up a stream, by the death of either client or of
the relay, on the WebSocket path or the P2P path, the app's connection is reset. A half-closed
app still gets its answer, on that connection and not the next one. Short connections leave
nothing behind. (Slow, paused and frozen parties: test_client_slow_apps.py.)
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
    ClientProcess,
    Tunnel,
    await_telemetry,
    dial,
    read_to_eof,
    reference_chunk,
    start_tunnel,
)
from support.server_proc import ServerProcess
from support.streams import Pattern, assert_reset, read_stream, send_stream

from .conftest import DEBUG_ENV

MIB = 1024 * 1024
# Ways to lose a stream mid-way, on each path.
KILLED = ["sender", "receiver", "relay"]
PATHS = {
    "ws": {"SYFTBOX_HOTLINK_WEBRTC": "0"},
    "p2p": {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel"},
}


@pytest.fixture
def tunnel(relay: ServerProcess, tmp_path: Path) -> Iterator[Tunnel]:
    """A tunnel of its own for each test."""
    t = start_tunnel(relay.url, tmp_path, env=DEBUG_ENV)
    try:
        yield t
    finally:
        t.stop()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("killed", KILLED)
async def test_kill_9_mid_stream_resets_both_apps(
    relay: ServerProcess, tmp_path: Path, killed: str, path: str
) -> None:
    """kill -9 of the sending client, the receiving client or the relay while 1 GiB streams:
    each app sees a reset after a correct prefix, never a clean EOF. The killed client's app
    too: its socket was set to reset on close right at accept, so the kernel resets it when
    the process dies."""
    t = await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env={**DEBUG_ENV, **PATHS[path]})
    try:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.3)  # bob's connection is the newest before alice writes
        alice_r, alice_w = await dial(t.alice_port)
        pattern = Pattern()
        sending = asyncio.create_task(send_stream(alice_w, 1024 * MIB, pattern))
        # Bob's app reads at 20 MB/s, so a window of the stream is in flight at the kill.
        reading = asyncio.create_task(read_stream(bob_r, pattern, [(20e6, 3600.0)]))
        await t.bob.await_telemetry(lambda d: d["rx_bytes"] >= 8 * MIB, timeout=60)
        victim = {"sender": t.alice, "receiver": t.bob, "relay": relay}[killed]
        victim.signal(signal.SIGKILL)
        async with asyncio.timeout(60):
            got, sent = await reading, await sending
        assert_reset(got)
        assert sent.end == "reset"
        # Alice's app, reading the other direction of its connection, is reset as well.
        back = await read_stream(alice_r, pattern, timeout=60)
        assert back.end == "reset" and back.size == 0
        await _close(alice_w)
        await _close(bob_w)
    finally:
        await asyncio.to_thread(t.stop)


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
