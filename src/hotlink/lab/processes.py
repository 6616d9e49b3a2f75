"""Child processes of the lab: start the relay and client daemons, wait on them, stop them.

:func:`launch_server` and :func:`launch_client` start one process (:func:`spawn` any
program), :func:`child_env` and :func:`client_settings` build its environment, and
:func:`stop_process` stops any child by pid (SIGTERM, then SIGKILL). The handles
(:class:`ServerProc`, :class:`ClientProc`) wait for readiness and for log lines, each wait
with an ``a``-prefixed coroutine twin that polls without blocking the event loop.

Children start in their own session (a Ctrl-C in the terminal reaches only us) and, unless
told otherwise, with the kernel's parent-death signal, so even a ``kill -9`` of the launcher
takes them along. That signal fires when the *thread* that spawned a child ends: spawn from
a thread that lives as long as the children (the main thread, or the event loop's thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..client.control_client import (
    ControlUnavailable,
    control_socket_path,
    fetch_status,
    is_ready,
    tunnel_listening,
)
from ..logs import LINE_TIME, parse_time
from .waiting import block, polls, wait_async

# Log lines of the client daemon we wait on (see hotlink.client.daemon and friends).
CONNECTED = r"connected to \S+ as "
ACLS_PUBLISHED = r"acls published: "
PROXY_STARTING = r"tcp proxy: starting \S+ channel="
# The WebRTC transport's line when a data channel opened (the reference's wording, §9.4).
CHANNEL_OPEN = r"data channel open"

_PR_SET_PDEATHSIG = 1
# Log lines of older clients start with the local time of day only.
_CLOCK_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) ", re.MULTILINE)


class StackError(RuntimeError):
    """A process exited early or a log line never appeared; the message has the log's tail."""


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the launching thread dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def send_signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    """``kill(pid, signum)`` if the child still runs (never by name)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM by pid, SIGKILL after ``timeout``; returns the exit code."""
    if proc.poll() is None:
        send_signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            send_signal(proc, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def line_time(text: str, start: int = 0) -> float | None:
    """Wall-clock time (epoch s) of the log line starting at offset ``start`` of ``text``.

    Lines start with an ISO 8601 UTC stamp (:mod:`hotlink.logs`); those of older clients
    with ``HH:MM:SS.mmm`` only, whose date is taken as today's (or yesterday's, for a line
    just before midnight)."""
    iso = LINE_TIME.match(text, start)
    if iso is not None:
        return parse_time(iso.group(1))
    stamp = _CLOCK_TIME.match(text, start)
    if stamp is None:
        return None
    h, m, s, ms = (int(g) for g in stamp.groups())
    now = datetime.now()
    when = now.replace(hour=h, minute=m, second=s, microsecond=ms * 1000).timestamp()
    if when > now.timestamp() + 60:
        when -= 86400
    return when


@dataclass
class Proc:
    """One child process we own, with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_mark(self) -> int:
        """The log's current length: pass as ``since`` to wait only for newer lines."""
        return len(self.log_text())

    def search_log(self, pattern: str | re.Pattern[str], since: int = 0) -> re.Match[str] | None:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return regex.search(self.log_text(), since)

    def count_log(self, pattern: str, since: int = 0) -> int:
        return len(re.findall(pattern, self.log_text()[since:]))

    def log_time(self, pattern: str | re.Pattern[str], since: int = 0) -> float | None:
        """Wall-clock time (epoch s) of the first log line after ``since`` matching ``pattern``
        (see :func:`line_time`)."""
        text = self.log_text()
        match = (re.compile(pattern) if isinstance(pattern, str) else pattern).search(text, since)
        if match is None:
            return None
        start = text.rfind("\n", 0, match.start()) + 1
        return line_time(text, start)

    def _failure(self, what: str, timeout: float) -> StackError:
        state = "running" if self.alive() else f"exited with code {self.proc.returncode}"
        return StackError(
            f"{self.name}: {what} within {timeout:g}s ({state}); "
            f"log {self.log_path}, tail:\n{self.log_text()[-3000:]}"
        )

    def _polls_while_alive[T](
        self, probe: Callable[[], T | None], what: str, timeout: float
    ) -> Generator[float, None, T]:
        """A wait that gives up early when this process exits."""
        return polls(
            probe, timeout, lambda: self._failure(what, timeout), gone=lambda: not self.alive()
        )

    def _log_polls(
        self, pattern: str | re.Pattern[str], timeout: float, since: int
    ) -> Generator[float, None, re.Match[str]]:
        return self._polls_while_alive(
            lambda: self.search_log(pattern, since), f"no log line matching {pattern!r}", timeout
        )

    def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float = 30.0, since: int = 0
    ) -> re.Match[str]:
        """Block until a log line after offset ``since`` matches ``pattern``."""
        return block(self._log_polls(pattern, timeout, since))

    async def await_log(
        self, pattern: str | re.Pattern[str], timeout: float = 30.0, since: int = 0
    ) -> re.Match[str]:
        """:meth:`wait_for_log` without blocking the event loop."""
        return await wait_async(self._log_polls(pattern, timeout, since))

    def signal(self, signum: int) -> None:
        send_signal(self.proc, signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by pid, SIGKILL after ``timeout``; returns the exit code."""
        return stop_process(self.proc, timeout)


@dataclass
class ServerProc(Proc):
    ready_file: Path = field(default=Path())
    host: str = ""
    port: int = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint (add ``?user=<email>`` in dev mode)."""
        return self.url.replace("http://", "ws://", 1) + "/api/v1/events"

    def events_url(self, user: str) -> str:
        """The WebSocket endpoint for ``user`` in dev mode."""
        return f"{self.ws_url}?user={user}"

    def rss_kib(self) -> int:
        """Resident memory of the server process, from ``/proc/<pid>/status`` (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise StackError(f"no VmRSS for pid {self.pid}")

    def _ready(self) -> ServerProc | None:
        """Self once the ready file (written whole by the server) tells the address."""
        if self.port:
            return self
        try:
            info = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return None
        self.host, self.port = str(info["host"]), int(info["port"])
        return self

    def wait_ready(self, timeout: float = 30.0) -> ServerProc:
        return block(self._polls_while_alive(self._ready, "no ready file", timeout))

    async def await_ready(self, timeout: float = 30.0) -> ServerProc:
        return await wait_async(self._polls_while_alive(self._ready, "no ready file", timeout))


@dataclass
class ClientProc(Proc):
    email: str = ""
    data_dir: Path = field(default=Path())
    server_url: str = ""

    @property
    def datasites(self) -> Path:
        """``<data_dir>/datasites``: every datasite this client has a copy of."""
        return self.data_dir / "datasites"

    def datasite(self, owner: str | None = None) -> Path:
        """This client's copy of ``owner``'s datasite (default: its own)."""
        return self.datasites / (owner or self.email)

    @property
    def telemetry_path(self) -> Path:
        return self.datasite() / ".syftbox" / "hotlink_telemetry.json"

    def telemetry(self) -> dict[str, Any] | None:
        """The telemetry document (PROTOCOL.md §7), or None before the first write."""
        try:
            doc = json.loads(self.telemetry_path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    async def await_telemetry(
        self, ok: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first telemetry document for which ``ok(doc)`` holds (written at least every
        3 s by the client); raises :class:`StackError` with the last document otherwise."""

        def matching() -> dict[str, Any] | None:
            doc = self.telemetry()
            return doc if doc is not None and ok(doc) else None

        def failure() -> StackError:
            return StackError(f"{self.email}: telemetry never matched; last: {self.telemetry()}")

        return await wait_async(polls(matching, timeout, failure, interval=0.1))

    # ------------------------------------------------------------ the control endpoint

    @property
    def control_socket(self) -> Path:
        """Where the daemon serves ``/status`` (see :mod:`hotlink.client.control_client`)."""
        return control_socket_path(self.data_dir, self.email)

    def status(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """The daemon's status document, or None while nothing answers on its control socket
        (not up yet, or a daemon without one)."""
        try:
            return fetch_status(self.control_socket, timeout)
        except (ControlUnavailable, ValueError):
            return None

    def _status_or_log(
        self, ok: Callable[[dict[str, Any]], bool], patterns: Sequence[str], since: int
    ) -> Callable[[], ClientProc | None]:
        """A probe: ``ok(status)`` once the daemon answers on its control socket; until then
        (or with ``since``: the status tells the present, not what happened after a mark)
        every log line of ``patterns`` after ``since``."""

        def probe() -> ClientProc | None:
            if not since:
                doc = self.status()
                if doc is not None:
                    return self if ok(doc) else None
            if all(self.search_log(p, since) for p in patterns):
                return self
            return None

        return probe

    def _ready_polls(self, timeout: float, since: int) -> Generator[float, None, ClientProc]:
        probe = self._status_or_log(is_ready, (CONNECTED, ACLS_PUBLISHED), since)
        return self._polls_while_alive(probe, "not connected with its ACLs published", timeout)

    def wait_ready(self, timeout: float = 30.0, since: int = 0) -> ClientProc:
        """Connected to the server, and this connection's first ACL publish round done
        (``since``: a log offset; only a (re)connect logged after it counts)."""
        return block(self._ready_polls(timeout, since))

    async def await_ready(self, timeout: float = 30.0, since: int = 0) -> ClientProc:
        return await wait_async(self._ready_polls(timeout, since))

    def _tunnel_polls(self, key: str, timeout: float) -> Generator[float, None, ClientProc]:
        probe = self._status_or_log(tunnel_listening(key), (PROXY_STARTING + re.escape(key),), 0)
        return self._polls_while_alive(probe, f"no proxy listening for {key}", timeout)

    def wait_tunnel(self, key: str, timeout: float = 30.0) -> ClientProc:
        """The proxy of the tunnel with canonical ``key`` listens."""
        return block(self._tunnel_polls(key, timeout))

    async def await_tunnel(self, key: str, timeout: float = 30.0) -> ClientProc:
        return await wait_async(self._tunnel_polls(key, timeout))


# ---------------------------------------------------------------- starting processes


def child_env(
    *layers: Mapping[str, str | None] | None, inherit_syftbox: bool = True
) -> dict[str, str]:
    """This process's environment (without its ``SYFTBOX_*`` variables unless
    ``inherit_syftbox``) with ``layers`` on top, in order; a None value unsets a variable."""
    env = {k: v for k, v in os.environ.items() if inherit_syftbox or not k.startswith("SYFTBOX_")}
    for layer in layers:
        for name, value in (layer or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
    return env


def client_settings(hotlink: bool = True) -> dict[str, str | None]:
    """What a local client runs with: hotlink on (``SYFTBOX_HOTLINK`` unset when ``hotlink``
    is False) and no debounce or ACL staging delay, so nobody waits on those timers."""
    return {
        "SYFTBOX_HOTLINK": "1" if hotlink else None,
        "SYFTBOX_PRIORITY_DEBOUNCE_MS": "0",
        "SYFTBOX_ACL_STAGING_GRACE_MS": "0",
    }


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    netns: str | None = None,
    parent_death: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, stdout and stderr appended to ``log_path``.

    ``netns``: inside that network namespace (``ip netns exec`` execs, so the pid is still
    the program's own). ``parent_death``: the kernel SIGTERMs the child when the spawning
    thread ends; leave it off when spawning from a pool thread that may end first.
    """
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            full,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent if parent_death else None,
        )


def launch_server(
    ready_file: Path,
    log_path: Path,
    *,
    env: Mapping[str, str],
    host: str | None = "127.0.0.1",
    port: int | None = 0,
    args: Sequence[str] = (),
    netns: str | None = None,
    parent_death: bool = True,
    python: str = sys.executable,
) -> ServerProc:
    """Start ``hotlink server``, which writes its address to ``ready_file`` once it listens
    (wait with ``wait_ready``/``await_ready``). A None ``host``/``port`` leaves that option
    out: to ``args``, or to ``SYFTBOX_HTTP_ADDR`` in ``env``."""
    ready_file.unlink(missing_ok=True)
    argv = [python, "-m", "hotlink", "server", "--ready-file", str(ready_file)]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    argv += args
    proc = spawn(argv, env=env, log_path=log_path, netns=netns, parent_death=parent_death)
    return ServerProc("server", argv, log_path, proc, ready_file=ready_file)


def launch_client(
    email: str,
    server_url: str,
    data_dir: Path,
    *,
    env: Mapping[str, str],
    args: Sequence[str] = (),
    netns: str | None = None,
    parent_death: bool = True,
    python: str = sys.executable,
) -> ClientProc:
    """Start ``hotlink client`` for ``email`` with its tree in ``data_dir`` (its own datasite
    folder is created; log in ``<data_dir>/client.log``); wait with ``wait_ready``."""
    (data_dir / "datasites" / email).mkdir(parents=True, exist_ok=True)
    argv = [
        python, "-m", "hotlink", "client",
        "--server", server_url, "--email", email, "--data-dir", str(data_dir), *args,
    ]  # fmt: skip
    log_path = data_dir / "client.log"
    proc = spawn(argv, env=env, log_path=log_path, netns=netns, parent_death=parent_death)
    return ClientProc(
        email, argv, log_path, proc, email=email, data_dir=data_dir, server_url=server_url
    )
