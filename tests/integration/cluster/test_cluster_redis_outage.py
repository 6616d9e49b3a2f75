"""Redis unavailable: a replica keeps its own sessions going, refuses new work loudly, and
ends the sessions it shares with other replicas with a reason once the grace is over; when
Redis is back the replicas find each other again and new sessions cross as before."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotlink.protocol.messages import (
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
)
from support.cluster import (
    health,
    open_session,
    running_cluster,
    wait_acl_files,
    wait_conns,
    wait_health,
)
from support.redis_proc import RedisProc, running_redis
from support.ws_client import WSClient, connect, handshake

pytestmark = pytest.mark.asyncio

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL = "carol@example.org"
PATH = f"{ALICE}/app_data/mpc/stream.tcp.request"
GRACE = "2"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProc]:
    with running_redis(tmp_path) as proc:
        yield proc


async def _data(sender: WSClient, receiver: WSClient, sid: str, count: int) -> None:
    for seq in range(1, count + 1):
        await sender.send(HotlinkData(sid=sid, pth=PATH, seq=seq, pay=seq.to_bytes(4, "big")))
    for seq in range(1, count + 1):
        data = await receiver.expect(HotlinkData)
        assert (data.sid, data.seq) == (sid, seq)


async def test_redis_outage_is_loud_and_local_sessions_keep_going(
    tmp_path: Path, redis: RedisProc
) -> None:
    async with running_cluster(tmp_path, redis, 2, ["--cluster-grace", GRACE]) as (r1, r2):
        async with connect(r1.url, ALICE) as alice:
            await alice.publish_acl(f"{ALICE}/app_data", read=[BOB, CAROL], write=[BOB, CAROL])
            await wait_acl_files((r1, r2), 1)
            async with connect(r1.url, CAROL) as carol, connect(r2.url, BOB) as bob:
                await wait_conns(r1, 1)
                local = await open_session(alice, carol, PATH)
                shared = await open_session(alice, bob, PATH)
                redis.kill()
                await wait_health(r1, status="degraded")
                await wait_health(r2, status="degraded")
                assert health(r1)[0] == 503
                # New connections are refused with a reason, not accepted half-working.
                status, body = await handshake(r1.url, query={"user": "dave@example.org"})
                assert status == 503 and body["code"] == "cluster_unavailable", body
                # New sessions are refused loudly.
                sid = secrets.token_hex(8)
                await alice.send(HotlinkOpen(sid=sid, pth=PATH, frm=ALICE, to=CAROL))
                reject = await alice.expect(HotlinkReject)
                assert (reject.sid, reject.rsn) == (sid, "relay unavailable")
                # A session within one replica does not need Redis.
                await _data(alice, carol, local, 500)
                # The shared one ends for both peers, with the reason, after the grace.
                closed = await bob.expect(HotlinkClose, timeout=30)
                assert (closed.sid, closed.rsn) == (shared, "relay link lost")
                closed = await alice.expect(HotlinkClose, timeout=30)
                assert (closed.sid, closed.rsn) == (shared, "relay link lost")
                # Redis is back (empty: no persistence): the replicas find each other again.
                redis.restart()
                await wait_health(r1, nodes=2)
                await wait_health(r2, nodes=2)
                again = await open_session(alice, bob, PATH)
                await _data(alice, bob, again, 500)


async def test_a_short_outage_delays_shared_sessions_and_loses_nothing_silently(
    tmp_path: Path, redis: RedisProc
) -> None:
    async with running_cluster(tmp_path, redis, 2, ["--cluster-grace", "20"]) as (r1, r2):
        async with connect(r1.url, ALICE) as alice:
            await alice.publish_acl(f"{ALICE}/app_data", read=[BOB], write=[BOB])
            await wait_acl_files((r1, r2), 1)
            async with connect(r2.url, BOB) as bob:
                await wait_conns(r1, 1)
                shared = await open_session(alice, bob, PATH)
                await _data(alice, bob, shared, 100)
                redis.kill()
                await wait_health(r1, status="degraded")
                count = 500
                for seq in range(101, 101 + count):
                    pay = seq.to_bytes(4, "big")
                    await alice.send(HotlinkData(sid=shared, pth=PATH, seq=seq, pay=pay))
                redis.restart()
                await wait_health(r1, nodes=2)
                # Every frame sent during the outage arrives in order, or the session ends
                # with a reason: never a silent gap.
                seq = 100
                while seq < 100 + count:
                    message = await bob.recv(timeout=30)
                    p = message.payload
                    if isinstance(p, HotlinkClose):
                        assert (p.sid, p.rsn) == (shared, "relay link lost")
                        break
                    assert isinstance(p, HotlinkData) and p.seq == seq + 1, p
                    seq = p.seq
