"""The reference TestHotlinkTCPProxy (PROTOCOL.md §9.1) in both directions, then telemetry."""

from __future__ import annotations

import asyncio

from support.client_proc import (
    REFERENCE_CHUNKS,
    REFERENCE_TOTAL,
    Tunnel,
    await_telemetry,
    check_reference_chunks,
    dial,
    read_exactly,
    send_reference_chunks,
)

CHUNKS = REFERENCE_CHUNKS
TOTAL = REFERENCE_TOTAL


async def test_tcp_proxy_both_directions_then_telemetry(ws_tunnel: Tunnel) -> None:
    t = ws_tunnel
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
    finally:
        alice_w.close()
        bob_w.close()

    # Every byte each side sent went over the WebSocket, and the other side wrote all of it.
    for client in (t.alice, t.bob):
        doc = await await_telemetry(
            client, lambda d: d["tx_bytes"] == TOTAL and d["rx_bytes"] == TOTAL
        )
        assert doc["tx_packets"] > 0
        assert doc["tx_ws_packets"] == doc["tx_packets"]
        assert doc["tx_p2p_packets"] == 0
        assert doc["rx_packets"] > 0
        assert doc["mode"] == "hotlink_p2p"
        assert doc["live"]["tcp_proxies"] == 1
