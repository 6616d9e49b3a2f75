"""A replica that cannot reach Redis at start refuses to start, in one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys

from support.server_proc import server_env


def test_a_replica_without_redis_exits_with_one_clear_line() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://user:hunter2@127.0.0.1:{port}/0"
    done = subprocess.run(
        [sys.executable, "-m", "hotlink", "server", "--port", "0", "--redis", url],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach Redis at" in lines[0], done.stderr
    assert "hunter2" not in done.stderr + done.stdout  # the password is never shown
