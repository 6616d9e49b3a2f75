"""A tunnel set up the way a person does it: ``hotlink tunnel open`` on each side (the second
side runs the command the first one printed), two real clients, a stream each way, then
``hotlink tunnel list`` and ``hotlink tunnel close``. Nothing here writes a marker or an ACL
file itself."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.client_proc import (
    ALICE,
    BOB,
    ClientProcess,
    client_env,
    dial,
    free_port,
    start_client,
)
from support.server_proc import ServerProcess
from support.streams import MIB, Pattern, assert_whole, read_stream, send_stream

pytestmark = pytest.mark.slow

GUARD = 60.0  # failure guard for every wait below
TRANSPORTS = {"p2p-host", "p2p-srflx", "p2p-relay", "ws"}
CHECK_SCRIPT = Path(__file__).parents[3] / "deploy" / "docker" / "check_tunnel.py"


def hotlink(*args: str, data_dir: Path, email: str) -> subprocess.CompletedProcess[str]:
    """``hotlink <args> --data-dir D --email E`` as its own process, as a person runs it."""
    argv = [sys.executable, "-m", "hotlink", *args, "--data-dir", str(data_dir), "--email", email]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=GUARD, env=client_env(), check=False
    )


def mirror_args(stdout: str) -> list[str]:
    """The arguments of the ``hotlink tunnel open`` line the first side printed."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("hotlink tunnel")]
    assert len(lines) == 1, f"expected one mirror command in:\n{stdout}"
    return shlex.split(lines[0])[1:]


def listed(data_dir: Path, email: str) -> dict[str, Any]:
    done = hotlink("tunnel", "list", "--json", data_dir=data_dir, email=email)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


async def refused(port: int) -> None:
    """Until nothing listens on ``port`` any more (the client stopped the tunnel's proxy)."""
    async with asyncio.timeout(GUARD):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return
            writer.close()
            await asyncio.sleep(0.2)


async def stream_both_ways(alice_port: int, bob_port: int, size: int) -> None:
    """``size`` bytes each way at once, on one app connection per side (bob's app connects
    first, as in PROTOCOL.md §9.1), each direction ended by its sender's EOF."""
    bob_r, bob_w = await dial(bob_port)
    await asyncio.sleep(0.5)
    alice_r, alice_w = await dial(alice_port)
    there, back = Pattern(), Pattern()
    try:
        sent_there, sent_back, got_there, got_back = await asyncio.gather(
            send_stream(alice_w, size, there),
            send_stream(bob_w, size, back),
            read_stream(bob_r, there, timeout=GUARD),
            read_stream(alice_r, back, timeout=GUARD),
        )
        assert_whole(got_there, sent_there)
        assert_whole(got_back, sent_back)
    finally:
        alice_w.close()
        bob_w.close()


async def test_tunnel_opened_listed_and_closed_with_the_cli(
    relay: ServerProcess, tmp_path: Path
) -> None:
    dirs = {ALICE: tmp_path / "alice", BOB: tmp_path / "bob"}
    ports = {ALICE: free_port(), BOB: free_port()}

    # Bob goes first here (he is party 1); alice runs the command bob's side printed.
    first = hotlink(
        "tunnel", "open", "--peer", ALICE, "--port", str(ports[BOB]),
        "--peer-port", str(ports[ALICE]), data_dir=dirs[BOB], email=BOB,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    mirror = mirror_args(first.stdout)
    assert mirror == [
        "tunnel", "open", "--peer", BOB,
        "--port", str(ports[ALICE]), "--peer-port", str(ports[BOB]),
    ]  # fmt: skip
    second = hotlink(*mirror, data_dir=dirs[ALICE], email=ALICE)
    assert second.returncode == 0, second.stderr

    clients: list[ClientProcess] = []
    try:
        for email in (ALICE, BOB):
            clients.append(
                await asyncio.to_thread(start_client, relay.url, email, dirs[email], timeout=GUARD)
            )
        alice, bob = clients
        doc = listed(dirs[ALICE], ALICE)
        [tunnel] = doc["tunnels"]
        key = tunnel["key"]
        assert (tunnel["peer"], tunnel["port"], tunnel["peer_port"]) == (
            BOB,
            ports[ALICE],
            ports[BOB],
        )
        assert tunnel["problem"] is None
        await alice.await_tunnel(key, GUARD)
        await bob.await_tunnel(key, GUARD)

        await stream_both_ways(ports[ALICE], ports[BOB], 8 * MIB)

        # `hotlink status --json` names the tunnel's peer and the path its sessions took.
        status = hotlink("status", "--json", data_dir=dirs[ALICE], email=ALICE)
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        [running] = [t for t in doc["tunnels"] if t["key"] == key]
        assert running["peer"] == BOB and running["listening"]
        ours = [s for s in doc["sessions"] + doc["recent"] if s["peer"] in (BOB, "*")]
        assert ours and all(s["transport"] in TRANSPORTS for s in ours)

        # The compose demo's check job, run against the same tunnel.
        checked = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(CHECK_SCRIPT), f"127.0.0.1:{ports[ALICE]}",
             f"127.0.0.1:{ports[BOB]}", "--size", str(2 * MIB), "--timeout", str(GUARD)],
            capture_output=True, text=True, timeout=2 * GUARD, check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.count(": ok") == 2

        for email, peer in ((ALICE, BOB), (BOB, ALICE)):
            doc = listed(dirs[email], email)
            [tunnel] = doc["tunnels"]
            assert tunnel["peer"] == peer and tunnel["key"] == key
            assert doc["daemon"] is True  # the running client answered on its control socket
            assert tunnel["listening"] is True

        closed = hotlink("tunnel", "close", "--peer", BOB, data_dir=dirs[ALICE], email=ALICE)
        assert closed.returncode == 0, closed.stderr
        assert "stream.tcp" in closed.stdout
        assert f"hotlink tunnel close --peer {ALICE}" in closed.stdout
        await refused(ports[ALICE])
        assert listed(dirs[ALICE], ALICE)["tunnels"] == []
        # The ACL stays for the peer's side unless --acls.
        assert list(dirs[ALICE].rglob("syft.pub.yaml"))

        again = hotlink("tunnel", "close", "--peer", BOB, data_dir=dirs[ALICE], email=ALICE)
        assert again.returncode == 1
        assert again.stderr.startswith("error: no tunnel with bob@example.com")
        assert "Traceback" not in again.stderr
    finally:
        for client in clients:
            await asyncio.to_thread(client.stop)
