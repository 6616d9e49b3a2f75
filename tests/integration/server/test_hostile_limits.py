"""Connection limits against a hostile peer, with the real relay: connections that never
finish their HTTP request are closed, one user cannot take all connections or sessions,
and running out of file descriptors costs a log line, not thousands, and heals by itself."""

from __future__ import annotations

import asyncio
import re
import sys

import aiohttp
import pytest

from hotlink.lab.processes import ServerProc, spawn
from hotlink.protocol.messages import HotlinkOpen, HotlinkReject, new_session_id
from support.fixtures import unique_email
from support.raw_http import RawConnection, open_raw, partial_upgrade, wait_closed_by_peer
from support.server_proc import running_server, server_env
from support.ws_client import WSClient, connect, handshake, open_client

GUARD = 30.0  # failure guard for every wait below


async def metric(srv: ServerProc, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(srv.url + "/metrics") as r:
        text = await r.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def log_lines(srv: ServerProc, pattern: str) -> list[str]:
    return [line for line in srv.log_text().splitlines() if re.search(pattern, line)]


# ---------------------------------------------------------------- the header timeout


@pytest.mark.slow
async def test_connections_that_never_finish_their_request_are_closed(tmp_path):
    async with running_server(tmp_path, args=["--header-timeout", "2"]) as srv:
        async with connect(srv.url, unique_email("steady")) as steady:
            half_sent = await asyncio.gather(
                *(
                    open_raw(
                        srv.host, srv.port, send=partial_upgrade(srv.host, srv.port, f"h{i}@x.org")
                    )
                    for i in range(150)
                )
            )
            silent = await asyncio.gather(*(open_raw(srv.host, srv.port) for _ in range(150)))
            try:
                closed = await asyncio.gather(
                    *(wait_closed_by_peer(c.reader, GUARD) for c in half_sent + silent)
                )
                assert all(closed), f"{closed.count(False)} connections still open"
            finally:
                for c in half_sent + silent:
                    c.close()
            # A WebSocket is not an unfinished request: it stays, and works.
            assert not steady.closed and await steady.barrier() == []
        status, _ = await handshake(srv.url, query={"user": unique_email("later")})
        assert status == 101
    assert "Traceback" not in srv.log_text()


# ---------------------------------------------------------------- connection caps


async def test_one_user_gets_at_most_eight_connections(relay_server):
    srv = relay_server
    user = unique_email("greedy")
    clients: list[WSClient] = []
    try:
        for _ in range(8):
            clients.append(await open_client(srv.url, user))
        for _ in range(20):
            status, body = await handshake(srv.url, query={"user": user})
            assert status == 429
            assert body == {
                "code": "too_many_connections",
                "error": f"{user} already has 8 connections to this relay",
            }
        # Other users are not affected, and the user's connections all work.
        async with connect(srv.url, unique_email("other")) as other:
            assert await other.barrier() == []
        for client in clients:
            assert await client.barrier() == []
        # Closing one frees its slot (once the relay saw the close).
        await clients.pop().close()
        for _ in range(100):
            status, _ = await handshake(srv.url, query={"user": user})
            if status == 101:
                break
            await asyncio.sleep(0.1)
        assert status == 101
    finally:
        for client in clients:
            await client.close()
    # Twenty refusals, one log line (the rest are counted until the next interval).
    assert len(log_lines(srv, rf"refused WebSocket.*{re.escape(user)}.*429")) == 1
    assert await metric(srv, 'hotlink_connections_refused_total{code="too_many_connections"}') >= 20


async def test_the_relay_refuses_connections_beyond_its_total_cap(tmp_path):
    async with running_server(tmp_path, args=["--max-connections", "3"]) as srv:
        users = [unique_email(f"u{i}") for i in range(4)]
        clients = [await open_client(srv.url, user) for user in users[:3]]
        try:
            status, body = await handshake(srv.url, query={"user": users[3]})
            assert status == 503
            assert body == {
                "code": "server_busy",
                "error": "the relay is at its limit of 3 connections",
            }
            assert all([await c.barrier() == [] for c in clients])
        finally:
            for client in clients:
                await client.close()


async def test_a_user_holds_at_most_max_sessions_per_user_over_its_connections(tmp_path):
    async with running_server(tmp_path, args=["--max-sessions-per-user", "5"]) as srv:
        alice = unique_email("alice")
        async with connect(srv.url, alice) as a1, connect(srv.url, alice) as a2:
            for conn in (a1, a1, a1, a2, a2):
                await conn.send(HotlinkOpen(sid=new_session_id(), pth=f"{alice}/app/x.request"))
            assert await a1.barrier() == [] and await a2.barrier() == []
            sid = new_session_id()
            await a2.send(HotlinkOpen(sid=sid, pth=f"{alice}/app/x.request"))
            assert await a2.expect(HotlinkReject) == HotlinkReject(sid=sid, rsn="too many sessions")
        # Sessions die with their connections: a new connection starts from none.
        async with connect(srv.url, alice) as a3:
            await a3.send(HotlinkOpen(sid=new_session_id(), pth=f"{alice}/app/x.request"))
            assert await a3.barrier() == []


# ---------------------------------------------------------------- out of file descriptors

FD_LIMIT = 128


@pytest.mark.slow
async def test_running_out_of_file_descriptors_is_one_log_line_and_heals(tmp_path):
    """With ``ulimit -n 128``, a flood of idle connections makes accept() fail with EMFILE:
    the relay says so once (asyncio alone logs a traceback per attempt, thousands a second)
    and answers /healthz again as soon as the flood is gone."""
    ready, log_path = tmp_path / "server.ready.json", tmp_path / "server.log"
    argv = [
        "prlimit",
        f"--nofile={FD_LIMIT}:{FD_LIMIT}",
        sys.executable,
        "-m",
        "hotlink",
        "server",
        "--ready-file",
        str(ready),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--header-timeout",
        "120",  # the flood stays until the test ends it
    ]
    srv = ServerProc("server", argv, log_path, spawn(argv, env=server_env(), log_path=log_path))
    srv.ready_file = ready
    try:
        await srv.await_ready(GUARD)
        assert await healthy(srv)
        flood = await open_flood(srv, 2 * FD_LIMIT)
        try:
            await srv.await_log(r"cannot accept new connections: Too many open files", GUARD)
            # Several of asyncio's one-second retries go by while the flood holds.
            for _ in range(4):
                await asyncio.sleep(1.0)
                assert srv.alive()
        finally:
            for conn in flood:
                conn.close()
        assert await healthy(srv, attempts=30), "/healthz did not answer after the flood"
        assert await metric(srv, "hotlink_accept_errors_total") > 1
    finally:
        await asyncio.to_thread(srv.stop)
    text = srv.log_text()
    assert "Traceback" not in text
    assert len(log_lines(srv, r"cannot accept new connections")) <= 2, text[-3000:]
    assert len(text.splitlines()) < 30, text[-3000:]
    assert len(log_lines(srv, rf"file descriptor limit \({FD_LIMIT}\) is below")) == 1


async def healthy(srv: ServerProc, attempts: int = 1) -> bool:
    for attempt in range(attempts):
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session,
                session.get(srv.url + "/healthz") as r,
            ):
                if r.status == 200 and await r.json() == {"status": "ok"}:
                    return True
        except (aiohttp.ClientError, TimeoutError):
            pass
        if attempt + 1 < attempts:
            await asyncio.sleep(0.5)
    return False


async def open_flood(srv: ServerProc, count: int) -> list[RawConnection]:
    """``count`` idle TCP connections; those the kernel cannot queue any more are skipped."""

    async def one() -> RawConnection:
        async with asyncio.timeout(3.0):
            return await open_raw(srv.host, srv.port)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    assert len(opened) > FD_LIMIT, f"only {len(opened)} connections opened"
    return opened
