"""CLI commands of the server (registered on the main typer app by ``hotlink.cli``).

``hotlink server`` runs the relay; ``hotlink token issue`` mints an access token for token
mode. The relay's flags come from the settings table (:data:`hotlink.settings.SERVER_SPECS`);
settings are layered defaults < ``--config`` < environment < flags. A user error (a bad
setting, a config file that does not parse, an address it cannot listen on) ends the process
with one line and exit code 2.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from ..cli_options import extra_option, settings_command
from ..settings import P_CONFIG, P_LISTEN, SERVER_SPECS

EXIT_SETTINGS = 2

log = logging.getLogger("hotlink.server")

# Errors of bind(): the address is taken, not ours, or not allowed (a low port, say).
_LISTEN_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EPERM})

# RelayConfig's names for the limits the settings call otherwise.
_LIMITS = {
    "queue_size": "queue_messages",
    "queue_bytes": "queue_bytes",
    "max_queued_bytes": "max_queued_bytes",
    "max_connections": "max_connections",
    "max_connections_per_user": "max_connections_per_user",
    "max_sessions_per_user": "max_sessions_per_user",
    "header_timeout": "header_timeout",
}

_EXTRAS = [
    extra_option(
        "config",
        Path | None,
        "--config",
        help="TOML config file; keys are the flag names with _ for - (port = 8443), "
        "optionally under \\[server]. \\[env: SYFTBOX_HOTLINK_CONFIG]",
        panel=P_CONFIG,
    ),
    extra_option(
        "ready_file",
        Path | None,
        "--ready-file",
        help="Write {pid, host, port} as JSON here once listening (for scripts and tests).",
        panel=P_LISTEN,
    ),
    # Accepted so existing command lines keep working, but unused: the relay never waits
    # for room in a receiver's queue (a receiver that overflows it is dropped).
    extra_option(
        "send_timeout",
        float | None,
        "--send-timeout",
        help="Unused (the relay never waits for a slow receiver).",
        panel=P_LISTEN,
        hidden=True,
    ),
]


def _fail(message: str) -> typer.Exit:
    from ..logs import report_fatal

    report_fatal(message, "hotlink.server")
    return typer.Exit(EXIT_SETTINGS)


def _run(flags: dict[str, object], extras: dict[str, Any]) -> None:
    from ..config_file import config_path, read_config_file
    from ..logs import SERVER_QUIET, setup_logging
    from ..settings import ServerSettings, SettingsError, Source
    from .app import RelayConfig, run

    env = os.environ
    try:
        files: list[Source] = []
        ours = config_path(extras["config"], env)
        if ours is not None:
            files.append(read_config_file(ours, "server"))
        settings = ServerSettings.load(env, files=files, flags=flags)
        settings.check()
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    setup_logging(settings.effective_log_level, settings.effective_log_format, quiet=SERVER_QUIET)
    acl_dir = Path(settings.acl_dir).expanduser() if settings.acl_dir else None
    if acl_dir is not None and not acl_dir.is_dir():
        raise _fail(f"--acl-dir {acl_dir} is not a directory")
    if extras["send_timeout"] is not None:
        log.info("--send-timeout is ignored: the relay never waits for a slow receiver")
    limits = {
        name: getattr(settings, key)
        for key, name in _LIMITS.items()
        if getattr(settings, key) is not None
    }
    config = dataclasses.replace(RelayConfig(settings=settings, acl_dir=acl_dir), **limits)
    from .cluster.node import ClusterUnavailable

    try:
        run(config, ready_file=extras["ready_file"])
    except ClusterUnavailable as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or exc.errno in _LISTEN_ERRORS:
            # asyncio's strerror repeats the address; the errno's own words say it best.
            if isinstance(exc, socket.gaierror) or not exc.errno:
                reason = exc.strerror or str(exc)
            else:
                reason = os.strerror(exc.errno)
            reason = reason[:1].lower() + reason[1:]
            raise _fail(f"cannot listen on {settings.http_addr}: {reason}") from None
        raise


token_app = typer.Typer(help="Access tokens for token mode.", no_args_is_help=True)


@token_app.command("issue")
def token_issue(
    secret: Annotated[
        str,
        typer.Option(
            help="The server's access-token secret.", envvar="SYFTBOX_AUTH_ACCESS_TOKEN_SECRET"
        ),
    ],
    email: Annotated[str, typer.Option(help="The user the token identifies (its sub).")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds; 0 means no expiry.", min=0)] = 7
    * 24
    * 3600,
) -> None:
    """Print an HS256 access token for EMAIL signed with SECRET."""
    from .auth import MIN_SECRET_BYTES, issue_access_token, weak_secret

    if weak_secret(secret):
        typer.echo(f"warning: the secret is shorter than {MIN_SECRET_BYTES} bytes", err=True)
    try:
        typer.echo(issue_access_token(secret, email, ttl=ttl or None))
    except ValueError as exc:
        typer.echo(f"hotlink token issue: {exc}", err=True)
        raise typer.Exit(2) from None


server = settings_command(
    "server",
    "Run the SyftBox-compatible hotlink relay server.\n\n"
    "Settings: defaults < --config FILE < environment < flags.",
    SERVER_SPECS,
    _EXTRAS,
    _run,
)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("server")(server)
    app.add_typer(token_app, name="token")
