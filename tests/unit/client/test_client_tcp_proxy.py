"""TCP proxy: marker discovery, tunnel path matching, and a channel with real loopback sockets
feeding real sessions on a fake host."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from pathlib import Path

import pytest

import hotlink.client.edges.tcp_proxy as tcp_proxy_module
from hotlink.client.edges.changes import FULL, NOTHING, ChangeFeed, Changes
from hotlink.client.edges.listener import ListenerHub
from hotlink.client.edges.tcp_proxy import (
    MarkerScanner,
    TcpProxy,
    TunnelChannel,
    tunnel_path_matches,
)
from hotlink.client.edges.watcher import TreeWatcher
from hotlink.client.localfs import MARKER_MAX_BYTES
from hotlink.client.session.hints import Hints
from hotlink.client.session.outbound import OutboundSession
from hotlink.protocol.markers import TcpMarker, proxy_channel
from hotlink.protocol.messages import HotlinkClose
from unit.client.client_fakes import ALICE, BOB, FakeHost, until
from unit.client.hostile_files import NESTED_JSON, fifo_guard, make_fifo


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        return await reader.read()


CHANNEL = "shared/flows/t/run1/_mpc/0_to_1"
CANONICAL = f"{ALICE}/{CHANNEL}/stream.tcp.request"


def _marker(datasites: Path, owner: str, port_alice: int = 9100, port_bob: int = 9200) -> Path:
    folder = datasites / owner / CHANNEL
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stream.tcp"
    ports = {ALICE: port_alice, BOB: port_bob}
    path.write_text(json.dumps({"from": ALICE, "to": BOB, "port": 0, "ports": ports}))
    return path


def test_scanner_finds_tunnels_once_per_canonical_key(tmp_path: Path) -> None:
    _marker(tmp_path, ALICE)
    _marker(tmp_path, BOB)  # the same tunnel, seen in bob's datasite folder
    found = MarkerScanner(tmp_path, BOB).scan()
    assert list(found) == [CANONICAL]
    assert found[CANONICAL].listen_port == 9200
    assert found[CANONICAL].peer_email == ALICE


def test_scanner_skips_ipc_markers_and_warns_once_about_bad_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ipc = tmp_path / ALICE / "app_data" / "app" / "rpc" / "ep"
    ipc.mkdir(parents=True)
    (ipc / "stream.tcp").write_text("127.0.0.1:5555")  # TCP-mode IPC marker, same name
    bad = tmp_path / ALICE / "shared/flows/t/run2/_mpc/0_to_1"
    bad.mkdir(parents=True)
    (bad / "stream.tcp").write_text("{not json")
    not_mpc = tmp_path / ALICE / "shared/flows/t/run3/0_to_1"
    not_mpc.mkdir(parents=True)
    (not_mpc / "stream.tcp").write_text(json.dumps({"from": ALICE, "to": BOB, "port": 1}))
    scanner = MarkerScanner(tmp_path, ALICE)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert scanner.scan() == {}
    assert sum("not valid JSON" in r.message for r in caplog.records) == 1
    assert sum("run3/0_to_1/stream.tcp" in r.message for r in caplog.records) == 1
    assert not any("app_data" in r.message for r in caplog.records)


def test_near_miss_markers_are_warned_about_once_per_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = json.dumps({"from": ALICE, "to": BOB, "ports": {ALICE: 9100, BOB: 9200}})
    layouts = {
        # What is wrong -> where.
        "not under an _mpc folder (did you mean "
        f"{ALICE}/shared/flows/t/a/_mpc/0_to_1/stream.tcp?)": "shared/flows/t/a/0_to_1",
        "its folder 'chan' is not named N_to_M": "shared/flows/t/b/_mpc/chan",
        "not under an _mpc folder and its folder 'c' is not named N_to_M": "shared/flows/t/c",
    }
    for folder in layouts.values():
        (tmp_path / ALICE / folder).mkdir(parents=True)
        (tmp_path / ALICE / folder / "stream.tcp").write_text(good)
    (_channel_folder(tmp_path, "d") / "stream.tcp").write_text(
        json.dumps({"from": "carol@example.com", "to": "dave@example.com", "port": 1})
    )
    ipc = tmp_path / ALICE / "app_data" / "app" / "rpc" / "ep"
    ipc.mkdir(parents=True)
    (ipc / "stream.tcp").write_text("127.0.0.1:5555")  # an IPC endpoint's address
    (tmp_path / ALICE / "shared" / "stream.tcp").write_text("")  # still being written
    scanner = MarkerScanner(tmp_path, ALICE)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert scanner.scan() == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for problem, folder in layouts.items():
        [line] = [w for w in warnings if f"{folder}/stream.tcp ignored" in w]
        assert problem in line
        assert "a tunnel marker goes in <datasite>/<flow>/<run>/_mpc/0_to_1/stream.tcp" in line
    [neither] = [w for w in warnings if "/d/_mpc/0_to_1" in w]
    assert f"{ALICE} is neither party" in neither and '"ports"' in neither
    assert len(warnings) == 4  # the IPC address and the empty file are no tunnel markers
    # A new version of a file is looked at (and warned about) again.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (tmp_path / ALICE / "shared/flows/t/c/stream.tcp").write_text(good + " ")
        for _ in range(3):
            scanner.scan()
    assert len(caplog.records) == 1


def test_markers_found_and_removed_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = _marker(tmp_path, ALICE)
    scanner = MarkerScanner(tmp_path, ALICE)
    with caplog.at_level(logging.INFO, logger="hotlink.tcp_proxy"):
        for _ in range(3):
            assert list(scanner.scan()) == [CANONICAL]
        marker.unlink()
        assert scanner.scan() == {}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"tunnel marker found: {ALICE}/{CHANNEL}/stream.tcp (peer {BOB}, listening on port 9100)",
        f"tunnel marker removed: {ALICE}/{CHANNEL}/stream.tcp",
    ]


def test_tunnel_path_matches_the_variants_reference_peers_send_on() -> None:
    info = proxy_channel(f"{BOB}/{CHANNEL}/stream.tcp", TcpMarker(ALICE, BOB, 0, {BOB: 1}), BOB)
    assert info.canonical_key == CANONICAL
    assert tunnel_path_matches(CANONICAL, info)
    assert tunnel_path_matches(f"{BOB}/{CHANNEL}/stream.tcp.request", info)  # local key
    assert tunnel_path_matches(f"{BOB}/shared/flows/t/run1/_mpc/1_to_0/stream.tcp.request", info)
    assert not tunnel_path_matches(
        f"{ALICE}/shared/flows/t/run9/_mpc/0_to_1/stream.tcp.request", info
    )
    assert not tunnel_path_matches(f"{ALICE}/{CHANNEL}/other.request", info)
    assert not tunnel_path_matches(f"carol@x.com/{CHANNEL}/stream.tcp.request", info)
    assert not tunnel_path_matches(
        f"{ALICE}/shared/flows/t/run1/_mpc/0_to_2/stream.tcp.request", info
    )


# ---------------------------------------------------------------- a live channel


class Opener:
    """Opens real OutboundSessions on a fake host; accepts them unless told to reject."""

    def __init__(self, reject: bool = False) -> None:
        self.host = FakeHost()
        self.sessions: list[OutboundSession] = []
        self.reject = reject

    async def open_stream(self, path: str, to: str = "") -> OutboundSession:
        s = OutboundSession(self.host, sid=f"{len(self.sessions):016x}", key="k", path=path, to=to)
        self.sessions.append(s)
        s.start()
        if self.reject:
            s.on_reject("permission denied")
        else:
            s.on_accept()
        return s

    def sent(self) -> bytes:
        return b"".join(f.payload for f in self.host.frames)


@contextlib.asynccontextmanager
async def _proxy(tmp_path: Path, opener: Opener, port: int):  # type: ignore[no-untyped-def]
    _marker(tmp_path, ALICE, port_alice=port)
    proxy = TcpProxy(
        datasites=tmp_path, local_email=ALICE, bind_host="127.0.0.1", chunk_size=4096,
        opener=opener,
    )  # fmt: skip
    await proxy.scan_once()
    try:
        yield proxy
    finally:
        await proxy.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _channel(proxy: TcpProxy) -> TunnelChannel:
    channel = proxy.sink_for(CANONICAL, BOB)
    assert channel is not None
    return channel


async def _reset_seen(reader: asyncio.StreamReader) -> bytes:
    """What the app reads before the reset; fails the test on a clean EOF."""
    got = bytearray()
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(5):
            while data := await reader.read(65536):
                got += data
    return bytes(got)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_app_bytes_go_out_in_order_and_eof_closes_the_session(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        assert list(proxy.channels) == [CANONICAL]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = bytes(range(256)) * 100
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        await until(lambda: opener.sessions and opener.sessions[0].ended)
        assert opener.sent() == payload
        assert all(len(f.payload) <= 4096 for f in opener.host.frames)
        assert opener.host.ordered[-1] == HotlinkClose("0" * 16, f"eof:{len(opener.host.frames)}")
        assert opener.sessions[0].path == CANONICAL and opener.sessions[0].to == BOB
        # The app only half-closed: the peer's answer still reaches it, then a clean EOF,
        # and only then does the connection leave the channel.
        channel = await _channel(proxy)
        conn = await channel.wait_writer(1)
        assert conn is not None and not conn.closed
        await conn.write(b"the answer")
        conn.finish()
        assert await read_to_eof(reader) == b"the answer"
        await until(lambda: not channel.connections)
        await _close(writer)


async def test_failed_session_resets_the_app_connection(tmp_path: Path) -> None:
    opener, port = Opener(reject=True), _free_port()
    async with _proxy(tmp_path, opener, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        await writer.drain()
        # We read everything the app sent, so without SO_LINGER 0 the abort would be a FIN.
        assert await _reset_seen(reader) == b""
        assert opener.sessions[0].close_reason == "rejected: permission denied"
        await _close(writer)


async def test_a_stream_given_up_midway_resets_the_app(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = await (await _channel(proxy)).wait_writer(5)
        assert conn is not None
        await conn.write(b"first part")
        conn.fail("peer went away")
        # The prefix arrives, and then a reset the app cannot mistake for the end.
        assert await _reset_seen(reader) == b"first part"
        await _close(writer)


async def test_graceful_end_delivers_everything_to_an_app_that_reads_late(
    tmp_path: Path,
) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        # A small receive buffer: most of what we write is still on our side (kernel and
        # transport) when the connection closes, and a reset there would drop it.
        app = socket.socket()
        app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        app.connect(("127.0.0.1", port))
        app.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=app)
        writer.write_eof()  # the app's direction is done: nothing to send
        channel = await _channel(proxy)
        conn = await channel.wait_writer(5)
        assert conn is not None
        await until(lambda: conn.read_done)
        payload = os.urandom(64 * 1024)  # at most the transport's high-water mark: no wait
        await conn.write(payload)
        conn.finish()  # both directions ended cleanly: the connection closes
        assert conn.closed and not channel.connections
        data = await read_to_eof(reader)
        assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
        await _close(writer)


async def test_half_closed_app_stays_the_writer_for_the_peer_stream(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"request")
        writer.write_eof()
        await until(lambda: opener.sessions and opener.sessions[0].ended)
        assert opener.sent() == b"request"
        channel = await _channel(proxy)
        # The answer comes after the app's EOF: it goes to this connection, not a later one.
        conn = await channel.wait_writer(5)
        assert conn is not None and conn.app_eof and not conn.closed
        await conn.write(b"response")
        conn.finish()
        assert await read_to_eof(reader) == b"response"
        await until(lambda: not channel.connections)
        assert await channel.wait_writer(0.01) is None
        await _close(writer)


async def test_app_that_closes_without_writing_sends_an_empty_stream(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write_eof()
        await until(lambda: opener.sessions and opener.sessions[0].ended)
        # The peer hears the FIN: Close eof:0 with no frames.
        assert opener.sessions[0].close_reason == "eof"
        assert opener.host.frames == []
        assert opener.host.ordered == [HotlinkClose("0" * 16, "eof:0")]
        channel = await _channel(proxy)
        assert channel.eof_writer() is channel.connections[0]
        await _close(writer)


async def test_an_empty_stream_ends_only_a_connection_that_sent_its_eof(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        channel = await _channel(proxy)
        _r1, fresh = await asyncio.open_connection("127.0.0.1", port)
        fresh.write(b"question")
        await until(lambda: channel.connections and channel.connections[0].bytes_read > 0)
        # Still writing: this is the tunnel's next stream, and an empty stream from the
        # peer (its app connected and left) is no answer to it.
        assert channel.eof_writer() is None
        assert channel.writer_now() is channel.connections[0]
        fresh.write_eof()  # half-closed: now it waits for the answer
        await until(lambda: channel.connections[0].app_eof)
        assert channel.eof_writer() is channel.connections[0]
        await _close(fresh)


async def test_empty_stream_without_a_peer_leaves_the_connection_alone(tmp_path: Path) -> None:
    opener, port = Opener(reject=True), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write_eof()
        await until(lambda: opener.sessions and opener.sessions[0].ended)
        channel = await _channel(proxy)
        conn = await channel.wait_writer(5)
        assert conn is not None and not conn.closed
        await conn.write(b"still delivered")
        conn.finish()
        assert await read_to_eof(reader) == b"still delivered"
        await _close(writer)


async def test_connections_leave_the_channel_once_done(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        channel = await _channel(proxy)
        for i in range(50):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x" * (i + 1))
            await _close(writer)
            await until(lambda n=i: len(opener.sessions) == n + 1 and opener.sessions[n].ended)
            # Only live connections, each once: the newest may wait for the peer's stream.
            assert len(channel.connections) <= 1
            assert all(not c.closed for c in channel.connections)
        await until(lambda: len(channel._tasks) == 0)
        assert [s.close_reason for s in opener.sessions] == ["eof"] * 50
        conn = await channel.wait_writer(1)
        assert conn is not None
        conn.finish()  # the peer's (empty) stream ends: both directions done
        assert channel.connections == []


async def test_inbound_streams_go_to_the_newest_app_connection(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        channel = await _channel(proxy)
        assert proxy.sink_for(CANONICAL, "carol@example.com") is None
        assert await channel.wait_writer(0.01) is None
        old_r, old_w = await asyncio.open_connection("127.0.0.1", port)
        new_r, new_w = await asyncio.open_connection("127.0.0.1", port)
        assert await _reset_seen(old_r) == b""  # superseded by the newer connection
        conn = await channel.wait_writer(5)
        assert conn is not None and conn is channel.connections[-1]
        assert proxy.snapshot() == [{"port": port, "from": ALICE, "to": BOB, "connected": True}]
        await conn.write(b"to the app")
        conn.finish()
        async with asyncio.timeout(5):
            assert await new_r.read() == b"to the app"
        await _close(new_w)
        await _close(old_w)


async def test_a_marker_written_after_start_is_picked_up_by_file_events(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    watcher = TreeWatcher(tmp_path, rescan_interval=3600)
    proxy = TcpProxy(
        datasites=tmp_path, local_email=ALICE, bind_host="127.0.0.1", chunk_size=4096,
        opener=opener, watcher=watcher,
    )  # fmt: skip
    tasks = [asyncio.create_task(watcher.run()), asyncio.create_task(proxy.run())]
    try:
        await until(lambda: watcher.mode == "events", timeout=20)
        await until(lambda: not proxy.feed.pending, timeout=20)  # the first rescan is done
        marker = _marker(tmp_path, ALICE, port_alice=port)
        await until(lambda: CANONICAL in proxy.channels, timeout=20)
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        await _close(w)
        marker.unlink()
        await until(lambda: not proxy.channels, timeout=20)
        assert watcher.rescans == 1  # events, not the safety rescan
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert proxy.channels == {}


async def test_marker_removal_stops_the_listener(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        (tmp_path / ALICE / CHANNEL / "stream.tcp").unlink()
        await proxy.scan_once()
        assert proxy.channels == {}
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)


# ---------------------------------------------------------------- hostile markers


def _channel_folder(datasites: Path, run: str) -> Path:
    folder = datasites / ALICE / f"shared/flows/t/{run}/_mpc/0_to_1"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_deeply_nested_marker_is_skipped_and_the_others_still_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (_channel_folder(tmp_path, "a-nested") / "stream.tcp").write_text(NESTED_JSON)
    (_channel_folder(tmp_path, "b-dicts") / "stream.tcp").write_text('{"a":' * 20_000)
    _marker(tmp_path, ALICE)
    scanner = MarkerScanner(tmp_path, BOB)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert list(scanner.scan()) == [CANONICAL]
    assert sum("nested too deeply" in r.getMessage() for r in caplog.records) == 1
    assert all(len(r.getMessage()) < 500 for r in caplog.records)  # no echo of the input


def test_linked_fifo_and_oversize_markers_are_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    good = json.dumps({"from": ALICE, "to": BOB, "ports": {ALICE: 9100, BOB: 9200}})
    (outside / "stream.tcp").write_text(good)
    (_channel_folder(tmp_path, "linked") / "stream.tcp").symlink_to(outside / "stream.tcp")
    linked_dir = tmp_path / ALICE / "shared/flows/t/linkdir/_mpc"
    linked_dir.mkdir(parents=True)
    (linked_dir / "0_to_1").symlink_to(outside)
    big = good[:-1] + ', "pad": "' + "x" * MARKER_MAX_BYTES + '"}'
    (_channel_folder(tmp_path, "big") / "stream.tcp").write_text(big)
    fifo = make_fifo(_channel_folder(tmp_path, "pipe") / "stream.tcp")
    with fifo_guard(fifo) as guard:
        assert MarkerScanner(tmp_path, BOB).scan() == {}
    assert not guard.fired


async def test_the_proxy_scan_reads_markers_off_the_loop(tmp_path: Path) -> None:
    opener, port = Opener(), _free_port()
    fifo = make_fifo(_channel_folder(tmp_path, "pipe") / "stream.tcp")
    with fifo_guard(fifo) as guard:
        async with _proxy(tmp_path, opener, port) as proxy:
            (_channel_folder(tmp_path, "nested") / "stream.tcp").write_text(NESTED_JSON)
            await proxy.scan_once()
            assert list(proxy.channels) == [CANONICAL]
    assert not guard.fired


class FlakyHub(ListenerHub):
    """Scans that raise (as a marker that trips a parser bug would) before they work."""

    def __init__(self, failures: int) -> None:
        self.feed = ChangeFeed(poll_interval=0.0)
        self.failures = failures
        self.scans = 0
        self.closed = False

    async def scan_once(self, changes: Changes = FULL) -> None:
        self.scans += 1
        if self.scans <= self.failures:
            raise RecursionError("maximum recursion depth exceeded")

    async def close(self) -> None:
        self.closed = True


async def test_a_failing_scan_never_ends_the_discovery_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = FlakyHub(failures=50)
    with caplog.at_level(logging.ERROR, logger="hotlink.edges"):
        task = asyncio.create_task(hub.run())
        try:
            await until(lambda: hub.scans > 60)
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert hub.closed
    assert len(caplog.records) == 1  # reported once, not once per scan


# ---------------------------------------------------------------- bounds


def _bare_proxy(datasites: Path) -> TcpProxy:
    """A proxy whose scans the test runs itself (no discovery loop)."""
    return TcpProxy(
        datasites=datasites, local_email=ALICE, bind_host="127.0.0.1", chunk_size=4096,
        opener=Opener(),
    )  # fmt: skip


def _own_marker(datasites: Path, run: str, port: int) -> None:
    """A tunnel marker of ours (alice's datasite) listening on ``port``."""
    (_channel_folder(datasites, run) / "stream.tcp").write_text(
        json.dumps({"from": ALICE, "to": BOB, "ports": {ALICE: port, BOB: 1}})
    )


def _out_of_descriptors(*args: object, **kwargs: object) -> bytes:
    raise OSError(24, "Too many open files")


async def test_a_marker_that_cannot_be_read_for_a_moment_keeps_its_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opener, port = Opener(), _free_port()
    async with _proxy(tmp_path, opener, port) as proxy:
        running = await _channel(proxy)
        marker = tmp_path / ALICE / CHANNEL / "stream.tcp"
        marker.write_text(marker.read_text() + " ")  # a new version, read again

        monkeypatch.setattr(tcp_proxy_module, "read_regular_file", _out_of_descriptors)
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                await proxy.scan_once()
                assert proxy.sink_for(CANONICAL, BOB) is running
        assert sum("cannot read marker" in r.getMessage() for r in caplog.records) == 1
        monkeypatch.undo()
        await proxy.scan_once()
        assert proxy.sink_for(CANONICAL, BOB) is running
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _close(writer)


async def test_tunnels_beyond_the_cap_are_not_started_until_one_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tcp_proxy_module, "MAX_TUNNELS", 2)
    monkeypatch.setattr(tcp_proxy_module, "HINTS", Hints())  # nothing said before
    ports = [_free_port() for _ in range(3)]
    for run, port in zip(("a", "b", "c"), ports, strict=True):
        _own_marker(tmp_path, run, port)
    proxy = _bare_proxy(tmp_path)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                await proxy.scan_once()
        assert sorted(c.info.listen_port for c in proxy.channels.values()) == sorted(ports[:2])
        assert sum("not starting" in r.getMessage() for r in caplog.records) == 1
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", ports[2])
        (_channel_folder(tmp_path, "a") / "stream.tcp").unlink()
        await proxy.scan_once()
        assert sorted(c.info.listen_port for c in proxy.channels.values()) == sorted(ports[1:])
    finally:
        await proxy.close()


async def test_another_persons_markers_cannot_crowd_out_our_own_tunnels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tcp_proxy_module, "MAX_TUNNELS", 4)
    monkeypatch.setattr(tcp_proxy_module, "HINTS", Hints())
    monkeypatch.setattr(tcp_proxy_module, "MAX_FOREIGN_TUNNELS", 3)
    monkeypatch.setattr(tcp_proxy_module, "MAX_FOREIGN_TUNNELS_PER_PEER", 2)
    mallory, trudy = "mallory@example.com", "trudy@example.com"

    def foreign(owner: str, run: str) -> int:
        # A marker in someone else's datasite (synced to us) that names us as a party.
        port = _free_port()
        folder = tmp_path / owner / f"shared/flows/x/{run}/_mpc/0_to_1"
        folder.mkdir(parents=True)
        (folder / "stream.tcp").write_text(
            json.dumps({"from": owner, "to": ALICE, "ports": {owner: 1, ALICE: port}})
        )
        return port

    flood = [foreign(mallory, f"m{i}") for i in range(5)] + [foreign(trudy, "t0")]
    ours = _free_port()
    _own_marker(tmp_path, "ours", ours)
    proxy = _bare_proxy(tmp_path)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                await proxy.scan_once()
        ports = {c.info.listen_port: c.info.peer_email for c in proxy.channels.values()}
        assert ours in ports  # our own tunnel runs
        assert sum(peer == mallory for peer in ports.values()) == 2  # mallory's share
        assert flood[-1] in ports  # another person still gets theirs
        assert len(ports) == 4
        warned = [r.getMessage() for r in caplog.records if "not starting" in r.getMessage()]
        assert len(warned) == 1 and mallory in warned[0]  # once for all of mallory's
    finally:
        await proxy.close()


async def test_a_new_marker_unreadable_for_a_moment_is_read_again_without_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    _marker(tmp_path, ALICE, port_alice=port)
    proxy = _bare_proxy(tmp_path)
    try:
        monkeypatch.setattr(tcp_proxy_module, "read_regular_file", _out_of_descriptors)
        await proxy.scan_once()
        assert proxy.channels == {}
        assert proxy.next_wakeup() == tcp_proxy_module.READ_RETRY
        monkeypatch.undo()
        await proxy.scan_once(NOTHING)  # the timer ran out; no file event came
        assert proxy.sink_for(CANONICAL, BOB) is not None
        assert proxy.next_wakeup() is None
    finally:
        await proxy.close()
