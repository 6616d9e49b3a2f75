"""``hotlink status`` and the control socket, with two real clients and a tunnel between them.

While a stream runs, and after it ended, ``hotlink status --json`` (a real subprocess) names
the peer and the transport on both sides and counts the bytes each way; ``/metrics`` is
Prometheus text with the bytes sent; the socket is the owner's alone; without a daemon the
command says so in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hotlink.client.control_client import (
    control_socket_path,
    fetch_metrics,
    is_ready,
    tunnel_listening,
    wait_for_status,
    wait_for_status_async,
)
from hotlink.webrtc import BackendUnavailableError, load_backend
from support.client_proc import ALICE, BOB, ClientProcess, Tunnel, dial, start_tunnel
from support.server_proc import ServerProcess
from support.streams import MIB, Pattern, assert_whole, read_stream, send_stream

SIZE = 16 * MIB


def socket_of(client: ClientProcess) -> Path:
    return control_socket_path(client.data_dir, client.email)


async def hotlink_status(client: ClientProcess, *args: str) -> tuple[int, str, str]:
    """``python -m hotlink status --data-dir D --email E ARGS`` as a real process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hotlink",
        "status",
        "--data-dir",
        str(client.data_dir),
        "--email",
        client.email,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Wide enough that the table keeps each email on one line.
        env={**os.environ, "COLUMNS": "200"},
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def status_json(client: ClientProcess) -> dict[str, Any]:
    code, out, err = await hotlink_status(client, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def live(doc: dict[str, Any], direction: str, peer: str) -> list[dict[str, Any]]:
    return [s for s in doc["sessions"] if s["direction"] == direction and s["peer"] == peer]


def carrying(direction: str, peer: str, transport: str) -> Any:
    """A predicate: a live session that moved bytes over ``transport``."""
    key = "tx_bytes" if direction == "out" else "rx_bytes"

    def ok(doc: dict[str, Any]) -> bool:
        return any(s["transport"] == transport and s[key] > 0 for s in live(doc, direction, peer))

    return ok


def ended(direction: str, peer: str, size: int) -> Any:
    """A predicate: no live session, and the stream's session ended cleanly with every byte."""
    key = "tx_bytes" if direction == "out" else "rx_bytes"

    def ok(doc: dict[str, Any]) -> bool:
        return not doc["sessions"] and any(
            e["direction"] == direction and e["peer"] == peer and e[key] == size and e["clean"]
            for e in doc["recent"]
        )

    return ok


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def stream_and_watch(t: Tunnel, transport: str) -> None:
    """Stream alice -> bob; while it runs and after, status names peers and transport."""
    alice_sock, bob_sock = socket_of(t.alice), socket_of(t.bob)
    for path in (alice_sock, bob_sock):
        await wait_for_status_async(path, lambda d: is_ready(d) and tunnel_listening()(d), 30)
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.2)
    _alice_r, alice_w = await dial(t.alice_port)
    pattern = Pattern()
    # The sending app holds back its EOF until we looked: the stream runs until then.
    sending = asyncio.create_task(send_stream(alice_w, SIZE, pattern, eof=False))
    reading = asyncio.create_task(read_stream(bob_r, pattern, timeout=120))
    try:
        # While the stream runs: each side names the other and the path the bytes take.
        await wait_for_status_async(alice_sock, carrying("out", BOB, transport), 30)
        await wait_for_status_async(bob_sock, carrying("in", ALICE, transport), 30)
        doc = await status_json(t.alice)
        (out,) = [s for s in live(doc, "out", BOB) if s["transport"] == transport]
        assert out["tx_bytes"] > 0 and out["rx_bytes"] == 0
        assert out["kind"] == "tcp" and out["state"] == "accepted"
        assert out["uptime_s"] > 0 and out["last_error"] == ""
        assert out["tx_rate"] is None or out["tx_rate"] >= 0
        if transport == "ws":
            # The relay hop is measured (TCP_INFO on Linux) once the socket carried traffic.
            assert out["rtt_ms"] is None or out["rtt_source"] == "relay-tcp"
        (tunnel,) = doc["tunnels"]
        assert tunnel["peer"] == BOB and tunnel["listening"] and tunnel["port"] == t.alice_port
        assert tunnel["app_connections"] == 1
        assert doc["connection"]["state"] == "connected"
        assert doc["email"] == ALICE and doc["pid"] == t.alice.pid
        doc = await status_json(t.bob)
        (inbound,) = [s for s in live(doc, "in", ALICE) if s["transport"] == transport]
        assert inbound["rx_bytes"] > 0 and inbound["tx_bytes"] == 0
        assert not reading.done(), "the stream ended before the sending app's EOF"
        sent = await sending
        alice_w.write_eof()
        got = await reading
        assert_whole(got, sent)
    finally:
        sending.cancel()
        reading.cancel()
        await asyncio.gather(sending, reading, return_exceptions=True)
        await close_writer(alice_w)
        await close_writer(bob_w)

    # After: the sessions are gone from the live list and kept, with every byte, as ended.
    await wait_for_status_async(alice_sock, ended("out", BOB, SIZE), 30)
    await wait_for_status_async(bob_sock, ended("in", ALICE, SIZE), 30)
    doc = await status_json(t.alice)
    last = next(e for e in doc["recent"] if e["direction"] == "out" and e["tx_bytes"] == SIZE)
    assert last["peer"] == BOB and last["transport"] == transport and last["reason"] == "eof"
    assert doc["tunnels"][0]["tx_bytes"] >= SIZE
    doc = await status_json(t.bob)
    last = next(e for e in doc["recent"] if e["direction"] == "in" and e["rx_bytes"] == SIZE)
    assert last["peer"] == ALICE and last["transport"] == transport and last["clean"]
    assert doc["tunnels"][0]["rx_bytes"] >= SIZE

    # The human table names them too.
    code, out_text, err = await hotlink_status(t.alice)
    assert code == 0, err
    assert BOB in out_text and transport in out_text, out_text

    # /metrics: Prometheus text with the bytes sent on the path they took.
    text = await asyncio.to_thread(fetch_metrics, alice_sock)
    path = "ws" if transport == "ws" else "p2p"
    assert metric(text, "hotlink_client_sent_bytes_total", path=path) >= SIZE - 2 * MIB
    total = metric(text, "hotlink_client_sent_bytes_total", path="ws") + metric(
        text, "hotlink_client_sent_bytes_total", path="p2p"
    )
    assert total == SIZE
    assert metric(text, "hotlink_client_connected") == 1
    bob_text = await asyncio.to_thread(fetch_metrics, bob_sock)
    assert metric(bob_text, "hotlink_client_delivered_bytes_total") == SIZE


def require_webrtc() -> None:
    try:
        load_backend("auto")
    except BackendUnavailableError as exc:
        pytest.skip(f"no WebRTC backend here: {exc}")


@pytest.mark.slow
async def test_status_names_peer_and_p2p_transport(relay: ServerProcess, tmp_path: Path) -> None:
    require_webrtc()
    tunnel = await asyncio.to_thread(start_tunnel, relay.url, tmp_path)
    try:
        await stream_and_watch(tunnel, "p2p-host")
    finally:
        await asyncio.to_thread(tunnel.stop)


async def test_status_over_the_websocket_and_the_socket_is_private(
    relay: ServerProcess, tmp_path: Path
) -> None:
    tunnel = await asyncio.to_thread(
        start_tunnel, relay.url, tmp_path, env={"SYFTBOX_HOTLINK_WEBRTC": "0"}
    )
    try:
        await stream_and_watch(tunnel, "ws")
        for client in tunnel.clients:
            path = socket_of(client)
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.lstat(path.parent).st_mode) == 0o700
    finally:
        await asyncio.to_thread(tunnel.stop)
    # A daemon that stopped takes its socket with it, and status says nobody is there.
    assert not socket_of(tunnel.alice).exists()
    code, out, err = await hotlink_status(tunnel.alice, "--json")
    assert code == 3 and out == ""
    assert "no hotlink client is running" in err and len(err.strip().splitlines()) == 1


async def test_no_daemon_is_one_clear_line(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotlink", "status",
        "--data-dir", str(tmp_path), "--email", "carol@example.com",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 3
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "no hotlink client is running" in lines[0], err
    assert "Traceback" not in err.decode() and out == b""


def test_harness_waits_on_status_not_log_lines(relay: ServerProcess, tmp_path: Path) -> None:
    """The sync client a harness uses: ready and listening, from the status endpoint."""
    tunnel = start_tunnel(relay.url, tmp_path, env={"SYFTBOX_HOTLINK_WEBRTC": "0"})
    try:
        doc = wait_for_status(socket_of(tunnel.bob), is_ready, 30, alive=tunnel.bob.alive)
        assert doc["connection"]["acls_published"] and doc["connection"]["connects"] == 1
        key = doc["tunnels"][0]["key"]
        doc = wait_for_status(socket_of(tunnel.alice), tunnel_listening(key), 30)
        assert doc["tunnels"][0]["port"] == tunnel.alice_port
    finally:
        tunnel.stop()
