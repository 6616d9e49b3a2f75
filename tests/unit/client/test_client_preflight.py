"""Start-up checks of the client and its data-dir lock: user errors as one clear sentence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotlink.client.lock import DataDirLock, DataDirLocked, lock_holder, lock_path
from hotlink.client.preflight import (
    check_email,
    check_server_url,
    checked_client_settings,
    prepare_data_dir,
)
from hotlink.settings import ClientSettings, SettingsError


@pytest.mark.parametrize(
    "url,message",
    [
        ("localhost:8080", "has no scheme: write http://localhost:8080"),
        ("127.0.0.1:8080", "has no scheme"),
        ("relay.example.org", "has no scheme"),
        ("ftp://relay.example.org", "the scheme must be http, https, ws or wss, not 'ftp'"),
        ("http://", "has no host"),
        ("http://relay:99999", "has an invalid port"),
    ],
)
def test_bad_server_urls(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        check_server_url(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "https://relay.example.org/prefix", "wss://[::1]:443"]
)
def test_good_server_urls(url: str) -> None:
    check_server_url(url)


@pytest.mark.parametrize(
    "email,message",
    [
        ("alice", "'alice' is not a valid email address"),
        ("alice@localhost", "is not a valid email address"),
        ("a b@example.com", "is not a valid email address"),
        ("*@example.com", "cannot be a user: it contains '*'"),
    ],
)
def test_emails_the_relay_would_refuse(email: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("*", r"\*")):
        check_email(email)


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(SettingsError, match="is a file, not a folder"):
        prepare_data_dir(str(tmp_path / "f"))
    with pytest.raises(SettingsError, match="cannot create data dir"):
        prepare_data_dir(str(tmp_path / "f" / "below"))
    assert prepare_data_dir(str(tmp_path / "new" / "dir")).is_dir()


def test_checked_settings_name_every_missing_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingsError) as info:
        checked_client_settings(ClientSettings(email="a@example.com"))
    assert str(info.value).startswith(
        "missing --server-url (SYFTBOX_SERVER_URL), --data-dir (SYFTBOX_DATA_DIR)"
    )
    s = ClientSettings(server_url="http://x:1", email="a@example.com", data_dir="rel")
    monkeypatch.chdir(tmp_path)
    assert checked_client_settings(s).data_dir == str(tmp_path / "rel")


def test_second_lock_on_a_data_dir_names_the_holder(tmp_path: Path) -> None:
    assert lock_holder(tmp_path) is None
    with DataDirLock.acquire(tmp_path):
        assert lock_holder(tmp_path) == os.getpid()
        # flock locks belong to open files: a second open in this process conflicts too,
        # but the real case is another process, so ask one.
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path\n"
                "from hotlink.client.lock import DataDirLock, DataDirLocked\n"
                "try:\n    DataDirLock.acquire(Path(sys.argv[1]))\n"
                "except DataDirLocked as exc:\n    print(exc); sys.exit(4)\n",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.returncode == 4
        assert probe.stdout.strip() == (
            f"another hotlink client (pid {os.getpid()}) is already running on {tmp_path} "
            f"(lock {lock_path(tmp_path)})"
        )
        with pytest.raises(DataDirLocked):
            DataDirLock.acquire(tmp_path)
    # Released: the next daemon gets it, and the file does not claim a dead owner.
    assert lock_holder(tmp_path) is None
    with DataDirLock.acquire(tmp_path):
        pass


def test_lock_never_follows_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    data = tmp_path / "data"
    data.mkdir()
    lock_path(data).symlink_to(target)
    with pytest.raises(OSError):
        DataDirLock.acquire(data)
    assert target.read_text() == "keep"
