"""CLI commands of the client (registered on the main typer app by ``hotlink.cli``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""

    @app.command()
    def client(
        server: str = typer.Option(
            None, "--server", help="Server URL, e.g. http://127.0.0.1:8080 (SYFTBOX_SERVER_URL)"
        ),
        email: str = typer.Option(None, "--email", help="Your datasite email (SYFTBOX_EMAIL)"),
        data_dir: Path = typer.Option(
            None,
            "--data-dir",
            help="Data folder; datasites live in DIR/datasites (SYFTBOX_DATA_DIR)",
        ),
        token: str = typer.Option(
            None, "--token", help="Access token (SYFTBOX_ACCESS_TOKEN)", show_default=False
        ),
    ) -> None:
        """Run the client daemon. Set SYFTBOX_HOTLINK=1 to run hotlink (TCP proxy, IPC)."""
        from ..settings import ClientSettings, SettingsError
        from .daemon import main

        try:
            settings = ClientSettings.from_env(os.environ)
        except SettingsError as exc:
            raise typer.BadParameter(str(exc)) from None
        overrides: dict[str, Any] = {}
        if server:
            overrides["server_url"] = server
        if email:
            overrides["email"] = email.strip()
        if data_dir:
            overrides["data_dir"] = str(data_dir.absolute())
        if token:
            overrides["access_token"] = token
        settings = dataclasses.replace(settings, **overrides)
        missing = [
            flag
            for flag, value in (
                ("--server", settings.server_url),
                ("--email", settings.email),
                ("--data-dir", settings.data_dir),
            )
            if not value
        ]
        if missing:
            raise typer.BadParameter(f"missing {', '.join(missing)}")
        if settings.data_dir:
            settings = dataclasses.replace(
                settings, data_dir=str(Path(settings.data_dir).absolute())
            )
        raise typer.Exit(main(settings))
