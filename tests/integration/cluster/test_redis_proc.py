"""The test harness' real redis-server: it serves, dies on kill, comes back empty on its port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from support.redis_proc import RedisProc, redis_server, running_redis  # noqa: F401


def test_serves_on_loopback_and_restarts_empty_on_the_same_port(
    redis_server: RedisProc,  # noqa: F811
) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    conn = redis_server.client()
    assert conn.set("greeting", b"hello")
    assert conn.get("greeting") == b"hello"

    first_pid = redis_server.pid
    redis_server.kill()
    assert not redis_server.alive()
    with pytest.raises(redis.ConnectionError):
        conn.get("greeting")

    redis_server.restart()
    assert redis_server.pid != first_pid
    # The same client (same URL, so the same port) reaches the new process: nothing persisted.
    assert conn.get("greeting") is None
    assert conn.set("again", b"1") and conn.get("again") == b"1"


def test_exit_stops_the_process_by_pid(tmp_path: Path) -> None:
    with running_redis(tmp_path) as rds:
        pid = rds.pid
        assert rds.client().ping()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
