"""Start the real client daemon (``python -m hotlink client``) as a subprocess.

    with running_client(srv.url, "alice@example.com", tmp_path / "alice") as alice:
        alice.wait_for_log(r"tcp proxy: starting")        # sync
        await alice.await_log(r"acls published", since=mark)   # async tests
        alice.telemetry()                                 # the parsed telemetry JSON

``start_client`` returns once the client logged ``connected to <server>`` and finished its
first ACL publish round (``acls published: ...``), so the server already has every ACL file
that was in the datasite when the client started. Log lines worth waiting on:

* ``hotlink enabled: ...``                    (start-up, with SYFTBOX_HOTLINK=1)
* ``connected to <server> as <email>``        (each (re)connect)
* ``acls published: N of M files``            (after each connect's first publish round)
* ``acl published <datasite-relative path>``  (each ACL file the server acknowledged)
* ``tcp proxy: starting <ip>:<port> channel=<canonical key> peer=<email>``
* ``hotlink session <sid8>… in|out <from>→<to> open|accepted|closed(<reason>)``
* ``ipc: listening for <folder> at <address>``

The environment is the test's own plus ``SYFTBOX_HOTLINK=1``, ``SYFTBOX_HOTLINK_ICE_SERVERS=
none`` (never a public STUN server), debounce/staging knobs at 0, and ``env`` on top; pass
``hotlink=False`` to leave SYFTBOX_HOTLINK unset. The log (stdout + stderr) goes to
``<data_dir>/client.log``. ``stop()`` sends SIGTERM to the pid and SIGKILL after a timeout.

Helpers for test trees: :func:`write_acl`, :func:`acl_text`, :func:`write_default_acls`,
:func:`write_tcp_channel`, :func:`write_reference_tunnel` (the §9.1 layout), :func:`free_port`.

The reference tunnel in one call (markers + ACLs in both trees, both clients started, both
proxies listening)::

    tunnel = start_tunnel(srv.url, tmp_path, env={"SYFTBOX_HOTLINK_DEBUG": "1"})
    bob_r, bob_w = await dial(tunnel.bob_port)        # retries every 250 ms, like §9.1
    alice_r, alice_w = await dial(tunnel.alice_port)
    alice_w.write(reference_chunk(0)); check_reference_chunks(await read_exactly(bob_r, 4096), 1)
    doc = await await_telemetry(tunnel.alice, lambda d: d["tx_bytes"] > 0)
    tunnel.stop()

A newer app connection to a proxy port supersedes (closes) older ones, and an app that
closes its socket ends its stream with a clean EOF at the peer's app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONNECTED = r"connected to \S+ as "
ACLS_PUBLISHED = r"acls published: "


class ClientStartError(RuntimeError):
    """The client exited or a log line never appeared; the message has the log's tail."""


@dataclass
class ClientProcess:
    email: str
    data_dir: Path
    server_url: str
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

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
        """The telemetry document, or None before the first write."""
        try:
            return json.loads(self.telemetry_path.read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_mark(self) -> int:
        """The log's current length: pass as ``since`` to wait only for newer lines."""
        return len(self.log_text())

    def _search(self, pattern: str | re.Pattern[str], since: int) -> re.Match[str] | None:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return regex.search(self.log_text(), since)

    def _timeout_error(self, pattern: str | re.Pattern[str], timeout: float) -> ClientStartError:
        state = "running" if self.alive() else f"exited with {self.proc.returncode}"
        tail = self.log_text()[-4000:]
        return ClientStartError(
            f"{self.email}: no log line matching {pattern!r} within {timeout}s "
            f"(client {state}); log tail:\n{tail}"
        )

    def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float = 30.0, since: int = 0
    ) -> re.Match[str]:
        """Block until a log line (after offset ``since``) matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            match = self._search(pattern, since)
            if match is not None:
                return match
            if time.monotonic() > deadline or not self.alive():
                raise self._timeout_error(pattern, timeout)
            time.sleep(0.05)

    async def await_log(
        self, pattern: str | re.Pattern[str], timeout: float = 30.0, since: int = 0
    ) -> re.Match[str]:
        """:meth:`wait_for_log` for async tests (does not block the event loop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            match = self._search(pattern, since)
            if match is not None:
                return match
            if loop.time() > deadline or not self.alive():
                raise self._timeout_error(pattern, timeout)
            await asyncio.sleep(0.05)

    def count_log(self, pattern: str, since: int = 0) -> int:
        return len(re.findall(pattern, self.log_text()[since:]))

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by pid, SIGKILL after ``timeout``; returns the exit code."""
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode


def client_env(env: Mapping[str, str] | None = None, *, hotlink: bool = True) -> dict[str, str]:
    full = dict(os.environ)
    full["SYFTBOX_HOTLINK_ICE_SERVERS"] = "none"
    full["SYFTBOX_PRIORITY_DEBOUNCE_MS"] = "0"
    full["SYFTBOX_ACL_STAGING_GRACE_MS"] = "0"
    if hotlink:
        full["SYFTBOX_HOTLINK"] = "1"
    else:
        full.pop("SYFTBOX_HOTLINK", None)
    full.update(env or {})
    return full


def spawn_client(
    server_url: str,
    email: str,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    hotlink: bool = True,
) -> ClientProcess:
    """Start the process without waiting for anything."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "datasites" / email).mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "client.log"
    cmd = [
        sys.executable,
        "-m",
        "hotlink",
        "client",
        "--server",
        server_url,
        "--email",
        email,
        "--data-dir",
        str(data_dir),
        *args,
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=client_env(env, hotlink=hotlink),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return ClientProcess(email, data_dir, server_url, log_path, proc)


def start_client(
    server_url: str,
    email: str,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    hotlink: bool = True,
    timeout: float = 30.0,
) -> ClientProcess:
    """Start a client and wait until it is connected and its ACLs are published."""
    client = spawn_client(server_url, email, data_dir, env=env, args=args, hotlink=hotlink)
    try:
        client.wait_for_log(CONNECTED, timeout)
        client.wait_for_log(ACLS_PUBLISHED, timeout)
    except BaseException:
        client.stop()
        raise
    return client


@contextlib.contextmanager
def running_client(
    server_url: str, email: str, data_dir: Path, **kwargs: Any
) -> Iterator[ClientProcess]:
    client = start_client(server_url, email, data_dir, **kwargs)
    try:
        yield client
    finally:
        client.stop()


@contextlib.asynccontextmanager
async def running_client_async(
    server_url: str, email: str, data_dir: Path, **kwargs: Any
) -> AsyncIterator[ClientProcess]:
    client = await asyncio.to_thread(start_client, server_url, email, data_dir, **kwargs)
    try:
        yield client
    finally:
        await asyncio.to_thread(client.stop)


# ---------------------------------------------------------------- test trees


def free_port() -> int:
    """A currently free loopback port (bound to 0, then released, like the reference test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
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
    return json.dumps({"from": from_email, "to": to_email, "port": 0, "ports": dict(ports)})


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

    Writes ``stream.tcp`` and ``syft.pub.yaml`` (read/write for ``parties``, default from and
    to) into ``<datasites>/<owner>/<channel_dir>``, plus the same ACL in each folder of
    ``acl_roots`` (datasite-relative, e.g. ``shared/flows/tcp-test``). Returns the folder.
    """
    who = list(parties) if parties is not None else [from_email, to_email]
    folder = datasites / owner / channel_dir
    folder.mkdir(parents=True, exist_ok=True)
    write_acl(folder, read=who, write=who)
    for root in acl_roots:
        write_acl(datasites / owner / root, read=who, write=who)
    (folder / "stream.tcp").write_text(tcp_marker_text(from_email, to_email, ports))
    return folder


# ---------------------------------------------------------------- the reference tunnel test

ALICE = "alice@example.com"
BOB = "bob@example.com"
TUNNEL_CHANNEL = "shared/flows/tcp-test/run1/_mpc/0_to_1"
TUNNEL_ACL_ROOT = "shared/flows/tcp-test"
REFERENCE_CHUNK = 4096


def write_reference_tunnel(
    data_dirs: Mapping[str, Path],
    ports: Mapping[str, int],
    *,
    from_email: str = ALICE,
    to_email: str = BOB,
    channel: str = TUNNEL_CHANNEL,
    acl_root: str = TUNNEL_ACL_ROOT,
) -> None:
    """PROTOCOL.md §9.1: for each client (``email -> data dir``), default ACLs for its own
    datasite, and the channel folder (marker + ACLs) under both parties' datasite folders."""
    for email, data_dir in data_dirs.items():
        datasites = data_dir / "datasites"
        write_default_acls(datasites / email)
        for owner in (from_email, to_email):
            write_tcp_channel(
                datasites,
                owner,
                channel,
                from_email=from_email,
                to_email=to_email,
                ports=ports,
                acl_roots=[acl_root],
            )


def reference_chunk(i: int) -> bytes:
    """Chunk ``i`` of the reference test: ``i`` as big-endian u32, then ``i & 0xFF`` fill."""
    return i.to_bytes(4, "big") + bytes([i & 0xFF]) * (REFERENCE_CHUNK - 4)


def check_reference_chunks(data: bytes, count: int) -> None:
    """Assert ``data`` is exactly chunks 0..count-1, in order, byte for byte."""
    size = REFERENCE_CHUNK
    assert len(data) == count * size, f"expected {count * size} bytes, got {len(data)}"
    for pos in range(count):
        block = data[pos * size : (pos + 1) * size]
        index = int.from_bytes(block[:4], "big")
        assert index == pos, f"expected index {pos}, got {index} (out of order)"
        assert block[4:] == bytes([pos & 0xFF]) * (size - 4), f"chunk {pos} fill is corrupt"


async def dial(
    port: int, timeout: float = 30.0, host: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a proxy port, retrying every 250 ms with a 1 s dial timeout (§9.1)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            async with asyncio.timeout(1.0):
                return await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.25)


async def read_exactly(reader: asyncio.StreamReader, n: int, timeout: float = 60.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.readexactly(n)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 60.0) -> bytes:
    """Everything until the peer's EOF (raises TimeoutError as a failure guard)."""
    async with asyncio.timeout(timeout):
        return await reader.read()


async def await_telemetry(
    client: ClientProcess, ok: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    """The first telemetry document for which ``ok(doc)`` holds (written at least every 3 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    doc = client.telemetry()
    while doc is None or not ok(doc):
        if loop.time() > deadline:
            raise AssertionError(f"{client.email} telemetry never matched; last: {doc}")
        await asyncio.sleep(0.2)
        doc = client.telemetry()
    return doc


@dataclass
class Tunnel:
    """Two clients joined by the reference tunnel; apps dial ``alice_port`` / ``bob_port``."""

    alice: ClientProcess
    bob: ClientProcess
    alice_port: int
    bob_port: int

    def stop(self) -> None:
        for client in (self.alice, self.bob):
            client.stop()


def start_tunnel(
    server_url: str,
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    alice_env: Mapping[str, str] | None = None,
    bob_env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Tunnel:
    """Write the §9.1 trees under ``tmp_path/{alice,bob}``, start both clients, and wait
    until both proxies listen. ``env`` goes to both clients, ``alice_env``/``bob_env`` on top."""
    ports = {ALICE: free_port(), BOB: free_port()}
    dirs = {ALICE: tmp_path / "alice", BOB: tmp_path / "bob"}
    write_reference_tunnel(dirs, ports)
    alice = start_client(
        server_url, ALICE, dirs[ALICE], env={**(env or {}), **(alice_env or {})}, timeout=timeout
    )
    try:
        bob = start_client(
            server_url, BOB, dirs[BOB], env={**(env or {}), **(bob_env or {})}, timeout=timeout
        )
    except BaseException:
        alice.stop()
        raise
    tunnel = Tunnel(alice, bob, ports[ALICE], ports[BOB])
    try:
        for client in (alice, bob):
            client.wait_for_log(r"tcp proxy: starting .*channel=" + re.escape(ALICE), timeout)
    except BaseException:
        tunnel.stop()
        raise
    return tunnel
