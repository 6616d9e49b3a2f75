"""The daemon as a process: start-up lines, hotlink off, clean exit on SIGTERM and SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support.client_proc import ALICE, BOB, spawn_client, start_client, write_default_acls
from support.server_proc import ServerProcess, running_server_sync


def test_hotlink_on_starts_everything_and_stops_cleanly(
    relay: ServerProcess, tmp_path: Path
) -> None:
    write_default_acls(tmp_path / "alice" / "datasites" / ALICE)
    client = start_client(relay.url, ALICE, tmp_path / "alice")
    try:
        client.wait_for_log(r"hotlink enabled: ws relay \+ tcp proxy \+ ipc \(unix\)")
        client.wait_for_log(r"acls published: 2 of 2 files")
        client.wait_for_log(r"acl published alice@example.com/public/syft.pub.yaml")
        assert (client.telemetry() or {}).get("mode") == "hotlink_p2p"
    finally:
        assert client.stop() == 0
    assert "stopped" in client.log_text()
    assert "Traceback" not in client.log_text()


def test_hotlink_off_still_publishes_acls_and_exits_on_sigint(
    relay: ServerProcess, tmp_path: Path
) -> None:
    write_default_acls(tmp_path / "bob" / "datasites" / BOB)
    client = start_client(relay.url, BOB, tmp_path / "bob", hotlink=False)
    try:
        client.wait_for_log(r"hotlink disabled")
        assert client.telemetry() is None
        assert "tcp proxy" not in client.log_text()
    finally:
        os.kill(client.pid, signal.SIGINT)
        assert client.proc.wait(10) == 0


def test_missing_arguments_are_reported(tmp_path: Path) -> None:
    client = spawn_client("http://127.0.0.1:9", ALICE, tmp_path / "x", args=["--email", ""])
    code = client.proc.wait(30)
    assert code != 0
    assert "missing --email" in client.log_text()


def test_token_mode_uses_the_access_token(tmp_path: Path) -> None:
    secret = "test-secret-" + "x" * 20
    token = subprocess.run(
        [sys.executable, "-m", "hotlink", "token", "issue", "--secret", secret, "--email", ALICE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with running_server_sync(tmp_path, args=["--auth-secret", secret]) as server:
        # Without the token the server refuses us, and we keep trying (loudly).
        anonymous = spawn_client(server.url, BOB, tmp_path / "bob")
        try:
            anonymous.wait_for_log(r"refused the connection: HTTP 401")
        finally:
            anonymous.stop()
        # With it (from SYFTBOX_ACCESS_TOKEN, as the CLI's --token would set it) we get in.
        client = start_client(
            server.url, ALICE, tmp_path / "alice", env={"SYFTBOX_ACCESS_TOKEN": token}
        )
        assert client.stop() == 0
