"""The TCP proxy (tunnel mode, PROTOCOL.md §4.7 with DECISIONS.md #5, #7-#10, #13).

We keep one listener per canonical key for the ``stream.tcp`` markers under ``/_mpc/N_to_M/``
folders of the local datasites tree, looking again whenever the file watcher reports a change
(:mod:`.watcher`). Each app connection opens its own
outbound session on the canonical key and sends 60 KiB chunks; the app's EOF becomes Close
``eof`` (an app that wrote nothing sends an empty stream). Inbound tunnel sessions write into
the newest app connection, waiting up to 30 s for one; an app that half-closed stays the
writer until the peer's stream ended into it.

A tunnel behaves as one TCP connection: the app sees every byte and a clean EOF, or a reset.
Every app socket resets on close from accept on (so even kill -9 of the client resets it);
only a stream that ended cleanly clears that before its FIN. A failed send resets the
connection (never a hole in the stream). A newer app connection supersedes older ones (they
are reset), so a tunnel carries one stream per direction at a time and bytes of two
connections never mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ...protocol.acl import short_path
from ...protocol.errors import ProtocolError
from ...protocol.markers import (
    MPC_DIR,
    TCP_MARKER,
    TCP_REQUEST_NAME,
    ProxyChannel,
    parse_channel_dir,
    parse_tcp_marker,
    proxy_channel,
)
from ..localfs import MARKER_MAX_BYTES, TRANSIENT_ERRNOS, read_regular_file
from ..session.base import EOF, SessionClosed
from ..session.hints import HINTS
from ..session.outbound import OutboundSession
from .changes import FULL, ChangeFeed, Changes
from .discovery import FileIndex
from .listener import ListenerHub, LocalConnection, LocalListener, set_linger_reset
from .watcher import TreeWatcher

log = logging.getLogger("hotlink.tcp_proxy")

# Without a file watcher (tests, tools): a full scan this often.
SCAN_INTERVAL = 0.25
# A listener that could not bind, or a marker that could not be read for lack of file
# descriptors, is tried again after this many seconds.
BIND_RETRY = 2.0
READ_RETRY = 2.0
# Tunnels one client runs at most. Every marker naming us as a party becomes a listening
# socket, and markers reach our tree from other people's datasites too: without a bound
# anyone could make us hold sockets (and file descriptors) without end. A tunnel with a
# marker in our own datasite is one we (or our apps) set up; one known only from another
# person's datasite is theirs, and each person gets a small share, so nobody can crowd out
# our own. All far above the channels of a few concurrent MPC runs among a few parties.
MAX_TUNNELS = 256
MAX_FOREIGN_TUNNELS = 64
MAX_FOREIGN_TUNNELS_PER_PEER = 8


class StreamOpener(Protocol):
    async def open_stream(self, path: str, to: str = "") -> OutboundSession: ...


# ---------------------------------------------------------------- discovery

# Where a tunnel marker goes, for the warnings about one that is not there.
MARKER_LAYOUT = f"<datasite>/<flow>/<run>/{MPC_DIR}/0_to_1/{TCP_MARKER}"
MARKER_JSON = '{"from": "<email>", "to": "<email>", "ports": {"<email>": <port>, ...}}'


@dataclass
class _MarkerCache:
    stat: tuple[int, int, int]
    channel: ProxyChannel | None


def _misplaced(segments: list[str]) -> str | None:
    """What is wrong with where a ``stream.tcp`` is, or None for a channel folder."""
    in_mpc = MPC_DIR in segments[1:-2]
    channel_dir = len(segments) >= 3 and parse_channel_dir(segments[-2]) is not None
    if in_mpc and channel_dir:
        return None
    if not in_mpc and channel_dir:
        fixed = "/".join([*segments[:-2], MPC_DIR, *segments[-2:]])
        return f"it is not under an {MPC_DIR} folder (did you mean {fixed}?)"
    folder = segments[-2] if len(segments) >= 2 else ""
    what = f"its folder {folder!r} is not named N_to_M (the parties' ids, e.g. 0_to_1)"
    return what if in_mpc else f"it is not under an {MPC_DIR} folder and {what}"


def _where(rel: str) -> str:
    """A marker's path for a log line: whole unless absurdly long."""
    return short_path(rel, 200)


def _text(exc: BaseException) -> str:
    """An error for a log line: an OSError's text names the whole path, which anyone who can
    put folders in our tree chooses."""
    return short_path(str(exc), 300)


class MarkerScanner:
    """Finds tunnel markers; caches parsed files by (inode, mtime, size), logs each marker
    found or gone at INFO, and warns once per version about one it cannot use.

    Every ``stream.tcp`` in the tree is looked at, because a marker in the wrong place must
    not be ignored silently: one that holds JSON outside an ``_mpc/N_to_M`` folder gets a
    warning that says where it belongs. A ``stream.tcp`` that holds no JSON object there is
    an IPC endpoint's address (TCP mode, PROTOCOL.md §11.12), not a tunnel: left alone.

    Markers are read as untrusted input: regular files only (a FIFO would block the read),
    no links, at most :data:`~.localfs.MARKER_MAX_BYTES`, and any failure to read or parse one
    marker skips that marker alone. :meth:`scan` does blocking I/O: the proxy runs it in a
    worker thread, one scan at a time.
    """

    def __init__(self, datasites: Path, local_email: str) -> None:
        self.datasites = datasites
        self.local_email = local_email
        self.index = FileIndex(datasites, TCP_MARKER)
        self._indexed = False
        self._cache: dict[str, _MarkerCache] = {}
        # Canonical keys with a marker in our own datasite (see MAX_FOREIGN_TUNNELS).
        self.own: set[str] = set()
        # Markers whose last read failed for lack of descriptors (warned once; read again).
        self.unreadable: set[str] = set()

    def scan(self, changes: Changes = FULL) -> dict[str, ProxyChannel]:
        """``canonical key -> channel`` after looking at ``changes`` (a full walk the first
        time); with several markers per key the first path in walk order wins."""
        if changes.full or not self._indexed:
            self.index.rescan()
            self._indexed = True
        elif changes.paths:
            self.index.update(changes.paths)
        found: dict[str, ProxyChannel] = {}
        own: set[str] = set()
        for full, rel in self.index.sorted_files():
            channel = self._load(full, rel)
            if channel is None:
                continue
            if rel.split("/", 1)[0] == self.local_email:
                own.add(channel.canonical_key)
            if channel.canonical_key not in found:
                found[channel.canonical_key] = channel
        self.own = own
        for gone in set(self._cache) - set(self.index.files):
            if self._cache.pop(gone).channel is not None:
                log.info("tunnel marker removed: %s", gone)
        self.unreadable &= set(self.index.files)
        return found

    def _load(self, full: str, rel: str) -> ProxyChannel | None:
        try:
            st = os.lstat(full)
        except OSError:
            return None
        stat = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(rel)
        if cached is not None and cached.stat == stat:
            return cached.channel
        channel: ProxyChannel | None = None
        try:
            data = read_regular_file(Path(full), MARKER_MAX_BYTES, root=self.datasites)
            channel = self._parse(rel, data.decode("utf-8"))
        except OSError as exc:
            if exc.errno not in TRANSIENT_ERRNOS:
                log.warning("tcp proxy: cannot read marker %s: %s", _where(rel), _text(exc))
            else:
                # A passing shortage: a running tunnel is not stopped for it, and the marker
                # is read again next scan.
                if rel not in self.unreadable:
                    self.unreadable.add(rel)
                    log.warning(
                        "tcp proxy: cannot read marker %s: %s (trying again)",
                        _where(rel),
                        _text(exc),
                    )
                return cached.channel if cached is not None else None
        except UnicodeDecodeError as exc:
            log.warning("tcp proxy: cannot read marker %s: %s", _where(rel), _text(exc))
        except ProtocolError as exc:
            log.warning("tunnel marker ignored: %s; it must hold %s", _text(exc), MARKER_JSON)
        except Exception as exc:  # one odd file must not hide the others
            log.warning("tunnel marker %s ignored: %s", _where(rel), type(exc).__name__)
        self.unreadable.discard(rel)
        if stat[2] > 0:
            # An empty file is probably still being written: read it again next scan.
            self._cache[rel] = _MarkerCache(stat, channel)
        if channel is not None and (cached is None or cached.channel != channel):
            log.info(
                "tunnel marker found: %s (peer %s, listening on port %d)",
                _where(rel),
                channel.peer_email,
                channel.listen_port,
            )
        elif channel is None and cached is not None and cached.channel is not None:
            log.info("tunnel marker no longer usable: %s", _where(rel))
        return channel

    def _parse(self, rel: str, text: str) -> ProxyChannel | None:
        """The channel a marker's text describes, None when it is no tunnel marker (empty,
        or an IPC address, or misplaced: warned); raises ProtocolError for a bad marker."""
        if not text.strip():
            return None
        segments = rel.split("/")
        problem = _misplaced(segments)
        if problem is not None:
            if text.lstrip().startswith("{"):
                log.warning(
                    "tunnel marker %s ignored: %s; a tunnel marker goes in %s",
                    _where(rel),
                    problem,
                    MARKER_LAYOUT,
                )
            return None
        return proxy_channel(rel, parse_tcp_marker(text, rel), self.local_email)


def tunnel_path_matches(path: str, info: ProxyChannel) -> bool:
    """Whether a session path names this tunnel.

    Besides the canonical and local keys, accept the variants reference clients send on
    (PROTOCOL.md §4.7): either party's datasite as owner and the folder as ``N_to_M`` or
    ``M_to_N``; all of them mean the same pair of parties and the same channel folder.
    """
    if path in (info.canonical_key, info.local_key):
        return True
    segments = path.split("/")
    canon = info.canonical_key.split("/")
    if len(segments) != len(canon) or segments[-1] != TCP_REQUEST_NAME:
        return False
    if segments[0] not in (info.local_email, info.peer_email):
        return False
    ids = parse_channel_dir(segments[-2])
    if ids is None or sorted(ids) != sorted((info.from_id, info.to_id)):
        return False
    return segments[1:-2] == canon[1:-2]


# ---------------------------------------------------------------- app connections


class AppConnection(LocalConnection):
    """One accepted app socket: read side feeds an outbound session, write side is a sink.

    The two directions end separately, as in TCP. The app's EOF becomes Close ``eof`` at the
    peer (an app that wrote nothing still opens a session and finishes it at once, so the peer
    hears the FIN); the peer's stream ends with our half-close (``finish``). A connection whose
    app sent EOF stays the tunnel's writer: the app may have half-closed and still wait for
    the answer. It closes gracefully once both directions ended cleanly, and is reset when
    either one fails or a newer connection supersedes it.
    """

    def __init__(
        self,
        channel: TunnelChannel,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(channel, reader, writer)
        self.channel = channel
        self.write_open = True  # the peer's stream may still be written into the app
        self.app_eof = False  # the app's EOF was read and passed on
        self.read_done = False  # ...and the peer has it (or there was nothing to lose)
        # An inbound session writes into this connection (set by the channel on handing it out).
        self.bound = False
        self.session: OutboundSession | None = None
        self.bytes_read = 0

    # ------------------------------------------------------------ AppWriter

    async def write(self, data: bytes) -> None:
        if self.closed or not self.write_open:
            raise ConnectionResetError("app connection is closed")
        await self._write_app(data)

    def write_nowait(self, data: bytes) -> bool:
        """Write without waiting when the socket's buffer is empty (no backpressure)."""
        if self.closed or not self.write_open:
            return False
        transport = self.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return False
        transport.write(data)
        return True

    def finish(self) -> None:
        """The peer's stream ended cleanly: the app gets the buffered bytes, then EOF."""
        self.bound = False
        if self.closed or not self.write_open:
            return
        self.write_open = False
        # Without this, a later close would reset the connection and drop what the kernel
        # still holds for an app that reads late.
        set_linger_reset(self.sock, False)
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        self._maybe_close()

    def fail(self, reason: str) -> None:
        if self.closed:
            return
        log.info(
            "tcp proxy: resetting app connection #%d on port %d: %s",
            self.id,
            self.channel.info.listen_port,
            reason,
        )
        self.write_open = False
        self._abort()

    def _maybe_close(self) -> None:
        if self.read_done and not self.write_open and not self.closed:
            self._close_gracefully()

    # ------------------------------------------------------------ read side

    async def run(self, chunk_size: int, opener: StreamOpener) -> None:
        info = self.channel.info
        try:
            while True:
                data = await self.reader.read(chunk_size)
                if not data:
                    break
                self.bytes_read += len(data)
                if self.session is None:
                    self.session = await opener.open_stream(info.canonical_key, info.peer_email)
                    self.session.add_done_callback(self._on_session_done)
                await self.session.send(info.canonical_key, data)
            log.debug(
                "tcp proxy: app connection #%d sent EOF after %d bytes", self.id, self.bytes_read
            )
            if self.session is not None:
                self.session.finish()
                self.app_eof = True  # read_done once the session ends with eof
            else:
                self.app_eof = True
                await self._send_empty_stream(opener)
        except SessionClosed as exc:
            self.fail(f"session ended: {exc.reason}")
        except (ConnectionError, OSError) as exc:
            self.fail(f"read failed: {exc or type(exc).__name__}")
        finally:
            session = self.session
            if session is not None and not self.app_eof and not session.ended:
                await session.close("app connection closed", notify=True)

    async def _send_empty_stream(self, opener: StreamOpener) -> None:
        """The app closed without writing: TCP would still deliver a FIN, so open a session
        and finish it at once (the peer gets Close ``eof:0``). Nothing was read, so nothing
        can be lost: whether the peer hears it does not matter to this connection."""
        info = self.channel.info
        try:
            session = await opener.open_stream(info.canonical_key, info.peer_email)
            session.finish()
        except SessionClosed as exc:
            log.debug("tcp proxy: app connection #%d: empty stream not sent: %s", self.id, exc)
        self.read_done = True
        self._maybe_close()

    def _on_session_done(self, reason: str) -> None:
        if reason != EOF:
            self.fail(f"session ended: {reason}")
            return
        self.read_done = True
        self._maybe_close()


# ---------------------------------------------------------------- one tunnel


class TunnelChannel(LocalListener[AppConnection]):
    """The listener of one canonical key and its app connections (newest is the writer)."""

    def __init__(
        self, info: ProxyChannel, bind_host: str, chunk_size: int, opener: StreamOpener
    ) -> None:
        super().__init__()
        self.info = info
        self.bind_host = bind_host
        self.chunk_size = chunk_size
        self.opener = opener

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._on_client, self.bind_host, self.info.listen_port
        )

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AppConnection(self, reader, writer)
        for old in list(self.connections):
            old.fail(f"superseded by app connection #{conn.id}")
        log.info("tcp proxy: app connection #%d on port %d", conn.id, self.info.listen_port)
        self._adopt(conn, conn.run(self.chunk_size, self.opener), f"tcp-proxy-conn-{conn.id}")

    def _usable(self, conn: AppConnection) -> bool:
        return not conn.closed and conn.write_open and not conn.bound

    def eof_writer(self) -> AppConnection | None:
        """An empty stream's end goes only to a connection whose app already sent its EOF
        (it half-closed and waits for the answer, which is: nothing). A connection whose app
        is still writing is the tunnel's next stream, not an answer to this one: ending it
        would cut a stream that has not started."""
        for conn in reversed(self.connections):
            if self._usable(conn) and conn.app_eof:
                return conn
        return None

    async def wait_writer(self, within: float) -> AppConnection | None:
        conn = await super().wait_writer(within)
        if conn is not None:
            conn.bound = True  # one stream per connection at a time, until finish()
        return conn

    async def close(self) -> None:
        await self._stop("tcp proxy stopped")
        if self.server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self.server.wait_closed()

    def snapshot(self) -> dict[str, Any]:
        return {
            "port": self.info.listen_port,
            "from": self.info.local_email
            if self.info.from_id < self.info.to_id
            else self.info.peer_email,
            "to": self.info.peer_email
            if self.info.from_id < self.info.to_id
            else self.info.local_email,
            "connected": any(not c.closed for c in self.connections),
        }


# ---------------------------------------------------------------- the proxy


class TcpProxy(ListenerHub):
    """Discovery loop plus the running tunnels; also the manager's ``TunnelRegistry``."""

    def __init__(
        self,
        *,
        datasites: Path,
        local_email: str,
        bind_host: str,
        chunk_size: int,
        opener: StreamOpener,
        watcher: TreeWatcher | None = None,
        scan_interval: float = SCAN_INTERVAL,
    ) -> None:
        self.scanner = MarkerScanner(datasites, local_email)
        self.bind_host = bind_host
        self.chunk_size = chunk_size
        self.opener = opener
        # Markers anywhere in the tree: every stream.tcp and the folders around them.
        self.feed = (
            watcher.feed(names={TCP_MARKER})
            if watcher is not None
            else ChangeFeed(poll_interval=scan_interval)
        )
        self.channels: dict[str, TunnelChannel] = {}
        self._bind_failed: dict[str, float] = {}
        self._over_cap: set[str] = set()  # found but not started for MAX_TUNNELS (warned)
        self._found: dict[str, ProxyChannel] = {}

    def next_wakeup(self) -> float | None:
        """When the next listener that failed to bind, or marker that could not be read,
        may be tried again."""
        waits = [READ_RETRY] if self.scanner.unreadable else []
        if self._bind_failed:
            now = asyncio.get_running_loop().time()
            waits.append(max(0.0, min(self._bind_failed.values()) + BIND_RETRY - now))
        return min(waits) if waits else None

    async def scan_once(self, changes: Changes = FULL) -> None:
        if not changes and self.scanner.unreadable:
            # No event will come for a marker that was there all along: read it again.
            root = self.scanner.datasites
            changes = Changes(paths=frozenset(str(root / rel) for rel in self.scanner.unreadable))
        if changes:
            # Off the loop: the walk and the reads touch files anyone may have put there.
            self._found = await asyncio.to_thread(self.scanner.scan, changes)
        found = self._found
        for key in set(self._bind_failed) - set(found):
            del self._bind_failed[key]  # its marker is gone: nothing to retry
        self._over_cap &= set(found)
        for key in list(self.channels):
            running = self.channels[key]
            info = found.get(key)
            if info is None or info.listen_port != running.info.listen_port:
                del self.channels[key]
                log.info("tcp proxy: stopping %s (port %d)", key, running.info.listen_port)
                await running.close()
        now = asyncio.get_running_loop().time()
        own = self.scanner.own
        # Our own tunnels first, so that other people's markers never take their places.
        for key, info in sorted(found.items(), key=lambda item: item[0] not in own):
            if key in self.channels:
                continue
            failed_at = self._bind_failed.get(key)
            if failed_at is not None and now - failed_at < BIND_RETRY:
                continue
            full = self._cap_reached(key, info, own)
            if full:
                if key not in self._over_cap:
                    self._over_cap.add(key)
                    # Said once in a while per person (or for all): one person's flood of
                    # markers would otherwise be a line per marker.
                    HINTS.say(
                        "tunnel-cap",
                        "" if key in own else info.peer_email,
                        f"tcp proxy: not starting {short_path(key)} (port {info.listen_port}) "
                        f"and perhaps more: {full}; close one (hotlink tunnel close) or remove "
                        "stale markers",
                    )
                continue
            self._over_cap.discard(key)
            channel = TunnelChannel(info, self.bind_host, self.chunk_size, self.opener)
            try:
                await channel.start()
            except OSError as exc:
                if failed_at is None:
                    log.error(
                        "tcp proxy: cannot listen on %s:%d for %s: %s (retrying)",
                        self.bind_host,
                        info.listen_port,
                        key,
                        exc,
                    )
                self._bind_failed[key] = now
                continue
            self._bind_failed.pop(key, None)
            self.channels[key] = channel
            log.info(
                "tcp proxy: starting %s:%d channel=%s peer=%s",
                self.bind_host,
                info.listen_port,
                key,
                info.peer_email,
            )

    def _cap_reached(self, key: str, info: ProxyChannel, own: set[str]) -> str:
        """Why the tunnel ``key`` may not start now (MAX_TUNNELS...), or ''."""
        if len(self.channels) >= MAX_TUNNELS:
            return f"{MAX_TUNNELS} tunnels run already, the most one client runs"
        if key in own:
            return ""
        foreign = [c for k, c in self.channels.items() if k not in own]
        if len(foreign) >= MAX_FOREIGN_TUNNELS:
            return (
                f"{MAX_FOREIGN_TUNNELS} tunnels known only from other people's datasites run "
                "already"
            )
        peer = info.peer_email
        if sum(c.info.peer_email == peer for c in foreign) >= MAX_FOREIGN_TUNNELS_PER_PEER:
            return (
                f"{MAX_FOREIGN_TUNNELS_PER_PEER} tunnels known only from {peer}'s datasite run "
                "already"
            )
        return ""

    def sink_for(self, path: str, peer: str) -> TunnelChannel | None:
        for channel in self.channels.values():
            if channel.info.peer_email == peer and tunnel_path_matches(path, channel.info):
                return channel
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        return [c.snapshot() for c in self.channels.values()]

    async def close(self) -> None:
        channels = list(self.channels.values())
        self.channels.clear()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
