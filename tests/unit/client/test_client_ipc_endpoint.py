"""IPC endpoints with real sockets: markers, frames in both directions, refused paths."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotlink.client.edges.ipc import LOST_MARK, IpcEndpoint, IpcHub, SendFn, unix_socket_path
from hotlink.client.session.base import SessionClosed
from hotlink.protocol.frames import Frame, FrameDecoder, encode_frame
from unit.client.client_fakes import ALICE, until

FOLDER = f"{ALICE}/app_data/app/rpc/ep"


@pytest.fixture
def sockets() -> Iterator[Path]:
    # UNIX socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Sent:
    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes, str]] = []

    async def __call__(self, path: str, payload: bytes, etag: str) -> None:
        self.frames.append((path, payload, etag))


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
        assert await hub.endpoint_for(marker.parent) is hub.endpoints[marker.parent]
    finally:
        await hub.close()
    assert hub.endpoints == {}


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

    async def __call__(self, path: str, payload: bytes, etag: str) -> None:
        if len(self.frames) >= self.ok:
            raise SessionClosed("rejected: permission denied")
        self.frames.append(payload)


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
