"""A tunnel set up while both clients run: the file watcher finds the ACLs and markers, the
tunnel carries bytes both ways, and a marker in the wrong folder is named in a warning."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

from support.client_proc import (
    ALICE,
    BOB,
    dial,
    free_port,
    read_exactly,
    running_client_async,
    write_default_acls,
    write_tcp_channel,
)
from support.server_proc import ServerProcess

CHANNEL = "shared/flows/late/run1/_mpc/0_to_1"
PAYLOAD = bytes(range(256)) * 256  # 64 KiB


async def _send(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> str:
    writer.write(PAYLOAD)
    await writer.drain()
    return hashlib.sha256(await read_exactly(reader, len(PAYLOAD), timeout=30)).hexdigest()


async def test_a_tunnel_written_after_start_is_found_and_works(
    relay: ServerProcess, tmp_path: Path
) -> None:
    ports = {ALICE: free_port(), BOB: free_port()}
    dirs = {ALICE: tmp_path / "alice", BOB: tmp_path / "bob"}
    for email, data_dir in dirs.items():
        write_default_acls(data_dir / "datasites" / email)
    async with (
        running_client_async(relay.url, ALICE, dirs[ALICE]) as alice,
        running_client_async(relay.url, BOB, dirs[BOB]) as bob,
    ):
        # A marker one folder too high: not ignored silently.
        misplaced = dirs[ALICE] / "datasites" / ALICE / "shared/flows/late/run0/0_to_1"
        misplaced.mkdir(parents=True)
        (misplaced / "stream.tcp").write_text(
            json.dumps({"from": ALICE, "to": BOB, "ports": {ALICE: 1, BOB: 2}})
        )
        await alice.await_log(
            re.escape(f"{ALICE}/shared/flows/late/run0/0_to_1/stream.tcp ignored: it is not ")
            + re.escape(f"under an _mpc folder (did you mean {ALICE}/shared/flows/late/run0/")
        )
        # The tunnel, as each party writes it in its own tree (ACLs first, marker last).
        for data_dir in dirs.values():
            write_tcp_channel(
                data_dir / "datasites", ALICE, CHANNEL, from_email=ALICE, to_email=BOB, ports=ports
            )
        await alice.await_log(re.escape(f"acl published {ALICE}/{CHANNEL}/syft.pub.yaml"))
        for client in (alice, bob):
            await client.await_log(re.escape(f"tunnel marker found: {ALICE}/{CHANNEL}/stream.tcp"))
            await client.await_log(r"tcp proxy: starting \S+ channel=" + re.escape(ALICE))
        bob_r, bob_w = await dial(ports[BOB])
        alice_r, alice_w = await dial(ports[ALICE])
        try:
            expected = hashlib.sha256(PAYLOAD).hexdigest()
            assert await _send(alice_w, bob_r) == expected
            assert await _send(bob_w, alice_r) == expected
        finally:
            alice_w.close()
            bob_w.close()
        # Removed: the proxy stops listening.
        (dirs[BOB] / "datasites" / ALICE / CHANNEL / "stream.tcp").unlink()
        await bob.await_log(re.escape(f"tunnel marker removed: {ALICE}/{CHANNEL}/stream.tcp"))
        await bob.await_log(r"tcp proxy: stopping ")
