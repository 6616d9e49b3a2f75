"""The relay's command line with real processes: a port in use or a broken setting ends in one
line and exit code 2 (no traceback), JSON logs are one object per line, ``--help`` names every
variable beside its flag, and a config file's settings reach the running relay."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from hotlink.settings import SERVER_SPECS
from support.server_proc import running_server_sync, server_env
from support.ws_client import handshake

FAIL_FAST_S = 15  # the bar for a user error
MAX_LINES = 5


def run_server(args: Sequence[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotlink", "server", *args],
        env=server_env({"HOME": str(tmp_path)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=FAIL_FAST_S,
    )


def assert_one_clear_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    out = result.stdout
    lines = out.strip().splitlines()
    assert result.returncode == 2, out
    assert "Traceback" not in out, out
    assert 1 <= len(lines) <= MAX_LINES, out
    assert lines[-1].startswith("error: ") and text in lines[-1], out


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server(["--host", "127.0.0.1", "--port", str(port)], tmp_path)
    assert_one_clear_error(result, f"cannot listen on 127.0.0.1:{port}: address already in use")


@pytest.mark.parametrize(
    "args,text",
    [
        (["--config", "{tmp}/bad.toml"], "does not parse"),
        (["--config", "{tmp}/missing.toml"], "does not exist"),
        (["--port", "70000"], "--port=70000: expected 0-65535"),
        (["--max-connections", "0"], "--max-connections=0: expected at least 1"),
        (["--auth-enabled"], "token mode (--auth-enabled, SYFTBOX_AUTH_ENABLED) needs a secret"),
        (["--acl-dir", "{tmp}/nope"], "is not a directory"),
        (["--ice-servers", "relay:3478"], "--ice-servers='relay:3478'"),
    ],
)
def test_bad_settings_are_one_line(tmp_path: Path, args: list[str], text: str) -> None:
    (tmp_path / "bad.toml").write_text("[server\nport = 1\n")
    args = [arg.format(tmp=tmp_path) for arg in args]
    assert_one_clear_error(run_server(args, tmp_path), text)


def test_json_logs_and_config_file_reach_the_running_relay(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    # The config file sets the log format (top level) and level ([server]); the harness
    # sets the address with flags.
    config.write_text('log_format = "json"\n\n[server]\nlog_level = "debug"\n')
    with running_server_sync(tmp_path, args=["--config", str(config)]) as srv:
        status, body = asyncio.run(handshake(srv.url, query={"user": "not an email"}))
        assert (status, body["error"]) == (401, "invalid email")
        log_path = next(tmp_path.glob("server-*.log"))
    lines = log_path.read_text().splitlines()
    docs = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    for doc in docs:
        assert {"time", "level", "logger", "message"} <= set(doc)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])
    messages = [d["message"] for d in docs]
    assert any(m.startswith("hotlink relay ") and " listening on " in m for m in messages)
    assert any(d["level"] == "WARNING" and "401 invalid email" in d["message"] for d in docs)
    assert messages[-1] == "stopped"


def test_help_lists_every_variable_beside_its_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hotlink", "server", "--help"],
        env={**os.environ, "TERMINAL_WIDTH": "400", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    for spec in SERVER_SPECS:
        option = re.compile(rf"^\W+{re.escape(spec.flag)}[\s,]")  # the flag starts its row
        line = next((ln for ln in lines if option.match(ln)), "")
        assert line, f"{spec.flag} is not in --help"
        if spec.env:
            assert f"[env: {', '.join(spec.env)}]" in line, line
    for group in ("Listening", "Authentication", "Limits", "Logging", "Configuration files"):
        assert group in result.stdout
