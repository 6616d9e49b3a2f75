"""Peer keys as a person handles them, with two real clients and a tunnel (WebSocket path):

``hotlink status`` shows each side's own key and the key each session's peer proved; the
first sealed stream pins them. Bob then gets a new identity key (his key file removed, his
client restarted): alice refuses his sessions loudly (closed "e2e: ... pinned"), and no byte
reaches bob's app. Once alice runs ``hotlink e2e trust`` with bob's new fingerprint, the
next stream is sealed again, without restarting alice's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotlink.client.control_client import (
    control_socket_path,
    is_ready,
    tunnel_listening,
    wait_for_status_async,
)
from hotlink.client.e2e.keystore import IDENTITY_FILE, key_dir
from support.client_proc import (
    ALICE,
    BOB,
    ClientProcess,
    Tunnel,
    client_env,
    dial,
    start_client,
    start_tunnel,
)
from support.server_proc import ServerProcess
from support.streams import MIB, Pattern, assert_whole, read_stream, send_stream

pytestmark = pytest.mark.slow

GUARD = 60.0  # failure guard for every wait below
WS_ONLY = {"SYFTBOX_HOTLINK_WEBRTC": "0"}
SIZE = 2 * MIB


def hotlink(*args: str, data_dir: Path, email: str) -> subprocess.CompletedProcess[str]:
    """``hotlink ARGS --data-dir D --email E`` as its own process, as a person runs it."""
    argv = [sys.executable, "-m", "hotlink", *args, "--data-dir", str(data_dir), "--email", email]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=GUARD,
        env=client_env({"HOME": str(data_dir), "COLUMNS": "200"}),
        check=False,
    )


async def run_ok(client: ClientProcess, *args: str) -> str:
    done = await asyncio.to_thread(hotlink, *args, data_dir=client.data_dir, email=client.email)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


async def fingerprint(client: ClientProcess) -> str:
    return (await run_ok(client, "e2e", "fingerprint")).strip()


async def status(client: ClientProcess) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(await run_ok(client, "status", "--json"))
    return doc


def sock(client: ClientProcess) -> Path:
    return control_socket_path(client.data_dir, client.email)


async def until_ended(
    client: ClientProcess, direction: str, peer: str, ok: Callable[[dict[str, Any]], bool]
) -> None:
    """Until the client's status has an ended session with ``peer`` in ``direction`` for
    which ``ok`` holds."""

    def found(doc: dict[str, Any]) -> bool:
        return any(
            e["direction"] == direction and e["peer"] == peer and ok(e) for e in doc["recent"]
        )

    await wait_for_status_async(sock(client), found, GUARD)


def sealed_with(key: str, size: int) -> Callable[[dict[str, Any]], bool]:
    """An ended session that carried ``size`` bytes to its clean end, sealed, with the
    peer's key ``key``."""

    def ok(e: dict[str, Any]) -> bool:
        carried = max(e["tx_bytes"], e["rx_bytes"])
        return bool(e["clean"] and e["e2e"] and e["peer_key"] == key and carried == size)

    return ok


def refused_for_pin(e: dict[str, Any]) -> bool:
    reason = str(e["reason"])
    return reason.startswith("e2e:") and "pinned" in reason


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def stream(t: Tunnel, size: int, *, expect_whole: bool) -> int:
    """Alice's app sends ``size`` bytes to bob's app; returns how many bob's app got (whole
    and in order, when ``expect_whole``)."""
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.3)  # bob's app connection is there before the stream arrives
    _alice_r, alice_w = await dial(t.alice_port)
    pattern = Pattern()
    reading = asyncio.create_task(read_stream(bob_r, pattern, timeout=GUARD))
    try:
        sent = await send_stream(alice_w, size, pattern)
        if expect_whole:
            got = await reading
            assert_whole(got, sent)
            return got.size
        # Refused: wait for alice to say so, then end bob's app connection ourselves (the
        # read ends either way) and count what it got.
        await until_ended(t.alice, "out", BOB, refused_for_pin)
        await close_writer(bob_w)
        got = await reading
        assert got.in_order
        return got.size
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        await close_writer(alice_w)
        await close_writer(bob_w)


async def test_a_changed_peer_key_is_refused_until_trusted_without_a_restart(
    relay: ServerProcess, tmp_path: Path
) -> None:
    t = await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env=WS_ONLY)
    try:
        alice_fp, bob_fp = await fingerprint(t.alice), await fingerprint(t.bob)
        assert alice_fp != bob_fp

        # The first stream seals and pins; each side shows the key the other proved.
        assert await stream(t, SIZE, expect_whole=True) == SIZE
        await until_ended(t.alice, "out", BOB, sealed_with(bob_fp, SIZE))
        await until_ended(t.bob, "in", ALICE, sealed_with(alice_fp, SIZE))
        doc = await status(t.alice)
        assert doc["e2e"] == {"mode": "on", "fingerprint": alice_fp}
        last = next(e for e in doc["recent"] if e["peer"] == BOB)
        assert (last["e2e"], last["e2e_state"], last["peer_key"]) == (True, "sealed", bob_fp)
        human = await run_ok(t.alice, "status")
        assert f"e2e on, identity key {alice_fp}" in human and bob_fp in human, human
        peers = json.loads(await run_ok(t.alice, "e2e", "peers", "--json"))["peers"]
        assert [(p["email"], p["fingerprint"], p["source"]) for p in peers] == [
            (BOB, bob_fp, "pinned")
        ]
        alice_pid = t.alice.pid

        # Bob gets a new identity key: his key file removed, his client restarted.
        await asyncio.to_thread(t.bob.stop)
        (key_dir(t.bob.data_dir) / IDENTITY_FILE).unlink()
        t.bob = await asyncio.to_thread(start_client, relay.url, BOB, t.bob.data_dir, env=WS_ONLY)
        key = doc["tunnels"][0]["key"]
        listening = tunnel_listening(key)
        await wait_for_status_async(sock(t.bob), lambda d: is_ready(d) and listening(d), GUARD)
        new_bob_fp = await fingerprint(t.bob)
        assert new_bob_fp != bob_fp

        # Alice refuses the new key loudly; nothing reaches bob's app.
        assert await stream(t, MIB, expect_whole=False) == 0
        doc = await status(t.alice)
        refused = next(e for e in doc["recent"] if e["peer"] == BOB and refused_for_pin(e))
        assert new_bob_fp in refused["reason"] and bob_fp in refused["reason"]
        assert not refused["clean"] and refused["tx_bytes"] == 0
        assert t.alice.search_log(r"ERROR.*closed: e2e: .*is pinned for it") is not None

        # Compared out of band, alice accepts bob's new key; her client keeps running.
        out = await run_ok(t.alice, "e2e", "trust", BOB, new_bob_fp.upper())
        assert f"{bob_fp} → {new_bob_fp}" in out
        assert await stream(t, SIZE, expect_whole=True) == SIZE
        await until_ended(t.alice, "out", BOB, sealed_with(new_bob_fp, SIZE))
        doc = await status(t.alice)
        assert doc["pid"] == alice_pid and t.alice.alive()
        assert doc["connection"]["connects"] == 1
    finally:
        await asyncio.to_thread(t.stop)
