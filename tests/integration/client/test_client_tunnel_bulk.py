"""Bulk and latency-bound traffic through the proxies: 64 MiB with a sha256, 1,000 ping-pongs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import pytest

from support.client_proc import Tunnel, await_telemetry, dial, read_exactly

pytestmark = pytest.mark.slow

SIZE = 64 * 1024 * 1024


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_64_mib_stream_arrives_intact(shared_tunnel: Tunnel) -> None:
    t = shared_tunnel
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.2)
    _alice_r, alice_w = await dial(t.alice_port)
    block = os.urandom(1024 * 1024)
    sent = hashlib.sha256()

    async def send() -> None:
        for i in range(SIZE // len(block)):
            # Vary every block so a dropped or repeated chunk changes the hash.
            data = i.to_bytes(4, "big") + block[4:]
            sent.update(data)
            alice_w.write(data)
            await alice_w.drain()
        await _close(alice_w)

    async def receive() -> tuple[int, str]:
        got = hashlib.sha256()
        total = 0
        async with asyncio.timeout(240):
            while True:
                data = await bob_r.read(1024 * 1024)
                if not data:
                    return total, got.hexdigest()
                got.update(data)
                total += len(data)

    try:
        _, (total, digest) = await asyncio.gather(send(), receive())
    finally:
        await _close(bob_w)
    assert total == SIZE
    assert digest == sent.hexdigest()
    doc = await await_telemetry(t.bob, lambda d: d["rx_bytes"] >= SIZE)
    assert doc["rx_bytes"] >= SIZE


async def test_one_byte_ping_pong_1000_round_trips(shared_tunnel: Tunnel) -> None:
    t = shared_tunnel
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.2)
    alice_r, alice_w = await dial(t.alice_port)

    async def echo() -> None:
        # Bob's app answers each byte with the next value.
        while True:
            data = await bob_r.read(1)
            if not data:
                return
            bob_w.write(bytes([(data[0] + 1) % 256]))
            await bob_w.drain()

    echoer = asyncio.create_task(echo())
    try:
        for i in range(1000):
            alice_w.write(bytes([i % 256]))
            await alice_w.drain()
            reply = await read_exactly(alice_r, 1, timeout=30)
            assert reply == bytes([(i + 1) % 256]), f"round trip {i}: got {reply!r}"
    finally:
        echoer.cancel()
        await asyncio.gather(echoer, return_exceptions=True)
        await _close(alice_w)
        await _close(bob_w)
