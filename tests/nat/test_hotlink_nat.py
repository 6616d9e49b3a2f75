"""The real hotlink server and client daemons through NAT (issue 6, stage 2).

The relay server and coturn run on the public segment, alice's and bob's daemons behind their
NAT routers, and the apps are sockets made inside the LAN namespaces. Each case puts its
negotiation time (Accept -> "data channel open" in both client logs) and the selected
candidate pair per session into the terminal summary.

1. Symmetric NAT on both sides, TURN from the client's own env vars: the tunnel runs over a
   relay pair, both data channels open, and the §9.1 test data passes through the relay.
2. Endpoint-independent NAT with coturn as a STUN server only: hole punching, srflx pair.
3. Symmetric NAT and STUN only: no pair can work; every byte still arrives over the WS path.
4. Delay and 2 % loss on both uplinks, TURN from the server's short-lived credentials (the
   client's own ICE vars unset): 16 MiB through the tunnel arrive intact (sha256).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hotlink.webrtc import BackendUnavailableError, load_backend
from nat.hotlink_lab import (
    CHANNEL_OPEN,
    HotlinkNatLab,
    NatTunnel,
    SessionNegotiation,
    telemetry_line,
)
from nat.topology import Impairment
from support.client_proc import (
    REFERENCE_CHUNKS,
    REFERENCE_TOTAL,
    ClientProcess,
    await_telemetry,
    check_reference_chunks,
    read_exactly,
    send_reference_chunks,
)

pytestmark = [pytest.mark.nat, pytest.mark.slow]

MiB = 1024 * 1024
CHUNKS = REFERENCE_CHUNKS
TOTAL = REFERENCE_TOTAL
# Failure guards only: channels open in well under a second here.
OPEN_TIMEOUT = 30.0
BULK = 16 * MiB
# Case 3: how long the transport tries before it gives a session's channel up.
NO_OPEN_WINDOW_MS = 8000

Report = Callable[[str], None]


def need_webrtc(backend: str = "auto") -> None:
    try:
        load_backend(backend)
    except BackendUnavailableError as exc:
        pytest.skip(f"WebRTC backend {backend} not available here: {exc}")


# ---------------------------------------------------------------- apps


@dataclass
class Apps:
    """One app connection in each LAN, on the tunnel's proxy ports."""

    alice_r: asyncio.StreamReader
    alice_w: asyncio.StreamWriter
    bob_r: asyncio.StreamReader
    bob_w: asyncio.StreamWriter

    def close(self) -> None:
        self.alice_w.close()
        self.bob_w.close()


async def connect_apps(lab: HotlinkNatLab, tunnel: NatTunnel) -> Apps:
    # §9.1: bob's app first, alice's half a second later.
    bob_r, bob_w = await lab.dial("bob", tunnel.bob_port)
    await asyncio.sleep(0.5)
    alice_r, alice_w = await lab.dial("alice", tunnel.alice_port)
    return Apps(alice_r, alice_w, bob_r, bob_w)


async def reference_round(apps: Apps) -> None:
    """The reference TCP-proxy test in both directions: 20 x 4096 bytes, byte-exact."""
    _, _, at_bob, at_alice = await asyncio.gather(
        send_reference_chunks(apps.alice_w),
        send_reference_chunks(apps.bob_w),
        read_exactly(apps.bob_r, TOTAL),
        read_exactly(apps.alice_r, TOTAL),
    )
    check_reference_chunks(at_bob, CHUNKS)
    check_reference_chunks(at_alice, CHUNKS)


async def sent_and_written(client: ClientProcess, sent: int, written: int) -> dict[str, Any]:
    """Telemetry once the client counted ``sent`` bytes out and ``written`` into its app."""
    return await await_telemetry(
        client, lambda d: d["tx_bytes"] >= sent and d["rx_bytes"] >= written, timeout=30
    )


# ---------------------------------------------------------------- sessions


async def await_open_sessions(
    lab: HotlinkNatLab, tunnel: NatTunnel, count: int, timeout: float = OPEN_TIMEOUT
) -> list[SessionNegotiation]:
    """Wait until ``count`` sessions have their channel open on both sides and both clients'
    telemetry names a P2P transport for them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sessions = lab.sessions(tunnel)
        done = [
            s
            for s in sessions
            if s.open_both
            and len(s.transports) == 2
            and all(t.startswith("p2p") for t in s.transports.values())
        ]
        if len(done) >= count:
            return done
        if loop.time() > deadline:
            raise AssertionError(
                f"{count} session(s) never had the data channel open on both sides with a P2P "
                "transport in telemetry: "
                + "; ".join(s.describe() for s in sessions)
                + f"\n{telemetry_line(tunnel.clients)}"
            )
        await asyncio.sleep(0.2)


def report_sessions(report: Report, label: str, sessions: list[SessionNegotiation]) -> None:
    for s in sessions:
        report(f"hotlink {label}: {s.describe()}")


def assert_isolated(lab: HotlinkNatLab) -> None:
    reach = lab.udp_reachability("alice", "bob")
    assert reach == {"public": True, "bob lan": False, "bob wan": False}, (
        f"alice must reach the public host but not bob directly (UDP): {reach}"
    )


# ---------------------------------------------------------------- the cases


@pytest.mark.parametrize(
    "bob_backend", ["auto", "aiortc"], ids=["default-backend", "bob-on-aiortc"]
)
async def test_symmetric_nat_tunnel_runs_over_turn_relay(
    make_hotlink_lab: Callable[..., HotlinkNatLab], nat_report: Report, bob_backend: str
) -> None:
    """Case 1: symmetric NAT both sides, TURN configured with the client's env vars.

    Also with bob on aiortc (alice on the default, libdatachannel): each client offers in one
    session and answers in the other, so both stacks play both roles through the relay.
    """
    need_webrtc(bob_backend)
    label = "1 symmetric+TURN (env)" + ("" if bob_backend == "auto" else ", bob on aiortc")
    lab = make_hotlink_lab(symmetric=True)
    assert_isolated(lab)
    lab.start_server()
    tunnel = lab.start_tunnel(
        ice="turn", side_env={"bob": {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": bob_backend}}
    )
    apps = await connect_apps(lab, tunnel)
    try:
        # First round: the sessions open with it; their first frames may still take the WS
        # path while the channels open (the fallback grace), which is fine.
        await reference_round(apps)
        sessions = await await_open_sessions(lab, tunnel, 2)
        report_sessions(nat_report, label, sessions)
        for s in sessions:
            assert set(s.transports.values()) == {"p2p-relay"}, s.describe()
        before = {c.email: await sent_and_written(c, TOTAL, TOTAL) for c in tunnel.clients}
        # Second round, channels open on both sides: every frame goes through the relay.
        await reference_round(apps)
    finally:
        apps.close()
    for client in tunnel.clients:
        doc = await sent_and_written(client, 2 * TOTAL, 2 * TOTAL)
        old = before[client.email]
        assert doc["tx_p2p_packets"] > old["tx_p2p_packets"], doc
        assert doc["tx_ws_packets"] == old["tx_ws_packets"], (
            f"{client.email} sent over the WS path with the channel open: {old} -> {doc}"
        )
        # Both sessions (one each way) were live on P2P in each client before round two.
        assert old["webrtc_connected"] == 2, old
        assert doc["tx_p2p_packets"] > 0, doc
    nat_report(f"hotlink {label}: {telemetry_line(tunnel.clients)}")


async def test_eim_nat_tunnel_runs_over_srflx_with_stun_only(
    make_hotlink_lab: Callable[..., HotlinkNatLab], nat_report: Report
) -> None:
    """Case 2: endpoint-independent NAT, coturn as a plain STUN server: hole punching."""
    need_webrtc()
    lab = make_hotlink_lab(symmetric=False)
    lab.start_server()
    tunnel = lab.start_tunnel(ice="stun")
    apps = await connect_apps(lab, tunnel)
    try:
        await reference_round(apps)
        sessions = await await_open_sessions(lab, tunnel, 2)
        report_sessions(nat_report, "2 EIM+STUN", sessions)
        for s in sessions:
            assert set(s.transports.values()) == {"p2p-srflx"}, s.describe()
        # STUN only: coturn never allocated a relay.
        assert lab.turn is not None and "ALLOCATE" not in lab.turn.log_text()
        await reference_round(apps)
    finally:
        apps.close()
    for client in tunnel.clients:
        doc = await sent_and_written(client, 2 * TOTAL, 2 * TOTAL)
        assert doc["tx_p2p_packets"] > 0, doc
    nat_report(f"hotlink 2 EIM+STUN: {telemetry_line(tunnel.clients)}")


async def test_symmetric_nat_without_turn_falls_back_to_ws(
    make_hotlink_lab: Callable[..., HotlinkNatLab], nat_report: Report
) -> None:
    """Case 3: symmetric NAT and STUN only: the channel cannot open, the WS path carries all."""
    need_webrtc()  # the point is that ICE itself fails, not that there is no WebRTC at all
    lab = make_hotlink_lab(symmetric=True)
    lab.start_server()
    # The transport gives up on a channel that has not opened after this long; working paths
    # here open in well under a second, so 8 s is many times what any pair would need.
    tunnel = lab.start_tunnel(
        ice="stun", env={"SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS": str(NO_OPEN_WINDOW_MS)}
    )
    apps = await connect_apps(lab, tunnel)
    started = time.monotonic()
    try:
        # While the channels try to open: after the grace, the WS path.
        await reference_round(apps)
        # Both sides of both sessions give up on P2P (each client is in one session the
        # offerer, in the other the answerer) ...
        for client in tunnel.clients:
            await await_telemetry(
                client, lambda d: d.get("p2p_failed", 0) >= 2, timeout=OPEN_TIMEOUT
            )
        # ... and the tunnel carries on over the WS path.
        await reference_round(apps)
    finally:
        apps.close()
    waited = time.monotonic() - started
    for client in tunnel.clients:
        doc = await sent_and_written(client, 2 * TOTAL, 2 * TOTAL)
        assert doc["tx_p2p_packets"] == 0, doc
        assert doc["tx_ws_packets"] > 0 and doc["ws_fallbacks"] > 0, doc
        assert doc["webrtc_connected"] == 0, doc
        assert CHANNEL_OPEN not in client.log_text(), f"{client.email}: a channel opened"
    sessions = lab.sessions(tunnel)
    assert len(sessions) == 2, [s.describe() for s in sessions]
    for s in sessions:
        assert not s.open_at and set(s.transports.values()) <= {"ws"}, s.describe()
    nat_report(
        f"hotlink 3 symmetric+STUN: no channel after {waited:.0f} s (expected), all bytes via "
        f"WS; {telemetry_line(tunnel.clients)}"
    )


async def test_impaired_uplinks_carry_16_mib_through_the_tunnel(
    make_hotlink_lab: Callable[..., HotlinkNatLab], nat_report: Report
) -> None:
    """Case 4: delay + 2 % loss on both uplinks; TURN from the server's advertisement."""
    need_webrtc()
    # 10 ms each way: with 2 % loss a congestion-controlled stream gets about
    # MSS / (RTT * sqrt(loss)), so 16 MiB take some 40 s here (20 ms would double that).
    lab = make_hotlink_lab(
        symmetric=True, impair=Impairment(delay_ms=10, loss_pct=2), turn_secret="nat-lab-secret"
    )
    lab.start_server(advertise=True)
    tunnel = lab.start_tunnel(ice="advertised")
    for client in tunnel.clients:
        # The client's own ICE vars are unset: it took the server's TURN URL and credentials.
        client.wait_for_log(r"ICE servers from server: turn:.*with TURN credentials", 10)
    _, alice_w = await lab.dial("alice", tunnel.alice_port)
    bob_r, bob_w = await lab.dial("bob", tunnel.bob_port)
    try:
        # A first chunk opens the session; the bulk starts once the channel is open.
        hello = b"hello bob\n"
        alice_w.write(hello)
        await alice_w.drain()
        assert await read_exactly(bob_r, len(hello)) == hello
        sessions = await await_open_sessions(lab, tunnel, 1)
        report_sessions(nat_report, "4 impaired 10ms/2% + advertised TURN", sessions)
        assert set(sessions[0].transports.values()) == {"p2p-relay"}, sessions[0].describe()
        # The allocation used the short-lived TURN REST credentials ("<expiry>:<user>").
        assert lab.turn is not None
        assert re.search(r"username=<\d+:alice@example\.com>", lab.turn.log_text())
        before = await sent_and_written(tunnel.alice, len(hello), 0)

        payload = os.urandom(BULK)
        started = time.monotonic()

        async def send() -> None:
            for pos in range(0, BULK, MiB):
                alice_w.write(payload[pos : pos + MiB])
                await alice_w.drain()

        _, received = await asyncio.gather(send(), read_exactly(bob_r, BULK, timeout=180))
        elapsed = time.monotonic() - started
    finally:
        alice_w.close()
        bob_w.close()
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()
    doc = await sent_and_written(tunnel.alice, BULK + len(hello), 0)
    assert doc["tx_p2p_packets"] > 0, doc
    # The whole 16 MiB went through the relay, none of it over the WS path.
    assert doc["tx_ws_packets"] == before["tx_ws_packets"], (before, doc)
    nat_report(
        f"hotlink 4 impaired: 16 MiB intact (sha256) in {elapsed:.1f} s "
        f"({BULK / MiB / elapsed:.2f} MiB/s); {telemetry_line(tunnel.clients)}"
    )
