"""IPC endpoints with real sockets: markers, frames in both directions, refused paths."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotlink.client.edges.ipc import (
    LOST_MARK,
    MAX_IPC_ENDPOINTS,
    IpcEndpoint,
    IpcHub,
    IpcLimitReached,
    SendFn,
    unix_socket_path,
)
from hotlink.client.edges.watcher import TreeWatcher
from hotlink.client.localfs import UnsafePath
from hotlink.client.manager import ManagerConfig
from hotlink.client.session.base import SessionClosed
from hotlink.protocol.frames import Frame, FrameDecoder, encode_frame
from hotlink.protocol.messages import HotlinkOpen
from unit.client.client_fakes import ALICE, BOB, fake_manager, until
from unit.client.hostile_files import exists, fifo_guard, make_fifo, names

FOLDER = f"{ALICE}/app_data/app/rpc/ep"


@pytest.fixture
def sockets() -> Iterator[Path]:
    # UNIX socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class FakeSession:
    """The folder's session a frame went out on; ``end`` ends it."""

    def __init__(self, sid: str = "0123456789abcdef") -> None:
        self.sid = sid
        self.callbacks: list[Callable[[str], None]] = []

    def add_done_callback(self, callback: Callable[[str], None]) -> None:
        self.callbacks.append(callback)

    def remove_done_callback(self, callback: Callable[[str], None]) -> None:
        self.callbacks.remove(callback)

    def end(self, reason: str) -> None:
        for callback in self.callbacks:
            callback(reason)


class Sent:
    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes, str]] = []
        self.session = FakeSession()

    async def __call__(self, path: str, payload: bytes, etag: str) -> FakeSession:
        self.frames.append((path, payload, etag))
        return self.session


async def _dial(endpoint: IpcEndpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = endpoint.marker.read_text()
    if endpoint.mode == "unix":
        return await asyncio.open_unix_connection(address)
    host, _, port = address.rpartition(":")
    return await asyncio.open_connection(host, int(port))


@pytest.mark.parametrize("mode", ["unix", "tcp"])
async def test_endpoint_reads_frames_in_order_and_writes_to_the_newest_app(
    tmp_path: Path, sockets: Path, mode: str
) -> None:
    folder = tmp_path / "datasites" / FOLDER
    folder.mkdir(parents=True)
    sent = Sent()
    endpoint = IpcEndpoint(
        folder, mode=mode, tcp_host="127.0.0.1", tcp_port=0, send=sent,  # type: ignore[arg-type]
        socket_dir=sockets,
    )  # fmt: skip
    await endpoint.start()
    try:
        if mode == "unix":
            assert endpoint.marker.name == "stream.sock"
            assert endpoint.marker.read_text() == str(unix_socket_path(endpoint.marker, sockets))
        else:
            assert endpoint.marker.name == "stream.tcp"
            assert endpoint.marker.read_text().startswith("127.0.0.1:")
        reader, writer = await _dial(endpoint)
        frames = [
            Frame(f"{FOLDER}/a.request", "", 0, b"first"),
            Frame(f"{FOLDER}/b.request", "tag", 0, b"second"),
            Frame(f"{FOLDER}/empty.request", "", 0, b""),  # ignored: empty payload
            Frame(f"{ALICE}/x/_mpc/0_to_1/stream.tcp.request", "", 0, b"tunnel"),  # refused
            Frame(f"{FOLDER}/../../etc/passwd.request", "", 0, b"escape"),  # refused
            Frame(f"{FOLDER}/c.request", "", 0, b"third"),
        ]
        stream = b"".join(encode_frame(f) for f in frames)
        # Split the stream at odd places: the decoder must not care.
        for i in range(0, len(stream), 7):
            writer.write(stream[i : i + 7])
        await writer.drain()
        await until(lambda: len(sent.frames) == 3)
        assert [p.rsplit("/", 1)[1] for p, _, _ in sent.frames] == [
            "a.request",
            "b.request",
            "c.request",
        ]
        assert sent.frames[1] == (f"{FOLDER}/b.request", b"second", "tag")

        conn = await endpoint.wait_writer(1)
        assert conn is not None
        out = encode_frame(Frame(f"{FOLDER}/r.response", "", 7, b"reply"))
        await conn.write(out)
        got = await reader.readexactly(len(out))
        assert FrameDecoder().feed(got) == [Frame(f"{FOLDER}/r.response", "", 7, b"reply")]
        writer.close()
        await until(lambda: not endpoint.connections)
        assert await endpoint.wait_writer(0.01) is None
    finally:
        await endpoint.close()
    if mode == "unix":
        assert not unix_socket_path(endpoint.marker, sockets).exists()


async def test_hub_finds_sender_markers_and_fills_them_in(tmp_path: Path, sockets: Path) -> None:
    datasites = tmp_path / "datasites"
    marker = datasites / FOLDER / "stream.sock"
    marker.parent.mkdir(parents=True)
    marker.write_text("")  # the app asks for a socket
    tunnel_like = datasites / ALICE / "app_data" / "x" / "_mpc" / "0_to_1"
    tunnel_like.mkdir(parents=True)
    (tunnel_like / "stream.tcp").write_text("")
    other = datasites / "bob@example.com" / "app_data" / "app" / "rpc" / "ep"
    other.mkdir(parents=True)
    (other / "stream.sock").write_text("")  # not our datasite: not ours to serve
    hub = IpcHub(
        datasites=datasites, local_email=ALICE, mode="unix", tcp_addr="127.0.0.1:0",
        send=Sent(), socket_dir=sockets,
    )  # fmt: skip
    try:
        await hub.scan_once()
        assert list(hub.endpoints) == [marker.parent]
        assert marker.read_text() == str(unix_socket_path(marker, sockets))
        marker.write_text("")  # an app reset it: the next scan writes it again
        await hub.scan_once()
        assert marker.read_text() != ""
        # Receivers reuse the same endpoint for a folder (created once, pitfall 7).
        lease = await hub.endpoint_for(marker.parent)
        assert lease.endpoint is hub.endpoints[marker.parent]
    finally:
        await hub.close()
    assert hub.endpoints == {}


async def test_hub_serves_a_marker_dropped_after_start_on_file_events(
    tmp_path: Path, sockets: Path
) -> None:
    datasites = tmp_path / "datasites"
    (datasites / ALICE).mkdir(parents=True)
    watcher = TreeWatcher(datasites, rescan_interval=3600)
    hub = _hub(tmp_path, sockets, watcher=watcher, idle_grace=0.0)
    tasks = [asyncio.create_task(watcher.run()), asyncio.create_task(hub.run())]
    try:
        await until(lambda: watcher.mode == "events", timeout=20)
        marker = datasites / FOLDER / "stream.sock"
        marker.parent.mkdir(parents=True)
        marker.write_text("")  # the app asks for a socket
        await until(lambda: marker.parent in hub.endpoints, timeout=20)
        address = hub.endpoints[marker.parent].address
        await until(lambda: marker.read_text() == address, timeout=20)
        marker.unlink()  # the app is done: the idle endpoint closes
        await until(lambda: not hub.endpoints, timeout=20)
        assert not exists(Path(address))
        assert watcher.rescans == 1  # events, not the safety rescan
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_endpoint_made_for_an_inbound_session_closes_when_idle_on_file_events(
    tmp_path: Path, sockets: Path
) -> None:
    """The discovery loop, waiting for file events only (no endpoints, no timer), is woken
    by an endpoint made for an inbound session, so it closes that one once idle."""
    datasites = tmp_path / "datasites"
    (datasites / ALICE).mkdir(parents=True)
    watcher = TreeWatcher(datasites, rescan_interval=3600)
    hub = _hub(tmp_path, sockets, watcher=watcher, idle_grace=0.2)
    tasks = [asyncio.create_task(watcher.run()), asyncio.create_task(hub.run())]
    try:
        await until(lambda: watcher.mode == "events", timeout=20)
        await asyncio.sleep(0.5)  # the loop's first scans are done: it waits on events
        folder = datasites / "bob@example.com" / "app_data" / "app" / "rpc" / "ep"
        lease = await hub.endpoint_for(folder)
        lease.release()  # the session ended
        await until(lambda: not hub.endpoints, timeout=20)
        assert watcher.rescans == 1  # no safety rescan did it
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_tcp_mode_hub_never_claims_a_tunnel_folder(tmp_path: Path, sockets: Path) -> None:
    datasites = tmp_path / "datasites"
    tunnel_like = datasites / ALICE / "app_data" / "x" / "_mpc" / "0_to_1"
    tunnel_like.mkdir(parents=True)
    (tunnel_like / "stream.tcp").write_text("{}")
    hub = IpcHub(
        datasites=datasites, local_email=ALICE, mode="tcp", tcp_addr="127.0.0.1:0",
        send=Sent(), socket_dir=sockets,
    )  # fmt: skip
    try:
        await hub.scan_once()
        assert hub.endpoints == {}
        assert (tunnel_like / "stream.tcp").read_text() == "{}"
    finally:
        await hub.close()


# ---------------------------------------------------------------- loud ends


async def _endpoint(tmp_path: Path, sockets: Path, mode: str, send: SendFn) -> IpcEndpoint:
    folder = tmp_path / "datasites" / FOLDER
    folder.mkdir(parents=True)
    endpoint = IpcEndpoint(
        folder, mode=mode, tcp_host="127.0.0.1", tcp_port=0, send=send,  # type: ignore[arg-type]
        socket_dir=sockets,
    )  # fmt: skip
    await endpoint.start()
    return endpoint


async def _end_of_stream(reader: asyncio.StreamReader) -> bytes | None:
    """Everything up to a clean end, or None when the connection was reset."""
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionResetError:
        return None


def _check_loud_end(mode: str, got: bytes | None, frames: list[Frame]) -> None:
    """TCP: a reset. UNIX: the whole frames, then a cut-off header (an HLNK reader's error)."""
    if mode == "tcp":
        assert got is None
        return
    assert got is not None and got.endswith(LOST_MARK)
    decoder = FrameDecoder()
    assert decoder.feed(got) == frames
    assert decoder.buffered == len(LOST_MARK)  # the stream ends inside a frame


@pytest.mark.parametrize("mode", ["unix", "tcp"])
async def test_giving_up_a_connection_is_never_a_clean_end(
    tmp_path: Path, sockets: Path, mode: str
) -> None:
    endpoint = await _endpoint(tmp_path, sockets, mode, Sent())
    try:
        reader, writer = await _dial(endpoint)
        conn = await endpoint.wait_writer(5)
        assert conn is not None
        frame = Frame(f"{FOLDER}/r.response", "", 1, b"delivered")
        await conn.write(encode_frame(frame))
        conn.fail("frames were lost")
        assert conn.closed and endpoint.connections == []
        _check_loud_end(mode, await _end_of_stream(reader), [frame])
        writer.close()
    finally:
        await endpoint.close()


class FailingSend:
    """Sends the first ``ok`` frames, then the session is gone."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.frames: list[bytes] = []

    async def __call__(self, path: str, payload: bytes, etag: str) -> FakeSession:
        if len(self.frames) >= self.ok:
            raise SessionClosed("rejected: permission denied")
        self.frames.append(payload)
        return FakeSession()


@pytest.mark.parametrize("mode", ["unix", "tcp"])
async def test_app_frames_that_cannot_be_sent_reset_its_connection(
    tmp_path: Path, sockets: Path, mode: str
) -> None:
    send = FailingSend(ok=1)
    endpoint = await _endpoint(tmp_path, sockets, mode, send)
    try:
        reader, writer = await _dial(endpoint)
        for name in ("a", "b", "c"):
            writer.write(encode_frame(Frame(f"{FOLDER}/{name}.request", "", 0, name.encode())))
        await writer.drain()
        # The app learns that its frames were lost, instead of the client reading on.
        _check_loud_end(mode, await _end_of_stream(reader), [])
        assert send.frames == [b"a"]
        await until(lambda: not endpoint.connections)
        writer.close()
    finally:
        await endpoint.close()


@pytest.mark.parametrize("mode", ["unix", "tcp"])
async def test_a_session_that_ends_after_taking_the_apps_frames_resets_its_connection(
    tmp_path: Path, sockets: Path, mode: str
) -> None:
    # The session took the frame (queued, or sent), then ended without a clean end: never
    # accepted, or the peer went away. The frame may be lost; the app must hear of it.
    send = Sent()
    endpoint = await _endpoint(tmp_path, sockets, mode, send)
    try:
        reader, writer = await _dial(endpoint)
        writer.write(encode_frame(Frame(f"{FOLDER}/a.request", "", 0, b"a")))
        await writer.drain()
        await until(lambda: bool(send.frames))
        assert endpoint.connections  # taken: nothing wrong yet
        send.session.end("accept timeout")
        _check_loud_end(mode, await _end_of_stream(reader), [])
        await until(lambda: not endpoint.connections)
        writer.close()
    finally:
        await endpoint.close()


async def test_a_session_that_ends_cleanly_leaves_the_connection_alone(
    tmp_path: Path, sockets: Path
) -> None:
    send = Sent()
    endpoint = await _endpoint(tmp_path, sockets, "unix", send)
    try:
        _reader, writer = await _dial(endpoint)
        writer.write(encode_frame(Frame(f"{FOLDER}/a.request", "", 0, b"a")))
        await writer.drain()
        await until(lambda: bool(send.frames))
        send.session.end("eof")
        send.session = FakeSession("fedcba9876543210")  # the next frame opens a new one
        writer.write(encode_frame(Frame(f"{FOLDER}/b.request", "", 0, b"b")))
        await writer.drain()
        await until(lambda: len(send.frames) == 2)
        assert endpoint.connections
        assert len(send.session.callbacks) == 1
        writer.close()  # the app leaves: the session keeps no callback for it
        await until(lambda: not send.session.callbacks)
    finally:
        await endpoint.close()


async def test_frames_queued_on_a_session_never_accepted_reset_the_apps_connection(
    tmp_path: Path, sockets: Path
) -> None:
    # The real manager: the app's first frame is queued on its folder's session, which is
    # never accepted and ends with the frame unsent. The app must hear of it at once, not
    # write on into a fresh session as if nothing had been lost.
    manager, wire = fake_manager(
        tmp_path, ALICE, transport=None, config=ManagerConfig(accept_timeout=0.05)
    )
    endpoint = await _endpoint(tmp_path, sockets, "unix", manager.send)
    try:
        reader, writer = await _dial(endpoint)
        writer.write(encode_frame(Frame(f"{FOLDER}/a.request", "", 0, b"first")))
        await writer.drain()
        await until(lambda: bool(manager.outbound_by_sid))
        (first,) = manager.outbound_by_sid.values()
        assert await first.wait_closed() == "accept timeout"  # "first" was never sent
        _check_loud_end("unix", await _end_of_stream(reader), [])
        await until(lambda: not endpoint.connections)
        assert len(wire.payloads(HotlinkOpen)) == 1
        writer.close()
    finally:
        await endpoint.close()
        await manager.close()


async def test_app_that_closes_gets_a_clean_end(tmp_path: Path, sockets: Path) -> None:
    endpoint = await _endpoint(tmp_path, sockets, "unix", Sent())
    try:
        reader, writer = await _dial(endpoint)
        writer.write_eof()
        assert await _end_of_stream(reader) == b""
        await until(lambda: not endpoint.connections)
        writer.close()
    finally:
        await endpoint.close()


# ---------------------------------------------------------------- endpoints are released


def _hub(tmp_path: Path, sockets: Path, **kwargs: Any) -> IpcHub:
    (tmp_path / "datasites").mkdir(exist_ok=True)
    return IpcHub(
        datasites=tmp_path / "datasites", local_email=ALICE, mode="unix",
        tcp_addr="127.0.0.1:0", send=Sent(), socket_dir=sockets, **kwargs,
    )  # fmt: skip


def _inbound_folder(tmp_path: Path, n: int = 0) -> Path:
    """A session folder of bob's, as bob's Opens name it in our tree (not there yet)."""
    return tmp_path / "datasites" / BOB / "app_data" / "app" / "rpc" / f"ep{n}"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_inbound_endpoint_closes_once_its_sessions_ended(
    tmp_path: Path, sockets: Path
) -> None:
    hub = _hub(tmp_path, sockets, idle_grace=0.0)
    folder = _inbound_folder(tmp_path)
    try:
        first = await hub.endpoint_for(folder)
        second = await hub.endpoint_for(folder)  # two sessions, one endpoint
        endpoint = first.endpoint
        assert second.endpoint is endpoint
        socket_path = Path(endpoint.address)
        assert endpoint.marker.read_text() == str(socket_path) and exists(socket_path)
        first.release()
        first.release()  # twice is harmless
        await hub.close_idle()
        assert hub.endpoints == {folder: endpoint}  # the second session still uses it
        second.release()
        await hub.close_idle()
        assert hub.endpoints == {}
        # Listener, socket file, marker, and the folders made for it are gone.
        assert not exists(socket_path)
        assert not (tmp_path / "datasites" / BOB).exists()
        with pytest.raises(OSError):
            await asyncio.open_unix_connection(str(socket_path))
    finally:
        await hub.close()


async def test_an_idle_endpoint_is_reused_within_the_grace(tmp_path: Path, sockets: Path) -> None:
    hub = _hub(tmp_path, sockets)  # the default grace (30 s)
    folder = _inbound_folder(tmp_path)
    try:
        lease = await hub.endpoint_for(folder)
        lease.release()
        await hub.close_idle()
        again = await hub.endpoint_for(folder)
        assert again.endpoint is lease.endpoint  # the session came back in time
    finally:
        await hub.close()
    assert not (tmp_path / "datasites" / BOB).exists()  # shutdown cleans up too


async def test_a_connected_app_keeps_its_endpoint(tmp_path: Path, sockets: Path) -> None:
    hub = _hub(tmp_path, sockets, idle_grace=0.0)
    folder = _inbound_folder(tmp_path)
    try:
        lease = await hub.endpoint_for(folder)
        reader, writer = await _dial(lease.endpoint)
        await until(lambda: bool(lease.endpoint.connections))
        lease.release()
        await hub.close_idle()
        assert folder in hub.endpoints
        writer.close()
        await until(lambda: not lease.endpoint.connections)
        await hub.close_idle()
        assert hub.endpoints == {}
        assert await reader.read() == b""
    finally:
        await hub.close()


async def test_endpoints_are_capped_and_idle_ones_make_room(tmp_path: Path, sockets: Path) -> None:
    hub = _hub(tmp_path, sockets, max_endpoints=2)  # grace 30 s: nothing closes by itself
    try:
        a = await hub.endpoint_for(_inbound_folder(tmp_path, 1))
        await hub.endpoint_for(_inbound_folder(tmp_path, 2))
        with pytest.raises(IpcLimitReached) as refused:
            await hub.endpoint_for(_inbound_folder(tmp_path, 3))
        assert isinstance(refused.value, OSError) and "all 2 ipc endpoints" in str(refused.value)
        assert not _inbound_folder(tmp_path, 3).exists()
        a.release()  # idle now, though within its grace: closed early to make room
        c = await hub.endpoint_for(_inbound_folder(tmp_path, 3))
        assert set(hub.endpoints) == {_inbound_folder(tmp_path, 2), c.endpoint.folder}
        assert not exists(Path(a.endpoint.address))
    finally:
        await hub.close()


async def test_many_opens_from_another_user_do_not_exhaust_fds(
    tmp_path: Path, sockets: Path
) -> None:
    """D5: 1,500 Opens left 1,500 listeners; now at most MAX_IPC_ENDPOINTS live at once, and
    all of them go once their sessions ended."""
    hub = _hub(tmp_path, sockets, idle_grace=0.0)
    before = _open_fds()
    leases = []
    refused = 0
    try:
        for n in range(MAX_IPC_ENDPOINTS + 44):
            try:
                leases.append(await hub.endpoint_for(_inbound_folder(tmp_path, n)))
            except OSError:
                refused += 1  # the manager answers Reject "ipc unavailable"
        assert len(leases) == MAX_IPC_ENDPOINTS and refused == 44
        assert _open_fds() - before <= MAX_IPC_ENDPOINTS + 8
        for lease in leases:
            lease.release()
        await hub.close_idle()
        assert hub.endpoints == {}
        assert _open_fds() - before <= 8
        assert names(sockets) == []
        assert not (tmp_path / "datasites" / BOB).exists()
        # Room again for new sessions.
        (await hub.endpoint_for(_inbound_folder(tmp_path, 0))).release()
    finally:
        await hub.close()


async def test_a_sender_endpoint_stays_while_its_marker_exists(
    tmp_path: Path, sockets: Path
) -> None:
    datasites = tmp_path / "datasites"
    marker = datasites / FOLDER / "stream.sock"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    hub = _hub(tmp_path, sockets, idle_grace=0.0)
    try:
        await hub.scan_once()
        await hub.scan_once()
        endpoint = hub.endpoints[marker.parent]  # idle, but the app asked for it
        socket_path = Path(endpoint.address)
        marker.unlink()  # the app is done
        await hub.scan_once()
        assert hub.endpoints == {} and not exists(socket_path)
        assert marker.parent.is_dir()  # the app's folder is the app's
        marker.write_text("")
        await hub.scan_once()
    finally:
        await hub.close()
    assert marker.read_text() != ""  # an app's marker outlives a shutdown


# ---------------------------------------------------------------- hostile local files


async def test_an_open_through_a_symlinked_folder_creates_nothing_outside(
    tmp_path: Path, sockets: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "app_data" / "app" / "rpc" / "ep0").mkdir(parents=True)
    (tmp_path / "datasites").mkdir()
    (tmp_path / "datasites" / BOB).symlink_to(outside)
    hub = _hub(tmp_path, sockets)
    try:
        with pytest.raises(UnsafePath):
            await hub.endpoint_for(_inbound_folder(tmp_path, 0))
        with pytest.raises(UnsafePath):
            await hub.endpoint_for(_inbound_folder(tmp_path, 1))
        with pytest.raises(UnsafePath):
            await hub.endpoint_for(tmp_path / "elsewhere" / "x")  # not in the tree at all
        assert hub.endpoints == {}
        assert names(outside / "app_data" / "app" / "rpc") == ["ep0"]
        assert names(outside / "app_data" / "app" / "rpc" / "ep0") == []
        assert names(sockets) == []
    finally:
        await hub.close()


async def test_sender_markers_behind_links_are_not_served(tmp_path: Path, sockets: Path) -> None:
    datasites = tmp_path / "datasites"
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "stream.sock").write_text("")
    (outside / "target").write_text("keep me")
    own = datasites / ALICE
    (own / "shared" / "flows" / "f" / "r" / "_mpc").mkdir(parents=True)
    (own / "shared" / "flows" / "f" / "r" / "_mpc" / "0_to_1").symlink_to(outside / "x")
    (own / "app_data" / "app").mkdir(parents=True)
    (own / "app_data" / "app" / "linked").symlink_to(outside / "x")
    (own / "app_data" / "app" / "ep").mkdir()
    (own / "app_data" / "app" / "ep" / "stream.sock").symlink_to(outside / "target")
    hub = _hub(tmp_path, sockets)
    try:
        await hub.scan_once()
        assert hub.endpoints == {}
        assert (outside / "x" / "stream.sock").read_text() == ""
        assert (outside / "target").read_text() == "keep me"
    finally:
        await hub.close()
    # A whole app_data that is a link is not searched either.
    (own / "app_data").rename(tmp_path / "moved")
    (own / "app_data").symlink_to(tmp_path / "moved")
    (tmp_path / "moved" / "real").mkdir()
    (tmp_path / "moved" / "real" / "stream.sock").write_text("")
    hub = _hub(tmp_path, sockets)
    try:
        await hub.scan_once()
        assert hub.endpoints == {}
        assert (tmp_path / "moved" / "real" / "stream.sock").read_text() == ""
    finally:
        await hub.close()


async def test_a_planted_temp_link_is_not_written_through(tmp_path: Path, sockets: Path) -> None:
    folder = tmp_path / "datasites" / FOLDER
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (folder / ".stream.sock.tmp").symlink_to(victim)  # the old fixed temp name
    endpoint = IpcEndpoint(
        folder, mode="unix", tcp_host="127.0.0.1", tcp_port=0, send=Sent(), socket_dir=sockets
    )
    await endpoint.start()
    try:
        assert victim.read_text() == "keep me"
        assert endpoint.marker.read_text() == endpoint.address
    finally:
        await endpoint.close()


async def test_a_linked_socket_dir_is_refused(tmp_path: Path, sockets: Path) -> None:
    link = Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp")) / "s"
    link.symlink_to(sockets)
    folder = tmp_path / "datasites" / FOLDER
    folder.mkdir(parents=True)
    endpoint = IpcEndpoint(
        folder, mode="unix", tcp_host="127.0.0.1", tcp_port=0, send=Sent(), socket_dir=link
    )
    try:
        with pytest.raises(UnsafePath):
            await endpoint.start()
    finally:
        await endpoint.close()
        shutil.rmtree(link.parent)
    assert names(sockets) == []


async def test_fifo_markers_do_not_block(tmp_path: Path, sockets: Path) -> None:
    datasites = tmp_path / "datasites"
    sender_fifo = make_fifo(datasites / FOLDER / "stream.sock")
    inbound_fifo = make_fifo(_inbound_folder(tmp_path) / "stream.sock")
    hub = _hub(tmp_path, sockets)
    with fifo_guard(sender_fifo, inbound_fifo) as guard:
        try:
            await hub.scan_once()
            assert hub.endpoints == {}  # an app's FIFO is no request for a socket
            lease = await hub.endpoint_for(inbound_fifo.parent)
            # Our marker replaced the FIFO (it was never opened for a blocking read).
            assert lease.endpoint.marker.read_text() == lease.endpoint.address
        finally:
            await hub.close()
    assert not guard.fired
