"""No leaks: 200 P2P sessions opened and closed leave threads, fds and tasks at baseline.

Eight tunnel channels run side by side; each round on a channel is one session from alice
to bob (bob offers, alice answers). Even rounds stream a little data to a clean EOF (the
channel opens and carries it); odd rounds abort the app connection right after writing,
a little later each time, so sessions also end while their peer is still negotiating.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import pytest

from support.client_proc import (
    ALICE,
    BOB,
    ClientProcess,
    await_telemetry,
    dial,
    free_port,
    start_client,
    write_default_acls,
    write_tcp_channel,
)
from support.server_proc import ServerProcess

from .conftest import P2P_ENV, close_writer

pytestmark = pytest.mark.slow

CHANNELS = 8
SESSIONS = 200
PAYLOAD = bytes(range(256)) * 32  # 8 KiB
# The interpreter's threads are all called "python" in /proc: the main thread and the
# default executor's workers (peer teardown runs there), a pool that grows on demand up to
# this size and then only reuses its threads. Library threads have their own names.
EXECUTOR_MAX = min(32, (os.cpu_count() or 1) + 4)
# Besides them: the main thread and the file watcher's event thread.
OWN_THREADS = 2


@dataclass
class Counts:
    native_threads: int  # libdatachannel's and libjuice's
    python_threads: int
    fds: int
    p2p_tasks: int


def _channel(i: int) -> str:
    return f"shared/flows/leak/run{i}/_mpc/0_to_1"


def _sample(client: ClientProcess, doc: dict[str, Any]) -> Counts:
    proc = Path(f"/proc/{client.pid}")
    names = [(t / "comm").read_text().strip() for t in (proc / "task").iterdir()]
    python = sum(1 for n in names if n == "python")
    fds = len(list((proc / "fd").iterdir()))
    return Counts(len(names) - python, python, fds, doc.get("p2p_tasks", 0))


async def _counts(client: ClientProcess, doc: dict[str, Any]) -> Counts:
    """The smallest of a few samples over ~2 s.

    An idle client still opens a file now and then (the telemetry temp file it renames into
    place every few seconds), so one sample can be one fd high; a leak does not go away
    between samples, and 200 sessions leaking would show as hundreds.
    """
    samples = []
    for _ in range(8):
        samples.append(_sample(client, doc))
        await asyncio.sleep(0.25)
    return Counts(*(min(column) for column in zip(*map(astuple, samples), strict=True)))


async def _idle(client: ClientProcess) -> dict[str, Any]:
    """Telemetry written from now on, once no session and no peer connection is left."""
    now_ms = time.time() * 1000
    return await await_telemetry(
        client,
        lambda d: (
            d["updated_ms"] > now_ms
            and d.get("p2p_peers", 0) == 0
            and d["live"]["inbound"] == 0
            and d["live"]["outbound_accepted"] + d["live"]["outbound_pending"] == 0
        ),
        timeout=60,
    )


async def _round(alice_port: int, bob_port: int, n: int) -> None:
    bob_r, bob_w = await dial(bob_port)
    _alice_r, alice_w = await dial(alice_port)
    try:
        alice_w.write(PAYLOAD)
        await alice_w.drain()
        if n % 2:
            # 0-40 ms: the session ends anywhere from before its Open to after channel open.
            await asyncio.sleep((n // 2 % 5) * 0.01)
            alice_w.transport.abort()
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
                async with asyncio.timeout(30):
                    await bob_r.read()
        else:
            alice_w.write_eof()
            async with asyncio.timeout(30):
                data = await bob_r.read()
            assert data == PAYLOAD
    finally:
        await close_writer(alice_w)
        await close_writer(bob_w)


async def _run(ports: list[tuple[int, int]], sessions: int) -> None:
    async def lane(i: int) -> None:
        alice_port, bob_port = ports[i]
        for n in range(i, sessions, len(ports)):
            await _round(alice_port, bob_port, n)

    await asyncio.gather(*(lane(i) for i in range(len(ports))))


def _write_channels(dirs: dict[str, Path], ports: list[tuple[int, int]]) -> None:
    for email, data_dir in dirs.items():
        write_default_acls(data_dir / "datasites" / email)
        for i, (alice_port, bob_port) in enumerate(ports):
            for owner in (ALICE, BOB):
                write_tcp_channel(
                    data_dir / "datasites",
                    owner,
                    _channel(i),
                    from_email=ALICE,
                    to_email=BOB,
                    ports={ALICE: alice_port, BOB: bob_port},
                    acl_roots=["shared/flows/leak"],
                )


async def test_200_sessions_leave_no_threads_fds_or_tasks_behind(
    relay: ServerProcess, tmp_path: Path
) -> None:
    dirs = {ALICE: tmp_path / "alice", BOB: tmp_path / "bob"}
    ports = [(free_port(), free_port()) for _ in range(CHANNELS)]
    _write_channels(dirs, ports)
    env = {**P2P_ENV, "SYFTBOX_HOTLINK_DEBUG": "0"}
    clients: list[ClientProcess] = []
    try:
        for email in (ALICE, BOB):
            clients.append(
                await asyncio.to_thread(start_client, relay.url, email, dirs[email], env=env)
            )
        for client in clients:
            async with asyncio.timeout(30):
                while client.count_log(r"tcp proxy: starting") < CHANNELS:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)

        # Warm-up: a few rounds per channel, so lazily created pools (libdatachannel's
        # threads, the teardown executor) exist before the baseline is taken.
        await _run(ports, 4 * CHANNELS)
        baseline = {c.email: await _counts(c, await _idle(c)) for c in clients}

        await _run(ports, SESSIONS)

        for client in clients:
            doc = await _idle(client)
            after = await _counts(client, doc)
            before = baseline[client.email]
            print(f"{client.email}: before {before}; after {after}")
            assert after.fds <= before.fds, f"{client.email} leaked file descriptors"
            assert after.native_threads <= before.native_threads, f"{client.email} leaked threads"
            assert after.python_threads <= OWN_THREADS + EXECUTOR_MAX, (
                f"{client.email} leaked threads"
            )
            assert after.p2p_tasks <= before.p2p_tasks, f"{client.email} leaked tasks"
        bob = clients[1]
        # Every round was a session that went through negotiation on both sides.
        assert (await _idle(bob))["p2p_offers"] >= SESSIONS
        opened = bob.count_log(r"data channel open \(offerer\)")
        assert opened >= SESSIONS // 2
        print(f"channels opened {opened} of {SESSIONS + 4 * CHANNELS} sessions")
    finally:
        for client in clients:
            await asyncio.to_thread(client.stop)
