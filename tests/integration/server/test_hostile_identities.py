"""Glob-shaped identities against the real relay: a user named ``*@example.com`` would match
templated ACL rules such as ``{{.UserEmail}}/**`` for everyone's folder, so the relay refuses
such names at the upgrade (dev and token mode) and ``hotlink token issue`` will not mint them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import jwt
import pytest

from hotlink.protocol.messages import Ack, FileWrite, HotlinkOpen, new_session_id
from hotlink.server.auth import issue_access_token
from support.fixtures import unique_email
from support.server_proc import running_server
from support.ws_client import connect, handshake

SECRET = "integration-secret-long-enough-for-hs256!"
GLOB_USERS = ["*@example.com", "b*@example.com", "bo?@example.com", "{bob}@example.com"]
PER_USER_INBOX = b"""
rules:
  - pattern: '{{.UserEmail}}/**'
    access: {read: ['USER'], write: ['USER']}
"""


async def test_dev_mode_refuses_glob_shaped_users_and_inbox_rules_still_work(relay_server):
    srv = relay_server
    for user in GLOB_USERS:
        for key in ("user", "x-syft-from"):
            status, body = await handshake(srv.url, query={key: user})
            assert (status, body) == (401, {"code": "E_INVALID_REQUEST", "error": "invalid email"})
    # The per-user inbox works for real users: alice's note for bob reaches bob, and only him.
    alice, bob, carol = unique_email("alice"), unique_email("bob"), unique_email("carol")
    async with connect(srv.url, alice) as a:
        path = f"{alice}/inbox/syft.pub.yaml"
        sent = await a.send(FileWrite(pth=path, con=PER_USER_INBOX, len=len(PER_USER_INBOX)))
        assert (await a.expect(Ack)).oid == sent.id
        async with connect(srv.url, bob) as b, connect(srv.url, carol, encoding="json") as c:
            sid = new_session_id()
            note = f"{alice}/inbox/{bob}/note.request"
            await a.send(HotlinkOpen(sid=sid, pth=note))
            offered = await b.expect(HotlinkOpen)
            assert (offered.sid, offered.pth, offered.frm) == (sid, note, alice)
            assert await c.barrier() == []


@pytest.mark.slow
async def test_token_mode_refuses_a_glob_shaped_sub(tmp_path):
    async with running_server(tmp_path, args=["--auth-secret", SECRET]) as srv:
        for user in GLOB_USERS:
            # Signed with the server's own secret, as a token minted before this check was.
            claims = {"type": "access", "sub": user, "iss": "hotlink", "iat": int(time.time())}
            token = jwt.encode(claims, SECRET, algorithm="HS256")
            status, body = await handshake(srv.url, headers={"Authorization": f"Bearer {token}"})
            assert (status, body) == (
                401,
                {
                    "code": "E_AUTH_INVALID_CREDENTIALS",
                    "error": "invalid token: sub is not a valid email",
                },
            )
        # An ordinary user still gets in.
        token = issue_access_token(SECRET, unique_email("alice"))
        async with connect(srv.url, None, token=token) as client:
            assert client.greeting is not None


async def test_token_issue_refuses_a_glob_shaped_email():
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hotlink", "token", "issue", "--email", "*@example.com"],
        env={**os.environ, "SYFTBOX_AUTH_ACCESS_TOKEN_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert "'*@example.com' cannot be a user" in proc.stderr
