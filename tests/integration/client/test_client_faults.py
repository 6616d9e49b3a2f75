"""The stream contract under faults, with real processes: whatever goes wrong, each app sees
either every byte and a clean EOF, or a reset; never a clean EOF after fewer bytes.

Faults: kill -9 of the sending client, of the receiving client's relay connection's other
end (the relay), a frozen receiving client (SIGSTOP), an app that pauses 20 s, an app that
reads at 100 KB/s. Each runs on the WebSocket path and on the P2P path."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.client_proc import Tunnel, dial, start_tunnel
from support.server_proc import ServerProcess, running_server

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
PATHS = {
    "ws": {"SYFTBOX_HOTLINK_WEBRTC": "0"},
    "p2p": {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel"},
}


@dataclass
class Outcome:
    """What an app saw: ``size`` bytes with ``digest``, then ``end`` ("eof" or "reset")."""

    size: int
    digest: str
    end: str


async def send_blocks(writer: asyncio.StreamWriter, blocks: int, digest: hashlib._Hash) -> str:
    """Write ``blocks`` MiB, then half-close; "eof", or "reset" if the proxy reset us."""
    base = os.urandom(MIB)
    try:
        for i in range(blocks):
            data = i.to_bytes(8, "big") + base[8:]
            writer.write(data)
            await writer.drain()
            digest.update(data)
        writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError):
        return "reset"
    return "eof"


async def read_all(reader: asyncio.StreamReader, pace: float | None = None) -> Outcome:
    """Read until EOF or reset, at ``pace`` bytes/s if given."""
    digest = hashlib.sha256()
    total = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while data := await reader.read(64 * 1024 if pace else MIB):
            digest.update(data)
            total += len(data)
            if pace:
                ahead = total / pace - (loop.time() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    except (ConnectionError, OSError):
        return Outcome(total, digest.hexdigest(), "reset")
    return Outcome(total, digest.hexdigest(), "eof")


def whole_or_reset(got: Outcome, size: int, digest: str) -> None:
    """The contract: every byte and a clean EOF, or a reset. Never a short clean EOF."""
    if got.end == "eof":
        assert got.size == size, f"clean EOF after {got.size} of {size} bytes"
        assert got.digest == digest
    else:
        assert got.end == "reset"


@pytest.fixture(params=sorted(PATHS))
def path_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return PATHS[request.param]


async def open_tunnel(server: ServerProcess, tmp_path: Path, env: dict[str, str]) -> Tunnel:
    return await asyncio.to_thread(start_tunnel, server.url, tmp_path, env=env)


async def connect_pair(
    t: Tunnel,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter]:
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.3)  # bob's connection is the one alice's stream goes to
    alice_r, alice_w = await dial(t.alice_port)
    return alice_r, alice_w, bob_r, bob_w


@pytest.fixture
async def own_relay(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    async with running_server(tmp_path) as server:
        yield server


async def test_kill_9_of_the_sending_client_resets_both_apps(
    own_relay: ServerProcess, tmp_path: Path, path_env: dict[str, str]
) -> None:
    t = await open_tunnel(own_relay, tmp_path, path_env)
    try:
        alice_r, alice_w, bob_r, _bob_w = await connect_pair(t)
        sent = hashlib.sha256()
        sending = asyncio.create_task(send_blocks(alice_w, 1024, sent))
        reading = asyncio.create_task(read_all(bob_r))
        await t.bob.await_telemetry(lambda d: d["rx_bytes"] >= 8 * MIB, timeout=60)
        t.alice.signal(signal.SIGKILL)
        async with asyncio.timeout(60):
            got = await reading
            sender_end = await sending
        assert got.end == "reset", f"bob's app saw a clean EOF after {got.size} bytes"
        assert sender_end == "reset"
        # Alice's app reading its side sees the reset too (the kernel closed with linger 0).
        with pytest.raises((ConnectionError, OSError)):
            async with asyncio.timeout(30):
                while await alice_r.read(MIB):
                    pass
    finally:
        await asyncio.to_thread(t.stop)


async def test_kill_9_of_the_relay_resets_both_apps(
    own_relay: ServerProcess, tmp_path: Path, path_env: dict[str, str]
) -> None:
    t = await open_tunnel(own_relay, tmp_path, path_env)
    try:
        _alice_r, alice_w, bob_r, _bob_w = await connect_pair(t)
        sent = hashlib.sha256()
        sending = asyncio.create_task(send_blocks(alice_w, 2048, sent))
        reading = asyncio.create_task(read_all(bob_r, pace=20 * MIB))
        await t.bob.await_telemetry(lambda d: d["rx_bytes"] >= 8 * MIB, timeout=60)
        own_relay.signal(signal.SIGKILL)
        async with asyncio.timeout(60):
            got = await reading
            sender_end = await sending
        assert got.end == "reset", f"bob's app saw a clean EOF after {got.size} bytes"
        assert sender_end == "reset"
    finally:
        await asyncio.to_thread(t.stop)


async def test_a_frozen_receiving_client_delays_the_stream_but_never_cuts_it(
    own_relay: ServerProcess, tmp_path: Path, path_env: dict[str, str]
) -> None:
    t = await open_tunnel(own_relay, tmp_path, path_env)
    try:
        _alice_r, alice_w, bob_r, _bob_w = await connect_pair(t)
        sent = hashlib.sha256()
        sending = asyncio.create_task(send_blocks(alice_w, 96, sent))
        reading = asyncio.create_task(read_all(bob_r))
        await t.bob.await_telemetry(lambda d: d["rx_bytes"] >= 8 * MIB, timeout=60)
        t.bob.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(10)
        finally:
            t.bob.signal(signal.SIGCONT)
        async with asyncio.timeout(120):
            sender_end = await sending
            got = await reading
        whole_or_reset(got, 96 * MIB, sent.hexdigest())
        if sender_end == "eof":
            # The sender believed it finished: then the receiver must have everything.
            assert got.end == "eof"
    finally:
        await asyncio.to_thread(t.stop)


async def test_an_app_that_pauses_20_s_gets_the_whole_stream(
    own_relay: ServerProcess, tmp_path: Path, path_env: dict[str, str]
) -> None:
    # 32 MiB: more than the window and every buffer on the way, so the sender must wait.
    t = await open_tunnel(own_relay, tmp_path, path_env)
    try:
        _alice_r, alice_w, bob_r, _bob_w = await connect_pair(t)
        sent = hashlib.sha256()
        sending = asyncio.create_task(send_blocks(alice_w, 32, sent))
        await asyncio.sleep(20)  # bob's app reads nothing meanwhile
        async with asyncio.timeout(180):
            got = await read_all(bob_r)
            assert await sending == "eof"
        assert got == Outcome(32 * MIB, sent.hexdigest(), "eof")
        doc = t.alice.telemetry()
        assert doc is not None and doc["flow_waits"] >= 1
    finally:
        await asyncio.to_thread(t.stop)


async def test_an_app_reading_at_100_kb_per_s_gets_the_whole_stream(
    own_relay: ServerProcess, tmp_path: Path, path_env: dict[str, str]
) -> None:
    # A small window (64 KiB) puts the whole stream under flow control in half a minute.
    env = {**path_env, "SYFTBOX_HOTLINK_FLOW_WINDOW": str(64 * 1024)}
    t = await open_tunnel(own_relay, tmp_path, env)
    try:
        _alice_r, alice_w, bob_r, _bob_w = await connect_pair(t)
        sent = hashlib.sha256()
        sending = asyncio.create_task(send_blocks(alice_w, 3, sent))
        async with asyncio.timeout(180):
            got = await read_all(bob_r, pace=100e3)
            assert await sending == "eof"
        assert got == Outcome(3 * MIB, sent.hexdigest(), "eof")
    finally:
        await asyncio.to_thread(t.stop)
