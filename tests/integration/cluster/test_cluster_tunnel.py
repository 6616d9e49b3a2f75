"""Tunnels between users on different relay replicas, with real clients and redis-server.

Alice's client talks to replica r1 and bob's to r2: their sessions are homed on the
opener's replica and every message the other side sends crosses through Redis. With WebRTC
off every stream byte crosses too; with WebRTC on, the signaling does and the bytes go
peer to peer. When bob's replica is killed (kill -9), his client reconnects to another
replica through a TCP balancer, the apps of the sessions it held see a reset (never a
short clean EOF), alice's client is told why, and a new tunnel stream works.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotlink.lab.processes import ACLS_PUBLISHED, CONNECTED
from support.client_proc import Tunnel, dial, start_tunnel
from support.cluster import metric, running_cluster, wait_health
from support.redis_proc import RedisProc, running_redis
from support.streams import (
    Pattern,
    assert_whole,
    assert_whole_or_reset,
    read_stream,
    send_stream,
)
from support.tcp_balancer import balancing

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

MIB = 1024 * 1024
PATHS = {
    "ws": {"SYFTBOX_HOTLINK_WEBRTC": "0"},
    "p2p": {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel"},
}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProc]:
    with running_redis(tmp_path) as proc:
        yield proc


async def _close(*writers: asyncio.StreamWriter) -> None:
    for w in writers:
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _dial_pair(t: Tunnel) -> tuple[Conn, Conn]:
    """Bob's app connection, then alice's: (bob's, alice's)."""
    bob = await dial(t.bob_port)
    await asyncio.sleep(0.3)  # bob's app first, so alice's stream goes to it
    return bob, await dial(t.alice_port)


async def _both_ways(t: Tunnel, size: int) -> None:
    """``size`` bytes alice -> bob and bob -> alice at once, each whole with a clean EOF."""
    (bob_r, bob_w), (alice_r, alice_w) = await _dial_pair(t)
    pattern = Pattern()
    to_bob, from_alice, to_alice, from_bob = await asyncio.gather(
        read_stream(bob_r, pattern, timeout=240),
        send_stream(alice_w, size, pattern),
        read_stream(alice_r, pattern, timeout=240),
        send_stream(bob_w, size, pattern),
    )
    assert_whole(to_bob, from_alice)
    assert_whole(to_alice, from_bob)
    await _close(alice_w, bob_w)


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_tunnel_between_users_on_different_replicas(
    tmp_path: Path, redis: RedisProc, path: str
) -> None:
    async with running_cluster(tmp_path, redis, 2) as (r1, r2):
        t = await asyncio.to_thread(start_tunnel, r1.url, tmp_path, env=PATHS[path], bob_url=r2.url)
        try:
            await _both_ways(t, 16 * MIB)
            # Telemetry is written every few seconds: wait for the whole stream in it.
            doc = await t.alice.await_telemetry(lambda d: d["tx_bytes"] >= 16 * MIB, 30)
            if path == "ws":
                assert doc["tx_p2p_packets"] == 0 and doc["tx_ws_packets"] > 0
            else:
                assert doc["tx_p2p_packets"] > doc["tx_ws_packets"]
        finally:
            await asyncio.to_thread(t.stop)
        # The sessions crossed replicas: each one read entries the other wrote.
        for srv in (r1, r2):
            assert metric(srv, "hotlink_cluster_entries_received_total") > 0


async def test_kill_9_of_a_replica_moves_its_users_and_ends_their_sessions_loudly(
    tmp_path: Path, redis: RedisProc
) -> None:
    async with running_cluster(tmp_path, redis, 3) as (r1, r2, r3):
        async with balancing([r2, r3]) as balancer:
            t = await asyncio.to_thread(
                start_tunnel, r1.url, tmp_path, env=PATHS["ws"], bob_url=balancer.url
            )
            try:
                assert balancer.chosen == [r2.url]
                (bob_r, bob_w), (_, alice_w) = await _dial_pair(t)
                pattern = Pattern()
                reading = asyncio.create_task(read_stream(bob_r, pattern, timeout=120))
                sending = asyncio.create_task(send_stream(alice_w, 1024 * MIB, pattern))
                await t.bob.await_telemetry(lambda d: d["rx_bytes"] > 4 * MIB, 60)
                bob_mark, alice_mark = t.bob.log_mark(), t.alice.log_mark()
                r2.proc.kill()  # kill -9
                got, sent = await asyncio.gather(reading, sending)
                # Never a short clean EOF: both apps see their stream reset.
                assert_whole_or_reset(got, sent)
                assert got.end == "reset" and got.size < 1024 * MIB
                # Alice's client was told why (the Close reason from r1).
                await t.alice.await_log(r"relay node lost", 30, since=alice_mark)
                # Bob's client is back, on r3, with its ACLs.
                await t.bob.await_log(CONNECTED, 30, since=bob_mark)
                await t.bob.await_log(ACLS_PUBLISHED, 30, since=bob_mark)
                assert balancer.chosen[-1] == r3.url
                await _close(alice_w, bob_w)
                # A new stream through the same tunnel works, across r1 and r3.
                await _both_ways(t, 4 * MIB)
            finally:
                await asyncio.to_thread(t.stop)
        assert r1.search_log(r"cluster: replica r2~\S+ is lost") is not None
        with redis.client() as client:
            members = {m.decode() for m in client.smembers("hl:nodes")}
        assert not any(m.startswith("r2~") for m in members), members


async def test_a_redis_restart_mid_stream_delivers_every_byte_or_a_reset(
    tmp_path: Path, redis: RedisProc
) -> None:
    # Every byte of this stream crosses through Redis (WebSocket path, users on two
    # replicas). Redis dies mid-stream and comes back empty within the grace.
    async with running_cluster(tmp_path, redis, 2, ["--cluster-grace", "20"]) as (r1, r2):
        t = await asyncio.to_thread(start_tunnel, r1.url, tmp_path, env=PATHS["ws"], bob_url=r2.url)
        try:
            (bob_r, bob_w), (_, alice_w) = await _dial_pair(t)
            pattern = Pattern()
            reading = asyncio.create_task(read_stream(bob_r, pattern, timeout=240))
            sending = asyncio.create_task(send_stream(alice_w, 256 * MIB, pattern))
            await t.bob.await_telemetry(lambda d: d["rx_bytes"] > 4 * MIB, 60)
            redis.kill()
            await asyncio.sleep(1.0)
            redis.restart()
            got, sent = await asyncio.gather(reading, sending)
            assert_whole_or_reset(got, sent)  # never a short clean EOF
            await _close(alice_w, bob_w)
            # After it, the replicas work together again: a new stream crosses intact.
            await wait_health(r1, nodes=2)
            await wait_health(r2, nodes=2)
            await _both_ways(t, 4 * MIB)
        finally:
            await asyncio.to_thread(t.stop)
