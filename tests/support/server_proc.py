"""Start the real relay (``python -m hotlink server``) as a subprocess on a free loopback port.

    async with running_server(tmp_path) as srv:          # async tests
        srv.url, srv.ws_url, srv.port, srv.pid
    with running_server_sync(tmp_path, env={...}) as srv:  # sync tests / fixtures
        ...

The server binds port 0 and reports the port it got through ``--ready-file``, so there is no
race for a "free" port (``use_env_addr=True`` leaves the address to ``SYFTBOX_HTTP_ADDR`` in
``env``). It inherits the test's environment (``SYFTBOX_HOTLINK_ICE_SERVERS``
is ``none`` unless the caller says otherwise) plus ``env``; ``args`` go on its command line.
Its log goes to ``<tmp_path>/server-<n>.log``. Stopping sends SIGTERM to its pid and, if it
has not exited after ``stop_timeout`` seconds, SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_counter = itertools.count(1)


class ServerStartError(RuntimeError):
    """The server exited or never became ready; the message carries the end of its log."""


@dataclass
class ServerProcess:
    host: str
    port: int
    pid: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:<port>/api/v1/events`` (add ``?user=`` yourself or use ws_client)."""
        return f"ws://{self.host}:{self.port}/api/v1/events"

    def events_url(self, user: str) -> str:
        return f"{self.ws_url}?user={user}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        """Resident memory of the server process, from ``/proc/<pid>/status`` (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def alive(self) -> bool:
        return self.proc.poll() is None


def _command(ready_file: Path, args: Sequence[str], use_env_addr: bool) -> list[str]:
    cmd = [sys.executable, "-m", "hotlink", "server", "--ready-file", str(ready_file)]
    if not use_env_addr and "--host" not in args:
        cmd += ["--host", "127.0.0.1"]
    if not use_env_addr and "--port" not in args:
        cmd += ["--port", "0"]
    return cmd + list(args)


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    full = dict(os.environ)
    full.setdefault("SYFTBOX_HOTLINK_ICE_SERVERS", "none")
    # A leftover token-mode setting in the caller's shell must not change the server's mode.
    full.pop("SYFTBOX_AUTH_ENABLED", None)
    full.update(env or {})
    return full


def _spawn(
    tmp_path: Path, env: Mapping[str, str] | None, args: Sequence[str], use_env_addr: bool
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Spawn the server; returns (process, ready file, log file)."""
    n = next(_counter)
    ready_file = tmp_path / f"server-{n}.ready.json"
    log_path = tmp_path / f"server-{n}.log"
    ready_file.unlink(missing_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _command(ready_file, args, use_env_addr),
            env=_environment(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc, ready_file, log_path


def _poll_ready(
    proc: subprocess.Popen[bytes], ready_file: Path, log_path: Path
) -> ServerProcess | None:
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise ServerStartError(f"server exited with code {proc.returncode}:\n{tail}")
    if not ready_file.exists():
        return None
    info = json.loads(ready_file.read_text())
    return ServerProcess(info["host"], int(info["port"]), proc.pid, log_path, proc)


def stop_server(srv: ServerProcess | subprocess.Popen[bytes], stop_timeout: float = 10.0) -> int:
    """SIGTERM by pid, then SIGKILL after ``stop_timeout``; returns the exit code."""
    proc = srv.proc if isinstance(srv, ServerProcess) else srv
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running_server_sync(
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = 30.0,
    use_env_addr: bool = False,
) -> Iterator[ServerProcess]:
    proc, ready_file, log_path = _spawn(tmp_path, env, args, use_env_addr)
    try:
        deadline = time.monotonic() + ready_timeout
        srv = _poll_ready(proc, ready_file, log_path)
        while srv is None:
            if time.monotonic() > deadline:
                raise ServerStartError(f"server not ready after {ready_timeout}s")
            time.sleep(0.05)
            srv = _poll_ready(proc, ready_file, log_path)
        yield srv
    finally:
        stop_server(proc)


@contextlib.asynccontextmanager
async def running_server(
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = 30.0,
    use_env_addr: bool = False,
) -> AsyncIterator[ServerProcess]:
    proc, ready_file, log_path = _spawn(tmp_path, env, args, use_env_addr)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        srv = _poll_ready(proc, ready_file, log_path)
        while srv is None:
            if loop.time() > deadline:
                raise ServerStartError(f"server not ready after {ready_timeout}s")
            await asyncio.sleep(0.05)
            srv = _poll_ready(proc, ready_file, log_path)
        yield srv
    finally:
        await asyncio.to_thread(stop_server, proc)
