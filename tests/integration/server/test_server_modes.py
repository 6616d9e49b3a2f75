"""Server start-up modes: token auth, dev-mode identity, ACL preload, ICE advertisement and
SYFTBOX_HTTP_ADDR. Each test starts its own server process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from hotlink.protocol.ice import ICE_SERVERS_HEADER, TURN_PASS_HEADER, TURN_USER_HEADER
from hotlink.protocol.messages import HotlinkAccept, HotlinkData, HotlinkOpen, new_session_id
from hotlink.server.auth import issue_access_token
from support.fixtures import unique_email
from support.server_proc import running_server
from support.ws_client import connect, handshake

SECRET = "integration-secret-long-enough-for-hs256!"


async def test_dev_mode_identity_from_query(relay_server):
    status, body = await handshake(relay_server.url, query={"user": "not an email"})
    assert (status, body) == (401, {"code": "E_INVALID_REQUEST", "error": "invalid email"})
    status, body = await handshake(relay_server.url)
    assert status == 401 and body["error"] == "invalid email"
    # Headers do not identify anyone in dev mode.
    status, _ = await handshake(relay_server.url, headers={"X-Syft-User": "alice@example.com"})
    assert status == 401
    user = unique_email("from")
    async with connect(relay_server.url, None, query={"x-syft-from": user}) as client:
        assert client.greeting is not None


async def test_foreign_origin_is_refused(relay_server):
    status, _ = await handshake(
        relay_server.url,
        query={"user": "alice@example.com"},
        headers={"Origin": "http://evil.example"},
    )
    assert status == 403
    async with connect(
        relay_server.url, "alice@example.com", headers={"Origin": relay_server.url}
    ) as client:
        assert client.greeting is not None


@pytest.mark.slow
async def test_token_mode(tmp_path):
    async with running_server(tmp_path, args=["--auth-secret", SECRET]) as srv:
        bad = {
            "no header": ({}, "authorization header required"),
            "basic": ({"Authorization": "Basic eDp5"}, "bearer token required"),
            "empty": ({"Authorization": "Bearer "}, "token missing"),
        }
        for headers, error in bad.values():
            status, body = await handshake(
                srv.url, query={"user": "a@example.com"}, headers=headers
            )
            assert (status, body) == (401, {"code": "E_AUTH_INVALID_CREDENTIALS", "error": error})

        expired = issue_access_token(SECRET, "a@example.com", now=time.time() - 3600, ttl=60)
        refresh = issue_access_token(SECRET, "a@example.com", token_type="refresh")
        forged = issue_access_token("some-other-secret-that-is-long-enough!", "a@example.com")
        for token, words in ((expired, "expired"), (refresh, "access"), (forged, "Signature")):
            status, body = await handshake(srv.url, headers={"Authorization": f"Bearer {token}"})
            assert status == 401 and body["code"] == "E_AUTH_INVALID_CREDENTIALS"
            assert words in body["error"]

        # A good token identifies its subject; the user query parameter is ignored.
        alice, bob = unique_email("alice"), unique_email("bob")
        a_tok, b_tok = issue_access_token(SECRET, alice), issue_access_token(SECRET, bob)
        async with connect(srv.url, "mallory@example.com", token=a_tok) as a:
            await a.publish_acl(f"{alice}/app", read=[bob])
            async with connect(srv.url, None, token=b_tok, encoding="json") as b:
                sid = new_session_id()
                await a.send(HotlinkOpen(sid=sid, pth=f"{alice}/app/x.request"))
                assert (await b.expect(HotlinkOpen)).frm == alice
                await b.send(HotlinkAccept(sid=sid))
                await a.expect(HotlinkAccept)
        # Each refusal was logged once, with its reason.
        log = srv.log_text()
        assert log.count("401 authorization header required") == 1
        assert log.count("401 invalid token: token is expired") == 1


@pytest.mark.slow
async def test_token_mode_from_the_environment(tmp_path):
    env = {"SYFTBOX_AUTH_ENABLED": "1", "SYFTBOX_AUTH_ACCESS_TOKEN_SECRET": SECRET}
    async with running_server(tmp_path, env=env) as srv:
        status, body = await handshake(srv.url, query={"user": "alice@example.com"})
        assert (status, body["error"]) == (401, "authorization header required")
        token = issue_access_token(SECRET, "alice@example.com")
        async with connect(srv.url, None, token=token) as client:
            assert client.greeting is not None


@pytest.mark.slow
async def test_acl_dir_preload(tmp_path):
    alice, bob, carol = unique_email("alice"), unique_email("bob"), unique_email("carol")
    acl_root = tmp_path / "acls"
    (acl_root / alice / "app").mkdir(parents=True)
    (acl_root / alice / "app" / "syft.pub.yaml").write_text(
        f"rules:\n  - pattern: '**'\n    access:\n      read: ['{bob}']\n      write: []\n"
    )
    (acl_root / carol).mkdir()
    (acl_root / carol / "syft.pub.yaml").write_text("rules: {broken\n")
    async with running_server(
        tmp_path, env={"SYFTBOX_HOTLINK_DEBUG": "1"}, args=["--acl-dir", str(acl_root)]
    ) as srv:
        async with (
            connect(srv.url, alice) as a,
            connect(srv.url, bob) as b,
            connect(srv.url, carol) as c,
        ):
            sid = new_session_id()
            path = f"{alice}/app/x.request"
            await a.send(HotlinkOpen(sid=sid, pth=path))
            assert (await b.expect(HotlinkOpen)).sid == sid
            await b.send(HotlinkAccept(sid=sid))
            await a.expect(HotlinkAccept)
            await a.send(HotlinkData(sid=sid, seq=1, pth=path, pay=b"preloaded"))
            assert (await b.expect(HotlinkData)).pay == b"preloaded"
            assert await c.barrier() == []
        log = srv.log_text()
        assert "loaded 1 ACL file(s)" in log
        assert f"{carol}/syft.pub.yaml" in log and "invalid YAML" in log
        assert f"hotlink data relay sid={sid} seq=1" in log  # SYFTBOX_HOTLINK_DEBUG=1


@pytest.mark.slow
async def test_ice_advertisement_with_turn_rest_credentials(tmp_path):
    env = {"SYFTBOX_HOTLINK_ICE_SERVERS": "turn:192.0.2.10:3478?transport=udp"}
    async with running_server(
        tmp_path, env=env, args=["--turn-secret", "coturn-shared-secret"]
    ) as srv:
        user = unique_email("ice")
        async with connect(srv.url, user) as client:
            headers = client.headers
            assert headers[ICE_SERVERS_HEADER] == "turn:192.0.2.10:3478?transport=udp"
            expiry, _, who = headers[TURN_USER_HEADER].partition(":")
            assert who == user and int(expiry) > time.time()
            assert headers[TURN_PASS_HEADER]


@pytest.mark.slow
async def test_static_turn_password_is_not_advertised(tmp_path):
    env = {
        "SYFTBOX_HOTLINK_ICE_SERVERS": "turn:192.0.2.10:3478",
        "SYFTBOX_HOTLINK_TURN_USER": "syftbox",
        "SYFTBOX_HOTLINK_TURN_PASS": "hunter2",
    }
    async with running_server(tmp_path, env=env) as srv:
        async with connect(srv.url, unique_email("ice")) as client:
            assert client.headers[ICE_SERVERS_HEADER] == "turn:192.0.2.10:3478"
            assert TURN_PASS_HEADER not in client.headers
            assert "hunter2" not in str(client.headers)
        assert "static TURN passwords are never advertised" in srv.log_text()


@pytest.mark.slow
async def test_sigterm_closes_clients_with_going_away(tmp_path):
    async with running_server(tmp_path) as srv:
        async with connect(srv.url, unique_email("last")) as client:
            os.kill(srv.pid, signal.SIGTERM)
            assert await client.wait_closed() == aiohttp.WSCloseCode.GOING_AWAY
        assert await asyncio.to_thread(srv.proc.wait, 30) == 0
        assert "shutting down: closing 1 connection(s)" in srv.log_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
async def test_listen_address_from_syftbox_http_addr(tmp_path):
    port = _free_port()
    async with running_server(
        tmp_path, env={"SYFTBOX_HTTP_ADDR": f"127.0.0.1:{port}"}, use_env_addr=True
    ) as srv:
        assert srv.port == port
        async with aiohttp.ClientSession() as session, session.get(srv.url + "/") as r:
            assert "Syft" in await r.text()


def test_bad_settings_fail_fast_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hotlink", "server", "--port", "0"],
        env={"SYFTBOX_AUTH_ENABLED": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SYFTBOX_AUTH_ACCESS_TOKEN_SECRET" in result.stderr
