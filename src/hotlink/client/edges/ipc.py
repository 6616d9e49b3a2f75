"""Local IPC between apps and the client (PROTOCOL.md §4.8): HLNK frames over a socket.

One :class:`IpcEndpoint` per session folder, created once and reused (pitfall 7): a UNIX
socket under ``/tmp/syftbox-hotlink/`` named by the SHA-1 of the marker's absolute path and
announced in ``stream.sock``, or with ``SYFTBOX_HOTLINK_IPC=tcp`` a loopback TCP listener
announced in ``stream.tcp``. The client always listens and the app dials. Every connection
is read (frames the app sends go out, in order, on the folder's outbound session) and the
newest one receives the frames of inbound sessions. TCP-tunnel paths are refused here: the
proxy and IPC never mix (pitfall 4). A connection on which frames were lost ends loudly: a
reset over TCP, a cut-off frame header over a UNIX socket (:class:`IpcConnection`).

Endpoints come from two places: the receiver side creates one when a HotlinkOpen arrives,
and the sender side finds markers apps drop into our own datasite's ``app_data`` folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from ...protocol.frames import MAGIC, VERSION, Frame, FrameDecoder
from ...protocol.markers import (
    MPC_DIR,
    SOCK_MARKER,
    TCP_MARKER,
    is_hotlink_path,
    is_tcp_proxy_path,
    parse_channel_dir,
)
from ..session.base import SessionClosed
from .discovery import find_named
from .listener import ListenerHub, LocalConnection, LocalListener

log = logging.getLogger("hotlink.ipc")

SOCKET_DIR = Path("/tmp/syftbox-hotlink")
SCAN_INTERVAL = 0.25
READ_SIZE = 64 * 1024
# The first bytes of an HLNK frame header and nothing more: how an IPC connection over a UNIX
# socket (which has no reset) ends when frames were lost (see IpcConnection).
LOST_MARK = MAGIC + bytes([VERSION])
LOST_FLUSH = 10.0  # how long the frames before the mark may take to reach a slow app

SendFn = Callable[[str, bytes, str], Awaitable[None]]
IpcMode = Literal["unix", "tcp"]


def marker_name(mode: IpcMode) -> str:
    return TCP_MARKER if mode == "tcp" else SOCK_MARKER


def unix_socket_path(marker: Path, socket_dir: Path = SOCKET_DIR) -> Path:
    digest = hashlib.sha1(str(marker.absolute()).encode("utf-8")).hexdigest()
    return socket_dir / f"{digest}.sock"


def _safe_rel(path: str) -> bool:
    segments = path.split("/")
    return not (
        path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(s in ("", ".", "..") for s in segments)
    )


class IpcConnection(LocalConnection):
    """An app's IPC socket: the frames it writes go out; inbound frames are written to it.

    When frames are lost (the app's frames cannot be sent, the client stops), the app must
    not mistake the end for a clean one. Over TCP that is a reset; a UNIX socket cannot be
    reset, so the stream gets the start of a frame header (:data:`LOST_MARK`) after the last
    whole frame and ends there: to any HLNK reader a stream that ends inside a frame is an
    error, never a clean end. The app's own EOF closes the connection gracefully.
    """

    def write_nowait(self, data: bytes) -> bool:
        return False  # IPC frames go through write(), which retries on the next connection

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("ipc connection is closed")
        self.writer.write(data)
        await self.writer.drain()

    def finish(self) -> None:
        # IPC connections carry many sessions' frames; a session's end does not end them.
        return

    def fail(self, reason: str) -> None:
        if self.closed:
            return
        log.info("ipc: resetting connection #%d in %s: %s", self.id, self.listener, reason)
        self._abort()

    def _reset(self) -> None:
        if self.tcp:
            super()._reset()
            return
        transport = self.writer.transport
        if transport.is_closing():
            transport.abort()
            return
        # Frames are written whole into the transport, so the mark follows a frame boundary.
        # close() still delivers what is buffered; an app that never reads it is cut off
        # after LOST_FLUSH s (mid-frame, so still an error to its reader).
        transport.write(LOST_MARK)
        transport.close()
        asyncio.get_running_loop().call_later(LOST_FLUSH, transport.abort)

    async def run(self, send: SendFn) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                for frame in decoder.feed(data):
                    if not await self._send(frame, send):
                        return
        except (ConnectionError, OSError) as exc:
            self.fail(f"read failed: {exc or type(exc).__name__}")
            return
        if decoder.buffered:
            log.warning(
                "ipc: connection #%d ended inside a frame (%d bytes dropped)",
                self.id,
                decoder.buffered,
            )
        if not self.closed:
            log.debug("ipc: connection #%d closed by app", self.id)
            self._close_gracefully()

    async def _send(self, frame: Frame, send: SendFn) -> bool:
        """Send one frame of the app's; False when the connection was reset for it.

        A frame the session cannot take is lost, and the app would never learn it while we
        keep reading: the connection is reset instead (it may reconnect and send again)."""
        path = frame.path.strip()
        if not frame.payload or not path:
            return True
        if is_tcp_proxy_path(path):
            log.warning("ipc: refusing tcp-proxy path %s (use the tcp proxy port)", path)
            return True
        if not is_hotlink_path(path) or not _safe_rel(path):
            log.warning("ipc: refusing frame for %r: not a .request/.response path", path)
            return True
        try:
            await send(path, frame.payload, frame.etag)
        except SessionClosed as exc:
            log.warning("hotlink send failed for %s: %s", path, exc.reason)
            self.fail(f"frame for {path} not sent: {exc.reason}")
            return False
        return True


class IpcEndpoint(LocalListener[IpcConnection]):
    """A listener for one folder plus its marker file."""

    def __init__(
        self,
        folder: Path,
        *,
        mode: IpcMode,
        tcp_host: str,
        tcp_port: int,
        send: SendFn,
        socket_dir: Path = SOCKET_DIR,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.mode = mode
        self.marker = folder / marker_name(mode)
        self.tcp_host = tcp_host
        self.tcp_port = tcp_port
        self.socket_dir = socket_dir
        self._send = send
        self.address = ""
        self.socket_path: Path | None = None

    def __str__(self) -> str:
        return str(self.folder)

    async def start(self) -> None:
        if self.mode == "unix":
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            path = unix_socket_path(self.marker, self.socket_dir)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale socket from an earlier run
            self.server = await asyncio.start_unix_server(self._on_client, path=str(path))
            os.chmod(path, 0o600)
            self.socket_path = path
            self.address = str(path)
        else:
            self.server = await asyncio.start_server(self._on_client, self.tcp_host, self.tcp_port)
            host, port = self.server.sockets[0].getsockname()[:2]
            self.address = f"{host}:{port}"
        self.write_marker()
        log.info("ipc: listening for %s at %s", self.folder, self.address)

    def write_marker(self) -> None:
        """Announce our address (atomically: apps poll the marker while it is empty)."""
        with contextlib.suppress(OSError):
            if self.marker.read_text(encoding="utf-8").strip() == self.address:
                return
        tmp = self.marker.with_name(f".{self.marker.name}.tmp")
        tmp.write_text(self.address, encoding="utf-8")
        os.replace(tmp, self.marker)

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = IpcConnection(self, reader, writer)
        self._adopt(conn, conn.run(self._send), f"ipc-conn-{conn.id}")
        log.debug("ipc: app connected to %s (#%d)", self.folder, conn.id)

    async def close(self) -> None:
        await self._stop("ipc stopped")
        if self.socket_path is not None:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()


class IpcHub(ListenerHub):
    """All IPC endpoints of this client; also the manager's ``IpcRegistry``."""

    def __init__(
        self,
        *,
        datasites: Path,
        local_email: str,
        mode: IpcMode,
        tcp_addr: str,
        send: SendFn,
        scan_interval: float = SCAN_INTERVAL,
        socket_dir: Path = SOCKET_DIR,
    ) -> None:
        self.datasites = datasites
        self.local_email = local_email
        self.mode = mode
        host, _, port = tcp_addr.rpartition(":")
        self.tcp_host = host.strip("[]") or "127.0.0.1"
        self.tcp_port = int(port or 0)
        self.send = send
        self.scan_interval = scan_interval
        self.socket_dir = socket_dir
        self.endpoints: dict[Path, IpcEndpoint] = {}
        self._lock = asyncio.Lock()
        self._failed: set[Path] = set()

    async def endpoint_for(self, folder: Path) -> IpcEndpoint:
        async with self._lock:
            endpoint = self.endpoints.get(folder)
            if endpoint is None:
                endpoint = IpcEndpoint(
                    folder,
                    mode=self.mode,
                    tcp_host=self.tcp_host,
                    tcp_port=self.tcp_port,
                    send=self.send,
                    socket_dir=self.socket_dir,
                )
                await endpoint.start()
                self.endpoints[folder] = endpoint
            return endpoint

    def find_sender_markers(self) -> list[Path]:
        """Markers apps dropped in our own datasite (``app_data/**`` like Rust; Go's
        ``shared/flows/*/*/_mpc/*`` too in UNIX mode, where the name cannot collide with a
        tunnel marker)."""
        name = marker_name(self.mode)
        own = self.datasites / self.local_email
        found = [Path(full) for full, _ in find_named(self.datasites, name, under=own / "app_data")]
        if self.mode == "unix":
            found.extend(sorted(own.glob(f"shared/flows/*/*/{MPC_DIR}/*/{name}")))
        if self.mode == "tcp":
            # Never claim a tunnel marker (same file name).
            found = [m for m in found if parse_channel_dir(m.parent.name) is None]
        return found

    async def scan_once(self) -> None:
        for marker in self.find_sender_markers():
            folder = marker.parent
            endpoint = self.endpoints.get(folder)
            if endpoint is not None:
                with contextlib.suppress(OSError):
                    endpoint.write_marker()  # an app may have reset it
                continue
            try:
                await self.endpoint_for(folder)
                self._failed.discard(folder)
            except OSError as exc:
                if folder not in self._failed:
                    log.error("ipc: cannot listen for %s: %s", marker, exc)
                    self._failed.add(folder)

    async def close(self) -> None:
        endpoints = list(self.endpoints.values())
        self.endpoints.clear()
        await asyncio.gather(*(e.close() for e in endpoints), return_exceptions=True)
