"""Large SCTP packets between two clients on one network stack, seen on the wire.

Two real clients on loopback, WebRTC on (libdatachannel): the sender learns from the
receiver's ``p2p_host`` hint that they share this stack and makes its peer connection with
4096-byte packets. tcpdump on ``lo`` shows the datagrams; with the MTU pinned to 1280 on the
sender, none is larger than that, which shows the capture would see the difference. Every
stream arrives whole with a clean EOF either way. A client in another network namespace gets
another stack id (that path's MTU is unknown, so it keeps the default).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.capture import capture_unavailable, capturing, udp_payload_sizes
from support.client_proc import Tunnel, dial, read_to_eof, start_tunnel
from support.server_proc import ServerProcess

SIZE = 8 * 1024 * 1024
PINNED = {"SYFTBOX_HOTLINK_WEBRTC_MTU": "1280"}
LIBDATACHANNEL = {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel"}

needs_capture = pytest.mark.skipif(
    capture_unavailable() is not None, reason=capture_unavailable() or ""
)


async def _stream(tunnel: Tunnel) -> None:
    """SIZE random bytes from alice's app to bob's: every byte and a clean EOF."""
    payload = os.urandom(SIZE)
    bob_r, bob_w = await dial(tunnel.bob_port)
    await asyncio.sleep(0.2)  # bob's app is there before the stream arrives
    _alice_r, alice_w = await dial(tunnel.alice_port)
    try:
        reading = asyncio.create_task(read_to_eof(bob_r, timeout=120))
        alice_w.write(payload)
        await alice_w.drain()
        alice_w.write_eof()
        got = await reading
    finally:
        for w in (alice_w, bob_w):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
    assert len(got) == SIZE
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def _datagrams(
    relay: ServerProcess, tmp_path: Path, alice_env: dict[str, str]
) -> tuple[list[int], str]:
    """Stream through a new tunnel while capturing UDP on loopback: the datagram sizes, and
    the sender's log line of its channel opening."""
    tunnel = start_tunnel(relay.url, tmp_path, env=LIBDATACHANNEL, alice_env=alice_env)
    try:
        with capturing(0, tmp_path / "udp.pcap", expression="udp") as cap:
            await _stream(tunnel)
        assert not cap.dropped, f"the capture lost {cap.dropped} packets"
        opened = tunnel.alice.search_log(r"data channel open \(answerer\).*")
        assert opened is not None, "the stream did not go over the data channel"
        return udp_payload_sizes(cap.pcap), opened.group(0)
    finally:
        tunnel.stop()


@needs_capture
async def test_peers_on_one_stack_send_large_sctp_packets(
    relay: ServerProcess, tmp_path: Path
) -> None:
    sizes, opened = await _datagrams(relay, tmp_path, {})
    assert "mtu=4096" in opened
    assert max(sizes) > 1500, f"largest datagram {max(sizes)} bytes; {opened}"
    assert max(sizes) <= 4096  # libjuice drops anything larger


@needs_capture
async def test_a_pinned_mtu_keeps_the_packets_small(relay: ServerProcess, tmp_path: Path) -> None:
    sizes, opened = await _datagrams(relay, tmp_path, PINNED)
    assert "mtu=1280" in opened
    assert len(sizes) > SIZE // 1280  # the stream is in the capture
    assert max(sizes) <= 1280


def test_another_network_namespace_is_another_stack() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    probe = "from hotlink.client.p2p.stack_id import network_stack_id as n; print(n().hex())"
    here = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    name = f"hl-stack-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        there = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)
    assert here and there and here != there
