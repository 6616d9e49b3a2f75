"""When P2P cannot work or stops working, the WebSocket carries every byte, exactly once."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

import pytest

from support.client_proc import (
    ClientProcess,
    await_telemetry,
    dial,
    free_port,
    read_exactly,
    read_to_eof,
)
from support.server_proc import ServerProcess

from .conftest import (
    backend_env,
    channel_opens,
    close_writer,
    require_backend,
    stream_through,
    tunnel_between,
)


def dead_turn_env() -> dict[str, str]:
    """Relay candidates only, from a TURN server that is not there: no candidate at all.

    Both sides need it: libdatachannel's relay-only policy stops it from *offering* host
    candidates, but it still answers checks from the peer's host candidates.
    """
    return {
        "SYFTBOX_HOTLINK_ICE_SERVERS": f"turn:127.0.0.1:{free_port()}?transport=udp",
        "SYFTBOX_HOTLINK_TURN_USER": "nobody",
        "SYFTBOX_HOTLINK_TURN_PASS": "nothing",
        "SYFTBOX_HOTLINK_RELAY_ONLY": "1",
    }


async def _both_ways(alice_r, alice_w, bob_r, bob_w, size: int) -> None:  # type: ignore[no-untyped-def]
    results = await asyncio.gather(
        stream_through(alice_w, bob_r, size, block=64 * 1024, eof=False),
        stream_through(bob_w, alice_r, size, block=64 * 1024, eof=False),
    )
    for result in results:
        assert result.received == size
        assert result.digest_got == result.digest_sent


async def _no_live_peers(client: ClientProcess) -> dict:  # type: ignore[type-arg]
    return await await_telemetry(client, lambda d: d.get("p2p_peers", 0) == 0, timeout=30)


@pytest.mark.parametrize("backend", ["libdatachannel", "aiortc"], ids=["ldc", "aiortc"])
async def test_ice_without_a_usable_pair_falls_back_to_ws(
    relay: ServerProcess, tmp_path: Path, backend: str
) -> None:
    require_backend(backend)
    size = 1024 * 1024
    async with tunnel_between(
        relay.url,
        tmp_path,
        env={"SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS": "3000", **dead_turn_env()},
        alice_env=backend_env(backend),
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        alice_r, alice_w = await dial(t.alice_port)
        await _both_ways(alice_r, alice_w, bob_r, bob_w, size)
        for client in (t.alice, t.bob):
            doc = await await_telemetry(client, lambda d: d["tx_bytes"] >= size)
            assert doc["tx_p2p_packets"] == 0
            assert doc["tx_ws_packets"] == doc["tx_packets"] > 0
            assert doc["ws_fallbacks"] == 1  # one sending session, counted once
            assert channel_opens(client) == []
            # The open deadline gives the peers up while the sessions go on over WS.
            await client.await_log(r"hotlink webrtc failed: .*within 3 s", timeout=20)
            doc = await _no_live_peers(client)
            assert doc["webrtc_connected"] == 0
        await close_writer(alice_w)
        await close_writer(bob_w)


async def test_peer_without_webrtc_gets_everything_over_ws(
    relay: ServerProcess, tmp_path: Path
) -> None:
    # bob runs the WebSocket path only (like a reference Go client): alice's offer is never
    # answered and bob never offers, yet both directions work.
    size = 512 * 1024
    async with tunnel_between(
        relay.url,
        tmp_path,
        env={"SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS": "2000"},
        bob_env={"SYFTBOX_HOTLINK_WEBRTC": "0"},
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        alice_r, alice_w = await dial(t.alice_port)
        await _both_ways(alice_r, alice_w, bob_r, bob_w, size)
        doc = await await_telemetry(t.alice, lambda d: d["tx_bytes"] >= size)
        assert doc["tx_p2p_packets"] == 0 and doc["ws_fallbacks"] == 1
        assert doc["p2p_offers"] == 1
        await t.alice.await_log(r"hotlink webrtc failed: .*did not open within 2 s", timeout=20)
        await _no_live_peers(t.alice)
        await close_writer(alice_w)
        await close_writer(bob_w)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["receiver", "sender"])
async def test_channel_killed_mid_stream_moves_to_ws_without_loss(
    relay: ServerProcess, tmp_path: Path, side: str
) -> None:
    # The debug hook closes the peer connection after 40 frames (~2.4 MiB of 60 KiB chunks):
    # on bob's side it is the receiving end vanishing, on alice's the sending end.
    size = 16 * 1024 * 1024
    kill = {"SYFTBOX_HOTLINK_DEBUG_P2P_KILL_AFTER": "40"}
    async with tunnel_between(
        relay.url,
        tmp_path,
        alice_env=kill if side == "sender" else None,
        bob_env=kill if side == "receiver" else None,
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        _alice_r, alice_w = await dial(t.alice_port)
        try:
            result = await stream_through(alice_w, bob_r, size)
        finally:
            await close_writer(bob_w)
        # Every byte, in order, exactly once (a duplicate or a hole changes size or hash).
        assert result.received == size
        assert result.digest_got == result.digest_sent
        doc = await await_telemetry(t.alice, lambda d: d["tx_bytes"] >= size)
        assert doc["tx_p2p_packets"] >= 40 if side == "sender" else doc["tx_p2p_packets"] > 0
        assert doc["tx_ws_packets"] > 3  # the rest of the stream went over the WebSocket
        assert doc["p2p_failed"] >= 1
        assert doc.get("p2p_resent_frames", 0) > 0
        killer = t.alice if side == "sender" else t.bob
        assert "debug: closing the peer after 40" in killer.log_text()
        print(
            f"kill on {side}: p2p {doc['tx_p2p_packets']} ws {doc['tx_ws_packets']} "
            f"resent {doc.get('p2p_resent_frames', 0)}"
        )


@pytest.mark.parametrize("backend", ["libdatachannel", "aiortc"], ids=["ldc", "aiortc"])
async def test_channel_killed_at_the_last_frame_loses_nothing(
    relay: ServerProcess, tmp_path: Path, backend: str
) -> None:
    # The channel dies right after the stream's last P2P frame, with the app's EOF already
    # queued behind it: the frames the channel may have swallowed must be resent over the
    # WebSocket before the Close eof, after which the server refuses them (the receiver
    # would wait 30 s for the missing tail and then close loudly).
    require_backend(backend)
    frames, chunk = 3, 4096
    alice_env = {
        "SYFTBOX_HOTLINK_DEBUG_P2P_KILL_AFTER": str(frames),
        # 4 KiB reads of 4 KiB writes: one frame per write, however the reads fall.
        "SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE": str(chunk),
        # The first frames wait for the channel (up to this grace): by the time it opens,
        # all of them and the EOF are queued, so the Close is next in line after the kill.
        "SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS": "10000",
    }
    async with tunnel_between(
        relay.url, tmp_path, env=backend_env(backend), alice_env=alice_env
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.2)
        _alice_r, alice_w = await dial(t.alice_port)
        data = os.urandom(frames * chunk)
        try:
            alice_w.write(data)
            alice_w.write_eof()
            # Well inside the receiver's 30 s wait for the seqs before an eof.
            assert await read_to_eof(bob_r, timeout=20) == data
        finally:
            await close_writer(alice_w)
            await close_writer(bob_w)
        log = t.alice.log_text()
        assert f"debug: closing the peer after {frames} sent frames" in log
        # The sealed end (end-to-end encryption) follows the data frames as one more seq.
        assert re.search(rf"out alice→bob closed\(eof\) after seq {frames + 1}\b", log)
        doc = await await_telemetry(t.alice, lambda d: d["tx_bytes"] >= len(data))
        assert doc["tx_p2p_packets"] == frames
        assert doc["p2p_resent_frames"] == frames


async def test_silent_stun_server_does_not_hold_up_the_session(
    relay: ServerProcess, tmp_path: Path
) -> None:
    # A STUN "server" that swallows every request: aiortc gathers candidates before it can
    # offer, bounded at 2 s. Without a grace period the first frame must not wait for that.
    require_backend("aiortc")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        stun = f"stun:127.0.0.1:{blackhole.getsockname()[1]}"
        env = {
            "SYFTBOX_HOTLINK_ICE_SERVERS": stun,
            "SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS": "0",
            **backend_env("aiortc"),
        }
        async with tunnel_between(relay.url, tmp_path, env=env) as t:
            bob_r, bob_w = await dial(t.bob_port)
            await asyncio.sleep(0.2)
            _alice_r, alice_w = await dial(t.alice_port)
            first = os.urandom(64 * 1024)
            alice_w.write(first)
            await alice_w.drain()
            assert await read_exactly(bob_r, len(first)) == first
            # The channel still opens (host candidates) and carries what follows.
            await t.alice.await_log(r"data channel open \(answerer\)", timeout=20)
            second = os.urandom(256 * 1024)
            alice_w.write(second)
            await alice_w.drain()
            assert await read_exactly(bob_r, len(second)) == second
            doc = await await_telemetry(
                t.alice, lambda d: d["tx_bytes"] == len(first) + len(second)
            )
            assert doc["tx_ws_packets"] >= 1  # the first frame did not wait for ICE
            assert doc["tx_p2p_packets"] >= 1
            assert doc["ws_fallbacks"] == 1
            await close_writer(alice_w)
            await close_writer(bob_w)
