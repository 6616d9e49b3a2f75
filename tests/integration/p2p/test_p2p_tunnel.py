"""The reference TCP-proxy test over WebRTC, and a bigger stream, with telemetry checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from support.client_proc import (
    REFERENCE_CHUNKS,
    REFERENCE_TOTAL,
    await_telemetry,
    check_reference_chunks,
    dial,
    read_exactly,
    send_reference_chunks,
)
from support.server_proc import ServerProcess

from .conftest import (
    WAIT_FOR_CHANNEL,
    channel_opens,
    close_writer,
    negotiation_ms,
    stream_through,
    tunnel_between,
)

CHUNKS = REFERENCE_CHUNKS
TOTAL = REFERENCE_TOTAL


async def test_tcp_proxy_both_directions_go_peer_to_peer(
    relay: ServerProcess, tmp_path: Path
) -> None:
    async with tunnel_between(relay.url, tmp_path, env=WAIT_FOR_CHANNEL) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.5)
        alice_r, alice_w = await dial(t.alice_port)
        try:
            _, _, at_bob, at_alice = await asyncio.gather(
                send_reference_chunks(alice_w),
                send_reference_chunks(bob_w),
                read_exactly(bob_r, TOTAL),
                read_exactly(alice_r, TOTAL),
            )
            check_reference_chunks(at_bob, CHUNKS)
            check_reference_chunks(at_alice, CHUNKS)
            # While both streams are live, each client has two open channels: the one it
            # offered (inbound session) and the one it answered (outbound session).
            for client in (t.alice, t.bob):
                doc = await await_telemetry(
                    client,
                    lambda d: (
                        d["tx_bytes"] == TOTAL
                        and d["rx_bytes"] == TOTAL
                        and d["webrtc_connected"] == 2
                    ),
                )
                assert doc["tx_p2p_packets"] > 0
                # Only frames sent before the channel opened may take the WebSocket.
                assert doc["tx_ws_packets"] <= 3
                assert doc["tx_packets"] == doc["tx_p2p_packets"] + doc["tx_ws_packets"]
                assert doc["p2p_offers"] == 1
                assert doc["p2p_answers_ok"] >= 1
                live = doc["live"]["sessions_in"] + doc["live"]["sessions_out"]
                assert {s["transport"] for s in live} == {"p2p-host"}
                assert {role for role, _ in channel_opens(client)} == {"offerer", "answerer"}
        finally:
            await close_writer(alice_w)
            await close_writer(bob_w)
        print("negotiation ms alice", negotiation_ms(t.alice), "bob", negotiation_ms(t.bob))


@pytest.mark.slow
async def test_16_mib_stream_over_p2p_arrives_intact(relay: ServerProcess, tmp_path: Path) -> None:
    size = 16 * 1024 * 1024
    async with tunnel_between(relay.url, tmp_path, env=WAIT_FOR_CHANNEL) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        _alice_r, alice_w = await dial(t.alice_port)
        try:
            result = await stream_through(alice_w, bob_r, size)
        finally:
            await close_writer(bob_w)
        assert result.received == size
        assert result.digest_got == result.digest_sent
        doc = await await_telemetry(t.alice, lambda d: d["tx_bytes"] >= size)
        assert doc["tx_p2p_packets"] > 0
        assert doc["tx_ws_packets"] <= 3
        print(f"16 MiB over p2p: {result.seconds:.2f} s, {result.mib_per_s:.1f} MiB/s")


async def test_a_clean_end_is_not_a_p2p_failure(relay: ServerProcess, tmp_path: Path) -> None:
    """Each side closes its channel as soon as its stream is over, which the other side may
    hear before its own session has ended: that is the stream's end, not a failed channel
    (no p2p_failed, no warning). The race itself is pinned down in the unit tests."""
    size = 4 * 1024 * 1024
    async with tunnel_between(relay.url, tmp_path, env=WAIT_FOR_CHANNEL) as t:
        for _ in range(3):
            bob_r, bob_w = await dial(t.bob_port)
            await asyncio.sleep(0.2)
            _alice_r, alice_w = await dial(t.alice_port)
            try:
                result = await stream_through(alice_w, bob_r, size)
                assert result.digest_got == result.digest_sent
            finally:
                await close_writer(alice_w)
                await close_writer(bob_w)
        docs = {}
        for client in t.clients:
            docs[client.email] = doc = await await_telemetry(
                client,
                lambda d: d["live"]["inbound"] == 0 and d["live"]["outbound_accepted"] == 0,
                timeout=60.0,  # a failure guard: a loaded machine writes telemetry late
            )
            assert doc.get("p2p_failed", 0) == 0
            assert "WARNING" not in client.log_text()
        # The streams did run peer to peer. Only alice's streams carry bytes: bob's reverse
        # sessions are empty and may end before their offer is answered, so bob's own
        # answer count proves nothing either way.
        assert docs[t.alice.email]["tx_p2p_packets"] >= 1
        assert docs[t.alice.email]["p2p_answers_ok"] >= 1
