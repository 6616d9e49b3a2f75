"""CLI commands of the client (registered on the main typer app by ``hotlink.cli``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
