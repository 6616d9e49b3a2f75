"""A tunnel between alice and bob through real client daemons, and what we measure on it.

The steps are separate functions so the demo and the benchmarks compose them the same way:

1. :func:`start_pair` - alice's and bob's client daemons, connected, ACLs published;
2. :func:`open_tunnel` - write the channel (markers + ACLs in both trees), wait until both
   proxies listen, dial both ports and send a first byte each way (set-up timings);
3. :func:`warm_up` - ping-pong until the path of each direction is known from telemetry
   (and, with WebRTC on, until the data channels carry the data);
4. :func:`~hotlink.demo.measure.stream_one_way`, :func:`~hotlink.demo.measure.ping_pong`;
5. :func:`close_tunnel` - EOF each way, checked to arrive clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..lab.processes import CHANNEL_OPEN, ClientProc, StackError
from ..lab.stack import DevStack
from ..tunnels import Channel
from .measure import Connector, Link, close_link, dial, ping_pong

ALICE = "alice@example.com"
BOB = "bob@example.com"
HELLO = b"\x01"
DIRECTIONS = ("alice→bob", "bob→alice")
TELEMETRY_KEYS = (
    "tx_packets",
    "tx_bytes",
    "tx_p2p_packets",
    "tx_ws_packets",
    "rx_packets",
    "rx_bytes",
    "p2p_offers",
    "p2p_answers_ok",
    "ws_fallbacks",
    "webrtc_connected",
)


def client_env(
    backend: str = "auto",
    ws_only: bool = False,
    *,
    flow_control: bool = True,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Client settings for a WebRTC backend (``auto``/``libdatachannel``/``aiortc``), or the
    WebSocket relay path only; ``flow_control=False`` makes the clients neither grant nor
    follow credit (as reference clients do); ``extra`` goes on top."""
    env = {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": backend}
    if ws_only:
        env["SYFTBOX_HOTLINK_WEBRTC"] = "0"
    if not flow_control:
        env["SYFTBOX_HOTLINK_FLOW_CONTROL"] = "0"
    env.update(extra or {})
    return env


async def start_pair(
    stack: DevStack,
    *,
    env: Mapping[str, str] | None = None,
    netns: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[ClientProc, ClientProc]:
    """Start alice's and bob's clients side by side and wait until both are ready."""
    clients = [
        stack.spawn_client(email, env=env, netns=(netns or {}).get(email)) for email in (ALICE, BOB)
    ]
    await asyncio.gather(*(c.await_ready(timeout) for c in clients))
    return clients[0], clients[1]


@dataclass
class TunnelSetup:
    """An open tunnel: ``a`` is alice's app connection, ``b`` bob's; times are epoch seconds."""

    stack: DevStack
    channel: Channel
    alice: ClientProc
    bob: ClientProc
    a: Link
    b: Link
    log_marks: dict[str, int]
    marker_written: float
    proxies_ready: float
    first_byte: float  # alice's first byte arrived at bob's app
    first_byte_back: float  # bob's first byte arrived at alice's app
    transports: dict[str, str] = field(default_factory=dict)
    # Per direction, the sender's end-to-end state (sealed, plaintext, ...), as telemetry has it.
    sealing: dict[str, str] = field(default_factory=dict)

    @property
    def to_first_byte_s(self) -> float:
        return self.first_byte - self.marker_written

    @property
    def to_proxies_s(self) -> float:
        return self.proxies_ready - self.marker_written

    def to_channel_open_s(self) -> float | None:
        """Marker written -> the first data channel opened (either client's log), or None."""
        times = [
            t
            for c in (self.alice, self.bob)
            if (t := c.log_time(CHANNEL_OPEN, self.log_marks[c.email])) is not None
        ]
        return min(times) - self.marker_written if times else None


async def open_tunnel(
    stack: DevStack,
    alice: ClientProc,
    bob: ClientProc,
    *,
    connect: Connector | Mapping[str, Connector] | None = None,
    channel: Channel | None = None,
    timeout: float = 30.0,
) -> TunnelSetup:
    """Write the channel into both trees, wait for both proxies, dial, first byte each way.

    ``connect`` opens connections to the proxy ports (default: loopback); a mapping gives
    one per email (clients in different network namespaces). ``channel`` (default: a new one
    in the default flow folder) lets a second tunnel run between the same two clients."""
    connectors = connect if isinstance(connect, Mapping) else {}
    default = None if isinstance(connect, Mapping) else connect
    channel = channel or stack.channel(alice.email, bob.email)
    marks = {c.email: c.log_mark() for c in (alice, bob)}
    marker_written = time.time()
    stack.write_channel(channel)
    # The ACL must reach the server before the first Open, or the Open is rejected.
    await stack.await_channel(channel, timeout)
    proxies_ready = time.time()
    b = await dial(
        channel.port(bob.email), connect=connectors.get(bob.email, default), timeout=timeout
    )
    a = await dial(
        channel.port(alice.email), connect=connectors.get(alice.email, default), timeout=timeout
    )
    try:
        async with asyncio.timeout(timeout):
            a[1].write(HELLO)
            await b[0].readexactly(len(HELLO))
            first_byte = time.time()
            b[1].write(HELLO)
            await a[0].readexactly(len(HELLO))
            first_byte_back = time.time()
    except BaseException:
        await close_link(a)
        await close_link(b)
        raise
    return TunnelSetup(
        stack,
        channel,
        alice,
        bob,
        a,
        b,
        marks,
        marker_written,
        proxies_ready,
        first_byte,
        first_byte_back,
    )


def session_transport(doc: dict[str, Any] | None, key: str = "transport") -> str | None:
    """The ``transport`` (or another ``key``) of the newest outbound session in a telemetry
    document."""
    if not doc:
        return None
    sessions = doc.get("live", {}).get("sessions_out", [])
    for session in reversed(sessions):
        kind = session.get(key)
        if kind:
            return str(kind)
    return None


def read_transports(setup: TunnelSetup) -> dict[str, str | None]:
    return {
        DIRECTIONS[0]: session_transport(setup.alice.telemetry()),
        DIRECTIONS[1]: session_transport(setup.bob.telemetry()),
    }


async def warm_up(
    setup: TunnelSetup, *, want_p2p: bool, timeout: float = 10.0, no_offer_after: float = 3.0
) -> dict[str, str]:
    """Ping-pong until telemetry names the path of both directions; with ``want_p2p`` until
    both are on a data channel, or it is clear that none will open (no offer within
    ``no_offer_after`` s, or ``timeout``). Returns the path per direction."""
    started = time.monotonic()
    kinds: dict[str, str | None] = {}
    while True:
        await ping_pong(setup.a, setup.b, size=64, rounds=5)
        kinds = read_transports(setup)
        known = all(kinds.values())
        all_p2p = known and all(str(k).startswith("p2p") for k in kinds.values())
        elapsed = time.monotonic() - started
        if known and (not want_p2p or all_p2p):
            break
        if elapsed > timeout:
            break
        if want_p2p and known and elapsed > no_offer_after:
            docs = [c.telemetry() or {} for c in (setup.alice, setup.bob)]
            if all(not d.get("p2p_offers") for d in docs):
                break
        await asyncio.sleep(0.1)
    setup.transports = {d: k or "unknown" for d, k in kinds.items()}
    setup.sealing = {
        d: session_transport(client.telemetry(), "e2e_state") or "unknown"
        for d, client in zip(DIRECTIONS, (setup.alice, setup.bob), strict=True)
    }
    return setup.transports


def refresh_transports(setup: TunnelSetup) -> dict[str, str]:
    """Re-read the paths (a session may have fallen back to the WebSocket meanwhile)."""
    for direction, kind in read_transports(setup).items():
        if kind:
            setup.transports[direction] = kind
    return setup.transports


async def close_tunnel(setup: TunnelSetup, timeout: float = 30.0) -> bool:
    """Close alice's app connection, then bob's; True when each side saw a clean EOF with no
    stray bytes before it."""
    clean = True
    async with asyncio.timeout(timeout):
        for (_, writer), (reader, _) in ((setup.a, setup.b), (setup.b, setup.a)):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
            rest = await reader.read()
            clean = clean and rest == b""
    await close_link(setup.a)
    await close_link(setup.b)
    return clean


def telemetry_counters(client: ClientProc) -> dict[str, Any]:
    doc = client.telemetry() or {}
    return {key: doc.get(key, 0) for key in TELEMETRY_KEYS}


async def settle_telemetry(
    setup: TunnelSetup, a_to_b_bytes: int, b_to_a_bytes: int, timeout: float = 8.0
) -> dict[str, dict[str, Any]]:
    """Wait until both telemetry files count the bytes we sent (they are written at most once
    a second); returns the counters of each client (the last seen, also on timeout)."""
    with_counts = (
        (setup.alice, a_to_b_bytes, b_to_a_bytes),
        (setup.bob, b_to_a_bytes, a_to_b_bytes),
    )
    for client, tx, rx in with_counts:

        def counted(doc: dict[str, Any], tx: int = tx, rx: int = rx) -> bool:
            return bool(doc.get("tx_bytes", 0) >= tx and doc.get("rx_bytes", 0) >= rx)

        with contextlib.suppress(StackError):
            await client.await_telemetry(counted, timeout)
    return {c.email: telemetry_counters(c) for c in (setup.alice, setup.bob)}
