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
    WAIT_FOR_CHANNEL,
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
        env=WAIT_FOR_CHANNEL,
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


@pytest.mark.slow
@pytest.mark.parametrize(("alice_backend", "bob_backend"), PAIRS, ids=["ldc-aiortc", "aiortc-ldc"])
async def test_flow_control_holds_across_backends(
    relay: ServerProcess, tmp_path: Path, alice_backend: str, bob_backend: str
) -> None:
    """Bob's app reads nothing for 5 s while alice writes 24 MiB (three windows): the sender
    waits for credit, the stream stays on the channel and arrives whole."""
    require_backend(alice_backend)
    require_backend(bob_backend)
    size = 24 * 1024 * 1024
    async with tunnel_between(
        relay.url,
        tmp_path,
        env=WAIT_FOR_CHANNEL,
        alice_env=backend_env(alice_backend),
        bob_env=backend_env(bob_backend),
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        _alice_r, alice_w = await dial(t.alice_port)
        result = await stream_through(alice_w, bob_r, size, read_delay=5.0)
        assert result.received == size and result.digest_got == result.digest_sent
        doc = await await_telemetry(t.alice, lambda d: d["tx_bytes"] >= size)
        assert doc["flow_waits"] >= 1
        assert doc["ws_fallbacks"] == 0 and doc["tx_ws_packets"] <= 3
        await close_writer(alice_w)
        await close_writer(bob_w)


@pytest.mark.parametrize("legacy", ["sender", "receiver"])
async def test_a_peer_without_flow_control_interoperates_as_before(
    relay: ServerProcess, tmp_path: Path, legacy: str
) -> None:
    """A client with SYFTBOX_HOTLINK_FLOW_CONTROL=0 grants no credit and ignores grants, as a
    reference client does (it ignores the unknown signal kind): streams both ways still go
    peer to peer and arrive whole."""
    off = {"SYFTBOX_HOTLINK_FLOW_CONTROL": "0"}
    async with tunnel_between(
        relay.url,
        tmp_path,
        env=WAIT_FOR_CHANNEL,
        alice_env=off if legacy == "sender" else None,
        bob_env=off if legacy == "receiver" else None,
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        alice_r, alice_w = await dial(t.alice_port)
        size = 16 * 1024 * 1024  # two windows: a sender that followed no credit would show
        to_bob, to_alice = await asyncio.gather(
            stream_through(alice_w, bob_r, size, eof=False),
            stream_through(bob_w, alice_r, size, eof=False),
        )
        for result in (to_bob, to_alice):
            assert result.received == size and result.digest_got == result.digest_sent
        for client in t.clients:
            doc = await await_telemetry(client, lambda d: d["tx_bytes"] >= size)
            assert doc["tx_ws_packets"] <= 3 and doc["ws_fallbacks"] == 0
            assert doc["flow_waits"] == 0
        # Neither direction ran under credit: the client with flow control off granted none
        # to its peer, and took none from it.
        for client in t.clients:
            assert "receiver grants credit" not in client.log_text()
        await close_writer(alice_w)
        await close_writer(bob_w)
