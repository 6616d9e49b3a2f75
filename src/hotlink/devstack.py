"""A local stack of real hotlink processes: one relay server and clients, on loopback.

The demo, the benchmarks and the test harnesses (``tests/support``, ``tests/nat``) all need
the same thing: start a relay server and a few client daemons as real processes, write the
markers and ACLs of a tunnel into their trees, wait until everything is ready, read the
clients' telemetry, and stop every process again, by pid, whatever happens::

    with DevStack() as stack:                           # temp dir, removed on exit
        server = stack.start_server()                   # --port 0 --ready-file
        alice = stack.start_client("alice@example.com")  # waits: connected + ACLs published
        bob = stack.start_client("bob@example.com")
        channel = stack.channel(alice.email, bob.email)  # ports picked, 0_to_1
        stack.write_channel(channel)                    # markers + ACLs, both trees
        stack.wait_channel(channel)                     # both proxies listen, ACL published
        ... dial channel.port(alice.email) / channel.port(bob.email) ...

Every wait has an ``a``-prefixed coroutine twin (``astart_client``, ``await_channel``) that
polls without blocking the event loop; both run the same poll (see :func:`_polls`).

The pieces also work without a :class:`DevStack`, for callers that own the lifetimes
themselves (the test harnesses): :func:`launch_server` and :func:`launch_client` start one
process, :func:`child_env` builds its environment, :func:`write_acl`,
:func:`write_tcp_channel` and :func:`write_channel_tree` write trees, :func:`stop_process`
stops any child by pid, and :func:`open_connection_in_netns` dials a child started in a
network namespace.

Children start in their own session (a Ctrl-C in the terminal reaches only us, and we stop
them in order: clients first, then the server) and, unless the stack is ``detached``, with
the kernel's parent-death signal, so even a ``kill -9`` of the launcher takes them along.
That signal fires when the *thread* that spawned a child ends: spawn from a thread that
lives as long as the children (the main thread, or the event loop's thread).
``stop()`` runs on context exit, at interpreter exit and from :func:`stop_on_signals`.

Children of a stack get a clean environment: our ``SYFTBOX_*`` variables only (inherited
ones are dropped unless ``inherit_syftbox_env``), and always ``SYFTBOX_HOTLINK_ICE_SERVERS``
(``none`` by default: host candidates only, never a public STUN server).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from .protocol.markers import TCP_MARKER, TcpMarker, proxy_channel

# Log lines of the client daemon we wait on (see hotlink.client.daemon and friends).
CONNECTED = r"connected to \S+ as "
ACLS_PUBLISHED = r"acls published: "
PROXY_STARTING = r"tcp proxy: starting \S+ channel="
# The WebRTC transport's line when a data channel opened (the reference's wording, §9.4).
CHANNEL_OPEN = r"data channel open"

STATE_FILE = "devstack.json"
DEFAULT_FLOW = "shared/flows/hotlink-demo"
_PR_SET_PDEATHSIG = 1
_LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) ", re.MULTILINE)
_POLL_S = 0.05


class StackError(RuntimeError):
    """A process exited early or a log line never appeared; the message has the log's tail."""


# ---------------------------------------------------------------- waiting

# A wait is written once, as a generator that looks, yields how long to sleep before the next
# look, and returns what it waited for; :func:`_block` runs it in a thread that may sleep,
# :func:`_await` inside an event loop.


def _polls[T](
    probe: Callable[[], T | None],
    timeout: float,
    failure: Callable[[], Exception],
    *,
    gone: Callable[[], bool] = lambda: False,
    interval: float = _POLL_S,
) -> Generator[float, None, T]:
    """Until ``probe()`` returns something: raise ``failure()`` after ``timeout`` seconds or
    as soon as ``gone()`` (the process we wait on has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline or gone():
            raise failure()
        yield interval


def _block[T](polls: Generator[float, None, T]) -> T:
    while True:
        try:
            delay = next(polls)
        except StopIteration as done:
            return done.value
        time.sleep(delay)


async def _await[T](polls: Generator[float, None, T]) -> T:
    while True:
        try:
            delay = next(polls)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(delay)


# ---------------------------------------------------------------- processes


def _set_parent_death_signal() -> None:
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
        """Wall-clock time (epoch s) of the first log line after ``since`` matching ``pattern``.

        Client log lines start with ``HH:MM:SS.mmm``; the date is taken as today's (or
        yesterday's, for a line just before midnight).
        """
        text = self.log_text()
        match = (re.compile(pattern) if isinstance(pattern, str) else pattern).search(text, since)
        if match is None:
            return None
        start = text.rfind("\n", 0, match.start()) + 1
        stamp = _LOG_TIME.match(text, start)
        if stamp is None:
            return None
        h, m, s, ms = (int(g) for g in stamp.groups())
        now = datetime.now()
        when = now.replace(hour=h, minute=m, second=s, microsecond=ms * 1000).timestamp()
        if when > now.timestamp() + 60:
            when -= 86400
        return when

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
        return _polls(
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
        return _block(self._log_polls(pattern, timeout, since))

    async def await_log(
        self, pattern: str | re.Pattern[str], timeout: float = 30.0, since: int = 0
    ) -> re.Match[str]:
        """:meth:`wait_for_log` without blocking the event loop."""
        return await _await(self._log_polls(pattern, timeout, since))

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
        return _block(self._polls_while_alive(self._ready, "no ready file", timeout))

    async def await_ready(self, timeout: float = 30.0) -> ServerProc:
        return await _await(self._polls_while_alive(self._ready, "no ready file", timeout))


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

        return await _await(_polls(matching, timeout, failure, interval=0.1))

    def _ready_polls(self, timeout: float, since: int) -> Generator[float, None, ClientProc]:
        yield from self._log_polls(CONNECTED, timeout, since)
        yield from self._log_polls(ACLS_PUBLISHED, timeout, since)
        return self

    def wait_ready(self, timeout: float = 30.0, since: int = 0) -> ClientProc:
        """Connected to the server, and the first ACL publish round done."""
        return _block(self._ready_polls(timeout, since))

    async def await_ready(self, timeout: float = 30.0, since: int = 0) -> ClientProc:
        return await _await(self._ready_polls(timeout, since))


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
            preexec_fn=_set_parent_death_signal if parent_death else None,
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


# ---------------------------------------------------------------- network namespaces


def socket_in_netns(ns: str) -> socket.socket:
    """A TCP socket created inside network namespace ``ns`` (``/run/netns/<ns>``).

    setns() changes only the calling thread's namespace, so a short-lived thread enters
    ``ns`` and makes the socket; the socket keeps that namespace wherever it is used.
    """
    box: dict[str, socket.socket | BaseException] = {}

    def work() -> None:
        try:
            with open(f"/run/netns/{ns}", "rb") as nsfile:
                os.setns(nsfile.fileno(), os.CLONE_NEWNET)
            box["sock"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"setns-{ns}", daemon=True)
    thread.start()
    thread.join()
    result = box.get("sock", box.get("error"))
    if not isinstance(result, socket.socket):
        raise result if isinstance(result, BaseException) else OSError(f"no socket in {ns}")
    return result


async def open_connection_in_netns(
    ns: str, host: str, port: int, *, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` from inside network namespace ``ns``: how an app there
    dials a client started with ``netns=ns`` (its proxy listens on that namespace's
    loopback)."""
    sock = socket_in_netns(ns)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=limit)


# ---------------------------------------------------------------- trees: ACLs and markers


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (bound to 0, then released, like the reference test)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _yaml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def acl_text(
    rules: Sequence[tuple[str, Sequence[str], Sequence[str]]],
    *,
    admin: Sequence[str] = (),
    terminal: bool = False,
) -> str:
    """``syft.pub.yaml`` text; ``rules`` are (pattern, read, write)."""
    lines = [f"terminal: {'true' if terminal else 'false'}", "rules:"]
    for pattern, read, write in rules:
        lines += [
            f"  - pattern: '{pattern}'",
            "    access:",
            f"      admin: {_yaml_list(admin)}",
            f"      write: {_yaml_list(write)}",
            f"      read: {_yaml_list(read)}",
        ]
    return "\n".join(lines) + "\n"


def write_acl(
    folder: Path,
    *,
    read: Sequence[str] = (),
    write: Sequence[str] = (),
    pattern: str = "**",
    terminal: bool = False,
) -> Path:
    """Write ``folder/syft.pub.yaml`` with one rule (``pattern``: read/write lists)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "syft.pub.yaml"
    path.write_text(acl_text([(pattern, read, write)], terminal=terminal))
    return path


def write_default_acls(datasite: Path) -> None:
    """The reference devstack's defaults: a private root and a public ``public/`` folder."""
    write_acl(datasite)
    write_acl(datasite / "public", read=["*"], write=["*"])


def tcp_marker_text(from_email: str, to_email: str, ports: Mapping[str, int]) -> str:
    """A ``stream.tcp`` marker (PROTOCOL.md §9.1): per-party proxy ports, ``port`` unused."""
    return json.dumps({"from": from_email, "to": to_email, "port": 0, "ports": dict(ports)})


def write_tcp_marker(folder: Path, text: str) -> Path:
    """``folder/stream.tcp``, atomically: the proxy's 250 ms scan must never read half a
    marker."""
    marker = folder / TCP_MARKER
    tmp = marker.with_name(f".{TCP_MARKER}.tmp")
    tmp.write_text(text)
    os.replace(tmp, marker)
    return marker


def write_channel_acls(
    datasites: Path,
    owner: str,
    channel_dir: str,
    parties: Sequence[str],
    acl_roots: Sequence[str] = (),
) -> Path:
    """The ACL granting ``parties`` read and write, in ``<datasites>/<owner>/<channel_dir>``
    and in each datasite-relative folder of ``acl_roots``; returns the channel folder."""
    who = list(parties)
    folder = datasites / owner / channel_dir
    write_acl(folder, read=who, write=who)
    for root in acl_roots:
        write_acl(datasites / owner / root, read=who, write=who)
    return folder


def write_tcp_channel(
    datasites: Path,
    owner: str,
    channel_dir: str,
    *,
    from_email: str,
    to_email: str,
    ports: Mapping[str, int],
    parties: Sequence[str] | None = None,
    acl_roots: Sequence[str] = (),
) -> Path:
    """A tunnel as in PROTOCOL.md §9.1, in one client's copy of ``owner``'s datasite.

    Writes ``syft.pub.yaml`` (read/write for ``parties``, default from and to) into
    ``<datasites>/<owner>/<channel_dir>`` and each folder of ``acl_roots`` (e.g.
    ``shared/flows/tcp-test``), then ``stream.tcp`` there. Returns the folder.
    """
    who = parties if parties is not None else (from_email, to_email)
    folder = write_channel_acls(datasites, owner, channel_dir, who, acl_roots)
    write_tcp_marker(folder, tcp_marker_text(from_email, to_email, ports))
    return folder


@dataclass(frozen=True)
class Channel:
    """A tunnel between party ``from_id`` and party ``to_id`` (PROTOCOL.md §9.1 layout).

    The channel folder is ``<flow>/<run>/_mpc/<from_id>_to_<to_id>`` under a datasite; the
    ACL granting both parties read and write sits in it and at ``<flow>``.
    """

    from_email: str
    to_email: str
    from_id: int
    to_id: int
    ports: Mapping[str, int]
    flow: str = DEFAULT_FLOW
    run: str = "run1"

    @property
    def channel_dir(self) -> str:
        return f"{self.flow}/{self.run}/_mpc/{self.from_id}_to_{self.to_id}"

    @property
    def parties(self) -> tuple[str, str]:
        return (self.from_email, self.to_email)

    def port(self, email: str) -> int:
        """The local proxy port of ``email``'s client: that party's app dials it."""
        return int(self.ports[email])

    def marker(self) -> TcpMarker:
        return TcpMarker(self.from_email, self.to_email, 0, dict(self.ports))

    def marker_text(self) -> str:
        return tcp_marker_text(self.from_email, self.to_email, self.ports)

    @property
    def canonical_key(self) -> str:
        """The path both directions are sent on (the smaller party id's datasite)."""
        rel = f"{self.from_email}/{self.channel_dir}/{TCP_MARKER}"
        return proxy_channel(rel, self.marker(), self.from_email).canonical_key

    @property
    def owner(self) -> str:
        """Whose datasite holds the canonical key, so whose ACL the server checks."""
        return self.canonical_key.split("/", 1)[0]

    def acl_rel_path(self) -> str:
        return f"{self.owner}/{self.channel_dir}/syft.pub.yaml"


def write_channel_tree(datasites: Path, channel: Channel) -> None:
    """Write the channel into one client's tree: under BOTH parties' datasite folders, the
    ACLs (channel folder and flow root) of both first and the ``stream.tcp`` markers last, so
    that no proxy starts before every ACL exists."""
    for owner in channel.parties:
        write_channel_acls(datasites, owner, channel.channel_dir, channel.parties, [channel.flow])
    for owner in channel.parties:
        write_tcp_marker(datasites / owner / channel.channel_dir, channel.marker_text())


# ---------------------------------------------------------------- the stack

_live: set[DevStack] = set()
_live_lock = threading.Lock()
_atexit_installed = False


def _stop_all_live() -> None:
    with _live_lock:
        stacks = list(_live)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop()


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit in the main thread, so ``finally`` blocks and
    context managers (and so :meth:`DevStack.stop`) run; Ctrl-C already raises
    KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit)


class DevStack:
    """A relay server and clients as child processes, in ``root`` (default: a temp dir).

    ``env`` goes to every child; ``ice_servers`` becomes ``SYFTBOX_HOTLINK_ICE_SERVERS`` of
    every child. ``detached`` children outlive this process (``--keep``): no parent-death
    signal, no stop at exit, and the temp dir stays. ``keep_root`` keeps the dir only.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        env: Mapping[str, str | None] | None = None,
        ice_servers: str = "none",
        detached: bool = False,
        keep_root: bool = False,
        inherit_syftbox_env: bool = False,
        python: str = sys.executable,
    ) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="hotlink-devstack-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.ice_servers = ice_servers
        self.detached = detached
        self.keep_root = keep_root or detached
        self.inherit_syftbox_env = inherit_syftbox_env
        self.python = python
        self.server: ServerProc | None = None
        self.clients: dict[str, ClientProc] = {}
        self.extra: list[Proc] = []
        self._stopped = False
        self._register()

    def _register(self) -> None:
        global _atexit_installed
        if self.detached:
            return
        with _live_lock:
            _live.add(self)
            if not _atexit_installed:
                atexit.register(_stop_all_live)
                _atexit_installed = True

    # ------------------------------------------------------------ context

    def __enter__(self) -> DevStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.detached:
            self.stop()

    # ------------------------------------------------------------ spawning

    def base_env(self, *layers: Mapping[str, str | None] | None) -> dict[str, str]:
        """The environment of this stack's children, with ``layers`` on top."""
        return child_env(
            {"SYFTBOX_HOTLINK_ICE_SERVERS": self.ice_servers, "PYTHONUNBUFFERED": "1"},
            self.env,
            *layers,
            inherit_syftbox=self.inherit_syftbox_env,
        )

    def spawn_server(
        self,
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
        netns: str | None = None,
    ) -> ServerProc:
        """Start the relay (on a free port unless ``port`` is given, e.g. to restart it where
        the clients expect it); wait with ``wait_ready``."""
        if self.server is not None and self.server.alive():
            raise StackError("this stack already runs a server (stop it first to restart)")
        full_env = self.base_env(env)
        full_env.pop("SYFTBOX_AUTH_ENABLED", None)
        self.server = launch_server(
            self.root / "server.ready.json",
            self.root / "server.log",
            env=full_env,
            host=host,
            port=port,
            args=args,
            netns=netns,
            parent_death=not self.detached,
            python=self.python,
        )
        self._save_state()
        return self.server

    def start_server(self, host: str = "127.0.0.1", timeout: float = 30.0, **kw: Any) -> ServerProc:
        return self.spawn_server(host, **kw).wait_ready(timeout)

    async def astart_server(
        self, host: str = "127.0.0.1", timeout: float = 30.0, **kw: Any
    ) -> ServerProc:
        return await self.spawn_server(host, **kw).await_ready(timeout)

    def client_dir(self, email: str) -> Path:
        return self.root / email.split("@", 1)[0]

    def spawn_client(
        self,
        email: str,
        *,
        server_url: str | None = None,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
        netns: str | None = None,
        data_dir: Path | None = None,
        default_acls: bool = True,
        hotlink: bool = True,
    ) -> ClientProc:
        """Start a client daemon, with SYFTBOX_HOTLINK=1 unless ``hotlink`` is False (wait
        with ``wait_ready``). Its data dir defaults to ``<root>/<name part of the email>``."""
        if server_url is None:
            if self.server is None or not self.server.port:
                raise StackError("start the server first (or pass server_url)")
            server_url = self.server.url
        data_dir = data_dir or self.client_dir(email)
        own = data_dir / "datasites" / email
        if default_acls and not (own / "syft.pub.yaml").exists():
            write_default_acls(own)
        client = launch_client(
            email,
            server_url,
            data_dir,
            env=self.base_env(client_settings(hotlink), env),
            args=args,
            netns=netns,
            parent_death=not self.detached,
            python=self.python,
        )
        old = self.clients.get(email)
        if old is not None and old.alive():
            old.stop()
        self.clients[email] = client
        self._save_state()
        return client

    def start_client(self, email: str, timeout: float = 30.0, **kw: Any) -> ClientProc:
        return self.spawn_client(email, **kw).wait_ready(timeout)

    async def astart_client(self, email: str, timeout: float = 30.0, **kw: Any) -> ClientProc:
        return await self.spawn_client(email, **kw).await_ready(timeout)

    # ------------------------------------------------------------ tunnels

    def channel(
        self,
        from_email: str,
        to_email: str,
        *,
        from_id: int = 0,
        to_id: int = 1,
        ports: Mapping[str, int] | None = None,
        flow: str = DEFAULT_FLOW,
        run: str = "run1",
    ) -> Channel:
        """A channel description with free loopback ports for both parties (not yet written)."""
        if ports is None:
            ports = {from_email: free_port(), to_email: free_port()}
        return Channel(from_email, to_email, from_id, to_id, dict(ports), flow, run)

    def write_channel(self, channel: Channel, trees: Iterable[str] | None = None) -> None:
        """Markers + ACLs (PROTOCOL.md §9.1) into the trees of the channel's parties (or of
        the clients named in ``trees``)."""
        for email in trees if trees is not None else channel.parties:
            client = self.clients.get(email)
            data_dir = client.data_dir if client else self.client_dir(email)
            write_channel_tree(data_dir / "datasites", channel)

    def _channel_waits(self, channel: Channel) -> list[tuple[ClientProc, str]]:
        waits = []
        key = re.escape(channel.canonical_key)
        for email in channel.parties:
            client = self.clients.get(email)
            if client is not None:
                waits.append((client, PROXY_STARTING + key))
        owner = self.clients.get(channel.owner)
        if owner is not None:
            waits.append((owner, r"acl published " + re.escape(channel.acl_rel_path())))
        return waits

    def wait_channel(self, channel: Channel, timeout: float = 30.0) -> None:
        """Both parties' proxies listen and the owner published the channel's ACL (looks at
        whole logs: a channel written before the clients started counts too)."""
        for client, pattern in self._channel_waits(channel):
            client.wait_for_log(pattern, timeout)

    async def await_channel(self, channel: Channel, timeout: float = 30.0) -> None:
        for client, pattern in self._channel_waits(channel):
            await client.await_log(pattern, timeout)

    # ------------------------------------------------------------ state and shutdown

    def processes(self) -> list[Proc]:
        procs: list[Proc] = [*self.clients.values(), *self.extra]
        if self.server is not None:
            procs.append(self.server)
        return procs

    def state(self) -> dict[str, Any]:
        """What is running where (written to ``<root>/devstack.json``)."""
        return {
            "root": str(self.root),
            "server": (
                {"pid": self.server.pid, "url": self.server.url, "log": str(self.server.log_path)}
                if self.server is not None
                else None
            ),
            "clients": {
                email: {"pid": c.pid, "data_dir": str(c.data_dir), "log": str(c.log_path)}
                for email, c in self.clients.items()
            },
        }

    def _save_state(self) -> None:
        with contextlib.suppress(OSError):
            (self.root / STATE_FILE).write_text(json.dumps(self.state(), indent=2))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process (clients first, then the server) by pid; remove the temp dir
        unless it is kept. Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        try:
            procs = self.processes()
            # SIGTERM to all at once, then wait: shutdown takes as long as the slowest one.
            for p in procs[:-1] if self.server is not None else procs:
                p.signal(signal.SIGTERM)
            for p in procs:
                p.stop(timeout)
        finally:
            with _live_lock:
                _live.discard(self)
            if self._own_root and not self.keep_root:
                shutil.rmtree(self.root, ignore_errors=True)
