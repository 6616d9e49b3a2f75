"""A real ``redis-server`` on loopback for the cluster tests (relay replicas share state in it).

    from support.redis_proc import running_redis, redis_server  # noqa: F401 (the fixture)

    with running_redis(tmp_path) as rds:      # free port on 127.0.0.1, ready (PING answered)
        rds.url                               # "redis://127.0.0.1:<port>/0"
        rds.port, rds.pid
        c = rds.client()                      # sync redis.Redis; closed on exit (or by you)
        rds.kill()                            # SIGKILL by pid, reaped: Redis vanishes mid-flight
        rds.restart()                         # the same port again, ready; EMPTY (see below)

    def test_x(redis_server: RedisProc) -> None: ...   # the same, one per test

No persistence (``--save ""``, ``--appendonly no``): a restarted server starts empty, as a
Redis that lost its memory would; tests of a "Redis blip" see exactly that. Its files (the
log, nothing else) live in ``<tmp_path>/redis-<n>/``. ``redis-server`` missing: the test
skips (``make system-deps`` installs it). Stopping: SIGTERM by pid, SIGKILL after a guard.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from hotlink.lab.processes import die_with_parent, send_signal, stop_process

REDIS_SERVER = "redis-server"
HOST = "127.0.0.1"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# A free port can be taken by someone else between our probe and redis' bind: try anew.
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 40

_counter = itertools.count(1)


class RedisStartError(RuntimeError):
    """redis-server exited or did not answer PING in time; the message has its log's tail."""

    def __init__(self, message: str, *, exited: bool) -> None:
        super().__init__(message)
        self.exited = exited  # False: it ran but never answered (stopped by us)


def redis_server_path() -> str | None:
    """Where ``redis-server`` is, or None."""
    return shutil.which(REDIS_SERVER) or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def require_redis_server() -> str:
    """The redis-server path; skips the calling test when it is not installed."""
    path = redis_server_path()
    if path is None:
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server, or make system-deps)"
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisProc:
    """One redis-server process (and its restarts) on a fixed loopback port."""

    binary: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    _clients: list[redis.Redis] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of redis' log and of its stdout/stderr (argument errors land there)."""
        parts = []
        for path in (self.log_path, self.workdir / "stdout.log"):
            with contextlib.suppress(OSError):
                parts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(parts) or "(empty)"

    def client(self) -> redis.Redis:
        """A sync client for assertions; closed by the caller or when the context ends."""
        conn = redis.Redis.from_url(self.url, socket_timeout=READY_TIMEOUT)
        self._clients.append(conn)
        return conn

    def start(self, ready_timeout: float = READY_TIMEOUT) -> None:
        """Start on :attr:`port` and wait until PING answers; raises :class:`RedisStartError`."""
        if self.alive():
            raise RuntimeError(f"redis-server already runs (pid {self.pid})")
        args = [
            self.binary,
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log_path),
            "--protected-mode",
            "no",
        ]
        # Dies with the test run if pytest is killed; only from the main thread, because the
        # signal fires when the launching *thread* ends (a fixture run in a worker thread).
        on_main = threading.current_thread() is threading.main_thread()
        with open(self.workdir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if on_main else None,
            )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        probe = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisStartError(
                        f"redis-server on {HOST}:{self.port} exited with status "
                        f"{self.process.returncode}; its log:\n{self.log_tail()}",
                        exited=True,
                    )
                with contextlib.suppress(redis.RedisError):
                    if probe.ping():
                        return
                if time.monotonic() > deadline:
                    stop_process(self.process, STOP_TIMEOUT)
                    raise RedisStartError(
                        f"redis-server on {HOST}:{self.port} did not answer PING within "
                        f"{timeout:.0f} s; its log:\n{self.log_tail()}",
                        exited=False,
                    )
                time.sleep(0.05)
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL by pid and reap it: Redis gone at once, connections reset, no goodbye."""
        if self.process is not None:
            send_signal(self.process, signal.SIGKILL)
            self.process.wait()

    def restart(self, ready_timeout: float = READY_TIMEOUT) -> None:
        """Start again on the same port (stopping it first if it runs); the data is gone."""
        if self.alive():
            self.stop()
        self.start(ready_timeout)

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after a guard; the clients stay open (for a restart)."""
        if self.process is not None:
            stop_process(self.process, STOP_TIMEOUT)

    def close(self) -> None:
        """Close the clients handed out and stop the server."""
        for conn in self._clients:
            with contextlib.suppress(Exception):
                conn.close()
        self._clients.clear()
        self.stop()


@contextlib.contextmanager
def running_redis(tmp_path: Path) -> Iterator[RedisProc]:
    """A ready redis-server on a free loopback port, stopped on exit (skips if not installed)."""
    binary = require_redis_server()
    workdir = tmp_path / f"redis-{next(_counter)}"
    workdir.mkdir(parents=True)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        proc = RedisProc(binary=binary, port=_free_port(), workdir=workdir)
        try:
            proc.start()
            break
        except RedisStartError as exc:
            proc.close()
            # Exited early: most likely the port was taken meanwhile; a hang is not retried.
            if attempt == PORT_ATTEMPTS or not exc.exited:
                raise
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProc]:
    """A fresh redis-server per test (see :func:`running_redis`)."""
    with running_redis(tmp_path) as proc:
        yield proc
