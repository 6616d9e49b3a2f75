"""P2P through a TURN relay (a local coturn): static credentials from the client's own
environment, and short-lived TURN REST credentials advertised by the relay server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotlink.protocol.ice import ICE_SERVERS_HEADER, TURN_USER_HEADER
from support.client_proc import Tunnel, await_telemetry, dial
from support.coturn import CoturnServer, coturn, require_turnserver
from support.server_proc import running_server
from support.ws_client import connect

from .conftest import (
    WAIT_FOR_CHANNEL,
    channel_opens,
    close_writer,
    stream_through,
    tunnel_between,
)

SIZE = 2 * 1024 * 1024
SECRET = "hotlink-p2p-test-secret"


@pytest.fixture(scope="module")
def turn_static() -> Iterator[CoturnServer]:
    require_turnserver()
    # Relaying from 127.0.0.2 keeps the path a pure relay one (see support.coturn's tests).
    with coturn(relay_ip="127.0.0.2") as server:
        yield server


@pytest.fixture(scope="module")
def turn_rest() -> Iterator[CoturnServer]:
    require_turnserver()
    with coturn(relay_ip="127.0.0.2", user=None, secret=SECRET) as server:
        yield server


async def _relayed_transfer(t: Tunnel) -> None:
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.2)
    alice_r, alice_w = await dial(t.alice_port)
    try:
        results = await asyncio.gather(
            stream_through(alice_w, bob_r, SIZE, block=64 * 1024, eof=False),
            stream_through(bob_w, alice_r, SIZE, block=64 * 1024, eof=False),
        )
        for result in results:
            assert result.received == SIZE
            assert result.digest_got == result.digest_sent
        for client in (t.alice, t.bob):
            doc = await await_telemetry(
                client, lambda d: d["tx_bytes"] >= SIZE and d["webrtc_connected"] == 2
            )
            assert doc["tx_p2p_packets"] > 0
            live = doc["live"]["sessions_in"] + doc["live"]["sessions_out"]
            assert {s["transport"] for s in live} == {"p2p-relay"}
            assert {kind for _, kind in channel_opens(client)} == {"p2p-relay"}
    finally:
        await close_writer(alice_w)
        await close_writer(bob_w)


async def test_relay_only_sessions_go_through_turn(
    tmp_path: Path, turn_static: CoturnServer
) -> None:
    user, password = turn_static.credentials()
    env = {
        "SYFTBOX_HOTLINK_ICE_SERVERS": turn_static.turn_url(),
        "SYFTBOX_HOTLINK_TURN_USER": user,
        "SYFTBOX_HOTLINK_TURN_PASS": password,
        "SYFTBOX_HOTLINK_RELAY_ONLY": "1",
        **WAIT_FOR_CHANNEL,
    }
    async with (
        running_server(tmp_path) as relay,
        tunnel_between(relay.url, tmp_path, env=env) as t,
    ):
        await _relayed_transfer(t)


async def test_turn_credentials_advertised_by_the_server(
    tmp_path: Path, turn_rest: CoturnServer
) -> None:
    turn_url = turn_rest.turn_url()
    server_env = {"SYFTBOX_HOTLINK_ICE_SERVERS": turn_url}
    async with running_server(tmp_path, env=server_env, args=["--turn-secret", SECRET]) as relay:
        # The clients below have no ICE servers of their own, so they must get ours from the
        # server (never the public default): make sure it advertises before starting them.
        async with connect(relay.url, "carol@example.com") as probe:
            headers = {k.lower(): v for k, v in probe.headers.items()}
        assert headers[ICE_SERVERS_HEADER.lower()] == turn_url
        assert headers[TURN_USER_HEADER.lower()].endswith(":carol@example.com")
        env = {
            "SYFTBOX_HOTLINK_ICE_SERVERS": "",  # empty = unset: adopt the server's list
            "SYFTBOX_HOTLINK_STUN_SERVER": "",
            "SYFTBOX_HOTLINK_RELAY_ONLY": "1",
            **WAIT_FOR_CHANNEL,
        }
        async with tunnel_between(relay.url, tmp_path, env=env) as t:
            for client in (t.alice, t.bob):
                assert f"hotlink ICE servers from server: {turn_url}" in client.log_text()
            await _relayed_transfer(t)


async def test_wrong_turn_credentials_are_named_at_start(
    turn_static: CoturnServer, tmp_path: Path
) -> None:
    """A wrong TURN password is one WARNING right after the client connects (the server's
    URL, "authentication failed", what to check), not only channels that never open."""
    async with running_server(tmp_path) as relay:
        env = {
            "SYFTBOX_HOTLINK_ICE_SERVERS": turn_static.turn_url(),
            "SYFTBOX_HOTLINK_TURN_USER": "syftbox",
            "SYFTBOX_HOTLINK_TURN_PASS": "not-the-password",
            "SYFTBOX_HOTLINK_RELAY_ONLY": "1",
        }
        async with tunnel_between(relay.url, tmp_path, alice_env=env) as t:
            line = await t.alice.await_log(r"WARNING .*TURN server \S+: authentication failed")
            assert "SYFTBOX_HOTLINK_TURN_PASS" in line.string[line.start() : line.start() + 400]
            await t.alice.await_log(r"RELAY_ONLY=1 and no TURN server granted an allocation")
            assert "authentication failed" not in t.bob.log_text()
