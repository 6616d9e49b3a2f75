"""Signals in the wrong order: a proxy delays every offer and shuffles the candidates, and
both channels of the tunnel still open on both sides (DECISIONS.md #4: buffer, never drop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from support.client_proc import await_telemetry, dial
from support.server_proc import ServerProcess
from support.signal_shuffler import signal_shuffler

from .conftest import backend_env, channel_opens, close_writer, stream_through, tunnel_between

SIZE = 1024 * 1024


@pytest.mark.parametrize("answerer", ["libdatachannel", "aiortc"], ids=["ldc", "aiortc"])
async def test_delayed_offers_and_shuffled_candidates_still_open_both_ways(
    relay: ServerProcess, tmp_path: Path, answerer: str
) -> None:
    # alice always trickles (libdatachannel); bob is the parametrized backend. Each side
    # offers for one direction and answers for the other.
    async with (
        signal_shuffler(relay.url, offer_delay=0.8, candidate_hold=0.5) as mitm,
        tunnel_between(
            mitm.url,
            tmp_path,
            alice_env=backend_env("libdatachannel"),
            bob_env=backend_env(answerer),
        ) as t,
    ):
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        alice_r, alice_w = await dial(t.alice_port)
        results = await asyncio.gather(
            stream_through(alice_w, bob_r, SIZE, block=64 * 1024, eof=False),
            stream_through(bob_w, alice_r, SIZE, block=64 * 1024, eof=False),
        )
        for result in results:
            assert result.received == SIZE
            assert result.digest_got == result.digest_sent
        for client in (t.alice, t.bob):
            await client.await_log(r"data channel open \(offerer\)", timeout=20)
            await client.await_log(r"data channel open \(answerer\)", timeout=20)
            assert {role for role, _ in channel_opens(client)} == {"offerer", "answerer"}
            doc = await await_telemetry(
                client, lambda d: d["tx_bytes"] >= SIZE and d["rx_bytes"] >= SIZE
            )
            assert doc["tx_bytes"] == doc["rx_bytes"] == SIZE
        stats = mitm.stats
        assert stats.offers_delayed >= 2
        # alice's candidates reached bob before the offer they belong to, in reverse order.
        assert stats.candidates_before_offer > 0, stats
        assert stats.candidates_reordered > 0, stats
        print("shuffler:", stats)
        await close_writer(alice_w)
        await close_writer(bob_w)
