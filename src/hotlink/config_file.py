"""Config files as settings layers (:class:`hotlink.settings.Source`).

``--config FILE`` (or ``SYFTBOX_HOTLINK_CONFIG``) is TOML; its keys are the settings' keys,
the long flags without dashes (``--flow-window`` is ``flow_window``). Top-level keys apply
to the command reading the file; a ``[client]`` or ``[server]`` table applies to that
command only and wins over the top level, so one file can serve both::

    log_format = "json"

    [client]
    server_url = "https://relay.example.org"
    email = "alice@example.org"
    data_dir = "~/SyftBox"
    hotlink = true
    flow_window = 16777216

    [server]
    port = 8443
    max_connections_per_user = 16

The SyftBox client's own ``~/.syftbox/config.json`` (or ``SYFTBOX_CONFIG_PATH``) is read
too when present, for ``email``, ``server_url`` and ``data_dir`` only: a machine that runs
SyftBox needs no hotlink settings beyond ``hotlink = true``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from .settings import SettingsError, Source

CONFIG_ENV = "SYFTBOX_HOTLINK_CONFIG"
SYFTBOX_CONFIG_ENV = "SYFTBOX_CONFIG_PATH"
SYFTBOX_KEYS = ("email", "server_url", "data_dir")
SECTIONS = ("client", "server")
# Config files are a few hundred bytes; anything far larger is not one.
MAX_CONFIG_BYTES = 1024 * 1024

Section = Literal["client", "server"]


class ConfigFileError(SettingsError):
    """A config file that cannot be read or does not parse."""


def _read(path: Path, what: str) -> str:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise ConfigFileError(f"{what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{what} {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{what} {path} is not UTF-8 text: {exc.reason}") from None


def config_path(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """``--config``, else ``SYFTBOX_HOTLINK_CONFIG``, else None (no config file)."""
    if explicit is not None:
        return explicit.expanduser()
    value = env.get(CONFIG_ENV, "").strip()
    return Path(value).expanduser() if value else None


def read_config_file(path: Path, section: Section) -> Source:
    """The settings ``path`` gives the ``section`` command (top level, then its table)."""
    text = _read(path, "config file")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path} does not parse: {exc}") from None
    values = {key: value for key, value in doc.items() if key not in SECTIONS}
    own = doc.get(section)
    if own is not None:
        if not isinstance(own, dict):
            raise ConfigFileError(f"config file {path}: [{section}] must be a table")
        values.update(own)
    return Source(str(path), values)


def syftbox_config_path(explicit: Path | None, env: Mapping[str, str]) -> Path:
    """``--syftbox-config``, else ``SYFTBOX_CONFIG_PATH``, else ``~/.syftbox/config.json``."""
    if explicit is not None:
        return explicit.expanduser()
    value = env.get(SYFTBOX_CONFIG_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".syftbox" / "config.json"


def read_syftbox_config(path: Path) -> Source | None:
    """``email``, ``server_url`` and ``data_dir`` of a SyftBox client config; None when the
    file does not exist. Other keys (tokens, the client's own URL) are not ours to read."""
    if not path.exists():
        return None
    text = _read(path, "SyftBox config")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigFileError(f"SyftBox config {path} does not parse: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigFileError(f"SyftBox config {path}: expected a JSON object")
    return Source(str(path), {key: doc[key] for key in SYFTBOX_KEYS if doc.get(key) is not None})


def client_files(
    env: Mapping[str, str],
    *,
    config: Path | None = None,
    syftbox_config: Path | None = None,
    use_syftbox: bool = True,
) -> tuple[list[Source], list[str]]:
    """The config-file layers of ``hotlink client`` (and of the commands that find its data
    dir the same way), lowest first: the SyftBox client config, then ``--config``.

    Returns ``(sources, notes)``; ``notes`` are warnings for the log (a default SyftBox config
    that does not parse is skipped: it is not ours, and nobody asked for it). A file named
    by ``--config``, ``SYFTBOX_HOTLINK_CONFIG`` or ``--syftbox-config`` that is missing or
    broken raises :class:`ConfigFileError`.
    """
    sources: list[Source] = []
    notes: list[str] = []
    if use_syftbox:
        path = syftbox_config_path(syftbox_config, env)
        # Only --syftbox-config insists: SYFTBOX_CONFIG_PATH belongs to the SyftBox client,
        # which may not have written its file yet.
        named = syftbox_config is not None
        try:
            syftbox = read_syftbox_config(path)
        except ConfigFileError as exc:
            if named:
                raise
            notes.append(f"ignoring {exc}")
            syftbox = None
        if syftbox is None and named:
            raise ConfigFileError(f"SyftBox config {path} does not exist")
        if syftbox is not None:
            sources.append(syftbox)
    ours = config_path(config, env)
    if ours is not None:
        sources.append(read_config_file(ours, "client"))
    return sources, notes


def locate_client(
    data_dir: Path | None, email: str | None, config: Path | None = None
) -> tuple[Path, str]:
    """The data dir and email of the local client, found as ``hotlink client`` finds them
    (SyftBox config < ``--config`` < environment < these flags), for the commands that talk
    to a client or its files (``hotlink status``, ``hotlink tunnel``). Raises SettingsError
    with a readable reason."""
    import os

    from .settings import ClientSettings

    sources, _ = client_files(os.environ, config=config)
    settings = ClientSettings.load(
        os.environ, files=sources, flags={"data_dir": data_dir, "email": email}
    )
    missing = [
        name
        for name, value in (
            ("--email (or SYFTBOX_EMAIL)", settings.email),
            ("--data-dir (or SYFTBOX_DATA_DIR)", settings.data_dir),
        )
        if not value.strip()
    ]
    if missing:
        raise SettingsError(f"missing {' and '.join(missing)}")
    return Path(settings.data_dir).expanduser().absolute(), settings.email.strip()
