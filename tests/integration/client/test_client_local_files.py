"""Hostile local files and local resources at a real client: links, FIFOs and deeply nested
JSON in the datasites tree, and floods of IPC Opens from other users.

Whatever lands in the tree, the client publishes nothing from outside it, creates nothing
outside it, never blocks on a file, keeps its discovery loops running, and holds a bounded
number of IPC endpoints; an existing tunnel keeps delivering every byte.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hotlink.client.edges.ipc import MAX_IPC_ENDPOINTS, unix_socket_path
from hotlink.protocol.messages import (
    FileWrite,
    HotlinkClose,
    HotlinkOpen,
    HotlinkReject,
    new_session_id,
)
from support.client_proc import (
    ALICE,
    BOB,
    ClientProcess,
    Tunnel,
    dial,
    running_client_async,
    start_client,
    write_default_acls,
)
from support.server_proc import ServerProcess
from support.streams import MIB, Pattern, assert_whole, read_stream, send_stream
from support.ws_client import WSClient, connect

CAROL = "carol@example.com"
MALLORY = "mallory@example.com"
SECRET = "SECRET-d9-a1b2c3"
GUARD = 60.0  # failure guard for waits on real processes


async def _roundtrip(t: Tunnel, size: int = 2 * MIB) -> None:
    """One stream alice -> bob through the tunnel: every byte in order, then EOF."""
    pattern = Pattern(block=64 * 1024)
    bob_r, bob_w = await dial(t.bob_port)
    _alice_r, alice_w = await dial(t.alice_port)
    try:
        sent, got = await asyncio.gather(
            send_stream(alice_w, size, pattern), read_stream(bob_r, pattern, timeout=GUARD)
        )
        assert_whole(got, sent)
    finally:
        for writer in (alice_w, bob_w):
            writer.close()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _open_fds(client: ClientProcess) -> int:
    return len(os.listdir(f"/proc/{client.pid}/fd"))


# ---------------------------------------------------------------- D9: links


async def test_a_symlinked_acl_file_never_reaches_other_users(
    relay: ServerProcess, tmp_path: Path
) -> None:
    """D9: ``syft.pub.yaml`` linked to a credentials file (valid YAML, so a relay would take
    it), and a linked folder holding another: a third user connected to the relay sees
    alice's real ACL files and never the linked content; the relay never sees it either."""
    data_dir = tmp_path / "alice"
    own = data_dir / "datasites" / ALICE
    write_default_acls(own)
    credentials = _write(tmp_path / "credentials.yaml", f"rules: []\n# aws_secret={SECRET}\n")
    (own / "leak").mkdir()
    (own / "leak" / "syft.pub.yaml").symlink_to(credentials)
    _write(tmp_path / "outside" / "syft.pub.yaml", f"rules: []\n# {SECRET}\n")
    (own / "linked").symlink_to(tmp_path / "outside")
    async with connect(relay.url, CAROL) as carol:
        async with running_client_async(relay.url, ALICE, data_dir) as alice:
            seen = await carol.barrier()
            writes = [m.payload for m in seen if isinstance(m.payload, FileWrite)]
            # Carol hears alice's ACL files (so she would have heard a leak)...
            assert {w.pth for w in writes} == {
                f"{ALICE}/syft.pub.yaml",
                f"{ALICE}/public/syft.pub.yaml",
            }
            # ...and none of them holds the linked content.
            assert not any(SECRET.encode() in w.con for w in writes)
            assert alice.search_log(r"ignoring alice@example\.com/leak/syft\.pub\.yaml: a symlink")
    assert SECRET not in relay.log_text()


@contextlib.asynccontextmanager
async def _raw_user(relay: ServerProcess, user: str) -> AsyncIterator[WSClient]:
    """A user without a client: its datasite is readable by everyone."""
    async with connect(relay.url, user) as client:
        await client.publish_acl(user, read=["*"], write=[user])
        yield client


async def test_an_open_through_a_linked_folder_creates_nothing_outside(
    relay: ServerProcess, tmp_path: Path
) -> None:
    """D9: in bob's tree, mallory's datasite folder (or a folder in it) is a symlink to a
    folder outside the data dir. Mallory's Opens make bob create no folder, marker or socket
    there: bob refuses them ("ipc unavailable")."""
    data_dir = tmp_path / "bob"
    datasites = data_dir / "datasites"
    write_default_acls(datasites / BOB)
    outside = tmp_path / "outside"
    outside.mkdir()
    mallory_tree = datasites / MALLORY
    mallory_tree.symlink_to(outside)
    carol_tree = datasites / CAROL
    (carol_tree / "app_data").mkdir(parents=True)
    (carol_tree / "app_data" / "app").symlink_to(outside)
    async with running_client_async(relay.url, BOB, data_dir) as bob:
        for user in (MALLORY, CAROL):
            async with _raw_user(relay, user) as opener:
                sid = new_session_id()
                await opener.send(HotlinkOpen(sid=sid, pth=f"{user}/app_data/app/rpc/a.request"))
                # (The relay's 30 s pings restart recv's own timeout: guard the whole wait.)
                async with asyncio.timeout(GUARD):
                    reject = await opener.expect(HotlinkReject, GUARD)
                assert reject == HotlinkReject(sid=sid, rsn="ipc unavailable")
        assert bob.alive()
    assert list(outside.iterdir()) == []  # no folder, no marker
    assert not any(
        unix_socket_path(folder / "rpc" / "stream.sock").exists()
        for folder in (mallory_tree / "app_data" / "app", carol_tree / "app_data" / "app")
    )


# ---------------------------------------------------------------- D10, D11: files that bite


@pytest.mark.slow
async def test_fifos_links_and_nested_markers_do_not_stop_the_client(
    relay: ServerProcess, fresh_tunnel: Tunnel, tmp_path: Path
) -> None:
    """D10, D11: FIFOs named ``syft.pub.yaml``, ``stream.tcp`` and ``stream.sock``, a
    ``stream.tcp`` of 50,000 and one of 100,000 ``[``, and a linked marker appear in bob's
    tree while the tunnel runs: bob warns once about each and the tunnel still delivers;
    then bob restarts with all of them present and the tunnel delivers again."""
    t = fresh_tunnel
    bob = t.bob
    datasites = bob.datasites
    own = datasites / BOB
    evil = own / "shared" / "flows" / "evil"
    mark = bob.log_mark()
    _fifo(own / "pipe" / "syft.pub.yaml")
    _fifo(evil / "fifo" / "_mpc" / "0_to_1" / "stream.tcp")
    _fifo(own / "app_data" / "app" / "rpc" / "ep" / "stream.sock")
    _write(evil / "nested" / "_mpc" / "0_to_1" / "stream.tcp", "[" * 50_000)
    _write(evil / "huge" / "_mpc" / "0_to_1" / "stream.tcp", "[" * 100_000)
    target = _write(tmp_path / "target.json", '{"from": "a@x", "to": "b@x", "port": 1}')
    (evil / "linked" / "_mpc" / "0_to_1").mkdir(parents=True)
    (evil / "linked" / "_mpc" / "0_to_1" / "stream.tcp").symlink_to(target)
    expected = [
        r"ignoring bob@example\.com/pipe/syft\.pub\.yaml: not a regular file",
        r"ignoring bob@example\.com/shared/flows/evil/fifo/_mpc/0_to_1/stream\.tcp: not a reg",
        r"ignoring bob@example\.com/app_data/app/rpc/ep/stream\.sock: not a regular file",
        r"tunnel marker ignored: bob@example\.com/shared/flows/evil/nested/.*too deeply",
        r"tcp proxy: cannot read marker bob@example\.com/shared/flows/evil/huge/.*limit",
        r"ignoring bob@example\.com/shared/flows/evil/linked/_mpc/0_to_1/stream\.tcp: a sym",
    ]
    for pattern in expected:
        await bob.await_log(pattern, GUARD, since=mark)
    await _roundtrip(t)  # many scans later: each file was warned about once
    assert bob.alive()
    text = bob.log_text()[mark:]
    for pattern in expected:
        assert len(re.findall(pattern, text)) == 1, pattern

    # Restarted with all of them in place: no FIFO blocks the first publish round or scan.
    await asyncio.to_thread(bob.stop)
    new_bob = await asyncio.to_thread(
        start_client, relay.url, BOB, bob.data_dir, env={"SYFTBOX_HOTLINK_DEBUG": "1"}
    )
    try:
        await new_bob.await_log(r"tcp proxy: starting ", GUARD)
        await _roundtrip(Tunnel(t.alice, new_bob, t.alice_port, t.bob_port))
        assert new_bob.alive()
    finally:
        await asyncio.to_thread(new_bob.stop)


# ---------------------------------------------------------------- D5: IPC endpoints


OPENERS = 6
OPENS_EACH = 100
FD_LIMIT = 512


@pytest.mark.slow
async def test_ipc_opens_from_other_users_do_not_exhaust_fds(
    relay: ServerProcess, fresh_tunnel: Tunnel
) -> None:
    """D5: with bob limited to 512 fds, 600 IPC Opens from six other users (none accepted,
    no app) leave bob at most MAX_IPC_ENDPOINTS endpoints; the rest are refused, the
    tunnel still delivers, and once the openers close their sessions every endpoint goes
    (listener, socket file, marker) after the idle grace."""
    t = fresh_tunnel
    bob = t.bob
    limit = ["prlimit", f"--pid={bob.pid}", f"--nofile={FD_LIMIT}:{FD_LIMIT}"]
    await asyncio.to_thread(subprocess.run, limit, check=True)
    baseline = _open_fds(bob)
    users = [f"mallory{i}@example.com" for i in range(OPENERS)]
    sids: dict[str, list[str]] = {u: [] for u in users}
    rejects: collections.Counter[str] = collections.Counter()
    folders: list[Path] = []

    async def read_rejects(client: WSClient) -> None:
        while True:
            message = await client.recv(timeout=3600)
            if isinstance(message.payload, HotlinkReject):
                rejects[message.payload.rsn] += 1

    clients: list[WSClient] = []
    readers: list[asyncio.Task[None]] = []
    async with contextlib.AsyncExitStack() as stack:
        for user in users:
            client = await stack.enter_async_context(_raw_user(relay, user))
            clients.append(client)
            readers.append(asyncio.create_task(read_rejects(client)))
        stack.push_async_callback(_cancel_all, readers)
        for user, client in zip(users, clients, strict=True):
            for n in range(OPENS_EACH):
                sid = new_session_id()
                sids[user].append(sid)
                folder = f"{user}/app_data/app/f{n}"
                folders.append(bob.datasites / folder)
                await client.send(HotlinkOpen(sid=sid, pth=f"{folder}/x.request"))
        total = OPENERS * OPENS_EACH

        def answered() -> int:
            return sum(rejects.values()) + bob.count_log(r" in mallory\d→bob open ")

        loop = asyncio.get_running_loop()
        deadline = loop.time() + GUARD
        while answered() < total:
            assert loop.time() < deadline, f"{answered()} of {total} Opens answered"
            await asyncio.sleep(0.2)
        assert bob.alive()
        held = _open_fds(bob) - baseline
        assert held <= MAX_IPC_ENDPOINTS + 16, f"{held} more fds for {total} Opens"
        await _roundtrip(t)

        # The openers end their sessions: bob's endpoints close after the idle grace.
        for user, client in zip(users, clients, strict=True):
            for sid in sids[user]:
                await client.send(HotlinkClose(sid=sid, rsn="done"))

        def left() -> list[Path]:
            return [f for f in folders if unix_socket_path(f / "stream.sock").exists()]

        # Endpoints close one by one after the grace: wait for all of them (a guard only).
        deadline = loop.time() + 30.0 + GUARD
        while _open_fds(bob) - baseline > 8 or left():
            assert loop.time() < deadline, (
                f"{_open_fds(bob) - baseline} fds still held, {len(left())} socket files left"
            )
            await asyncio.sleep(0.5)
        assert not any((f / "stream.sock").exists() for f in folders)
        await _roundtrip(t)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
