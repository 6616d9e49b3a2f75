"""The ``hotlink`` command line: each part of the system registers its own commands."""

from __future__ import annotations

import typer

from .client.commands import register as register_client
from .demo_commands import register as register_demo
from .server.commands import register as register_server

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="hotlink: fast, private byte streams between SyftBox datasites.",
)


@app.callback()
def root() -> None:
    """hotlink: private byte streams between SyftBox datasites."""


register_server(app)
register_client(app)
register_demo(app)


@app.command()
def version() -> None:
    """Print the hotlink version."""
    from . import __version__

    typer.echo(f"hotlink {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
