"""A tunnel peer without read permission on the channel gets nothing."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from support.client_proc import (
    ALICE,
    dial,
    free_port,
    read_to_eof,
    running_client,
    write_default_acls,
    write_tcp_channel,
)
from support.server_proc import ServerProcess

CAROL = "carol@example.com"
BOB = "bob@example.com"
CHANNEL = "shared/flows/acl-test/run1/_mpc/0_to_1"


async def test_peer_without_read_acl_gets_nothing(relay: ServerProcess, tmp_path: Path) -> None:
    ports = {ALICE: free_port(), CAROL: free_port()}
    dirs = {ALICE: tmp_path / "alice", CAROL: tmp_path / "carol"}
    for email, data_dir in dirs.items():
        datasites = data_dir / "datasites"
        write_default_acls(datasites / email)
        # Both parties agree on the tunnel, but alice's ACL lets only alice and bob read it.
        write_tcp_channel(
            datasites,
            ALICE,
            CHANNEL,
            from_email=ALICE,
            to_email=CAROL,
            ports=ports,
            parties=[ALICE, BOB],
        )
    env = {"SYFTBOX_HOTLINK_DEBUG": "1"}
    with (
        running_client(relay.url, ALICE, dirs[ALICE], env=env) as alice,
        running_client(relay.url, CAROL, dirs[CAROL], env=env) as carol,
    ):
        for client in (alice, carol):
            await client.await_log(r"tcp proxy: starting ")
        carol_r, carol_w = await dial(ports[CAROL])
        alice_r, alice_w = await dial(ports[ALICE])
        try:
            alice_w.write(b"secret" * 1000)
            await alice_w.drain()
            # The server refuses the Open (carol may not read), so alice's app is cut off.
            await alice.await_log(r"out alice→carol closed\(rejected: permission denied\)")
            with contextlib.suppress(ConnectionError):
                assert await read_to_eof(alice_r, timeout=30) == b""
            # Carol never heard of the session, and her app got no bytes.
            assert "hotlink session" not in carol.log_text()
            try:
                async with asyncio.timeout(1.0):
                    leaked = await carol_r.read(1)
            except TimeoutError:
                leaked = b""
            assert leaked == b""
        finally:
            alice_w.close()
            carol_w.close()
