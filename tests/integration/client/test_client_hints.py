"""When a stream cannot start, the opener's log names the likely cause: a peer without the
tunnel on its side, or an ACL that does not let it write (real relay and clients)."""

from __future__ import annotations

import asyncio
import contextlib

from support.client_proc import TUNNEL_FLOW, Tunnel, dial, write_acl


async def _write_and_expect_reset(port: int) -> None:
    """An app writes into a tunnel that cannot start: its connection is reset."""
    reader, writer = await dial(port)
    writer.write(b"hello")
    await writer.drain()
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(30):
            assert await reader.read() == b""
    writer.close()


async def test_a_peer_without_the_tunnel_is_named(fresh_tunnel: Tunnel) -> None:
    t = fresh_tunnel
    mark = t.alice.log_mark()
    # Bob's tree holds the reference tunnel's marker under both datasite folders.
    for owner in ("alice@example.com", "bob@example.com"):
        marker = t.bob.datasites / owner / TUNNEL_FLOW / "run1/_mpc/0_to_1/stream.tcp"
        await asyncio.to_thread(marker.unlink)
    await t.bob.await_log(r"tcp proxy: stopping")
    await _write_and_expect_reset(t.alice_port)
    line = await t.alice.await_log(r"WARNING .*nobody accepted the stream to \S+", since=mark)
    assert "hotlink tunnel open --peer alice@example.com" in t.alice.log_text()[line.start() :]


async def test_an_acl_that_does_not_let_us_write_is_named(fresh_tunnel: Tunnel) -> None:
    t = fresh_tunnel
    channel = t.alice.datasite() / TUNNEL_FLOW / "run1/_mpc/0_to_1"
    mark = t.bob.log_mark()
    # Alice owns the tunnel's folder; her ACL stops granting bob write, and is published.
    alice_mark = t.alice.log_mark()
    await asyncio.to_thread(
        write_acl, channel, read=["alice@example.com"], write=["alice@example.com"]
    )
    await t.alice.await_log(r"acl published \S+0_to_1/syft.pub.yaml", since=alice_mark)
    await _write_and_expect_reset(t.bob_port)
    line = await t.bob.await_log(r"WARNING .*was refused \(permission denied\)", since=mark)
    assert "syft.pub.yaml" in t.bob.log_text()[line.start() :].splitlines()[0]
