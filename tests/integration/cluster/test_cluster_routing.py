"""Users on different replicas: the relay's routing rules hold across replicas (raw WS)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from hotlink.protocol.messages import (
    Error,
    FileDelete,
    FileWrite,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
)
from support.cluster import open_session, running_cluster, wait_acl_files, wait_conns
from support.redis_proc import RedisProc, running_redis
from support.ws_client import connect, handshake, open_client

pytestmark = pytest.mark.asyncio

ALICE = "alice@example.org"
BOB = "bob@example.org"
MALLORY = "mallory@example.org"
PATH = f"{ALICE}/app_data/mpc/stream.tcp.request"


@pytest.fixture
def redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    with running_redis(tmp_path) as proc:
        yield proc


async def test_session_across_replicas_in_order_both_ways(tmp_path: Path, redis: RedisProc) -> None:
    async with running_cluster(tmp_path, redis, 2) as (r1, r2):
        async with connect(r1.url, ALICE) as alice:
            await alice.publish_acl(f"{ALICE}/app_data", read=[BOB], write=[BOB])
            await wait_acl_files((r1, r2), 1)
            async with connect(r2.url, BOB) as bob:
                # Presence reaches the other replica a moment later (an Open to a user not
                # yet seen anywhere is offered to nobody, as on one relay).
                await wait_conns(r1, 1)
                sid = await open_session(alice, bob, PATH)
                await bob.send(HotlinkSignal(sid=sid, knd="offer", tok="x"))
                assert (await alice.expect(HotlinkSignal)).knd == "offer"
                await alice.send(HotlinkSignal(sid=sid, knd="answer", tok="y"))
                assert (await bob.expect(HotlinkSignal)).knd == "answer"
                count = 2000
                for seq in range(1, count + 1):
                    pay = seq.to_bytes(4, "big") * 256
                    await alice.send(HotlinkData(sid=sid, pth=PATH, seq=seq, pay=pay))
                for seq in range(1, count + 1):
                    data = await bob.expect(HotlinkData)
                    assert data.seq == seq and data.pay == seq.to_bytes(4, "big") * 256
                # Only the opener sends data: bob's frame is refused at the session's home.
                await bob.send(HotlinkData(sid=sid, pth=PATH, seq=1, pay=b"x"))
                assert (await bob.expect(Error)).cod == 403
                await alice.send(HotlinkClose(sid=sid, rsn="eof:2000"))
                assert (await bob.expect(HotlinkClose)).rsn == "eof:2000"


async def test_no_takeover_of_a_session_id_on_another_replica(
    tmp_path: Path, redis: RedisProc
) -> None:
    async with running_cluster(tmp_path, redis, 2) as (r1, r2):
        async with connect(r1.url, ALICE) as alice:
            await alice.publish_acl(f"{ALICE}/app_data", read=[BOB, MALLORY], write=[BOB, MALLORY])
            await wait_acl_files((r1, r2), 1)
            async with connect(r2.url, MALLORY) as mallory, connect(r2.url, BOB) as bob:
                await wait_conns(r1, 2)
                sid = secrets.token_hex(8)
                await alice.send(HotlinkOpen(sid=sid, pth=PATH, frm=ALICE, to=BOB))
                assert (await bob.expect(HotlinkOpen)).sid == sid
                await mallory.send(HotlinkOpen(sid=sid, pth=PATH, frm=MALLORY, to=BOB))
                reject = await mallory.expect(HotlinkReject)
                assert (reject.sid, reject.rsn) == (sid, "permission denied")


async def test_a_lost_replica_closes_its_sessions_for_the_peers(
    tmp_path: Path, redis: RedisProc
) -> None:
    async with running_cluster(tmp_path, redis, 2) as (r1, r2):
        async with connect(r1.url, ALICE) as alice:
            await alice.publish_acl(f"{ALICE}/app_data", read=[BOB], write=[BOB])
            await wait_acl_files((r1, r2), 1)
            bob = await open_client(r2.url, BOB)
            await wait_conns(r1, 1)
            sid = await open_session(alice, bob, PATH)
            r2.proc.kill()  # kill -9
            closed = await alice.expect(HotlinkClose, timeout=30)
            assert (closed.sid, closed.rsn) == (sid, "relay node lost")
            await bob.session.close()


async def test_acl_changes_on_one_replica_govern_the_others(
    tmp_path: Path, redis: RedisProc
) -> None:
    async with running_cluster(tmp_path, redis, 2) as (r1, r2):
        async with connect(r2.url, BOB) as bob:
            async with connect(r1.url, ALICE) as alice:
                # Uploaded on r1: bob, on r2, gets the FileWrite, and r2 judges by it.
                await alice.publish_acl(f"{ALICE}/app_data", read=[BOB], write=[BOB])
                await wait_conns(r2, 1)
                shared = await bob.expect(FileWrite)
                assert shared.pth == f"{ALICE}/app_data/syft.pub.yaml"
                sid = secrets.token_hex(8)
                await bob.send(HotlinkOpen(sid=sid, pth=f"{ALICE}/app_data/x", frm=BOB, to=ALICE))
                assert (await alice.expect(HotlinkOpen)).sid == sid
                # Deleted on r1: the rules are gone on r2 too.
                await alice.send(FileDelete(pth=f"{ALICE}/app_data/syft.pub.yaml"))
                await wait_acl_files((r1, r2), 0)
                sid = secrets.token_hex(8)
                await bob.send(HotlinkOpen(sid=sid, pth=f"{ALICE}/app_data/x", frm=BOB, to=ALICE))
                reject = await bob.expect(HotlinkReject)
                assert (reject.sid, reject.rsn) == (sid, "permission denied")


async def test_the_per_user_connection_cap_spans_replicas(tmp_path: Path, redis: RedisProc) -> None:
    args = ["--max-connections-per-user", "3"]
    async with running_cluster(tmp_path, redis, 2, args) as (r1, r2):
        async with connect(r1.url, ALICE), connect(r1.url, ALICE), connect(r2.url, ALICE):
            await wait_conns(r1, 1)
            await wait_conns(r2, 2)
            status, body = await handshake(r1.url, query={"user": ALICE})
            assert status == 429 and body["code"] == "too_many_connections", body
            status, body = await handshake(r2.url, query={"user": ALICE})
            assert status == 429, body


async def test_the_per_user_session_cap_spans_replicas(tmp_path: Path, redis: RedisProc) -> None:
    args = ["--max-sessions-per-user", "2"]
    async with running_cluster(tmp_path, redis, 2, args) as (r1, r2):
        async with connect(r1.url, ALICE) as a1, connect(r2.url, ALICE) as a2:
            await a1.publish_acl(f"{ALICE}/app_data", read=[BOB], write=[BOB])
            opened = []
            for conn in (a1, a2):
                sid = secrets.token_hex(8)
                await conn.send(HotlinkOpen(sid=sid, pth=PATH, frm=ALICE, to=BOB))
                opened.append(sid)
            await a1.barrier()
            await a2.barrier()
            sid = secrets.token_hex(8)
            await a1.send(HotlinkOpen(sid=sid, pth=PATH, frm=ALICE, to=BOB))
            reject = await a1.expect(HotlinkReject)
            assert (reject.sid, reject.rsn) == (sid, "too many sessions")
            # A session that ends frees its place, wherever it was.
            await a2.send(HotlinkClose(sid=opened[1], rsn="eof:0"))
            await a2.barrier()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:  # the release reaches Redis a moment after the Close
                sid = secrets.token_hex(8)
                await a1.send(HotlinkOpen(sid=sid, pth=PATH, frm=ALICE, to=BOB))
                replies = await a1.barrier()
                if not any(isinstance(m.payload, HotlinkReject) for m in replies):
                    break
                assert loop.time() < deadline, "the ended session's place was never freed"
                await asyncio.sleep(0.1)


async def test_an_overflowing_link_ends_the_shared_sessions_on_both_sides_and_heals(
    tmp_path: Path, redis: RedisProc
) -> None:
    # A link that may hold 4 KiB: one 64 KiB frame is more than it may hold.
    async with running_cluster(tmp_path, redis, 2, ["--cluster-link-bytes", "4096"]) as (r1, r2):
        async with connect(r1.url, ALICE) as alice:
            await alice.publish_acl(f"{ALICE}/app_data", read=[BOB], write=[BOB])
            await wait_acl_files((r1, r2), 1)
            async with connect(r2.url, BOB) as bob:
                await wait_conns(r1, 1)
                sid = await open_session(alice, bob, PATH)
                await alice.send(HotlinkData(sid=sid, pth=PATH, seq=1, pay=bytes(64 * 1024)))
                # Both peers are told; neither is left with a half-open session.
                closed = await alice.expect(HotlinkClose, timeout=30)
                assert (closed.sid, closed.rsn) == (sid, "relay link lost")
                closed = await bob.expect(HotlinkClose, timeout=30)
                assert (closed.sid, closed.rsn) == (sid, "relay link lost")
                # The replicas start the link afresh: a new session crosses as before.
                await wait_conns(r1, 1)
                await wait_conns(r2, 1)
                sid = await open_session(alice, bob, PATH)
                await alice.send(HotlinkData(sid=sid, pth=PATH, seq=1, pay=b"small"))
                assert (await bob.expect(HotlinkData)).pay == b"small"
        assert r1.search_log(r"more than 4096 bytes wait for replica r2~") is not None
        assert r2.search_log(r"records from \S+ were lost") is None  # no false alarm


async def test_an_oversized_session_id_is_refused_before_it_reaches_redis(
    tmp_path: Path, redis: RedisProc
) -> None:
    async with running_cluster(tmp_path, redis, 2) as (r1, _r2):
        async with connect(r1.url, ALICE) as alice:
            sid = "x" * 100_000
            await alice.send(HotlinkOpen(sid=sid, pth=PATH, frm=ALICE, to=BOB))
            reject = await alice.expect(HotlinkReject)
            assert reject.rsn == "invalid session id"
            with redis.client() as client:
                assert client.keys("hl:sess:*") == []
