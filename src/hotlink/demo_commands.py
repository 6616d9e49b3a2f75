"""CLI commands of the demo (registered on the main typer app by ``hotlink.cli``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the demo commands to ``app``."""
