"""Start the real relay (``python -m hotlink server``) as a subprocess on a free loopback port.

    async with running_server(tmp_path) as srv:          # async tests
        srv.url, srv.ws_url, srv.port, srv.pid
    with running_server_sync(tmp_path, env={...}) as srv:  # sync tests / fixtures
        ...

A thin layer over :mod:`hotlink.lab.processes` (which starts, waits on and stops the process):
the server binds port 0 and reports the port it got through ``--ready-file``, so there is no
race for a "free" port (``use_env_addr=True`` leaves the address to ``SYFTBOX_HTTP_ADDR`` in
``env``). It inherits the test's environment (``SYFTBOX_HOTLINK_ICE_SERVERS`` is ``none``
unless the caller says otherwise, an inherited ``SYFTBOX_AUTH_ENABLED`` is dropped) plus
``env``; ``args`` go on its command line. Its log goes to ``<tmp_path>/server-<n>.log``.
Stopping sends SIGTERM to its pid and, if it has not exited after ``stop_timeout`` seconds,
SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from hotlink.lab.processes import ServerProc, child_env, launch_server, stop_process

ServerProcess = ServerProc

_counter = itertools.count(1)


def server_env(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The test's environment for a server: ICE ``none`` unless set, no inherited token mode
    (a leftover setting in the caller's shell must not change the server's mode), ``env``."""
    ice = os.environ.get("SYFTBOX_HOTLINK_ICE_SERVERS", "none")
    return child_env({"SYFTBOX_HOTLINK_ICE_SERVERS": ice, "SYFTBOX_AUTH_ENABLED": None}, env)


def spawn_server(
    tmp_path: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    args: Sequence[str] = (),
    use_env_addr: bool = False,
) -> ServerProcess:
    """Start the server without waiting (``wait_ready``/``await_ready`` on the result)."""
    n = next(_counter)
    return launch_server(
        tmp_path / f"server-{n}.ready.json",
        tmp_path / f"server-{n}.log",
        env=server_env(env),
        host=None if use_env_addr or "--host" in args else "127.0.0.1",
        port=None if use_env_addr or "--port" in args else 0,
        args=args,
        # Callers may start it from a thread that ends before the server does (a fixture in
        # asyncio.to_thread); the harness stops it itself.
        parent_death=False,
    )


def stop_server(srv: ServerProcess | subprocess.Popen[bytes], stop_timeout: float = 10.0) -> int:
    """SIGTERM by pid, then SIGKILL after ``stop_timeout``; returns the exit code."""
    return stop_process(srv.proc if isinstance(srv, ServerProc) else srv, stop_timeout)


@contextlib.contextmanager
def running_server_sync(
    tmp_path: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = 30.0,
    use_env_addr: bool = False,
) -> Iterator[ServerProcess]:
    srv = spawn_server(tmp_path, env=env, args=args, use_env_addr=use_env_addr)
    try:
        yield srv.wait_ready(ready_timeout)
    finally:
        srv.stop()


@contextlib.asynccontextmanager
async def running_server(
    tmp_path: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = 30.0,
    use_env_addr: bool = False,
) -> AsyncIterator[ServerProcess]:
    srv = spawn_server(tmp_path, env=env, args=args, use_env_addr=use_env_addr)
    try:
        yield await srv.await_ready(ready_timeout)
    finally:
        await asyncio.to_thread(srv.stop)
