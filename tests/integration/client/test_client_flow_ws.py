"""Flow control on the WebSocket path (WebRTC off): one stalled app costs only its own
stream. Two tunnels between the same clients share one WebSocket each way; while bob's app
on the first does not read at all, the second streams to the end, no WebSocket is closed,
and the first stream is whole once its app reads again."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from hotlink.devstack import Channel, free_port, write_channel_tree
from support.client_proc import ALICE, BOB, PROXY_STARTING, Tunnel, dial, start_tunnel
from support.server_proc import ServerProcess

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SIZE = 64 * MIB
STALL = 15.0


async def send(writer: asyncio.StreamWriter, size: int) -> str:
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    for i in range(size // MIB):
        data = i.to_bytes(8, "big") + block[8:]
        digest.update(data)
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    return digest.hexdigest()


async def receive(reader: asyncio.StreamReader) -> tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    while data := await reader.read(MIB):
        digest.update(data)
        total += len(data)
    return total, digest.hexdigest()


def add_second_tunnel(tmp_path: Path) -> dict[str, int]:
    ports = {ALICE: free_port(), BOB: free_port()}
    channel = Channel(ALICE, BOB, 0, 1, ports, flow="shared/flows/second")
    for name in ("alice", "bob"):
        write_channel_tree(tmp_path / name / "datasites", channel)
    return ports


async def test_a_stalled_app_does_not_stall_the_other_session(
    relay: ServerProcess, tmp_path: Path
) -> None:
    env = {"SYFTBOX_HOTLINK_WEBRTC": "0"}
    tunnel: Tunnel = await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env=env)
    try:
        second = add_second_tunnel(tmp_path)
        for client in tunnel.clients:
            await client.await_log(PROXY_STARTING + r".*shared/flows/second", timeout=30)
        marks = {c.email: c.log_mark() for c in tunnel.clients}
        relay_mark = relay.log_mark()

        stalled_r, stalled_bw = await dial(tunnel.bob_port)
        other_r, other_bw = await dial(second[BOB])
        await asyncio.sleep(0.3)
        _, stalled_w = await dial(tunnel.alice_port)
        _, other_w = await dial(second[ALICE])
        loop = asyncio.get_running_loop()
        stall_started = loop.time()
        stalled_sent = asyncio.create_task(send(stalled_w, SIZE))
        # Bob's first app reads nothing; the second stream must still get through whole.
        other_sent, (other_bytes, other_got) = await asyncio.wait_for(
            asyncio.gather(send(other_w, SIZE), receive(other_r)), timeout=120
        )
        assert other_bytes == SIZE and other_got == other_sent
        assert not stalled_sent.done()  # held back by flow control, not failed
        await asyncio.sleep(max(0.0, STALL - (loop.time() - stall_started)))
        stalled_bytes, stalled_got = await asyncio.wait_for(receive(stalled_r), timeout=120)
        assert stalled_bytes == SIZE and stalled_got == await stalled_sent
        for w in (stalled_w, other_w, stalled_bw, other_bw):
            w.close()

        # Nobody lost the WebSocket: no reconnect, no slow-reader disconnect at the relay.
        for client in tunnel.clients:
            assert client.count_log(r"disconnected from", since=marks[client.email]) == 0
            assert client.count_log(r"connected to \S+ as", since=marks[client.email]) == 0
        assert relay.count_log(r"slow reader|send queue full", since=relay_mark) == 0
        doc = tunnel.alice.telemetry()
        assert doc is not None and doc["flow_waits"] >= 1
    finally:
        await asyncio.to_thread(tunnel.stop)
