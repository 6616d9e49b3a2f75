"""The data channel bound to the end-to-end key exchange, with real processes: a sealed tunnel
still goes peer to peer, and a relay that puts another certificate's fingerprint into the
SDPs (to sit on the peer-to-peer path too) gets the session closed loudly instead."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from support.client_proc import ClientProcess, await_telemetry, dial
from support.sdp_tamper import sdp_tamper
from support.server_proc import ServerProcess
from support.streams import Pattern, send_stream

from .conftest import (
    WAIT_FOR_CHANNEL,
    backend_env,
    close_writer,
    require_backend,
    stream_through,
    tunnel_between,
)

KIB = 1024
MIB = 1024 * KIB
BOUND = r"the peer's DTLS fingerprint is bound to the end-to-end key exchange"
FORGED = r"e2e: the data channel's DTLS fingerprint is not the one the peer bound"


def live_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [*doc["live"]["sessions_in"], *doc["live"]["sessions_out"]]


# bob on aiortc announces three fingerprints (sha-256/384/512), libdatachannel one.
@pytest.mark.parametrize("bob_backend", ["libdatachannel", "aiortc"], ids=["ldc", "aiortc"])
async def test_a_sealed_tunnel_goes_peer_to_peer_over_bound_channels(
    relay: ServerProcess, tmp_path: Path, bob_backend: str
) -> None:
    require_backend(bob_backend)
    size = 2 * MIB
    async with tunnel_between(
        relay.url,
        tmp_path,
        env=WAIT_FOR_CHANNEL,
        alice_env=backend_env("libdatachannel"),
        bob_env=backend_env(bob_backend),
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        alice_r, alice_w = await dial(t.alice_port)
        try:
            results = await asyncio.gather(
                stream_through(alice_w, bob_r, size, block=64 * KIB, eof=False),
                stream_through(bob_w, alice_r, size, block=64 * KIB, eof=False),
            )
            for result in results:
                assert result.received == size
                assert result.digest_got == result.digest_sent
            for client in t.clients:
                # Both streams live: each client's two sessions are sealed and on P2P.
                doc = await await_telemetry(
                    client,
                    lambda d: (
                        d["tx_bytes"] >= size
                        and d["rx_bytes"] >= size
                        and len(live_rows(d)) == 2
                        and all(s["transport"] == "p2p-host" for s in live_rows(d))
                    ),
                )
                assert all(s["e2e"] is True for s in live_rows(doc)), live_rows(doc)
                assert doc["tx_p2p_packets"] > 0
                # The binding arrives before the channel opens: it costs no extra frames
                # on the WebSocket, only the first ones (the grace) may take it.
                assert doc["tx_ws_packets"] <= 3
                # Checked on both of its channels: the one it offered and the one it answered.
                assert client.count_log(BOUND) == 2, client.log_text()[-3000:]
                assert not client.search_log(FORGED)
                assert not client.search_log("hotlink webrtc failed")
        finally:
            await close_writer(alice_w)
            await close_writer(bob_w)


End = Literal["eof", "reset", "nothing"]


@dataclass
class Outcome:
    size: int
    in_order: bool
    end: End


async def read_outcome(reader: asyncio.StreamReader, pattern: Pattern) -> Outcome:
    """What an app reads until EOF or a reset (cancel it for "nothing more")."""
    total = 0
    in_order = True
    while True:
        try:
            data = await reader.read(MIB)
        except (ConnectionError, OSError):
            return Outcome(total, in_order, "reset")
        if not data:
            return Outcome(total, in_order, "eof")
        in_order = in_order and pattern.matches(total, data)
        total += len(data)


async def first_log(clients: tuple[ClientProcess, ...], pattern: str, timeout: float) -> str:
    """The email of a client whose log has ``pattern`` (waits up to ``timeout`` s)."""
    async with asyncio.timeout(timeout):
        while True:
            for client in clients:
                if client.search_log(pattern):
                    return client.email
            await asyncio.sleep(0.1)


async def ended_with(client: ClientProcess, text: str, timeout: float = 20.0) -> dict[str, Any]:
    """The status row of a session ``client`` ended with ``text`` in its close reason."""
    async with asyncio.timeout(timeout):
        while True:
            status = await asyncio.to_thread(client.status)
            for row in (status or {}).get("recent", []):
                if text in row["reason"]:
                    return dict(row)
            await asyncio.sleep(0.1)


async def test_a_relay_that_rewrites_the_dtls_fingerprints_gets_the_session_closed(
    relay: ServerProcess, tmp_path: Path
) -> None:
    size = 32 * MIB  # more than can pass before the session closes
    pattern = Pattern(64 * KIB)
    async with (
        sdp_tamper(relay.url) as mitm,
        tunnel_between(mitm.url, tmp_path) as t,
    ):
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        _alice_r, alice_w = await dial(t.alice_port)
        reading = asyncio.create_task(read_outcome(bob_r, pattern))
        try:
            sent = await send_stream(alice_w, size, pattern)
            assert sent.end == "reset"  # the sending app is told
            # Loudly: in the log of the side(s) that caught it, and in both status documents.
            caught = await first_log(t.clients, FORGED, timeout=20.0)
            out_row = await ended_with(t.alice, "e2e:")
            in_row = await ended_with(t.bob, "e2e:")
            # The receiving app: a reset after genuine bytes, or nothing at all (a session
            # that delivered nothing leaves the app's connection alone); never an EOF. Its
            # session has ended, so what it will get is on its way: a little time to come in.
            done, _ = await asyncio.wait({reading}, timeout=5.0)
            got = reading.result() if done else Outcome(in_row["rx_bytes"], True, "nothing")
        finally:
            reading.cancel()
            await close_writer(alice_w)
            await close_writer(bob_w)
        print("caught by", caught, "; the app got", got, ";", mitm.stats)
        assert got.end != "eof", f"clean EOF after {got.size} bytes of a stream cut short"
        assert got.in_order
        if got.end == "nothing":
            assert got.size == 0
        assert out_row["e2e"] is True and out_row["direction"] == "out"
        # The forged channel carried nothing (the session may end before any frame left:
        # wait for telemetry to show it ended, not for frames).
        doc = await await_telemetry(t.alice, lambda d: not d["live"]["sessions_out"])
        assert doc["tx_p2p_packets"] == 0
        # The offer is always forged; an answer only exists when the answerer had not yet
        # caught the forged offer (the binding may come before or after the offer).
        assert mitm.stats.tampered["sdp_offer"] >= 1
        assert mitm.stats.seen["e2e_dtls"] >= 1
