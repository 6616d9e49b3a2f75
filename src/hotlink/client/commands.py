"""CLI commands of the client (registered on the main typer app by ``hotlink.cli``).

``hotlink client`` runs the daemon. Its flags come from the settings table
(:data:`hotlink.settings.CLIENT_SPECS`); settings are layered defaults < SyftBox config <
``--config`` < environment < flags. User errors end the process with one line and these
exit codes (a service manager can stop restarting on them):

* 2: a setting is missing or wrong (bad URL, email, data dir, unparseable config file),
* 3: the relay refused our identity (HTTP 401/403, with its reason),
* 4: another client daemon runs on the same data dir.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import typer

from ..cli_options import extra_option, settings_command
from ..settings import CLIENT_SPECS, P_CONFIG

EXIT_SETTINGS = 2
EXIT_REFUSED = 3
EXIT_LOCKED = 4

log = logging.getLogger("hotlink.client")

_EXTRAS = [
    extra_option(
        "config",
        Path | None,
        "--config",
        help="TOML config file; keys are the flag names with _ for - (flow_window = ...), "
        "optionally under \\[client]. \\[env: SYFTBOX_HOTLINK_CONFIG]",
        panel=P_CONFIG,
    ),
    extra_option(
        "syftbox_config",
        Path | None,
        "--syftbox-config",
        help="The SyftBox client config to take email, server_url and data_dir from "
        "(lowest priority). \\[default: ~/.syftbox/config.json, if present] "
        "\\[env: SYFTBOX_CONFIG_PATH]",
        panel=P_CONFIG,
    ),
    extra_option(
        "no_syftbox_config",
        bool,
        "--no-syftbox-config",
        help="Do not read the SyftBox client config.",
        panel=P_CONFIG,
        default=False,
    ),
]


def _fail(message: str, code: int) -> typer.Exit:
    from ..logs import report_fatal

    report_fatal(message)
    return typer.Exit(code)


def _run(flags: dict[str, object], extras: dict[str, Any]) -> None:
    from ..config_file import client_files
    from ..logs import CLIENT_QUIET, setup_logging
    from ..settings import ClientSettings, SettingsError
    from .connection import RelayRefused
    from .e2e.keystore import KeyFileError
    from .lock import DataDirLock, DataDirLocked
    from .preflight import checked_client_settings

    env = os.environ
    try:
        files, notes = client_files(
            env,
            config=extras["config"],
            syftbox_config=extras["syftbox_config"],
            use_syftbox=not extras["no_syftbox_config"],
        )
        settings = ClientSettings.load(env, files=files, flags=flags)
    except SettingsError as exc:
        raise _fail(str(exc), EXIT_SETTINGS) from None
    setup_logging(settings.effective_log_level, settings.effective_log_format, quiet=CLIENT_QUIET)
    for note in notes:
        log.warning("%s", note)
    try:
        settings = checked_client_settings(settings)
    except SettingsError as exc:
        raise _fail(str(exc), EXIT_SETTINGS) from None
    data_dir = Path(settings.data_dir)
    try:
        lock = DataDirLock.acquire(data_dir)
    except DataDirLocked as exc:
        raise _fail(str(exc), EXIT_LOCKED) from None
    except OSError as exc:
        raise _fail(
            f"cannot create the lock file in data dir {data_dir}: {exc.strerror or exc}",
            EXIT_SETTINGS,
        ) from None
    from .daemon import main

    with lock:
        try:
            code = main(settings)
        except RelayRefused as exc:
            raise _fail(str(exc), EXIT_REFUSED) from None
        except KeyFileError as exc:
            raise _fail(str(exc), EXIT_SETTINGS) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    command = settings_command(
        "client",
        "Run the client daemon (--hotlink or SYFTBOX_HOTLINK=1 runs the TCP proxy and IPC).\n\n"
        "Settings: defaults < ~/.syftbox/config.json < --config FILE < environment < flags.",
        CLIENT_SPECS,
        _EXTRAS,
        _run,
    )
    app.command("client")(command)
