"""Flow control on the P2P path: a slow or paused receiving app slows the sending app down,
the stream stays whole and on the data channel, and neither client's memory grows with the
stream. Real relay, real clients, libdatachannel on both sides, 256 MiB per stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from support.client_proc import ClientProcess, await_telemetry, dial
from support.server_proc import ServerProcess
from support.streams import Pattern, Phase, assert_whole, read_stream, send_stream

from .conftest import WAIT_FOR_CHANNEL, close_writer, require_backend, tunnel_between

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SIZE = 256 * MIB
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


async def run_paced_stream(
    relay: ServerProcess,
    tmp_path: Path,
    phases: list[Phase],
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    require_backend("libdatachannel")
    async with tunnel_between(
        relay.url,
        tmp_path,
        env={"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel", **WAIT_FOR_CHANNEL, **(env or {})},
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.3)  # bob's connection is the one alice's stream goes to
        _alice_r, alice_w = await dial(t.alice_port)
        started = time.monotonic()
        pattern = Pattern()
        try:
            got, sent = await asyncio.gather(
                read_stream(bob_r, pattern, phases), send_stream(alice_w, SIZE, pattern)
            )
        finally:
            await close_writer(alice_w)
            await close_writer(bob_w)
        seconds = time.monotonic() - started
        assert_whole(got, sent)
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
    assert doc.get("p2p_failed", 0) == 0
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
