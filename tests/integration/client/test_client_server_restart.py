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


async def test_an_open_waiting_through_a_relay_restart_is_not_refused(tmp_path: Path) -> None:
    """An app writes while the relay is down: its Open waits for the reconnect, and then for
    our ACLs to be re-published, so the restarted relay (which knows no ACL yet) allows it.
    Sent before the ACLs, it was refused "permission denied"."""
    with running_server_sync(tmp_path) as first:
        port = first.port
        tunnel = await asyncio.to_thread(
            start_tunnel, first.url, tmp_path, env={"SYFTBOX_HOTLINK_DEBUG": "1"}
        )
        try:
            mark = tunnel.alice.log_mark()
            await asyncio.to_thread(stop_server, first)
            await tunnel.alice.await_log(r"disconnected from", since=mark)
            # The relay is down: alice's app writes, and her Open waits for the relay.
            bob_r, bob_w = await dial(tunnel.bob_port)
            _, alice_w = await dial(tunnel.alice_port)
            alice_w.write(b"".join(reference_chunk(i) for i in range(5)))
            await alice_w.drain()
            with running_server_sync(tmp_path, args=["--port", str(port)]):
                await tunnel.alice.await_log(r"hotlink session \S+ out alice→bob open", since=mark)
                await tunnel.alice.await_log(
                    r"hotlink session \S+ out alice→bob (accepted|closed)", since=mark
                )
                # Bob may have reconnected only after alice's Open went out (then nobody
                # accepted it); that race is the relay's, not this test's subject.
                if tunnel.alice.search_log(r"out alice→bob accepted", since=mark):
                    check_reference_chunks(await read_exactly(bob_r, 5 * REFERENCE_CHUNK), 5)
                assert not tunnel.alice.search_log(r"permission denied", since=mark)
                for w in (alice_w, bob_w):
                    w.close()
        finally:
            tunnel.stop()
