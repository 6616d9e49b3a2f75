"""Tunnel edge cases on one shared relay + tunnel: late apps, apps that leave mid-stream.

Each test opens new app connections; a newer app connection supersedes older ones, so the
tests do not disturb each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re

import pytest

from support.client_proc import (
    REFERENCE_CHUNK,
    Tunnel,
    await_telemetry,
    check_reference_chunks,
    dial,
    read_exactly,
    read_to_eof,
    reference_chunk,
)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_app_connects_after_data_arrived(shared_tunnel: Tunnel) -> None:
    t = shared_tunnel
    mark = t.bob.log_mark()
    _alice_r, alice_w = await dial(t.alice_port)
    try:
        for i in range(20):
            alice_w.write(reference_chunk(i))
        await alice_w.drain()
        # Bob's client already holds data for the tunnel; only now does bob's app connect.
        await t.bob.await_log(r"hotlink recv data: .* seq=1 ", since=mark)
        bob_r, bob_w = await dial(t.bob_port)
        try:
            check_reference_chunks(await read_exactly(bob_r, 20 * REFERENCE_CHUNK), 20)
        finally:
            await _close(bob_w)
    finally:
        await _close(alice_w)


async def test_sender_app_leaves_mid_stream_peer_sees_eof(shared_tunnel: Tunnel) -> None:
    t = shared_tunnel
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.2)  # let bob's connection be the newest before alice writes
    _alice_r, alice_w = await dial(t.alice_port)
    try:
        for i in range(10):
            alice_w.write(reference_chunk(i))
        await alice_w.drain()
        await _close(alice_w)
        # Everything alice wrote arrives in order, then a clean EOF: no garbage, no hang.
        check_reference_chunks(await read_to_eof(bob_r), 10)
    finally:
        await _close(bob_w)


async def test_receiver_app_leaves_mid_stream_sender_is_closed(shared_tunnel: Tunnel) -> None:
    t = shared_tunnel
    mark = t.alice.log_mark()
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.2)
    alice_r, alice_w = await dial(t.alice_port)
    got = b""
    try:
        alice_w.write(b"".join(reference_chunk(i) for i in range(5)))
        await alice_w.drain()
        got = await read_exactly(bob_r, 5 * REFERENCE_CHUNK)
        bob_w.transport.abort()  # bob's app goes away while alice keeps sending

        async def keep_sending() -> None:
            i = 5
            while True:
                alice_w.write(reference_chunk(i))
                await alice_w.drain()
                i += 1
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(keep_sending())
        receiver = asyncio.create_task(read_to_eof(alice_r))
        try:
            # Alice's client resets her connection because the stream can no longer be
            # delivered: her sending fails, loudly.
            with pytest.raises(ConnectionError):
                async with asyncio.timeout(60):
                    await sender
            # Her read side carried bob's stream, which was empty: bob's app left without
            # writing, so a clean EOF there is right (TCP would deliver bob's FIN too), and
            # otherwise the reset. Never any data.
            async with asyncio.timeout(60):
                await asyncio.wait([receiver])
            error = receiver.exception()
            if error is None:
                assert receiver.result() == b""
            else:
                assert isinstance(error, ConnectionResetError)
        finally:
            sender.cancel()
            receiver.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
        await t.alice.await_log(r"out alice→bob closed\(closed by peer: local app", since=mark)
    finally:
        await _close(alice_w)
    check_reference_chunks(got, 5)


async def test_new_app_connection_supersedes_old_one(shared_tunnel: Tunnel) -> None:
    t = shared_tunnel
    old_r, old_w = await dial(t.bob_port)
    new_r, new_w = await dial(t.bob_port)
    try:
        # The older connection is reset by the proxy; the newer one gets the data.
        with pytest.raises(ConnectionResetError):
            await read_to_eof(old_r, timeout=30)
        _alice_r, alice_w = await dial(t.alice_port)
        try:
            alice_w.write(b"".join(reference_chunk(i) for i in range(3)))
            await alice_w.drain()
            check_reference_chunks(await read_exactly(new_r, 3 * REFERENCE_CHUNK), 3)
        finally:
            await _close(alice_w)
    finally:
        await _close(old_w)
        await _close(new_w)
    assert re.search(r"superseded by app connection", t.bob.log_text())


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_many_short_streams_leave_nothing_behind(shared_tunnel: Tunnel) -> None:
    t = shared_tunnel
    # Let earlier tests' connections finish closing before taking the baseline.
    await await_telemetry(t.alice, lambda d: d["live"]["outbound_accepted"] == 0)
    await await_telemetry(t.bob, lambda d: d["live"]["inbound"] == 0)
    baseline = {c.pid: _fds(c.pid) for c in (t.alice, t.bob)}
    for i in range(30):
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.05)
        _, alice_w = await dial(t.alice_port)
        alice_w.write(reference_chunk(i))
        await _close(alice_w)
        check_reference_chunks_at(await read_to_eof(bob_r), i)
        await _close(bob_w)
    for client in (t.alice, t.bob):
        # No session of any kind is left (a failure guard times out otherwise).
        await await_telemetry(
            client,
            lambda d: (
                d["live"]["inbound"] == 0
                and d["live"]["outbound_accepted"] == 0
                and d["live"]["outbound_pending"] == 0
            ),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while _fds(client.pid) > baseline[client.pid] and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert _fds(client.pid) <= baseline[client.pid], f"{client.email} leaks descriptors"


def check_reference_chunks_at(data: bytes, i: int) -> None:
    assert data == reference_chunk(i)
