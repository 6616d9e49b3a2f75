"""The devstack stops what it started, by pid, even when the code using it fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotlink.lab.stack import DevStack


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_processes_and_temp_dir_go_away_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), DevStack() as stack:
        server = stack.start_server()
        client = stack.start_client("alice@example.com")
        root = stack.root
        pids = [server.pid, client.pid]
        assert client.telemetry_path.parent.parent == client.datasite()
        raise RuntimeError("boom")
    assert all(_gone(p) for p in pids)
    assert not root.exists()


def test_server_restarts_on_the_same_port(tmp_path: Path) -> None:
    with DevStack(tmp_path) as stack:
        first = stack.start_server()
        port = first.port
        first.stop()
        second = stack.start_server(port=port)
        assert second.port == port and second.alive()
    assert not second.alive()
    assert (tmp_path / "server.log").exists()  # a root we were given stays
