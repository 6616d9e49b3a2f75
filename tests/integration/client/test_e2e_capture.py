"""What the relay can read: a capture of its traffic (tcpdump on loopback, WebRTC off) while a
tunnel carries a known canary. Sealed (the default), the canary appears nowhere in it; with
``SYFTBOX_HOTLINK_E2E=0`` on both clients it does, which proves the capture sees the stream
(so the first test cannot pass for a capture that missed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from hotlink.client.e2e.keystore import load_identity
from support.capture import RelayTraffic, capture_unavailable, capturing
from support.client_proc import (
    ALICE,
    BOB,
    ClientProcess,
    Tunnel,
    await_telemetry,
    dial,
    read_to_eof,
    start_tunnel,
)
from support.server_proc import ServerProcess

WS_ONLY = {"SYFTBOX_HOTLINK_WEBRTC": "0"}
E2E_OFF = {"SYFTBOX_HOTLINK_E2E": "0"}
COPIES = 256
FILLER = 4096

pytestmark = pytest.mark.skipif(
    capture_unavailable() is not None, reason=capture_unavailable() or ""
)


def canary_payload() -> tuple[bytes, bytes]:
    """A random 32-byte canary, and a stream of about 1 MiB holding it ``COPIES`` times
    between random filler (so it is in many frames, wherever they are cut)."""
    canary = secrets.token_bytes(32)
    return canary, b"".join(os.urandom(FILLER) + canary for _ in range(COPIES))


def _row(rows: list[dict[str, Any]], peer: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("peer") == peer), None)


async def _stream_through(tunnel: Tunnel, payload: bytes) -> tuple[dict[str, Any], ...]:
    """Alice's app sends ``payload`` to bob's app; returns alice's outbound and bob's
    inbound telemetry rows of the session (read while it is live, once its end-to-end state
    is settled), after checking that bob's app got every byte and a clean EOF."""
    bob_r, bob_w = await dial(tunnel.bob_port)
    await asyncio.sleep(0.3)  # bob's app connection is there before the stream arrives
    _alice_r, alice_w = await dial(tunnel.alice_port)
    reading = asyncio.create_task(read_to_eof(bob_r))
    try:
        alice_w.write(payload)
        await alice_w.drain()
        # The session lives until alice's app ends its stream: read its rows first.
        out = await _settled_row(tunnel.alice, "sessions_out", BOB)
        into = await _settled_row(tunnel.bob, "sessions_in", ALICE)
        alice_w.write_eof()
        got = await reading
        assert len(got) == len(payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    finally:
        reading.cancel()
        for w in (alice_w, bob_w):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
    return out, into


async def _settled_row(client: ClientProcess, table: str, peer: str) -> dict[str, Any]:
    """The client's live telemetry row of its session with ``peer``, once the session knows
    whether it is sealed."""

    def settled(doc: dict[str, Any]) -> bool:
        row = _row(doc["live"][table], peer)
        return row is not None and row["e2e_state"] != "pending"

    doc = await await_telemetry(client, settled)
    return _row(doc["live"][table], peer) or {}


async def _captured_tunnel(
    relay: ServerProcess, tmp_path: Path, env: dict[str, str], payload: bytes
) -> tuple[RelayTraffic, tuple[dict[str, Any], ...]]:
    # The capture starts before the clients connect: their upgrades are in it.
    with capturing(relay.port, tmp_path / "relay.pcap") as capture:
        tunnel = await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env=env)
        try:
            rows = await _stream_through(tunnel, payload)
        finally:
            await asyncio.to_thread(tunnel.stop)
    return capture.traffic, rows


def _fingerprint(data_dir: Path) -> str:
    return load_identity(data_dir, create=False).fingerprint


def _carried(traffic: RelayTraffic) -> int:
    """Payload bytes the relay sent to bob in HotlinkData (so the capture saw the stream)."""
    return sum(len(f.pay) for f in traffic.data_frames(to=BOB))


async def test_the_relay_never_sees_the_canary_of_a_sealed_tunnel(
    relay: ServerProcess, tmp_path: Path
) -> None:
    canary, payload = canary_payload()
    traffic, (alice_row, bob_row) = await _captured_tunnel(relay, tmp_path, WS_ONLY, payload)
    assert traffic.places(canary) == []
    # The stream did cross the relay (sealed frames to bob, at least the payload's size).
    frames = traffic.data_frames(to=BOB)
    assert frames and all(f.etg == "e2e1" for f in frames), {f.etg for f in frames}
    assert _carried(traffic) >= len(payload)
    for row in (alice_row, bob_row):
        assert row["e2e"] is True and row["e2e_state"] == "sealed", row
        assert row["transport"] == "ws", row
    # Each row names the other's key (what `hotlink status` shows for comparison).
    assert alice_row["peer_key"] == _fingerprint(tmp_path / "bob")
    assert bob_row["peer_key"] == _fingerprint(tmp_path / "alice")


async def test_with_e2e_off_the_canary_is_in_the_capture(
    relay: ServerProcess, tmp_path: Path
) -> None:
    canary, payload = canary_payload()
    env = {**WS_ONLY, **E2E_OFF}
    traffic, (alice_row, bob_row) = await _captured_tunnel(relay, tmp_path, env, payload)
    places = traffic.places(canary)
    # As plain bytes on the relay's socket to bob (unmasked), and in alice's unmasked frames.
    assert any(p.startswith(f"{BOB}:") and p.endswith("from relay: raw TCP stream") for p in places)
    assert any(p.startswith(f"{ALICE}:") and "to relay: WebSocket message" in p for p in places)
    assert b"".join(f.pay for f in traffic.data_frames(to=BOB)).count(canary) == COPIES
    for row in (alice_row, bob_row):
        assert row["e2e"] is False and row["e2e_state"] == "off", row
