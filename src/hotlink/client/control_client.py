"""Reaching a running client daemon's control endpoint: where its socket is, and fetching.

The daemon serves ``GET /status`` (JSON, :mod:`.status`) and ``GET /metrics`` (Prometheus
text) on a UNIX socket only its owner can use (:mod:`.control`). Its place follows from the
data dir and the email alone, so ``hotlink status`` and test harnesses find it the way the
other commands find the data dir:

* ``<data-dir>/.hotlink/<email>.sock``: beside the datasites, not in them (``datasites/`` is
  what SyftBox syncs, and a socket there would be synced or scanned); one per email, so two
  identities sharing a data dir do not meet; in a folder of its own that can be owner-only
  (0700) without touching the datasite's permissions.
* When that path is too long for a UNIX socket (108 bytes with its NUL on Linux),
  ``/tmp/syftbox-hotlink-<uid>/<hash>.sock``, the hash taken from the real data dir and the
  email; the daemon also leaves its path in ``<data-dir>/.hotlink/<email>.sock.path`` for
  people looking for it. The folder carries the uid because ``/tmp`` is shared: another user
  could otherwise create it first.

Harnesses poll instead of matching log lines::

    path = control_socket_path(data_dir, email)
    doc = wait_for_status(path, is_ready, timeout=30)          # sync
    doc = await wait_for_status_async(path, tunnel_listening(key))
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONTROL_DIR = ".hotlink"
SOCKET_SUFFIX = ".sock"
POINTER_SUFFIX = ".sock.path"
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
FALLBACK_ROOT = "/tmp"
FALLBACK_PREFIX = "syftbox-hotlink-"

StatusDoc = dict[str, Any]
Predicate = Callable[[StatusDoc], bool]


class ControlUnavailable(Exception):
    """No daemon answers at the control socket (none running, or not ours to reach)."""


def control_dir(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser().absolute() / CONTROL_DIR


def primary_socket_path(data_dir: str | Path, email: str) -> Path:
    return control_dir(data_dir) / f"{email}{SOCKET_SUFFIX}"


def pointer_path(data_dir: str | Path, email: str) -> Path:
    return control_dir(data_dir) / f"{email}{POINTER_SUFFIX}"


def fallback_socket_path(data_dir: str | Path, email: str) -> Path:
    # The real path: a data dir reached through a symlink is the same daemon.
    key = f"{os.path.realpath(Path(data_dir).expanduser().absolute())}\0{email}".encode()
    digest = hashlib.sha256(key).hexdigest()[:24]
    return Path(FALLBACK_ROOT) / f"{FALLBACK_PREFIX}{os.getuid()}" / f"{digest}{SOCKET_SUFFIX}"


def fits(path: Path) -> bool:
    return len(os.fsencode(str(path))) <= MAX_SOCKET_PATH


def control_socket_path(data_dir: str | Path, email: str) -> Path:
    """Where the daemon for ``data_dir`` and ``email`` serves its control endpoint."""
    primary = primary_socket_path(data_dir, email)
    return primary if fits(primary) else fallback_socket_path(data_dir, email)


# ---------------------------------------------------------------- sync client


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _unavailable(path: Path, exc: BaseException) -> ControlUnavailable:
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return ControlUnavailable(f"no hotlink client is running (nothing answers at {path})")
    if isinstance(exc, PermissionError):
        return ControlUnavailable(f"{path}: permission denied (the client runs as another user?)")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ControlUnavailable(f"the hotlink client at {path} did not answer in time")
    return ControlUnavailable(f"cannot reach the hotlink client at {path}: {exc}")


def fetch(path: str | Path, endpoint: str, timeout: float = 5.0) -> str:
    """``GET endpoint`` on the control socket; the body as text. Raises ControlUnavailable."""
    path = Path(path)
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", endpoint)
        response = conn.getresponse()
        body = response.read().decode("utf-8")
    except (OSError, http.client.HTTPException) as exc:
        raise _unavailable(path, exc) from None
    finally:
        conn.close()
    if response.status != 200:
        raise ControlUnavailable(f"{endpoint} at {path}: HTTP {response.status}")
    return body


def fetch_status(path: str | Path, timeout: float = 5.0) -> StatusDoc:
    """The daemon's status document (see :mod:`hotlink.client.status`)."""
    doc = json.loads(fetch(path, "/status", timeout))
    if not isinstance(doc, dict):
        raise ControlUnavailable(f"/status at {path} is not a JSON object")
    return doc


def fetch_metrics(path: str | Path, timeout: float = 5.0) -> str:
    """The daemon's Prometheus metrics (text exposition format)."""
    return fetch(path, "/metrics", timeout)


def wait_for_status(
    path: str | Path,
    ok: Predicate,
    timeout: float = 30.0,
    *,
    poll: float = 0.1,
    alive: Callable[[], bool] | None = None,
) -> StatusDoc:
    """Poll until ``ok(doc)``; the socket may not exist yet. TimeoutError as a failure guard,
    ControlUnavailable at once when ``alive()`` says the daemon died. For code without an
    event loop (it runs :func:`wait_for_status_async` on a loop of its own)."""
    return asyncio.run(wait_for_status_async(path, ok, timeout, poll=poll, alive=alive))


# ---------------------------------------------------------------- async client


async def fetch_async(path: str | Path, endpoint: str, timeout: float = 5.0) -> str:
    """:func:`fetch` for event-loop code (a raw HTTP/1.0 request: no extra dependencies)."""
    path = Path(path)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(f"GET {endpoint} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise _unavailable(path, exc) from None
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or status_line[1] != b"200":
        raise ControlUnavailable(f"{endpoint} at {path}: bad answer {head[:80]!r}")
    return body.decode("utf-8")


async def fetch_status_async(path: str | Path, timeout: float = 5.0) -> StatusDoc:
    doc = json.loads(await fetch_async(path, "/status", timeout))
    if not isinstance(doc, dict):
        raise ControlUnavailable(f"/status at {path} is not a JSON object")
    return doc


async def wait_for_status_async(
    path: str | Path,
    ok: Predicate,
    timeout: float = 30.0,
    *,
    poll: float = 0.1,
    alive: Callable[[], bool] | None = None,
) -> StatusDoc:
    """:func:`wait_for_status` for event-loop code."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: StatusDoc | None = None
    why = "no answer yet"
    while True:
        try:
            last = await fetch_status_async(path, timeout=max(0.5, min(5.0, timeout)))
            if ok(last):
                return last
            why = "condition not met"
        except ControlUnavailable as exc:
            why = str(exc)
        if alive is not None and not alive():
            raise ControlUnavailable(f"the client exited ({why})")
        if loop.time() >= deadline:
            raise TimeoutError(f"status at {path} after {timeout:g} s: {why}; last: {last}")
        await asyncio.sleep(poll)


# ---------------------------------------------------------------- what harnesses wait for


def is_connected(doc: StatusDoc) -> bool:
    """Connected to the relay (what the log line ``connected to ...`` said)."""
    return bool(doc.get("connection", {}).get("state") == "connected")


def is_ready(doc: StatusDoc) -> bool:
    """Connected, and this connection's first ACL publish round done (``acls published``):
    the relay knows every ACL file the datasite had, so Opens may go out."""
    return is_connected(doc) and bool(doc.get("connection", {}).get("acls_published"))


def tunnel_listening(key: str | None = None, port: int | None = None) -> Predicate:
    """A predicate: the tunnel with canonical ``key`` (or local ``port``) is listening (what
    ``tcp proxy: starting`` said); with neither, any tunnel."""

    def ok(doc: StatusDoc) -> bool:
        for tunnel in doc.get("tunnels", []):
            if key is not None and tunnel.get("key") != key:
                continue
            if port is not None and tunnel.get("port") != port:
                continue
            if tunnel.get("listening"):
                return True
        return False

    return ok
