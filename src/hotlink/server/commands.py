"""CLI commands of the server (registered on the main typer app by ``hotlink.cli``).

``hotlink server`` runs the relay; ``hotlink token issue`` mints an access token for token
mode. Settings come from the SYFTBOX_* environment once, and flags override them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    # aiohttp's own access/server chatter is noise next to our per-connection lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def server(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: SYFTBOX_HTTP_ADDR or localhost).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port (default: SYFTBOX_HTTP_ADDR or 8080; 0 picks a free one)."),
    ] = None,
    acl_dir: Annotated[
        Path | None,
        typer.Option(help="Preload ACLs: DIR/<email>/.../syft.pub.yaml (datasite-relative)."),
    ] = None,
    auth_secret: Annotated[
        str | None,
        typer.Option(help="Token mode with this HS256 secret (else SYFTBOX_AUTH_* decide)."),
    ] = None,
    turn_secret: Annotated[
        str | None,
        typer.Option(help="TURN shared secret: advertise short-lived TURN REST credentials."),
    ] = None,
    ice_servers: Annotated[
        str | None,
        typer.Option(help="ICE servers to advertise (default: SYFTBOX_HOTLINK_ICE_SERVERS)."),
    ] = None,
    debug: Annotated[
        bool, typer.Option(help="Log the hotlink data relay trace (SYFTBOX_HOTLINK_DEBUG=1).")
    ] = False,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write {pid, host, port} as JSON here once listening (for tests)."),
    ] = None,
    send_timeout: Annotated[
        float | None,
        # Accepted so existing command lines keep working, but unused: the relay never
        # waits for room in a receiver's queue (a receiver that overflows it is dropped).
        typer.Option(help="Unused (the relay never waits for a slow receiver).", hidden=True),
    ] = None,
    queue_size: Annotated[
        int | None,
        typer.Option(
            help="Messages per connection send queue (default 16384); a receiver whose queue "
            "overflows is disconnected as a slow reader.",
            min=1,
        ),
    ] = None,
    queue_bytes: Annotated[
        int | None,
        typer.Option(
            help="Bytes per connection held for its peer, queued or in the socket buffer "
            "(default 64 MiB).",
            min=1,
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="WebSocket connections in total (default 10000); more are refused with 503.",
            min=1,
        ),
    ] = None,
    max_connections_per_user: Annotated[
        int | None,
        typer.Option(
            help="WebSocket connections per user (default 8); more are refused with 429.", min=1
        ),
    ] = None,
    max_sessions_per_user: Annotated[
        int | None,
        typer.Option(
            help="Open hotlink sessions per user over all its connections (default 4096); "
            "more Opens get Reject 'too many sessions'.",
            min=1,
        ),
    ] = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a connection may take to send its HTTP request (default 10).",
            min=0.1,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the SyftBox-compatible hotlink relay server."""
    from ..settings import ServerSettings, SettingsError
    from .app import RelayConfig, run

    _setup_logging(log_level)
    try:
        settings = ServerSettings.from_env(os.environ)
        changes: dict[str, object] = {}
        if host is not None:
            changes["host"] = host
        if port is not None:
            changes["port"] = port
        if auth_secret:
            changes.update(auth_enabled=True, access_token_secret=auth_secret)
        if turn_secret:
            changes["turn_secret"] = turn_secret
        if ice_servers is not None:
            changes["ice_servers_raw"] = ice_servers
        if debug:
            changes["debug"] = True
        settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
        settings.check()
    except SettingsError as exc:
        typer.echo(f"hotlink server: {exc}", err=True)
        raise typer.Exit(2) from None
    if acl_dir is not None and not acl_dir.is_dir():
        typer.echo(f"hotlink server: --acl-dir {acl_dir} is not a directory", err=True)
        raise typer.Exit(2)
    if send_timeout is not None:
        logging.getLogger("hotlink.server").info(
            "--send-timeout is ignored: the relay never waits for a slow receiver"
        )
    limits = {
        "queue_messages": queue_size,
        "queue_bytes": queue_bytes,
        "max_connections": max_connections,
        "max_connections_per_user": max_connections_per_user,
        "max_sessions_per_user": max_sessions_per_user,
        "header_timeout": header_timeout,
    }
    config = RelayConfig(settings=settings, acl_dir=acl_dir)
    config = dataclasses.replace(
        config,
        **{name: value for name, value in limits.items() if value is not None},  # type: ignore[arg-type]
    )
    run(config, ready_file=ready_file)


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


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("server")(server)
    app.add_typer(token_app, name="token")
