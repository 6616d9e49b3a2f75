"""The client command line with real processes: user errors end in one clear line and a
non-zero exit (never a traceback, never an endless retry), a second daemon on one data dir
is turned away, JSON logs, ``--help`` naming every variable, and the settings layers
(flags > environment > --config > ~/.syftbox/config.json) as the running daemon sees them.

Every process gets ``HOME`` in the test's folder, so the user's own ~/.syftbox is never read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from hotlink.lab.processes import ClientProc, spawn
from hotlink.server.auth import issue_access_token
from hotlink.settings import CLIENT_SPECS
from support.client_proc import ALICE, BOB, client_env, start_client
from support.server_proc import ServerProcess, running_server_sync

SECRET = "integration-secret-long-enough-for-hs256!"
# The issue's bar for a user error: out within 15 s, in at most 5 lines, no traceback.
FAIL_FAST_S = 15
MAX_LINES = 5


def run_client(
    args: Sequence[str],
    home: Path,
    env: Mapping[str, str | None] | None = None,
    timeout: float = FAIL_FAST_S,
) -> subprocess.CompletedProcess[str]:
    """``hotlink client ARGS`` to its end; stdout and stderr together, as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "hotlink", "client", *args],
        env=client_env({"HOME": str(home), **(env or {})}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def assert_one_clear_error(
    result: subprocess.CompletedProcess[str], code: int, text: str, max_lines: int = MAX_LINES
) -> str:
    """Exit ``code``, no traceback, at most ``max_lines`` lines, the last one ``error: ...``
    holding ``text``; returns that line."""
    out = result.stdout
    lines = out.strip().splitlines()
    assert result.returncode == code, out
    assert "Traceback" not in out, out
    assert 1 <= len(lines) <= max_lines, out
    assert lines[-1].startswith("error: ") and text in lines[-1], out
    return lines[-1]


@pytest.mark.parametrize(
    "case,text",
    [
        ("invalid email", "email 'alice' is not a valid email address"),
        ("email with a pattern character", "email '*@example.com' cannot be a user"),
        ("server URL without scheme", "has no scheme: write http://127.0.0.1:9"),
        ("server URL with a bad scheme", "the scheme must be http, https, ws or wss"),
        ("data dir is a file", "is a file, not a folder"),
        ("config file does not parse", "does not parse"),
        ("unknown config key", "unknown setting 'flow_windw' (did you mean 'flow_window'?)"),
        ("bad variable", "SYFTBOX_HOTLINK_FLOW_WINDOW='lots': expected a whole number"),
        ("missing email", "missing --email (SYFTBOX_EMAIL)"),
    ],
)
def test_user_errors_exit_fast_in_one_line(tmp_path: Path, case: str, text: str) -> None:
    server, email, data = "http://127.0.0.1:9", ALICE, str(tmp_path / "data")
    extra: list[str] = []
    env: dict[str, str | None] = {"SYFTBOX_EMAIL": None}
    if case == "invalid email":
        email = "alice"
    elif case == "email with a pattern character":
        email = "*@example.com"
    elif case == "server URL without scheme":
        server = "127.0.0.1:9"
    elif case == "server URL with a bad scheme":
        server = "ftp://127.0.0.1:9"
    elif case == "data dir is a file":
        (tmp_path / "file").write_text("")
        data = str(tmp_path / "file")
    elif case == "config file does not parse":
        (tmp_path / "c.toml").write_text("hotlink = = yes\n")
        extra = ["--config", str(tmp_path / "c.toml")]
    elif case == "unknown config key":
        (tmp_path / "c.toml").write_text("flow_windw = 1\n")
        extra = ["--config", str(tmp_path / "c.toml")]
    elif case == "bad variable":
        env["SYFTBOX_HOTLINK_FLOW_WINDOW"] = "lots"
    elif case == "missing email":
        email = ""
    args = ["--server", server, "--data-dir", data, *extra]
    if email:
        args += ["--email", email]
    result = run_client(args, tmp_path / "home", env)
    assert_one_clear_error(result, 2, text)


def test_relay_refusing_the_token_is_fatal_with_its_reason(tmp_path: Path) -> None:
    wrong = issue_access_token("another-secret-long-enough-for-hs256!!", BOB)
    with running_server_sync(tmp_path, args=["--auth-secret", SECRET]) as relay:
        base = ["--server", relay.url, "--email", BOB, "--data-dir", str(tmp_path / "bob")]
        # The guard is generous: the daemon starts, connects once, and must stop by itself.
        missing = run_client(base, tmp_path / "home", timeout=60)
        # Start-up and shutdown lines come first here: the daemon did start.
        line = assert_one_clear_error(missing, 3, "", max_lines=20)
        assert line == (
            f"error: the relay refused {BOB}: authorization header required "
            "(no access token given: use --token or SYFTBOX_ACCESS_TOKEN)"
        )
        bad = run_client([*base, "--token", wrong], tmp_path / "home", timeout=60)
        line = assert_one_clear_error(bad, 3, "", max_lines=20)
        assert (
            line == f"error: the relay refused {BOB}: invalid token: Signature verification failed"
        )
        # Tried once each: a refusal of who we are is not retried.
        assert len(re.findall(r"refused the connection", missing.stdout + bad.stdout)) == 2
        # The right token gets in (the same command line, so the refusal was the token's).
        good = issue_access_token(SECRET, BOB)
        client = start_client(
            relay.url, BOB, tmp_path / "bob2", args=["--token", good], env={"HOME": str(tmp_path)}
        )
        assert client.stop() == 0


def test_second_daemon_on_one_data_dir_exits_with_one_line(
    relay: ServerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "alice"
    first = start_client(relay.url, ALICE, data, env={"HOME": str(tmp_path / "home")})
    try:
        second = run_client(
            ["--server", relay.url, "--email", ALICE, "--data-dir", str(data)], tmp_path / "home"
        )
        assert second.returncode == 4, second.stdout
        assert second.stdout.splitlines() == [
            f"error: another hotlink client (pid {first.pid}) is already running on {data} "
            f"(lock {data / '.hotlink.lock'})"
        ]
        assert first.alive()
    finally:
        assert first.stop() == 0
    # The lock died with its owner: the next daemon starts (its own log, so waiting for it
    # cannot match the first daemon's lines).
    first.log_path.rename(first.log_path.with_suffix(".first.log"))
    again = start_client(relay.url, ALICE, data, env={"HOME": str(tmp_path / "home")})
    assert again.stop() == 0


def test_json_logs_are_one_object_per_line(relay: ServerProcess, tmp_path: Path) -> None:
    client = start_client(
        relay.url,
        ALICE,
        tmp_path / "alice",
        args=["--log-format", "json", "--log-level", "debug"],
        env={"HOME": str(tmp_path / "home")},
    )
    assert client.stop() == 0
    lines = client.log_text().splitlines()
    docs = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert len(docs) >= 4
    for doc in docs:
        assert {"time", "level", "logger", "message"} <= set(doc)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])
    messages = [d["message"] for d in docs]
    assert any(m.startswith(f"connected to {relay.url} as {ALICE}") for m in messages)
    assert messages[-1] == "stopped"
    assert any(d["level"] == "DEBUG" for d in docs)


def test_text_logs_have_dated_utc_stamps(relay: ServerProcess, tmp_path: Path) -> None:
    client = start_client(relay.url, BOB, tmp_path / "bob", env={"HOME": str(tmp_path / "h")})
    assert client.stop() == 0
    stamped = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) \S+: "
    for line in client.log_text().splitlines():
        assert re.match(stamped, line), line


def test_settings_layers_in_the_running_daemon(relay: ServerProcess, tmp_path: Path) -> None:
    """~/.syftbox/config.json gives the data dir, --config the server and the email (over
    the SyftBox file's), the environment overrides that email, and no flag says any of it."""
    home = tmp_path / "home"
    (home / ".syftbox").mkdir(parents=True)
    (home / ".syftbox" / "config.json").write_text(
        json.dumps(
            {
                "email": "syftbox@example.com",
                "server_url": "http://127.0.0.1:9",
                "data_dir": str(tmp_path / "from-syftbox"),
                "refresh_token": "never read",
            }
        )
    )
    (tmp_path / "hotlink.toml").write_text(
        f'server_url = "{relay.url}"\nemail = "toml@example.com"\n\n[client]\nhotlink = true\n'
    )
    data = tmp_path / "from-syftbox"
    argv = [sys.executable, "-m", "hotlink", "client", "--config", str(tmp_path / "hotlink.toml")]
    env = client_env({"HOME": str(home), "SYFTBOX_EMAIL": ALICE, "SYFTBOX_HOTLINK": None})
    log_path = tmp_path / "layers.log"
    proc = spawn(argv, env=env, log_path=log_path, parent_death=False)
    client = ClientProc(
        ALICE, argv, log_path, proc, email=ALICE, data_dir=data, server_url=relay.url
    )
    try:
        client.wait_ready(30)
        client.wait_for_log(
            re.escape(f"hotlink client {ALICE}, data dir {data}, server {relay.url}")
        )
        client.wait_for_log(r"hotlink enabled")  # from the [client] table
    finally:
        assert client.stop() == 0
    # The same, with the SyftBox file ignored: now nothing names a data dir.
    result = run_client(
        ["--config", str(tmp_path / "hotlink.toml"), "--no-syftbox-config"],
        home,
        {"SYFTBOX_EMAIL": ALICE, "SYFTBOX_DATA_DIR": None},
    )
    assert_one_clear_error(result, 2, "missing --data-dir (SYFTBOX_DATA_DIR)")


def test_help_lists_every_variable_beside_its_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hotlink", "client", "--help"],
        env={**os.environ, "TERMINAL_WIDTH": "400", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    for spec in CLIENT_SPECS:
        if spec.hidden:
            assert spec.flag not in result.stdout
            continue
        option = re.compile(rf"^\W+{re.escape(spec.flag)}[\s,]")  # the flag starts its row
        line = next((ln for ln in lines if option.match(ln)), "")
        assert line, f"{spec.flag} is not in --help"
        if spec.env:
            assert f"[env: {', '.join(spec.env)}]" in line, line
    for group in ("Identity and relay", "Logging", "Flow control", "Configuration files"):
        assert group in result.stdout


def test_version_and_completion(tmp_path: Path) -> None:
    from hotlink import __version__

    env = {**os.environ, "HOME": str(tmp_path)}
    run = [sys.executable, "-m", "hotlink"]
    for argv in ([*run, "--version"], [*run, "version"]):
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout) == (0, f"hotlink {__version__}\n")
    out = subprocess.run(
        [*run, "--show-completion", "bash"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "complete" in out.stdout
