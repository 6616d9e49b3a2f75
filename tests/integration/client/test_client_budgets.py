"""A hostile peer against a real client: many sessions, each holding frames behind a missing
seq, must not grow the client's memory past its budget for that peer, Opens past the per-peer
session cap are refused, and a tunnel with another peer keeps delivering every byte; nor may
huge signaling tokens be held.

Real relay and client processes on loopback; the hostile peer (mallory) is a raw WebSocket
client that opens sessions on a tunnel bob holds with her and sends without credit, as a
reference client or an attacker would."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from hotlink.client.session.budget import BudgetLimits
from hotlink.lab.trees import Channel, free_port, write_channel_tree
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
    Message,
)
from support.client_proc import BOB, Tunnel, dial, start_tunnel
from support.server_proc import ServerProcess
from support.streams import Pattern, assert_whole, read_stream, send_stream
from support.ws_client import WSClient, open_client

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
MALLORY = "mallory@example.com"
HOSTILE_FLOW = "shared/flows/hostile"
LIMITS = BudgetLimits()  # the client's defaults for the default window
# Sessions mallory fills, and what she sends to each behind the missing seq 1: each stays
# within a session's own bound (24 MiB), together far past her budget (128 MiB).
FILLED = 16
PER_SESSION = 20
# Room for what is not the held frames: messages being decoded, allocator slack.
SLACK = 96 * MIB


def rss(pid: int, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak so far) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


class Mallory:
    """The hostile peer's connection; a reader task keeps what the relay sends her."""

    def __init__(self, client: WSClient) -> None:
        self.client = client
        self.seen: list[Message] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                self.seen.append(await self.client.recv(timeout=3600))

    def payloads[T](self, kind: type[T]) -> list[T]:
        return [m.payload for m in self.seen if isinstance(m.payload, kind)]

    async def until(self, predicate: object, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # type: ignore[operator]  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.client.close()


def hostile_channel(tmp_path: Path) -> Channel:
    """Bob also holds a tunnel with mallory (bob party 0: the path is in bob's datasite, and
    his ACL lets her open sessions on it); written before bob starts."""
    hostile = Channel(BOB, MALLORY, 0, 1, {BOB: free_port(), MALLORY: free_port()}, HOSTILE_FLOW)
    write_channel_tree(tmp_path / "bob" / "datasites", hostile)
    return hostile


async def test_a_hostile_peer_cannot_grow_the_clients_memory_and_a_tunnel_keeps_working(
    relay: ServerProcess, tmp_path: Path
) -> None:
    hostile = hostile_channel(tmp_path)
    env = {"SYFTBOX_HOTLINK_WEBRTC": "0"}
    t: Tunnel = await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env=env)
    mallory = Mallory(await open_client(relay.url, MALLORY))
    try:
        path = hostile.canonical_key
        # 1. Opens past the per-peer cap are refused; the first ones are accepted.
        sids = [f"mallory-{i:04d}-0000000" for i in range(LIMITS.sessions_per_peer + 4)]
        for sid in sids:
            await mallory.client.send(HotlinkOpen(sid=sid, pth=path, to=BOB))
        await mallory.until(
            lambda: (
                len(mallory.payloads(HotlinkAccept)) + len(mallory.payloads(HotlinkReject))
                >= len(sids)
            )
        )
        accepted = [a.sid for a in mallory.payloads(HotlinkAccept)]
        rejects = mallory.payloads(HotlinkReject)
        assert len(accepted) == LIMITS.sessions_per_peer
        assert len(rejects) == 4
        assert all(r.rsn.startswith(f"too many sessions from {MALLORY}") for r in rejects)

        # 2. Frames behind a hole in many sessions, while alice streams to bob's app.
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.3)
        _, alice_w = await dial(t.alice_port)
        pid = t.bob.pid
        before = rss(pid, "VmRSS")
        pattern = Pattern()
        payload = b"m" * MIB

        async def flood() -> None:
            for sid in accepted[:FILLED]:
                for seq in range(2, PER_SESSION + 2):
                    await mallory.client.send(HotlinkData(sid, seq, path, "", payload))
                    # Paced so bob's client keeps up and the relay never finds his queue full.
                    await asyncio.sleep(0.02)

        got, sent, _ = await asyncio.gather(
            read_stream(bob_r, pattern),
            send_stream(alice_w, 32 * MIB, pattern),
            flood(),
        )
        assert_whole(got, sent)  # the tunnel with alice kept every byte
        fits = LIMITS.bytes_per_peer // (PER_SESSION * MIB)  # sessions whose frames fit
        await mallory.until(lambda: len(mallory.payloads(HotlinkClose)) >= FILLED - fits)
        peak = rss(pid, "VmHWM")
        closes = mallory.payloads(HotlinkClose)
        assert all(c.rsn.startswith(f"memory budget of {MALLORY} reached") for c in closes)
        assert {c.sid for c in closes} <= set(accepted[fits:FILLED])
        # Without the budget bob would hold FILLED x 20 MiB = 320 MiB for mallory.
        assert peak - before <= LIMITS.bytes_per_peer + SLACK, (
            f"bob's client grew by {(peak - before) / MIB:.0f} MiB"
        )
        assert t.bob.alive()
        for w in (alice_w, bob_w):
            w.close()
    finally:
        await mallory.close()
        await asyncio.to_thread(t.stop)


async def test_huge_signaling_tokens_are_not_held(relay: ServerProcess, tmp_path: Path) -> None:
    # Well-formed ICE candidates of 8 MiB each for a session whose offer mallory never
    # answers: a peer connection holds candidates until the remote description arrives, so
    # without a size cap at the door bob would keep every one (40 x 8 MiB here).
    hostile = hostile_channel(tmp_path)
    env = {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel"}
    t: Tunnel = await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env=env)
    mallory = Mallory(await open_client(relay.url, MALLORY))
    try:
        sid, path = "mallory-signals-0000", hostile.canonical_key
        await mallory.client.send(HotlinkOpen(sid=sid, pth=path, to=BOB))
        await mallory.until(lambda: mallory.payloads(HotlinkAccept))
        before = rss(t.bob.pid, "VmRSS")
        candidate = "1 1 udp 2122260223 192.0.2.1 50000 typ host " + "x" * (8 * MIB - 8192)
        tok = json.dumps({"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0})
        for _ in range(40):
            await mallory.client.send(HotlinkSignal(sid=sid, knd="ice_candidate", tok=tok))
            # Paced so bob's client keeps up and the relay never finds his queue full.
            await asyncio.sleep(0.1)
        # Bob handles his messages in order: his Accept of a later Open means he took them all.
        await mallory.client.send(HotlinkOpen(sid="mallory-signals-0001", pth=path, to=BOB))
        await mallory.until(lambda: len(mallory.payloads(HotlinkAccept)) == 2)
        assert "dropping a webrtc signal" in t.bob.log_text()
        peak = rss(t.bob.pid, "VmHWM")
        # What remains is decoding one message at a time: a few copies of 8 MiB.
        assert peak - before <= 128 * MIB, f"bob's client grew by {(peak - before) / MIB:.0f} MiB"
        # Bob's tunnel with alice still carries a stream.
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.3)
        _, alice_w = await dial(t.alice_port)
        pattern = Pattern()
        got, sent = await asyncio.gather(
            read_stream(bob_r, pattern), send_stream(alice_w, 4 * MIB, pattern)
        )
        assert_whole(got, sent)
        for w in (alice_w, bob_w):
            w.close()
    finally:
        await mallory.close()
        await asyncio.to_thread(t.stop)
