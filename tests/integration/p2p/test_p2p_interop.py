"""Cross-backend P2P: alice on libdatachannel and bob on aiortc, and the reverse.

Each direction of the tunnel is its own session, so one run has each backend both offering
(for the stream it receives) and answering (for the stream it sends).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from support.client_proc import await_telemetry, dial
from support.server_proc import ServerProcess

from .conftest import (
    backend_env,
    channel_opens,
    close_writer,
    require_backend,
    stream_through,
    tunnel_between,
)

SIZE = 2 * 1024 * 1024

PAIRS = [("libdatachannel", "aiortc"), ("aiortc", "libdatachannel")]


@pytest.mark.parametrize(("alice_backend", "bob_backend"), PAIRS, ids=["ldc-aiortc", "aiortc-ldc"])
async def test_mixed_backends_carry_both_directions(
    relay: ServerProcess, tmp_path: Path, alice_backend: str, bob_backend: str
) -> None:
    require_backend(alice_backend)
    require_backend(bob_backend)
    async with tunnel_between(
        relay.url,
        tmp_path,
        alice_env=backend_env(alice_backend),
        bob_env=backend_env(bob_backend),
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        alice_r, alice_w = await dial(t.alice_port)
        to_bob, to_alice = await asyncio.gather(
            stream_through(alice_w, bob_r, SIZE, block=64 * 1024, eof=False),
            stream_through(bob_w, alice_r, SIZE, block=64 * 1024, eof=False),
        )
        for result in (to_bob, to_alice):
            assert result.received == SIZE
            assert result.digest_got == result.digest_sent
        for client, backend in ((t.alice, alice_backend), (t.bob, bob_backend)):
            assert f"backend {backend}" in client.log_text()
            doc = await await_telemetry(client, lambda d: d["tx_bytes"] >= SIZE)
            assert doc["tx_p2p_packets"] > 0
            assert doc["tx_ws_packets"] <= 3
            assert {role for role, _ in channel_opens(client)} == {"offerer", "answerer"}
        await close_writer(alice_w)
        await close_writer(bob_w)
