"""Flow control on the P2P path: a slow or paused receiving app slows the sending app down,
the stream stays whole and on the data channel, and neither client's memory grows with the
stream. Real relay, real clients, libdatachannel on both sides, 256 MiB per stream."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from support.client_proc import ClientProcess, await_telemetry, dial
from support.server_proc import ServerProcess

from .conftest import close_writer, require_backend, tunnel_between

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SIZE = 256 * MIB
BLOCK = MIB
# Frames that may take the WebSocket before the channel is open (PROTOCOL.md §6.6).
GRACE_FRAMES = 3
PEAK_RSS_LIMIT = 300 * MIB


def peak_rss(client: ClientProcess) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{client.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def send_stream(writer: asyncio.StreamWriter, size: int) -> str:
    """Write ``size`` bytes (every block different), half-close; the sha256 of what was sent."""
    base = os.urandom(BLOCK)
    digest = hashlib.sha256()
    for i in range(size // BLOCK):
        block = i.to_bytes(8, "big") + base[8:]
        digest.update(block)
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    return digest.hexdigest()


async def paced_read(
    reader: asyncio.StreamReader, phases: list[tuple[float | None, float]], timeout: float
) -> tuple[int, str]:
    """Read to EOF in phases of ``(bytes per second or None for full speed, seconds)``; a rate
    of 0 is a pause. After the last phase, full speed. Returns (bytes, sha256)."""
    digest = hashlib.sha256()
    total = 0
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        for rate, seconds in phases:
            end = loop.time() + seconds
            if rate == 0:
                await asyncio.sleep(seconds)
                continue
            started, taken = loop.time(), 0
            while loop.time() < end:
                data = await reader.read(64 * 1024)
                if not data:
                    return total, digest.hexdigest()
                digest.update(data)
                total += len(data)
                taken += len(data)
                if rate is not None:
                    ahead = taken / rate - (loop.time() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        while data := await reader.read(MIB):
            digest.update(data)
            total += len(data)
    return total, digest.hexdigest()


async def run_paced_stream(
    relay: ServerProcess,
    tmp_path: Path,
    phases: list[tuple[float | None, float]],
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    require_backend("libdatachannel")
    async with tunnel_between(
        relay.url, tmp_path, env={"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel", **(env or {})}
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.3)  # bob's connection is the one alice's stream goes to
        _alice_r, alice_w = await dial(t.alice_port)
        started = time.monotonic()
        try:
            sent, (got_bytes, got) = await asyncio.gather(
                send_stream(alice_w, SIZE), paced_read(bob_r, phases, timeout=600)
            )
        finally:
            await close_writer(alice_w)
            await close_writer(bob_w)
        seconds = time.monotonic() - started
        assert got_bytes == SIZE, f"{got_bytes} of {SIZE} bytes, then a clean EOF"
        assert got == sent
        doc = await await_telemetry(t.alice, lambda d: d["tx_bytes"] == SIZE)
        bob_doc = await await_telemetry(t.bob, lambda d: d["rx_bytes"] == SIZE)
        rss = {c.email: peak_rss(c) for c in t.clients}
        return {"alice": doc, "bob": bob_doc, "rss": rss, "seconds": seconds}


def check_stayed_p2p(result: dict[str, object]) -> None:
    doc = result["alice"]
    assert isinstance(doc, dict)
    rss_mib = {k: round(v / MIB) for k, v in result["rss"].items()}  # type: ignore[attr-defined]
    print(  # shown with the failure, and with -s
        f"{result['seconds']:.1f} s; alice: p2p {doc['tx_p2p_packets']} ws {doc['tx_ws_packets']} "
        f"fallbacks {doc['ws_fallbacks']} flow_waits {doc['flow_waits']}; peak RSS MiB {rss_mib}"
    )
    assert doc["ws_fallbacks"] == 0
    assert doc["tx_ws_packets"] <= GRACE_FRAMES
    assert doc["p2p_failed"] == 0 if "p2p_failed" in doc else True
    assert doc["flow_waits"] >= 1  # the slow reader did slow the sender down
    rss = result["rss"]
    assert isinstance(rss, dict)
    for email, peak in rss.items():
        assert peak < PEAK_RSS_LIMIT, f"{email} peaked at {peak / MIB:.0f} MiB"


SLOW_THEN_PAUSE = [(4e6, 5.0), (0, 15.0)]


async def test_slow_then_paused_then_fast_reader_keeps_the_stream_p2p(
    relay: ServerProcess, tmp_path: Path
) -> None:
    check_stayed_p2p(await run_paced_stream(relay, tmp_path, SLOW_THEN_PAUSE))


async def test_the_same_in_p2p_only_strict_mode(relay: ServerProcess, tmp_path: Path) -> None:
    strict = {"SYFTBOX_HOTLINK_P2P_ONLY": "1", "SYFTBOX_HOTLINK_BENCH_STRICT": "1"}
    result = await run_paced_stream(relay, tmp_path, SLOW_THEN_PAUSE, env=strict)
    check_stayed_p2p(result)
    doc = result["alice"]
    assert isinstance(doc, dict)
    assert doc["strict_violations"] == 0
    assert doc["tx_ws_packets"] == 0


async def test_a_reader_at_300_kb_per_s_for_a_minute(relay: ServerProcess, tmp_path: Path) -> None:
    check_stayed_p2p(await run_paced_stream(relay, tmp_path, [(300e3, 60.0)]))
