"""Local IPC between apps and the client (PROTOCOL.md §4.8): HLNK frames over a socket.

One :class:`IpcEndpoint` per session folder, created once and reused (pitfall 7): a UNIX
socket under ``/tmp/syftbox-hotlink/`` named by the SHA-1 of the marker's absolute path and
announced in ``stream.sock``, or with ``SYFTBOX_HOTLINK_IPC=tcp`` a loopback TCP listener
announced in ``stream.tcp``. The client always listens and the app dials. Every connection
is read (frames the app sends go out, in order, on the folder's outbound session) and the
newest one receives the frames of inbound sessions. TCP-tunnel paths are refused here: the
proxy and IPC never mix (pitfall 4). A connection on which frames were lost ends loudly: a
reset over TCP, a cut-off frame header over a UNIX socket (:class:`IpcConnection`).

Endpoints come from two places: the receiver side creates one when a HotlinkOpen arrives
(and closes it when its sessions are over), and the sender side finds markers apps drop into
our own datasite's ``app_data`` folders (kept while the marker exists). Markers and folders
are written through :mod:`.localfs` (no symlinks, nothing outside the datasites folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from ...protocol.frames import MAGIC, VERSION, Frame, FrameDecoder
from ...protocol.markers import (
    MPC_DIR,
    SOCK_MARKER,
    TCP_MARKER,
    is_hotlink_path,
    is_tcp_proxy_path,
    parse_channel_dir,
)
from ..localfs import (
    MARKER_MAX_BYTES,
    ensure_private_dir,
    make_folder_within,
    read_regular_file,
    rel_segments,
    remove_empty_folders_within,
    remove_file_within,
    write_file_within,
)
from ..session.base import EOF, SessionClosed
from .changes import FULL, ChangeFeed, Changes
from .discovery import FileIndex
from .listener import ListenerHub, LocalConnection, LocalListener
from .watcher import TreeWatcher

log = logging.getLogger("hotlink.ipc")

SOCKET_DIR = Path("/tmp/syftbox-hotlink")
# Without a file watcher (tests, tools): a full scan this often.
SCAN_INTERVAL = 0.25
READ_SIZE = 64 * 1024
# The first bytes of an HLNK frame header and nothing more: how an IPC connection over a UNIX
# socket (which has no reset) ends when frames were lost (see IpcConnection).
LOST_MARK = MAGIC + bytes([VERSION])
LOST_FLUSH = 10.0  # how long the frames before the mark may take to reach a slow app
# Endpoints hold a listening socket each: at most this many at once (IpcHub).
MAX_IPC_ENDPOINTS = 256
# An endpoint nobody uses (no session, no app, no app marker) closes after this many seconds.
IDLE_GRACE = 30.0
# While endpoints exist, idle ones are looked for this often (not less than the minimum).
HOUSEKEEPING = 5.0
MIN_HOUSEKEEPING = 0.25


class SentOn(Protocol):
    """The session an IPC frame went out on (an outbound session of the folder)."""

    sid: str

    def add_done_callback(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once the session ended (now, if it already has)."""

    def remove_done_callback(self, callback: Callable[[str], None]) -> None:
        """Forget ``callback``."""


# Sends one frame (path, payload, etag) on its folder's session; raises SessionClosed.
SendFn = Callable[[str, bytes, str], Awaitable[SentOn]]
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

    def __init__(
        self,
        listener: LocalListener[Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(listener, reader, writer)
        # The live sessions this connection's frames went out on, with the callback each
        # holds for us: one that ends other than cleanly may have lost them (never
        # accepted, the peer gone), and resets us. Forgotten when we end, so a long-lived
        # folder session does not collect one callback per connection an app ever made.
        self._sent_on: dict[str, tuple[SentOn, Callable[[str], None]]] = {}

    def write_nowait(self, data: bytes) -> bool:
        return False  # IPC frames go through write(), which retries on the next connection

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("ipc connection is closed")
        await self._write_app(data)

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
        try:
            await self._read_frames(send)
        finally:
            self._forget_sessions()

    async def _read_frames(self, send: SendFn) -> None:
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
            session = await send(path, frame.payload, frame.etag)
        except SessionClosed as exc:
            log.warning("hotlink send failed for %s: %s", path, exc.reason)
            self.fail(f"frame for {path} not sent: {exc.reason}")
            return False
        if session.sid not in self._sent_on:
            sid = session.sid

            def ended(reason: str) -> None:
                self._session_ended(sid, reason)

            self._sent_on[sid] = (session, ended)
            session.add_done_callback(ended)
        return not self.closed

    def _session_ended(self, sid: str, reason: str) -> None:
        """A session our frames went out on ended: nothing more to watch if it ended
        cleanly; else frames of ours may be lost (queued when it was never accepted, in
        flight when the peer went away), which the app must not take for delivered."""
        self._sent_on.pop(sid, None)
        if reason != EOF:
            self.fail(f"the session our frames went out on ended: {reason}")

    def _forget_sessions(self) -> None:
        for session, callback in self._sent_on.values():
            session.remove_done_callback(callback)
        self._sent_on.clear()


class IpcEndpoint(LocalListener[IpcConnection]):
    """A listener for one folder plus its marker file.

    The marker and the folder are reached through :mod:`.localfs` below ``root`` (the
    datasites folder; by default the folder's parent): a symlink on the way is refused, so
    neither the marker nor the socket's announcement ever lands outside the tree.
    """

    def __init__(
        self,
        folder: Path,
        *,
        mode: IpcMode,
        tcp_host: str,
        tcp_port: int,
        send: SendFn,
        socket_dir: Path = SOCKET_DIR,
        root: Path | None = None,
        inbound: bool = False,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.mode = mode
        self.marker = folder / marker_name(mode)
        self.tcp_host = tcp_host
        self.tcp_port = tcp_port
        self.socket_dir = socket_dir
        self.root = root if root is not None else folder.parent
        # Made for inbound sessions (the marker is ours: removed on close), or for a marker
        # an app dropped (the marker is the app's request: left alone).
        self.inbound = inbound
        self._send = send
        self.address = ""
        self.socket_path: Path | None = None
        # What keeps the endpoint open (see IpcHub): sessions using it, the app's marker.
        self.leases = 0
        self.app_marker = False
        self.idle_since: float | None = None

    def __str__(self) -> str:
        return str(self.folder)

    async def start(self) -> None:
        if self.mode == "unix":
            ensure_private_dir(self.socket_dir)
            path = unix_socket_path(self.marker, self.socket_dir)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale socket from an earlier run
            self.server = await asyncio.start_unix_server(self._on_client, path=str(path))
            self.socket_path = path
            self.address = str(path)
        else:
            self.server = await asyncio.start_server(self._on_client, self.tcp_host, self.tcp_port)
            host, port = self.server.sockets[0].getsockname()[:2]
            self.address = f"{host}:{port}"
        try:
            if self.socket_path is not None:
                os.chmod(self.socket_path, 0o600)
            self.write_marker()
        except BaseException:
            await self._release_listener()
            raise
        log.info("ipc: listening for %s at %s", self.folder, self.address)

    def write_marker(self) -> None:
        """Announce our address (atomically: apps poll the marker while it is empty)."""
        data = self.address.encode("utf-8")
        try:
            current = read_regular_file(self.marker, MARKER_MAX_BYTES, root=self.root)
        except OSError:
            current = None  # missing, or something that is not a plain file: replace it
        if current is not None and current.strip() == data:
            return
        write_file_within(self.root, self.marker, data)

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = IpcConnection(self, reader, writer)
        self._adopt(conn, conn.run(self._send), f"ipc-conn-{conn.id}")
        log.debug("ipc: app connected to %s (#%d)", self.folder, conn.id)

    async def _release_listener(self) -> None:
        await self._stop("ipc stopped")
        if self.socket_path is not None:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    async def close(self) -> None:
        """Stop listening, end every connection, remove the socket file; an inbound
        endpoint also removes its marker (while it still names us)."""
        await self._release_listener()
        if self.inbound and self.address:
            remove_file_within(self.root, self.marker, if_content=self.address.encode())


class IpcLimitReached(OSError):
    """Every one of the hub's endpoints is in use: no new one is opened."""


class IpcLease:
    """One inbound session's use of an endpoint; the session's :class:`Sink`.

    The endpoint stays open while a lease holds it; the session calls :meth:`release` when it
    ended (more than once is harmless)."""

    def __init__(self, endpoint: IpcEndpoint) -> None:
        self.endpoint = endpoint
        self.released = False
        endpoint.leases += 1

    @property
    def folder(self) -> Path:
        return self.endpoint.folder

    async def wait_writer(self, within: float) -> IpcConnection | None:
        return await self.endpoint.wait_writer(within)

    def eof_writer(self) -> IpcConnection | None:
        return self.endpoint.eof_writer()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.endpoint.leases -= 1


class IpcHub(ListenerHub):
    """All IPC endpoints of this client; also the manager's ``IpcRegistry``.

    An endpoint holds a listening socket, so endpoints are not kept forever: one made for
    inbound sessions (:meth:`endpoint_for`) closes once no session holds a lease on it and no
    app is connected, after ``idle_grace`` s (a session that comes back soon reuses it); one
    made for an app's marker stays while the marker exists. At most ``max_endpoints`` are
    open at once: past that, an idle one is closed early, and when none is idle a new one is
    refused (:class:`IpcLimitReached`), so Opens from another user cannot use up our fds.
    """

    def __init__(
        self,
        *,
        datasites: Path,
        local_email: str,
        mode: IpcMode,
        tcp_addr: str,
        send: SendFn,
        watcher: TreeWatcher | None = None,
        scan_interval: float = SCAN_INTERVAL,
        socket_dir: Path = SOCKET_DIR,
        idle_grace: float = IDLE_GRACE,
        max_endpoints: int = MAX_IPC_ENDPOINTS,
    ) -> None:
        self.datasites = datasites
        self.local_email = local_email
        self.mode = mode
        host, _, port = tcp_addr.rpartition(":")
        self.tcp_host = host.strip("[]") or "127.0.0.1"
        self.tcp_port = int(port or 0)
        self.send = send
        # Where apps drop markers: our own app_data (like Rust), and in UNIX mode Go's
        # shared/flows/*/*/_mpc/* too (there the name cannot collide with a tunnel marker).
        own = datasites / local_email
        scopes = [own / "app_data"]
        if mode == "unix":
            scopes.append(own / "shared" / "flows")
        self.index = FileIndex(datasites, marker_name(mode), scopes)
        self._indexed = False
        self.feed = (
            watcher.feed(names={marker_name(mode)}, scopes=scopes)
            if watcher is not None
            else ChangeFeed(poll_interval=scan_interval)
        )
        self.socket_dir = socket_dir
        self.idle_grace = idle_grace
        self.max_endpoints = max_endpoints
        self.endpoints: dict[Path, IpcEndpoint] = {}
        self._lock = asyncio.Lock()
        self._failed: set[Path] = set()
        # Folders we made for inbound endpoints: removed again once empty and unused.
        self._made: set[Path] = set()
        self._markers: list[Path] = []  # the sender markers of the last scan

    async def endpoint_for(self, folder: Path) -> IpcLease:
        """A lease on the endpoint of ``folder`` (an absolute path below the datasites
        folder), opening it if needed; the folder is made safely (no symlink on the way).

        Raises OSError: :class:`~.localfs.UnsafePath` for a folder outside the tree or behind
        a symlink, :class:`IpcLimitReached` when every endpoint is in use, or the error of
        the listening socket."""
        async with self._lock:
            endpoint = self.endpoints.get(folder)
            if endpoint is None:
                endpoint = await self._open(folder, inbound=True)
                # The discovery loop may be waiting for file events alone (it had no
                # endpoints): from now on it must also wake to close idle ones.
                self.feed.wake()
            endpoint.idle_since = None
            return IpcLease(endpoint)

    async def _open(self, folder: Path, *, inbound: bool) -> IpcEndpoint:
        """A new endpoint (the caller holds the lock)."""
        rel = rel_segments(self.datasites, folder)
        if len(self.endpoints) >= self.max_endpoints:
            await self._close_idlest(folder)
        created: list[Path] = []
        if inbound:
            make_folder_within(self.datasites, rel, created)
            self._made.update(created)
        endpoint = IpcEndpoint(
            folder,
            mode=self.mode,
            tcp_host=self.tcp_host,
            tcp_port=self.tcp_port,
            send=self.send,
            socket_dir=self.socket_dir,
            root=self.datasites,
            inbound=inbound,
        )
        try:
            await endpoint.start()
        except BaseException:
            self._remove_made_folders(folder)
            raise
        self.endpoints[folder] = endpoint
        return endpoint

    def _remove_made_folders(self, folder: Path) -> None:
        """Remove ``folder`` and its parents while we made them, they are empty and no
        endpoint uses them (an app's or a user's file in one keeps it)."""
        chain: list[Path] = []
        here = folder
        while here in self._made and here not in self.endpoints:
            chain.append(here)
            here = here.parent
        removed = remove_empty_folders_within(self.datasites, chain[::-1])
        self._made.difference_update(removed)

    @staticmethod
    def _idle(endpoint: IpcEndpoint) -> bool:
        return not (endpoint.leases or endpoint.app_marker or endpoint.connections)

    async def _close_idlest(self, wanted: Path) -> None:
        """Make room for one endpoint by closing the one idle longest (lock held)."""
        idle = [e for e in self.endpoints.values() if self._idle(e)]
        if not idle:
            raise IpcLimitReached(
                f"all {self.max_endpoints} ipc endpoints are in use; not opening one for {wanted}"
            )
        now = asyncio.get_running_loop().time()
        victim = min(idle, key=lambda e: now if e.idle_since is None else e.idle_since)
        await self._close_endpoint(victim)

    async def _close_endpoint(self, endpoint: IpcEndpoint) -> None:
        if self.endpoints.get(endpoint.folder) is endpoint:
            del self.endpoints[endpoint.folder]
        log.debug("ipc: closing the idle endpoint for %s", endpoint.folder)
        await endpoint.close()
        self._remove_made_folders(endpoint.folder)

    async def close_idle(self) -> None:
        """Close the endpoints that were idle for ``idle_grace`` s (checked on every scan)."""
        now = asyncio.get_running_loop().time()
        async with self._lock:
            for endpoint in list(self.endpoints.values()):
                if not self._idle(endpoint):
                    endpoint.idle_since = None
                    continue
                if endpoint.idle_since is None:
                    endpoint.idle_since = now
                if now - endpoint.idle_since >= self.idle_grace:
                    await self._close_endpoint(endpoint)

    def find_sender_markers(self, changes: Changes = FULL) -> list[Path]:
        """Markers apps dropped in our own datasite (``app_data/**``; in UNIX mode also
        ``shared/flows/<flow>/<run>/_mpc/<channel>/``), after looking at ``changes`` (a full
        walk the first time). Blocking I/O: run it off the loop."""
        if changes.full or not self._indexed:
            self.index.rescan()
            self._indexed = True
        elif changes.paths:
            self.index.update(changes.paths)
        found: list[Path] = []
        for full, rel in self.index.sorted_files():
            # <own>/app_data/... or <own>/shared/flows/<flow>/<run>/_mpc/<channel>/<name>
            segments = rel.split("/")
            if segments[1] == "shared" and not (len(segments) == 8 and segments[5] == MPC_DIR):
                continue
            if self.mode == "tcp" and parse_channel_dir(segments[-2]) is not None:
                continue  # never claim a tunnel marker (same file name)
            found.append(Path(full))
        return found

    def next_wakeup(self) -> float | None:
        """While endpoints exist, look now and then for the idle ones to close."""
        if not self.endpoints:
            return None
        return min(HOUSEKEEPING, max(self.idle_grace, MIN_HOUSEKEEPING))

    async def scan_once(self, changes: Changes = FULL) -> None:
        if changes:
            self._markers = await asyncio.to_thread(self.find_sender_markers, changes)
        folders = {marker.parent: marker for marker in self._markers}
        for folder, marker in folders.items():
            endpoint = self.endpoints.get(folder)
            if endpoint is not None:
                # Our own inbound marker in our app_data is not an app's request.
                endpoint.app_marker = endpoint.app_marker or not endpoint.inbound
                if changes:
                    with contextlib.suppress(OSError):
                        endpoint.write_marker()  # an app may have reset it
                continue
            try:
                async with self._lock:
                    if folder not in self.endpoints:
                        endpoint = await self._open(folder, inbound=False)
                        endpoint.app_marker = True
                self._failed.discard(folder)
            except OSError as exc:
                if folder not in self._failed:
                    log.error("ipc: cannot listen for %s: %s", marker, exc)
                    self._failed.add(folder)
        for endpoint in self.endpoints.values():
            if endpoint.app_marker and endpoint.folder not in folders:
                endpoint.app_marker = False  # the app removed its marker: done with it
                log.info("ipc: marker removed; closing %s once idle", endpoint.folder)
        self._failed.intersection_update(folders)
        await self.close_idle()

    async def close(self) -> None:
        async with self._lock:
            endpoints = list(self.endpoints.values())
            self.endpoints.clear()
            await asyncio.gather(*(e.close() for e in endpoints), return_exceptions=True)
            for endpoint in endpoints:
                self._remove_made_folders(endpoint.folder)
            self._made.clear()
