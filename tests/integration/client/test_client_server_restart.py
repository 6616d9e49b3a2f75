"""The relay restarts mid-session: the clients reconnect and re-publish their ACLs, the broken
stream is closed loudly (never silently truncated), and a new app connection works."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from support.client_proc import (
    REFERENCE_CHUNK,
    check_reference_chunks,
    dial,
    read_exactly,
    reference_chunk,
    start_tunnel,
)
from support.server_proc import running_server_sync, stop_server

pytestmark = pytest.mark.slow


async def test_server_restart_mid_session(tmp_path: Path) -> None:
    with running_server_sync(tmp_path) as first:
        port = first.port
        tunnel = await asyncio.to_thread(
            start_tunnel, first.url, tmp_path, env={"SYFTBOX_HOTLINK_DEBUG": "1"}
        )
        try:
            bob_r, bob_w = await dial(tunnel.bob_port)
            await asyncio.sleep(0.2)
            alice_r, alice_w = await dial(tunnel.alice_port)
            alice_w.write(b"".join(reference_chunk(i) for i in range(5)))
            await alice_w.drain()
            check_reference_chunks(await read_exactly(bob_r, 5 * REFERENCE_CHUNK), 5)

            marks = {c.email: c.log_mark() for c in (tunnel.alice, tunnel.bob)}
            await asyncio.to_thread(stop_server, first)
            # Both apps see their tunnel connection end instead of hanging on a dead stream.
            for reader in (alice_r, bob_r):
                with contextlib.suppress(ConnectionError):
                    async with asyncio.timeout(30):
                        assert await reader.read() == b""
            alice_w.close()
            bob_w.close()

            with running_server_sync(tmp_path, args=["--port", str(port)]):
                for client in (tunnel.alice, tunnel.bob):
                    since = marks[client.email]
                    await client.await_log(r"connected to \S+ as ", since=since)
                    await client.await_log(r"acls published: ", since=since)
                bob_r, bob_w = await dial(tunnel.bob_port)
                await asyncio.sleep(0.2)
                alice_r, alice_w = await dial(tunnel.alice_port)
                try:
                    alice_w.write(b"".join(reference_chunk(i) for i in range(20)))
                    await alice_w.drain()
                    check_reference_chunks(await read_exactly(bob_r, 20 * REFERENCE_CHUNK), 20)
                finally:
                    alice_w.close()
                    bob_w.close()
        finally:
            tunnel.stop()
