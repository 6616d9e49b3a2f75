"""The benchmark's WAN shape in real network namespaces (root only): the round trip is the
one asked for, bytes cross a lossy link intact, each TCP socket runs the congestion control
it names, and nothing is left behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess

import pytest
from bench.wan import WanShape, unsupported_reason
from bench.wan_matrix import Cell, MatrixConfig, run_matrix, tcp_flow

from hotlink.lab.netns import socket_in_netns

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unsupported_reason() is not None, reason=str(unsupported_reason())),
]


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


async def send_through(wan: WanShape, payload: bytes) -> bytes:
    """alice -> bob over TCP between the namespaces; what bob's end read."""
    listener = socket_in_netns(wan.ns("bob"))
    listener.bind(("203.0.113.22", 0))
    listener.listen(1)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    client = socket_in_netns(wan.ns("alice"))
    client.setblocking(False)
    try:
        async with asyncio.timeout(60):
            accepting = asyncio.ensure_future(loop.sock_accept(listener))
            await loop.sock_connect(client, ("203.0.113.22", listener.getsockname()[1]))
            server, _ = await accepting
            with server:

                async def send() -> None:
                    await loop.sock_sendall(client, payload)
                    client.shutdown(socket.SHUT_WR)

                sending = asyncio.create_task(send())
                chunks = []
                while chunk := await loop.sock_recv(server, 1 << 16):
                    chunks.append(chunk)
                await sending
        return b"".join(chunks)
    finally:
        client.close()
        listener.close()


async def test_lossy_delayed_shape_carries_bytes_intact_then_vanishes() -> None:
    payload = os.urandom(2 * 1024 * 1024)
    with WanShape.peers(20.0, loss_pct=1.0, rate="100mbit") as wan:
        prefix = wan.prefix
        assert prefix in namespaces()
        # A delay line sends frames at most ~1 ms early per hop, never 10 % early.
        rtt = await asyncio.to_thread(wan.tcp_rtt_ms, "alice", "bob")
        assert rtt >= 18.0
        got = await send_through(wan, payload)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
        procs = list(wan.link_procs)
        assert procs, "a delayed shape without netem runs user-space links"
    assert prefix not in namespaces()
    assert all(p.poll() is not None for p in procs)


async def test_tcp_rows_use_the_congestion_control_they_name() -> None:
    cfg = MatrixConfig(warmup_s=0.2, window_s=0.5, rtt_rounds=3)
    with WanShape.peers(2.0) as wan:
        for cc in ("cubic", "bbr"):
            row = await tcp_flow(wan, cfg, cc)
            assert row.error is None
            assert row.congestion == cc
            assert row.window_bytes > 0


async def test_one_cell_runs_every_path_and_tears_down() -> None:
    cfg = MatrixConfig(
        cells=(Cell(2.0, 0.0, "100mbit"),),
        backends=("libdatachannel",),
        congestion=("bbr",),
        warmup_s=0.3,
        window_s=0.5,
        rtt_rounds=3,
    )
    result = await run_matrix(cfg)
    (cell,) = result.cells
    assert cell.error is None
    for key in ("tcp-bbr", "p2p-libdatachannel"):
        row = cell.flows[key]
        assert row.error is None, f"{key}: {row.error}"
        assert row.window_bytes > 0
    assert cell.flows["p2p-libdatachannel"].on_p2p
    assert cell.ratio("libdatachannel", "bbr") is not None
    assert "hlb" + str(os.getpid()) not in namespaces()
