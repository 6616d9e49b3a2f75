"""Slow, paused and frozen parties, with real processes, on the WebSocket path and the P2P
path: the stream runs at the pace of the slowest party and arrives whole. Nothing times out
a slow app, and one stalled app costs only its own stream: another stream on the same
WebSocket keeps going and no connection is dropped. (Losing a stream: the contract tests.)"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from hotlink.lab.trees import Channel, free_port, write_channel_tree
from support.client_proc import ALICE, BOB, PROXY_STARTING, Tunnel, dial, start_tunnel
from support.server_proc import ServerProcess
from support.streams import (
    Pattern,
    assert_whole,
    assert_whole_or_reset,
    read_stream,
    send_stream,
)

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
PATHS = {
    "ws": {"SYFTBOX_HOTLINK_WEBRTC": "0"},
    "p2p": {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel"},
}


@pytest.fixture(params=sorted(PATHS))
def path_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return PATHS[request.param]


async def open_tunnel(relay: ServerProcess, tmp_path: Path, env: dict[str, str]) -> Tunnel:
    return await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env=env)


async def connect_pair(
    t: Tunnel,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter]:
    """Bob's app connects first (so alice's stream goes to it), then alice's."""
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.3)
    _, alice_w = await dial(t.alice_port)
    return bob_r, bob_w, alice_w


async def test_an_app_that_pauses_20_s_gets_the_whole_stream(
    relay: ServerProcess, tmp_path: Path, path_env: dict[str, str]
) -> None:
    # 32 MiB: more than the window and every buffer on the way, so the sender must wait.
    t = await open_tunnel(relay, tmp_path, path_env)
    try:
        bob_r, bob_w, alice_w = await connect_pair(t)
        pattern = Pattern()
        got, sent = await asyncio.gather(
            read_stream(bob_r, pattern, [(0, 20.0)]), send_stream(alice_w, 32 * MIB, pattern)
        )
        assert_whole(got, sent)
        doc = t.alice.telemetry()
        assert doc is not None and doc["flow_waits"] >= 1
        for w in (alice_w, bob_w):
            w.close()
    finally:
        await asyncio.to_thread(t.stop)


async def test_an_app_reading_at_100_kb_per_s_gets_the_whole_stream(
    relay: ServerProcess, tmp_path: Path, path_env: dict[str, str]
) -> None:
    # A small window (64 KiB) puts this short stream under flow control all the way.
    env = {**path_env, "SYFTBOX_HOTLINK_FLOW_WINDOW": str(64 * 1024)}
    t = await open_tunnel(relay, tmp_path, env)
    try:
        bob_r, bob_w, alice_w = await connect_pair(t)
        pattern = Pattern()
        got, sent = await asyncio.gather(
            read_stream(bob_r, pattern, [(100e3, 3600.0)]), send_stream(alice_w, 2 * MIB, pattern)
        )
        assert_whole(got, sent)
        for w in (alice_w, bob_w):
            w.close()
    finally:
        await asyncio.to_thread(t.stop)


async def test_a_frozen_receiving_client_delays_the_stream_but_never_cuts_it(
    relay: ServerProcess, tmp_path: Path, path_env: dict[str, str]
) -> None:
    t = await open_tunnel(relay, tmp_path, path_env)
    try:
        bob_r, bob_w, alice_w = await connect_pair(t)
        pattern = Pattern()
        reading = asyncio.create_task(read_stream(bob_r, pattern))
        sending = asyncio.create_task(send_stream(alice_w, 96 * MIB, pattern))
        await t.bob.await_telemetry(lambda d: d["rx_bytes"] >= 8 * MIB, timeout=60)
        t.bob.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(10)
        finally:
            t.bob.signal(signal.SIGCONT)
        async with asyncio.timeout(120):
            got, sent = await reading, await sending
        assert_whole_or_reset(got, sent)
        if sent.end == "eof":
            # The sending app was told its stream went through: then it all arrived.
            assert_whole(got, sent)
        for w in (alice_w, bob_w):
            w.close()
    finally:
        await asyncio.to_thread(t.stop)


def add_second_tunnel(tmp_path: Path) -> dict[str, int]:
    ports = {ALICE: free_port(), BOB: free_port()}
    channel = Channel(ALICE, BOB, 0, 1, ports, flow="shared/flows/second")
    for name in ("alice", "bob"):
        write_channel_tree(tmp_path / name / "datasites", channel)
    return ports


async def test_a_stalled_app_does_not_stall_the_other_session_on_the_websocket(
    relay: ServerProcess, tmp_path: Path
) -> None:
    """Two tunnels between the same clients share one WebSocket each way (WebRTC off).
    While bob's app on the first reads nothing (15 s), the second streams to the end, no
    WebSocket is closed, and the first arrives whole once its app reads again."""
    t = await open_tunnel(relay, tmp_path, PATHS["ws"])
    try:
        second = add_second_tunnel(tmp_path)
        for client in t.clients:
            await client.await_log(PROXY_STARTING + r".*shared/flows/second", timeout=30)
        marks = {c.email: c.log_mark() for c in t.clients}
        relay_mark = relay.log_mark()
        stalled_r, stalled_bw, stalled_w = await connect_pair(t)
        other_r, other_bw = await dial(second[BOB])
        await asyncio.sleep(0.3)
        _, other_w = await dial(second[ALICE])
        pattern = Pattern()
        loop = asyncio.get_running_loop()
        stall_until = loop.time() + 15.0
        stalled_sent = asyncio.create_task(send_stream(stalled_w, 64 * MIB, pattern))
        # The first stream's app reads nothing; the second must still get through whole.
        got, sent = await asyncio.wait_for(
            asyncio.gather(read_stream(other_r, pattern), send_stream(other_w, 64 * MIB, pattern)),
            timeout=120,
        )
        assert_whole(got, sent)
        assert not stalled_sent.done()  # held back by flow control, not failed
        got = await read_stream(stalled_r, pattern, [(0, max(0.0, stall_until - loop.time()))])
        assert_whole(got, await stalled_sent)
        for w in (stalled_w, other_w, stalled_bw, other_bw):
            w.close()
        # Nobody lost the WebSocket: no reconnect, no slow-reader disconnect at the relay.
        for client in t.clients:
            assert client.count_log(r"disconnected from", since=marks[client.email]) == 0
            assert client.count_log(r"connected to \S+ as", since=marks[client.email]) == 0
        assert relay.count_log(r"send queue full", since=relay_mark) == 0
        doc = t.alice.telemetry()
        assert doc is not None and doc["flow_waits"] >= 1
    finally:
        await asyncio.to_thread(t.stop)
