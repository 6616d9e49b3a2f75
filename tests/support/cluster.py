"""Relay replicas as real processes sharing one real redis-server (cluster mode)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from hotlink.protocol.messages import HotlinkAccept, HotlinkOpen
from support.redis_proc import RedisProc
from support.server_proc import ServerProcess, spawn_server
from support.ws_client import WSClient

NODE_TTL = "1"  # seconds: a killed replica is noticed within about 1.5 s


def health(srv: ServerProcess) -> tuple[int, dict[str, Any]]:
    """``/healthz`` of a replica: (HTTP status, body); (0, {}) when it does not answer."""
    try:
        with urllib.request.urlopen(srv.url + "/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


async def wait_health(
    srv: ServerProcess, *, status: str = "ok", nodes: int | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Until the replica reports ``status`` (and ``nodes`` replicas); a guard, not a timing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body: dict[str, Any] = {}
    while loop.time() < deadline:
        _code, body = await asyncio.to_thread(health, srv)
        if body.get("status") == status and (nodes is None or body.get("nodes") == nodes):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{srv.url}: health {body} after {timeout} s (wanted {status}, {nodes})")


def metric(srv: ServerProcess, name: str) -> float:
    """One unlabelled metric of a replica's ``/metrics`` (0 when absent)."""
    with urllib.request.urlopen(srv.url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def wait_acl_files(replicas: Sequence[ServerProcess], count: int) -> None:
    """Until every replica holds ``count`` ACL files (uploads reach the others a moment
    later; a client connecting before that would get the upload's broadcast)."""
    loop = asyncio.get_running_loop()
    for srv in replicas:
        deadline = loop.time() + 30.0
        while await asyncio.to_thread(metric, srv, "hotlink_acl_files") < count:
            assert loop.time() < deadline, f"{srv.url}: ACL files never reached {count}"
            await asyncio.sleep(0.05)


async def wait_conns(srv: ServerProcess, remote: int) -> None:
    """Until the replica's ``/healthz`` counts ``remote`` connections of other replicas."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30.0
    while (await asyncio.to_thread(health, srv))[1].get("remote_connections") != remote:
        assert loop.time() < deadline, f"{srv.url}: never saw {remote} remote connections"
        await asyncio.sleep(0.05)


async def open_session(opener: WSClient, acceptor: WSClient, path: str) -> str:
    """Open a session from ``opener`` to ``acceptor``'s user and have it accepted (the
    acceptor checks the Open it was offered); its session id."""
    sid = secrets.token_hex(8)
    await opener.send(HotlinkOpen(sid=sid, pth=path, frm=opener.user, to=acceptor.user))
    offer = await acceptor.expect(HotlinkOpen)
    assert (offer.sid, offer.frm) == (sid, opener.user), offer
    await acceptor.send(HotlinkAccept(sid=sid))
    assert (await opener.expect(HotlinkAccept)).sid == sid
    return sid


def spawn_replica(
    tmp_path: Path, redis: RedisProc, name: str, args: Sequence[str] = ()
) -> ServerProcess:
    return spawn_server(
        tmp_path,
        args=["--redis", redis.url, "--node-id", name, "--node-ttl", NODE_TTL, *args],
    )


@contextlib.asynccontextmanager
async def running_cluster(
    tmp_path: Path, redis: RedisProc, n: int, args: Sequence[str] = ()
) -> AsyncIterator[list[ServerProcess]]:
    """``n`` replicas (r1, r2, ...), each healthy and seeing all the others."""
    replicas = [spawn_replica(tmp_path, redis, f"r{i + 1}", args) for i in range(n)]
    try:
        for srv in replicas:
            await srv.await_ready(30.0)
        for srv in replicas:
            await wait_health(srv, nodes=n)
        yield replicas
    finally:
        await asyncio.gather(*(asyncio.to_thread(srv.stop) for srv in replicas))
