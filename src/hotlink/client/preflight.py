"""The client's start-up checks: a user error ends in one clear line, before any connecting.

Each check raises :class:`hotlink.settings.SettingsError` with the sentence to print. The
email is checked with the relay's own rule (:mod:`hotlink.protocol.identity`), so a name the
relay would refuse never reaches its reconnect loop.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from urllib.parse import urlsplit

from ..protocol.identity import identity_error
from ..settings import ClientSettings, SettingsError

SCHEMES = ("http", "https", "ws", "wss")


def check_server_url(url: str) -> None:
    parts = urlsplit(url)
    if "://" not in url:
        raise SettingsError(
            f"server URL {url!r} has no scheme: write http://{url} (or https://{url})"
        )
    if parts.scheme.lower() not in SCHEMES:
        raise SettingsError(
            f"server URL {url!r}: the scheme must be http, https, ws or wss, not {parts.scheme!r}"
        )
    if not parts.hostname:
        raise SettingsError(f"server URL {url!r} has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise SettingsError(f"server URL {url!r} has an invalid port") from None


def check_email(email: str) -> None:
    problem = identity_error(email)
    if problem is not None:
        raise SettingsError(f"email {problem}")


def prepare_data_dir(value: str) -> Path:
    """The data dir as an absolute path, created if missing; it must be a writable folder."""
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise SettingsError(f"data dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"cannot create data dir {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"data dir {path} is not writable")
    return path


def checked_client_settings(settings: ClientSettings) -> ClientSettings:
    """``settings`` with the data dir made absolute, or the first problem as SettingsError."""
    missing = [
        f"--{flag} ({env})"
        for flag, env, value in (
            ("server-url", "SYFTBOX_SERVER_URL", settings.server_url),
            ("email", "SYFTBOX_EMAIL", settings.email),
            ("data-dir", "SYFTBOX_DATA_DIR", settings.data_dir),
        )
        if not value
    ]
    if missing:
        raise SettingsError(
            f"missing {', '.join(missing)}: give each as a flag, an environment variable "
            "or in a config file (--config)"
        )
    check_server_url(settings.server_url)
    check_email(settings.email)
    data_dir = prepare_data_dir(settings.data_dir)
    return dataclasses.replace(settings, data_dir=str(data_dir))
